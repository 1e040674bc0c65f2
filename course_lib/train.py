"""Training: AdamW with warmup + cosine decay and clipping, a jitted multi-step loop,
evaluation, and checkpoints that resume exactly.

How the loop is fast: ``steps_per_call`` optimiser steps run inside one ``lax.scan`` in one
jitted call, and each step samples its batch on the device. Python is entered once per call,
not once per step, and no batch crosses from host to device.

How it is reproducible: the batch and the dropout masks of step ``s`` come from
``fold_in(PRNGKey(seed), s)``. A checkpoint therefore only needs the parameters, the optimiser
state and the step number to continue exactly where the uninterrupted run would be.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from course_lib.data import get_batch


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000  # total optimiser steps
    batch_size: int = 12  # sequences per step
    lr: float = 1e-3  # peak learning rate, reached after warmup
    min_lr: float = 1e-4  # learning rate at the end of the cosine decay
    warmup_steps: int = 100  # linear warmup from 0
    decay_steps: int | None = None  # cosine length (warmup included); None = steps
    weight_decay: float = 0.1  # AdamW decay, on matrices only (not biases or norms)
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # clip the global gradient norm; 0 = off
    eval_every: int = 250  # steps between validation estimates
    eval_batches: int = 20  # batches per validation estimate
    steps_per_call: int = 50  # optimiser steps per jitted call (lax.scan length)
    seed: int = 0  # drives batches and dropout masks

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or self.steps_per_call < 1:
            raise ValueError("steps must be >= 0, batch_size and steps_per_call >= 1.")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}.")


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warmup from 0 to ``lr``, then cosine decay to ``min_lr`` (counted from step 0)."""
    decay = cfg.decay_steps or cfg.steps
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
        decay_steps=max(decay, cfg.warmup_steps + 1), end_value=cfg.min_lr,
    )


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Gradient clipping, then AdamW; weight decay only on weights with 2+ axes."""
    adamw = optax.adamw(
        lr_schedule(cfg), b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay,
        mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params),
    )
    if cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adamw)
    return adamw


def loss_fn(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy. logits (B, T, V) float, targets (B, T) int -> scalar."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


@dataclass
class History:
    """What happened during training, for plots and checks."""

    step: list[int] = field(default_factory=list)  # one entry per optimiser step
    train_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)  # one entry per evaluation
    val_loss: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)  # time spent in training steps
    # (compilation and evaluation excluded) up to each evaluation
    compile_seconds: float = 0.0
    tokens_per_second: float = 0.0

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass
class TrainState:
    """A model together with everything needed to continue training it."""

    model: nnx.Module
    cfg: TrainConfig
    opt_state: Any = None
    step: int = 0
    history: History = field(default_factory=History)

    @property
    def tx(self) -> optax.GradientTransformation:
        return make_optimizer(self.cfg)


class TrainingDiverged(FloatingPointError):
    pass


def _as_tokens(data) -> jax.Array:
    arr = jnp.asarray(np.asarray(data), dtype=jnp.int32)
    if arr.ndim != 1:
        raise ValueError(f"Token data must be 1-D, got shape {arr.shape}.")
    return arr


class _Compiled:
    """The jitted train and eval functions for one model structure and config.

    ``_Compiled.get`` keeps them in a small cache, so training or evaluating another model of the
    same structure (a resumed run, a sweep, a comparison) reuses the compiled code.
    """

    _cache: dict = {}

    @classmethod
    def get(cls, model: nnx.Module, cfg: TrainConfig, block_size: int, mesh=None) -> _Compiled:
        model.train()
        graphdef, _, _ = nnx.split(model, nnx.Param, ...)
        model.eval()
        graphdef_eval, _, _ = nnx.split(model, nnx.Param, ...)
        key = (graphdef, graphdef_eval, cfg, block_size, mesh)
        if key not in cls._cache:
            if len(cls._cache) >= 16:
                cls._cache.pop(next(iter(cls._cache)))  # drop the oldest
            cls._cache[key] = cls(graphdef, graphdef_eval, cfg, block_size, mesh)
        return cls._cache[key]

    def __init__(self, graphdef, graphdef_eval, cfg: TrainConfig, block_size: int, mesh=None):
        self.cfg, self.T, self.mesh = cfg, block_size, mesh
        self.graphdef, self.graphdef_eval = graphdef, graphdef_eval
        self.tx = make_optimizer(cfg)
        self.schedule = lr_schedule(cfg)
        self._train = {}  # (n_steps, argument shapes) -> compiled function
        self._eval = jax.jit(self._eval_impl)

    def _shard_batch(self, x):
        if self.mesh is None:
            return x
        from jax.sharding import NamedSharding, PartitionSpec

        spec = PartitionSpec(self.mesh.axis_names[0])
        return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

    def _loss(self, params, rest, x, y, dropout_key):
        model = nnx.merge(self.graphdef, params, rest)
        # Fresh dropout streams made inside the traced function (nnx forbids mutating RNG
        # state that was created outside it); each layer draws its own key from them.
        return loss_fn(model(x, rngs=nnx.Rngs(dropout=dropout_key)), y)

    def _train_impl(self, params, opt_state, rest, data, step0, base_key, n_steps: int):
        cfg = self.cfg

        def one_step(carry, i):
            params, opt_state = carry
            step = step0 + i
            k_batch, k_drop = jax.random.split(jax.random.fold_in(base_key, step))
            x, y = get_batch(data, cfg.batch_size, self.T, k_batch)  # (B, T) each
            x, y = self._shard_batch(x), self._shard_batch(y)
            loss, grads = jax.value_and_grad(self._loss)(params, rest, x, y, k_drop)
            updates, opt_state = self.tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            grad_norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
            stats = (loss, grad_norm, self.schedule(step))
            return (params, opt_state), stats

        (params, opt_state), stats = jax.lax.scan(
            one_step, (params, opt_state), jnp.arange(n_steps)
        )
        return params, opt_state, stats

    @staticmethod
    def signature(n_steps, args):
        shapes = tuple((x.shape, x.dtype, getattr(x, "sharding", None))
                       for x in jax.tree.leaves(args))
        return n_steps, jax.tree.structure(args), shapes

    def compile(self, n_steps, *args) -> float:
        """Compile the n-step function ahead of time unless it is cached; returns the seconds
        spent compiling (0 on a cache hit)."""
        sig = self.signature(n_steps, args)
        if sig in self._train:
            return 0.0
        t0 = time.perf_counter()
        jitted = jax.jit(lambda *a: self._train_impl(*a, n_steps=n_steps))
        self._train[sig] = jitted.lower(*args).compile()
        return time.perf_counter() - t0

    def train(self, params, opt_state, rest, data, step0, base_key, n_steps):
        args = (params, opt_state, rest, data, step0, base_key)
        return self._train[self.signature(n_steps, args)](*args)

    def _eval_impl(self, params, rest, data, key):
        model = nnx.merge(self.graphdef_eval, params, rest)

        def one_batch(_, k):
            x, y = get_batch(data, self.cfg.batch_size, self.T, k)
            return None, loss_fn(model(x), y)

        _, losses = jax.lax.scan(one_batch, None, jax.random.split(key, self.cfg.eval_batches))
        return losses.mean()


def evaluate(model: nnx.Module, data, cfg: TrainConfig, *, key=None) -> float:
    """Mean loss over ``cfg.eval_batches`` random batches of ``data``, in eval mode (no dropout).

    The default key is fixed, so repeated evaluations see the same batches."""
    comp = _Compiled.get(model, cfg, model.cfg.block_size)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    key = jax.random.PRNGKey(cfg.seed + 1) if key is None else key
    return float(comp._eval(params, rest, _as_tokens(data), key))


def fit(
    model_or_state: nnx.Module | TrainState,
    train_data,
    val_data,
    cfg: TrainConfig | None = None,
    *,
    steps: int | None = None,
    mesh=None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    max_seconds: float | None = None,
    progress: bool = True,
    callback: Callable[[TrainState], None] | None = None,
) -> TrainState:
    """Train until ``steps`` (default ``cfg.steps``) optimiser steps have been taken in total.

    model_or_state: a fresh model (``cfg`` required) or a ``TrainState`` to continue.
    train_data, val_data: 1-D arrays of token ids. mesh: a ``jax.sharding.Mesh`` to split every
    batch over its first axis (data parallelism); parameters are replicated.
    checkpoint_dir: save there every ``checkpoint_every`` steps (default: at each evaluation)
    and at the end. max_seconds: stop early once this much training time (compilation and
    evaluation excluded) has been spent, e.g. to compare models on one time budget.
    callback(state) runs after each evaluation (e.g. a live plot).
    Returns the ``TrainState``; its model is updated in place.
    """
    if isinstance(model_or_state, TrainState):
        state = model_or_state
        if cfg is not None and cfg != state.cfg:
            state.cfg = cfg
    else:
        if cfg is None:
            raise ValueError("Pass a TrainConfig as cfg when starting from a fresh model.")
        state = TrainState(model=model_or_state, cfg=cfg)
    cfg, model = state.cfg, state.model
    total = cfg.steps if steps is None else steps
    block_size = model.cfg.block_size
    train_data, val_data = _as_tokens(train_data), _as_tokens(val_data)
    for name, d in (("train", train_data), ("validation", val_data)):
        if len(d) <= block_size:
            raise ValueError(
                f"The {name} data has {len(d)} tokens, fewer than block_size + 1 = "
                f"{block_size + 1}. Use more text or a smaller block_size."
            )

    comp = _Compiled.get(model, cfg, block_size, mesh)
    _, params, rest = nnx.split(model, nnx.Param, ...)
    if state.opt_state is None:
        state.opt_state = comp.tx.init(params)
    opt_state = state.opt_state
    if mesh is not None:
        from jax.sharding import NamedSharding, PartitionSpec

        n_dev = mesh.shape[mesh.axis_names[0]]
        if cfg.batch_size % n_dev:
            raise ValueError(
                f"batch_size={cfg.batch_size} must be divisible by the {n_dev} devices on mesh "
                f"axis {mesh.axis_names[0]!r}, so each device gets the same number of sequences."
            )
        replicated = NamedSharding(mesh, PartitionSpec())
        params, opt_state, rest, train_data, val_data = jax.device_put(
            (params, opt_state, rest, train_data, val_data), replicated
        )
    base_key = jax.random.PRNGKey(cfg.seed)
    eval_key = jax.random.PRNGKey(cfg.seed + 1)
    hist = state.history
    every = checkpoint_every or cfg.eval_every

    bar = None
    if progress and total > state.step:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=state.step, desc="training", unit="step")
    train_time = hist.train_seconds[-1] if hist.train_seconds else 0.0
    tokens_done, tokens_time = 0, 0.0

    def record_eval():
        loss = float(comp._eval(params, rest, val_data, eval_key))
        hist.val_step.append(state.step)
        hist.val_loss.append(loss)
        hist.train_seconds.append(train_time)
        if bar is not None:
            bar.set_postfix(train=f"{hist.train_loss[-1]:.3f}" if hist.train_loss else "-",
                            val=f"{loss:.3f}")
        if callback is not None:
            callback(state)

    try:
        if state.step == 0 and not hist.val_step:
            record_eval()
        while state.step < total and (max_seconds is None or train_time < max_seconds):
            # Stop each call at the next evaluation or checkpoint boundary.
            n = min(cfg.steps_per_call, total - state.step,
                    cfg.eval_every - state.step % cfg.eval_every,
                    every - state.step % every)
            args = (params, opt_state, rest, train_data, jnp.int32(state.step), base_key)
            hist.compile_seconds += comp.compile(n, *args)
            t0 = time.perf_counter()
            new_params, new_opt, stats = comp.train(*args, n)
            losses, norms, lrs = (np.asarray(s) for s in stats)  # waits for the device
            dt = time.perf_counter() - t0
            tokens_done += n * cfg.batch_size * block_size
            tokens_time += dt
            if not np.all(np.isfinite(losses)):
                bad = state.step + int(np.argmin(np.isfinite(losses)))
                raise TrainingDiverged(
                    f"The loss became {losses[~np.isfinite(losses)][0]} at step {bad}. The model "
                    f"keeps the weights of step {state.step}. Try a lower learning rate (now "
                    f"{cfg.lr}), gradient clipping (grad_clip, now {cfg.grad_clip}), a longer "
                    "warmup, or check that every token id is below the vocabulary size."
                )
            params, opt_state = new_params, new_opt
            state.opt_state = opt_state
            nnx.update(model, params)
            train_time += dt
            hist.step.extend(range(state.step, state.step + n))
            hist.train_loss.extend(losses.tolist())
            hist.grad_norm.extend(norms.tolist())
            hist.lr.extend(lrs.tolist())
            state.step += n
            if bar is not None:
                bar.update(n)
            out_of_time = max_seconds is not None and train_time >= max_seconds
            if state.step % cfg.eval_every == 0 or state.step == total or out_of_time:
                record_eval()
            if checkpoint_dir is not None and (
                state.step % every == 0 or state.step == total or out_of_time
            ):
                save_checkpoint(checkpoint_dir, state)
    except KeyboardInterrupt:
        print(f"Interrupted: the model keeps the weights of step {state.step}.")
    finally:
        if bar is not None:
            bar.close()
        if tokens_time > 0:
            hist.tokens_per_second = tokens_done / tokens_time
    return state


# --- checkpoints --------------------------------------------------------------------------


def _manager(directory: str | os.PathLike, max_to_keep: int | None = 3):
    import orbax.checkpoint as ocp

    path = Path(directory).expanduser().resolve()  # Orbax wants absolute paths
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
    )
    return ocp.CheckpointManager(path, options=options)


def _config_dict(cfg) -> dict:
    return {k: (str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v)
            for k, v in dataclasses.asdict(cfg).items()}


def save_checkpoint(directory: str | os.PathLike, state: TrainState, *, max_to_keep: int = 3):
    """Save parameters, optimiser state, step, configs and history as ``directory/<step>``.

    Orbax writes into a temporary folder and renames it when complete, so a save that is
    interrupted half-way leaves the earlier checkpoints intact and is never picked up.
    """
    import orbax.checkpoint as ocp

    _, params, _ = nnx.split(state.model, nnx.Param, ...)
    tree = {"params": params, "opt_state": state.opt_state}
    meta = {
        "step": state.step,
        "train_config": _config_dict(state.cfg),
        "model_config": _config_dict(state.model.cfg) if hasattr(state.model, "cfg") else None,
        "history": state.history.as_dict(),
    }
    json.dumps(meta)  # fail before writing anything if the metadata cannot be stored
    with _manager(directory, max_to_keep) as mngr:
        mngr.save(
            state.step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        mngr.wait_until_finished()


def latest_step(directory: str | os.PathLike) -> int | None:
    """The step of the newest complete checkpoint in ``directory``, or None."""
    if not Path(directory).expanduser().exists():
        return None
    with _manager(directory, None) as mngr:
        return mngr.latest_step()


def restore_checkpoint(
    directory: str | os.PathLike, model: nnx.Module, cfg: TrainConfig | None = None,
    *, step: int | None = None,
) -> TrainState:
    """Load a checkpoint into ``model`` (a freshly built model of the same config) and return
    a ``TrainState`` that ``fit`` continues from. ``cfg`` defaults to the saved TrainConfig."""
    import orbax.checkpoint as ocp

    directory = Path(directory).expanduser()
    if not directory.exists():
        raise FileNotFoundError(f"No checkpoint folder at {directory}.")
    with _manager(directory, None) as mngr:
        step = mngr.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(
                f"{directory} holds no complete checkpoint (an interrupted save is ignored)."
            )
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if cfg is None:
            cfg = TrainConfig(**meta["train_config"])
        saved_model_cfg = meta.get("model_config")
        if saved_model_cfg is not None and hasattr(model, "cfg"):
            mine = _config_dict(model.cfg)
            diff = {k: (v, mine.get(k)) for k, v in saved_model_cfg.items() if mine.get(k) != v}
            if diff:
                raise ValueError(
                    "The checkpoint was saved from a model with another configuration "
                    f"(saved vs yours: {diff}). Build the model with the saved config."
                )
        _, params, _ = nnx.split(model, nnx.Param, ...)
        template = {"params": params, "opt_state": make_optimizer(cfg).init(params)}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            restored = mngr.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]
        except Exception as err:  # orbax raises many kinds; name the file and the fix
            raise ValueError(
                f"Could not read the checkpoint at {directory}/{step} ({type(err).__name__}: "
                f"{err}). It may be corrupt or from another model; delete that folder to fall "
                "back to the previous checkpoint."
            ) from err
    nnx.update(model, restored["params"])
    return TrainState(model=model, cfg=cfg, opt_state=restored["opt_state"], step=int(meta["step"]),
                      history=History.from_dict(meta["history"]))


# --- presets ----------------------------------------------------------------------------


def cpu_preset(vocab_size: int, block_size: int = 64):
    """The course's CPU recipe for Tiny Shakespeare characters: nanoGPT's CPU model (4 layers,
    4 heads, width 128, context 64, batch 12) with a higher peak learning rate and a shorter
    cosine, tuned for validation loss on a time budget. Returns (GPTConfig, TrainConfig)."""
    from course_lib.model import GPTConfig

    mcfg = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layers=4, n_heads=4,
                     d_model=128)
    tcfg = TrainConfig(steps=1200, batch_size=12, lr=4e-3, min_lr=4e-4, warmup_steps=100,
                       eval_every=200, eval_batches=50)
    return mcfg, tcfg
