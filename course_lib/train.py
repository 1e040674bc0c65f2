"""Training: AdamW with warmup + cosine decay and clipping, one optimiser step, a compiled
multi-step loop built from it, evaluation, and checkpoints that resume exactly.

The loop, from the inside out:
- ``train_step``: one optimiser step on one batch, in the functional style (weights and
  optimiser state in, new ones out): the step the learner writes in notebook 05;
- ``Trainer.step``: draws the batch of step ``s`` on the device and takes ``train_step`` with the
  dropout keys of step ``s``;
- ``Trainer.chunk``: ``steps_per_call`` such steps inside one ``lax.scan``, one compiled call.
  Python is entered once per call, not once per step, and no batch crosses from host to device;
- ``fit``: the Python loop over chunks, with evaluation, checkpoints, history, a progress bar
  and a time budget.

Any model trains through ``fit``: it takes a batch sampler ``sample_batch(data, batch_size,
key) -> (x, y)`` and a loss ``loss(model, x, y, rngs) -> scalar``. The defaults are the language
model's (``TokenWindows`` and ``lm_loss``); the translator of notebook 06a passes its own.

How it is reproducible: the batch and the dropout masks of step ``s`` come from
``fold_in(PRNGKey(seed), s)``. A checkpoint therefore only needs the parameters, the optimiser
state and the step number to continue exactly where the uninterrupted run would be.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from course_lib.data import get_batch, is_int
from course_lib.model import check_ids


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
        """Check every field (a bad value fails here, not steps into training). Integers are
        stored as Python ints and rates as Python floats, so a config always saves as JSON."""
        for name, (low, meaning) in _INT_FIELDS.items():
            value = getattr(self, name)
            if name == "decay_steps" and value is None:
                continue
            if not is_int(value) or (low is not None and value < low):
                need = "an integer" + ("" if low is None else f" >= {low}")
                raise ValueError(f"TrainConfig.{name} ({meaning}) must be {need}, got {value!r}.")
            object.__setattr__(self, name, int(value))
        for name, (ok, need) in _FLOAT_FIELDS.items():
            value = getattr(self, name)
            if not _is_real(value) or not ok(float(value)):  # NaN fails every test
                raise ValueError(f"TrainConfig.{name} must be {need}, got {value!r}.")
            object.__setattr__(self, name, float(value))
        if self.min_lr > self.lr:
            raise ValueError(
                f"TrainConfig.min_lr={self.min_lr} is above lr={self.lr}: min_lr is where the "
                "cosine ends, at or below the peak. For a constant rate after warmup use "
                "min_lr = lr."
            )


def _is_real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


# TrainConfig's integer fields: the smallest allowed value (None = any) and what they mean.
_INT_FIELDS = {
    "steps": (0, "total optimiser steps"),
    "batch_size": (1, "sequences per step"),
    "warmup_steps": (0, "steps of linear warmup; 0 = none"),
    "decay_steps": (1, "cosine length; None = steps"),
    "eval_every": (1, "steps between validation estimates"),
    "eval_batches": (1, "batches per validation estimate"),
    "steps_per_call": (1, "optimiser steps per compiled call"),
    "seed": (None, "the random seed"),
}
# Its float fields: the test a value must pass, and the message when it does not.
_FLOAT_FIELDS = {
    "lr": (lambda v: 0 < v < math.inf, "a finite number > 0 (the peak learning rate)"),
    "min_lr": (lambda v: 0 <= v < math.inf, "a finite number >= 0 (the final learning rate)"),
    "weight_decay": (lambda v: 0 <= v < math.inf, "a finite number >= 0 (0 = no decay)"),
    "beta1": (lambda v: 0 <= v < 1, "in [0, 1) (Adam's momentum decay, typically 0.9)"),
    "beta2": (lambda v: 0 <= v < 1, "in [0, 1) (Adam's second-moment decay, e.g. 0.99)"),
    "grad_clip": (lambda v: 0 <= v < math.inf, "a finite number >= 0 (the largest gradient "
                                               "norm; 0 = no clipping)"),
}


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


# --- notebook 05's exercises, written out ------------------------------------------------
#
# The reference solutions the exercise checks compare with. The library itself uses the Optax
# versions (optax.softmax_cross_entropy_with_integer_labels, warmup_cosine_decay_schedule,
# clip_by_global_norm), which give the same numbers.


def next_token_loss(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy of a window of text.

    logits: (B, T, V), what the model output after reading tokens[:, :-1].
    tokens: (B, T + 1) int. The logits at position t predict token t + 1, so the targets are
    tokens[:, 1:]. Returns a scalar: the mean over all B * T positions of -log p(target);
    the same as ``loss_fn(logits, tokens[:, 1:])``.
    """
    targets = tokens[:, 1:]  # (B, T): shifted by one
    logp = jax.nn.log_softmax(logits, axis=-1)  # (B, T, V)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (B, T)
    return -picked.mean()


def lr_at(step: int, *, peak_lr: float, min_lr: float, warmup_steps: int,
          total_steps: int) -> float:
    """Linear warmup from 0 (at step 0) to ``peak_lr`` (at ``warmup_steps``), then a half
    cosine from ``peak_lr`` down to ``min_lr`` at ``total_steps``, then ``min_lr``.
    The same numbers as ``lr_schedule`` (optax.warmup_cosine_decay_schedule)."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # 0 -> 1 over the decay
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def clip_by_global_norm(grads, max_norm: float):
    """Scale every gradient by min(1, max_norm / global_norm), where global_norm is the norm of
    all gradients together, sqrt(sum of squares of every entry of every array). Same result as
    ``optax.clip_by_global_norm(max_norm)``. Returns a pytree like ``grads``."""
    norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))  # () global norm
    scale = jnp.minimum(1.0, max_norm / norm)  # () only ever shrinks
    return jax.tree.map(lambda g: g * scale, grads)


# --- batches and losses -------------------------------------------------------------------
#
# fit trains any model on any data. Two functions describe the task:
#   sample_batch(data, batch_size, key) -> (x, y): one batch, drawn on the device;
#   loss(model, x, y, rngs) -> scalar: its loss (rngs: the dropout keys while training, None
#   in evaluation).
# x and y may be arrays or tuples of arrays. The defaults are the language model's.


@dataclass(frozen=True)
class TokenWindows:
    """The language model's batches: ``batch_size`` random windows of ``block_size + 1``
    tokens of a 1-D token array, as inputs x (B, T) and next-token targets y (B, T)
    (``data.get_batch``). Frozen: two samplers with the same block_size are equal, so models
    of one structure share their compiled code."""

    block_size: int

    def __call__(self, data: jax.Array, batch_size: int, key: jax.Array):
        return get_batch(data, batch_size, self.block_size, key)


def lm_loss(model: nnx.Module, x: jax.Array, y: jax.Array, rngs: nnx.Rngs | None = None):
    """The language model's loss: mean next-token cross-entropy of ``model(x)`` against y."""
    return loss_fn(model(x, rngs=rngs), y)


def _task(model: nnx.Module, sample_batch, loss) -> tuple[Callable, Callable]:
    """The batch sampler and the loss, with the language model's as defaults."""
    if sample_batch is None:
        block_size = getattr(getattr(model, "cfg", None), "block_size", None)
        if block_size is None:
            raise ValueError(
                f"{type(model).__name__} has no cfg.block_size, which the default batches (windows "
                "of a token array) need: pass sample_batch=... and loss=... for this model."
            )
        sample_batch = TokenWindows(block_size)
    elif not callable(sample_batch):
        raise TypeError(f"sample_batch must be a function (data, batch_size, key) -> (x, y), "
                        f"got {sample_batch!r}.")
    if loss is None:
        loss = lm_loss
    elif not callable(loss):
        raise TypeError(f"loss must be a function (model, x, y, rngs) -> scalar, got {loss!r}.")
    return sample_batch, loss


# --- one optimiser step -------------------------------------------------------------------


def train_step(params, opt_state, x, y, *, loss_of: Callable, tx: optax.GradientTransformation,
               grad_norm: bool = False):
    """One optimiser step, in the functional style: the weights and the optimiser state go in,
    new ones come out.

    params: the weights (any pytree); opt_state: ``tx``'s state; x, y: one batch;
    loss_of(params, x, y) -> scalar loss; tx: an Optax optimiser. Returns (new_params,
    new_opt_state, loss), where loss is the loss of the params passed in. With
    ``grad_norm=True`` a fourth value follows: the global norm of the gradient before any
    clipping (``fit`` records it). Pure, so ``jax.jit`` compiles it and ``lax.scan`` repeats
    it (``Trainer.chunk``).
    """
    loss, grads = jax.value_and_grad(loss_of)(params, x, y)  # grads: same tree as params
    updates, opt_state = tx.update(grads, opt_state, params)  # params: for the weight decay
    params = optax.apply_updates(params, updates)  # params + updates (updates point downhill)
    if grad_norm:
        return params, opt_state, loss, optax.tree.norm(grads)
    return params, opt_state, loss


# --- what fit records and returns ----------------------------------------------------


@dataclass
class History:
    """What happened during training, for plots and checks."""

    step: list[int] = field(default_factory=list)  # one entry per optimiser step
    train_loss: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)  # before clipping
    lr: list[float] = field(default_factory=list)
    val_step: list[int] = field(default_factory=list)  # one entry per evaluation
    val_loss: list[float] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)  # time spent in training steps
    # (compilation and evaluation excluded) up to each evaluation
    call_steps: list[int] = field(default_factory=list)  # one entry per compiled call: its steps
    call_seconds: list[float] = field(default_factory=list)  # and its wall time
    compile_seconds: float = 0.0
    tokens_per_second: float = 0.0  # target tokens (the size of y) per second of training

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> History:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass
class TrainState:
    """A model together with everything needed to continue training it: the TrainConfig, the
    optimiser state (None until the first step), the step count and the history."""

    model: nnx.Module
    cfg: TrainConfig
    opt_state: Any = None
    step: int = 0
    history: History = field(default_factory=History)


class TrainingDiverged(FloatingPointError):
    pass


def _as_tokens(data, model: nnx.Module | None = None, what: str = "data") -> jax.Array:
    """1-D integer token ids -> int32 array. Given the model, also checks that every id is in
    its vocabulary and that there is more than one context window of tokens."""
    arr = np.asarray(data)
    if arr.ndim != 1:
        raise ValueError(f"The {what} must be a 1-D sequence of token ids, got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"The {what} must hold integer token ids, got dtype {arr.dtype}.")
    cfg = getattr(model, "cfg", None)
    if getattr(cfg, "vocab_size", None) is not None:
        check_ids(arr, cfg.vocab_size, what)
    block_size = getattr(cfg, "block_size", None)
    if block_size is not None and len(arr) <= block_size:
        raise ValueError(
            f"The {what} has {len(arr)} tokens, fewer than block_size + 1 = "
            f"{block_size + 1}. Use more text or a smaller block_size."
        )
    return jnp.asarray(arr, dtype=jnp.int32)


# --- many steps per compiled call ---------------------------------------------------------


def _mode_graphdefs(model: nnx.Module):
    """The model's structure in train mode (dropout on) and in eval mode (off), read from a
    copy: the model's own mode is left as it is."""
    twin = nnx.clone(model)  # new module objects around the same arrays
    twin.train()
    graphdef_train = nnx.split(twin, nnx.Param, ...)[0]
    twin.eval()
    return graphdef_train, nnx.split(twin, nnx.Param, ...)[0]


class Trainer:
    """The compiled training and evaluation of one model structure with one ``TrainConfig``,
    one batch sampler and one loss (and one device mesh, or none). ``fit`` runs it.

    Its training and evaluation functions are pure: weights, optimiser state and data go in as
    arrays, new arrays come out, and no model object is touched. ``params, rest =
    trainer.split(model)`` gives a model's arrays; ``nnx.update(model, params)`` writes new
    weights back (``fit`` does both).

    - ``step(params, opt_state, rest, data, step)``: ``train_step`` on the batch of step
      ``step``, with the dropout keys of that step, both from ``fold_in(PRNGKey(seed), step)``;
      returns (params, opt_state, (loss, grad_norm, lr));
    - ``chunk(params, opt_state, rest, data, step0, n_steps)``: steps step0 .. step0 + n - 1 in
      one ``lax.scan``; the statistics come back as arrays of n values;
    - ``eval_loss(params, rest, data, key)``: the mean loss over ``cfg.eval_batches`` batches,
      without dropout;
    - ``compile`` / ``run``: ``chunk`` compiled ahead of time (once per n and argument shapes)
      and run; ``evaluate``: ``eval_loss`` compiled and run, as a float.

    ``Trainer.for_model`` keeps recent trainers in a small cache keyed by the model's structure,
    so another model of the same structure (a resumed run, a sweep) reuses the compiled code.
    """

    _cache: dict = {}

    def __init__(self, graphdef_train, graphdef_eval, cfg: TrainConfig, sample_batch: Callable,
                 loss: Callable, mesh=None):
        self.graphdef_train, self.graphdef_eval = graphdef_train, graphdef_eval
        self.cfg, self.sample_batch, self.loss, self.mesh = cfg, sample_batch, loss, mesh
        self.tx = make_optimizer(cfg)
        self.schedule = lr_schedule(cfg)
        self._compiled = {}  # (n_steps, argument shapes) -> compiled chunk
        self._eval = jax.jit(self.eval_loss)

    @classmethod
    def for_model(cls, model: nnx.Module, cfg: TrainConfig, *, sample_batch: Callable | None = None,
                  loss: Callable | None = None, mesh=None) -> Trainer:
        """The trainer of ``model``'s structure (from the cache when there is one)."""
        _check_config(cfg)
        sample_batch, loss = _task(model, sample_batch, loss)
        _check_mesh(cfg, mesh)
        graphdefs = _mode_graphdefs(model)
        key = (*graphdefs, cfg, sample_batch, loss, mesh)
        if key not in cls._cache:
            if len(cls._cache) >= 16:
                cls._cache.pop(next(iter(cls._cache)))  # drop the oldest
            cls._cache[key] = cls(*graphdefs, cfg, sample_batch, loss, mesh)
        return cls._cache[key]

    @staticmethod
    def split(model: nnx.Module):
        """(params, rest): the model's trainable weights and the rest of its state, as arrays."""
        _, params, rest = nnx.split(model, nnx.Param, ...)
        return params, rest

    def prepare(self, data, model: nnx.Module, what: str = "data"):
        """Data as device arrays, checked: with the default batches, 1-D token ids inside the
        model's vocabulary and longer than its context; otherwise any pytree of arrays."""
        if isinstance(self.sample_batch, TokenWindows):
            return _as_tokens(data, model, what)
        leaves = jax.tree.leaves(data)
        if not leaves:
            raise ValueError(f"The {what} holds no arrays: pass the arrays that sample_batch "
                             "draws its batches from.")
        return jax.tree.map(jnp.asarray, data)

    def tokens_per_step(self, data) -> int:
        """Target tokens in one batch (the size of y, padding included)."""
        y = jax.eval_shape(lambda d: self.sample_batch(d, self.cfg.batch_size,
                                                       jax.random.PRNGKey(0))[1], data)
        return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(y))

    def _on_mesh(self, batch):
        """Split every array of the batch over the first mesh axis (data parallelism)."""
        if self.mesh is None:
            return batch
        from jax.sharding import NamedSharding, PartitionSpec

        sharding = NamedSharding(self.mesh, PartitionSpec(self.mesh.axis_names[0]))
        return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), batch)

    def step(self, params, opt_state, rest, data, step):
        """One optimiser step on the batch of step ``step`` (see the class docstring)."""
        k_batch, k_drop = jax.random.split(
            jax.random.fold_in(jax.random.PRNGKey(self.cfg.seed), step))
        x, y = self._on_mesh(self.sample_batch(data, self.cfg.batch_size, k_batch))

        def loss_of(params, x, y):
            model = nnx.merge(self.graphdef_train, params, rest)
            # Fresh dropout streams made inside the traced function (nnx forbids mutating RNG
            # state that was created outside it); each layer draws its own key from them.
            return self.loss(model, x, y, nnx.Rngs(dropout=k_drop))

        params, opt_state, loss, norm = train_step(params, opt_state, x, y, loss_of=loss_of,
                                                   tx=self.tx, grad_norm=True)
        return params, opt_state, (loss, norm, self.schedule(step))

    def chunk(self, params, opt_state, rest, data, step0, n_steps: int):
        """``n_steps`` steps from ``step0`` in one ``lax.scan``: (params, opt_state, stats)."""

        def body(carry, i):
            params, opt_state, stats = self.step(*carry, rest, data, step0 + i)
            return (params, opt_state), stats

        (params, opt_state), stats = jax.lax.scan(body, (params, opt_state), jnp.arange(n_steps))
        return params, opt_state, stats

    def eval_loss(self, params, rest, data, key):
        """Mean loss over ``cfg.eval_batches`` batches drawn with ``key``, in eval mode."""
        model = nnx.merge(self.graphdef_eval, params, rest)

        def one_batch(_, k):
            x, y = self.sample_batch(data, self.cfg.batch_size, k)
            return None, self.loss(model, x, y, None)

        _, losses = jax.lax.scan(one_batch, None, jax.random.split(key, self.cfg.eval_batches))
        return losses.mean()

    @staticmethod
    def _signature(n_steps, args):
        shapes = tuple((x.shape, x.dtype, getattr(x, "sharding", None))
                       for x in jax.tree.leaves(args))
        return n_steps, jax.tree.structure(args), shapes

    def compile(self, n_steps: int, params, opt_state, rest, data, step0) -> float:
        """Compile the n-step chunk for these arguments' shapes, unless it already is; returns
        the seconds spent compiling (0 when it was compiled before)."""
        args = (params, opt_state, rest, data, step0)
        sig = self._signature(n_steps, args)
        if sig in self._compiled:
            return 0.0
        t0 = time.perf_counter()
        jitted = jax.jit(partial(self.chunk, n_steps=n_steps))
        self._compiled[sig] = jitted.lower(*args).compile()
        return time.perf_counter() - t0

    def run(self, n_steps: int, params, opt_state, rest, data, step0):
        """Run the compiled n-step chunk (compiling it first if needed). Returns at once; the
        results are computed on the device (``np.asarray`` on them waits)."""
        args = (params, opt_state, rest, data, step0)
        sig = self._signature(n_steps, args)
        if sig not in self._compiled:
            self.compile(n_steps, *args)
        return self._compiled[sig](*args)

    def evaluate(self, params, rest, data, key=None) -> float:
        """``eval_loss``, compiled, as a float. The default key is fixed (from ``cfg.seed``), so
        repeated evaluations see the same batches."""
        key = jax.random.PRNGKey(self.cfg.seed + 1) if key is None else key
        return float(self._eval(params, rest, data, key))


def _check_mesh(cfg: TrainConfig, mesh) -> None:
    if mesh is None:
        return
    n_dev = mesh.shape[mesh.axis_names[0]]
    if cfg.batch_size % n_dev:
        raise ValueError(
            f"batch_size={cfg.batch_size} must be divisible by the {n_dev} devices on mesh "
            f"axis {mesh.axis_names[0]!r}, so each device gets the same number of examples."
        )


def evaluate(model: nnx.Module, data, cfg: TrainConfig, *, key=None,
             sample_batch: Callable | None = None, loss: Callable | None = None) -> float:
    """Mean loss over ``cfg.eval_batches`` random batches of ``data``, without dropout (the
    model's own train/eval mode is not changed). sample_batch, loss: as in ``fit``.

    The default key is fixed, so repeated evaluations see the same batches."""
    trainer = Trainer.for_model(model, cfg, sample_batch=sample_batch, loss=loss)
    data = trainer.prepare(data, model, "evaluation data")
    return trainer.evaluate(*trainer.split(model), data, key)


def _check_config(cfg) -> None:
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}: build one with "
                        "train.TrainConfig(steps=..., lr=...).")


def _check_fit_options(steps, checkpoint_every, max_seconds, callback) -> None:
    """Clear errors for fit's keyword options (a bad one would otherwise stop training
    silently, or loop on a nonsense step count)."""
    if steps is not None and (not is_int(steps) or steps < 0):
        raise ValueError(f"steps must be None (= cfg.steps) or an integer >= 0, got {steps!r}.")
    if checkpoint_every is not None and (not is_int(checkpoint_every) or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every must be None (= at each evaluation) or an integer "
                         f">= 1, got {checkpoint_every!r}.")
    if max_seconds is not None and (not _is_real(max_seconds) or not max_seconds > 0):
        raise ValueError(f"max_seconds must be None (no limit) or a number > 0, got "
                         f"{max_seconds!r}.")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be a function of the TrainState, got {callback!r}.")


def _train_state(model_or_state, cfg) -> TrainState:
    """The TrainState to continue, or a new one for a fresh model."""
    if isinstance(model_or_state, TrainState):
        if cfg is not None:
            _check_config(cfg)
            model_or_state.cfg = cfg
        _check_config(model_or_state.cfg)
        return model_or_state
    if cfg is None:
        raise ValueError("Pass a TrainConfig as cfg when starting from a fresh model.")
    _check_config(cfg)
    return TrainState(model=model_or_state, cfg=cfg)


def fit(
    model_or_state: nnx.Module | TrainState,
    train_data,
    val_data,
    cfg: TrainConfig | None = None,
    *,
    steps: int | None = None,
    sample_batch: Callable | None = None,
    loss: Callable | None = None,
    mesh=None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    max_seconds: float | None = None,
    progress: bool = True,
    callback: Callable[[TrainState], None] | None = None,
) -> TrainState:
    """Train until ``steps`` (default ``cfg.steps``) optimiser steps have been taken in total.

    model_or_state: a fresh model (``cfg`` required) or a ``TrainState`` to continue.
    train_data, val_data: what ``sample_batch`` draws from; by default 1-D arrays of token ids.
    sample_batch(data, batch_size, key) -> (x, y) and loss(model, x, y, rngs) -> scalar: the
    task (default: next-token prediction, ``TokenWindows(model.cfg.block_size)`` and
    ``lm_loss``); pass the same functions again to reuse the compiled code.
    mesh: a ``jax.sharding.Mesh`` to split every batch over its first axis (data parallelism);
    the weights are replicated (the model's arrays end up on the mesh).
    checkpoint_dir: save there every ``checkpoint_every`` steps (default: at each evaluation)
    and at the end. max_seconds: stop early once this much training time (compilation and
    evaluation excluded) has been spent, e.g. to compare models on one time budget.
    callback(state) runs after each evaluation (e.g. a live plot).
    Returns the ``TrainState``; its model's weights are updated in place after every compiled
    call. The model's train/eval mode is left as it was: training always uses dropout,
    evaluation never does.
    """
    state = _train_state(model_or_state, cfg)
    _check_fit_options(steps, checkpoint_every, max_seconds, callback)
    trainer = Trainer.for_model(state.model, state.cfg, sample_batch=sample_batch, loss=loss,
                                mesh=mesh)
    train_data = trainer.prepare(train_data, state.model, "train data")
    val_data = trainer.prepare(val_data, state.model, "validation data")
    train_data, val_data = _place(trainer, state, train_data, val_data)
    run = _Run(trainer, state, train_data, val_data,
               total=state.cfg.steps if steps is None else int(steps),
               checkpoint_dir=checkpoint_dir,
               checkpoint_every=checkpoint_every or state.cfg.eval_every,
               max_seconds=max_seconds, callback=callback)
    with _progress_bar(progress, state.step, run.total) as run.bar:
        try:
            run.train()
        except KeyboardInterrupt:
            print(f"Interrupted: the model keeps the weights of step {state.step}.")
        finally:
            run.record_speed()
    return state


def _place(trainer: Trainer, state: TrainState, train_data, val_data):
    """Create the optimiser state on a first call; on a mesh, replicate the model's arrays, the
    optimiser state and the data over it."""
    params, rest = trainer.split(state.model)
    if state.opt_state is None:
        state.opt_state = trainer.tx.init(params)
    if trainer.mesh is None:
        return train_data, val_data
    from jax.sharding import NamedSharding, PartitionSpec

    replicated = NamedSharding(trainer.mesh, PartitionSpec())
    params, rest, state.opt_state, train_data, val_data = jax.device_put(
        (params, rest, state.opt_state, train_data, val_data), replicated)
    nnx.update(state.model, params, rest)
    return train_data, val_data


def _progress_bar(show: bool, start: int, total: int):
    """A tqdm bar from ``start`` to ``total`` steps, or nothing (``with ... as bar``: None)."""
    if not show or total <= start:
        return contextlib.nullcontext()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc="training", unit="step")


@dataclass
class _Run:
    """One call of ``fit``: what it trains, on what, until when, and its clock."""

    trainer: Trainer
    state: TrainState
    train_data: Any
    val_data: Any
    total: int  # train until this step
    checkpoint_dir: str | os.PathLike | None
    checkpoint_every: int
    max_seconds: float | None
    callback: Callable[[TrainState], None] | None
    bar: Any = None  # the progress bar, when shown
    seconds: float = 0.0  # spent in compiled training calls during this call of fit
    tokens: int = 0  # target tokens trained on during this call of fit

    def __post_init__(self):
        hist = self.state.history
        self.seconds_before = hist.train_seconds[-1] if hist.train_seconds else 0.0
        self.tokens_per_step = self.trainer.tokens_per_step(self.train_data)

    @property
    def train_time(self) -> float:
        """Seconds spent in compiled training calls so far, earlier runs of this state included."""
        return self.seconds_before + self.seconds

    def out_of_time(self) -> bool:
        return self.max_seconds is not None and self.train_time >= self.max_seconds

    def train(self) -> None:
        """Evaluate at step 0, then train chunk by chunk, evaluating and saving on schedule."""
        state, cfg = self.state, self.state.cfg
        if state.step == 0 and not state.history.val_step:
            self.evaluate()  # the loss before training
        while state.step < self.total and not self.out_of_time():
            self.train_chunk(self.next_chunk_length())
            at_end = state.step == self.total or self.out_of_time()
            if state.step % cfg.eval_every == 0 or at_end:
                self.evaluate()
            if self.checkpoint_dir is not None and (state.step % self.checkpoint_every == 0
                                                    or at_end):
                save_checkpoint(self.checkpoint_dir, state)

    def next_chunk_length(self) -> int:
        """Steps in the next compiled call: ``steps_per_call``, cut at the next evaluation, the
        next checkpoint and the end."""
        s, cfg = self.state.step, self.state.cfg
        return min(cfg.steps_per_call, self.total - s, cfg.eval_every - s % cfg.eval_every,
                   self.checkpoint_every - s % self.checkpoint_every)

    def train_chunk(self, n: int) -> None:
        """n steps in one compiled call; then the new weights go into the model and the
        statistics into the history. A NaN or infinite loss stops training before that."""
        state, hist = self.state, self.state.history
        params, rest = self.trainer.split(state.model)
        args = (params, state.opt_state, rest, self.train_data, jnp.int32(state.step))
        hist.compile_seconds += self.trainer.compile(n, *args)
        t0 = time.perf_counter()
        params, opt_state, stats = self.trainer.run(n, *args)
        losses, norms, lrs = (np.asarray(s) for s in stats)  # waits for the device
        dt = time.perf_counter() - t0
        _check_finite(losses, state)
        nnx.update(state.model, params)
        state.opt_state = opt_state
        hist.step.extend(range(state.step, state.step + n))
        hist.train_loss.extend(losses.tolist())
        hist.grad_norm.extend(norms.tolist())
        hist.lr.extend(lrs.tolist())
        hist.call_steps.append(n)
        hist.call_seconds.append(dt)
        self.tokens += n * self.tokens_per_step
        self.seconds += dt
        state.step += n
        if self.bar is not None:
            self.bar.update(n)

    def evaluate(self) -> None:
        """The validation loss at the current step, into the history; then the progress bar
        and the callback."""
        hist = self.state.history
        loss = self.trainer.evaluate(*self.trainer.split(self.state.model), self.val_data)
        hist.val_step.append(self.state.step)
        hist.val_loss.append(loss)
        hist.train_seconds.append(self.train_time)
        if self.bar is not None:
            self.bar.set_postfix(train=f"{hist.train_loss[-1]:.3f}" if hist.train_loss else "-",
                                 val=f"{loss:.3f}")
        if self.callback is not None:
            self.callback(self.state)

    def record_speed(self) -> None:
        if self.seconds > 0:
            self.state.history.tokens_per_second = self.tokens / self.seconds


def _check_finite(losses: np.ndarray, state: TrainState) -> None:
    if np.all(np.isfinite(losses)):
        return
    bad = state.step + int(np.argmin(np.isfinite(losses)))
    cfg = state.cfg
    raise TrainingDiverged(
        f"The loss became {losses[~np.isfinite(losses)][0]} at step {bad}. The model keeps the "
        f"weights of step {state.step}. Try a lower learning rate (now {cfg.lr}), gradient "
        f"clipping (grad_clip, now {cfg.grad_clip}), a longer warmup, or check that every token "
        "id is below the vocabulary size."
    )


# --- checkpoints --------------------------------------------------------------------------
#
# A checkpoint is the folder ``directory/<step>``: ``state`` holds the parameters and the
# optimiser state in Orbax's array format, ``meta`` a JSON file with the step, both configs, the
# history, and a SHA-256 digest of every saved array and of the metadata itself. Orbax keeps no
# checksum of its own: without these digests a flipped bit in an array file would restore
# different weights without a word.


class CheckpointError(ValueError):
    """A checkpoint folder is damaged: empty, unreadable, incomplete, or its checksums fail."""


class _Damaged(Exception):
    """Internal: why one step folder cannot be used (the public error adds folder and fix)."""


def _manager(directory: str | os.PathLike, max_to_keep: int | None = 3):
    import orbax.checkpoint as ocp

    path = Path(directory).expanduser().resolve()  # Orbax wants absolute paths
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
    )
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(path, options=options, item_handlers=handlers)


def _config_dict(cfg) -> dict:
    return {k: (str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v)
            for k, v in dataclasses.asdict(cfg).items()}


def _leaf_name(path) -> str:
    """'params/blocks/0/attn/qkv/kernel/value': one name per array, the same whether Orbax
    restores into the model's own tree or into plain dicts and lists."""
    parts = []
    for k in path:  # DictKey.key, SequenceKey.idx, GetAttrKey.name, FlattenedIndexKey.key
        parts.append(str(next((getattr(k, a) for a in ("key", "idx", "name") if hasattr(k, a)), k)))
    return "/".join(parts)


def _array_records(tree, *, digest: bool = True) -> dict[str, dict]:
    """Shape, dtype and (with ``digest``) the SHA-256 of the host bytes of every array in
    ``tree``, by name. Without ``digest`` the leaves may be abstract (ShapeDtypeStruct)."""
    records = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        rec = {"shape": list(leaf.shape), "dtype": str(np.dtype(leaf.dtype))}
        if digest:
            host = np.ascontiguousarray(jax.device_get(leaf))
            rec["sha256"] = hashlib.sha256(host.tobytes()).hexdigest()
        records[_leaf_name(path)] = rec
    return records


def _meta_digest(meta: dict) -> str:
    """SHA-256 of the metadata without its own digest (sorted keys: independent of the layout
    of the JSON file; floats print exactly, so a reloaded file gives the same text)."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _innermost(err: BaseException) -> BaseException:
    """The error at the end of a ``raise ... from`` chain: TensorStore's own message names the
    broken file, while the Orbax errors wrapped around it mostly print its configuration."""
    while err.__cause__ is not None:
        err = err.__cause__
    return err


def _first_line(err: BaseException, limit: int = 300) -> str:
    err = _innermost(err)
    text = str(err).strip().splitlines()
    text = text[0] if text else ""
    return f"{type(err).__name__}: {text[:limit]}{'…' if len(text) > limit else ''}"


def save_checkpoint(directory: str | os.PathLike, state: TrainState, *, max_to_keep: int = 3):
    """Save parameters, optimiser state, step, configs and history as ``directory/<step>``,
    with a SHA-256 digest of every array that ``restore_checkpoint`` verifies.

    Orbax writes into a temporary folder and renames it when complete, so a save that is
    interrupted half-way leaves the earlier checkpoints intact and is never picked up. A save at
    a step that already has a folder replaces it (e.g. a damaged one that a restore skipped).
    Only the ``max_to_keep`` newest checkpoints are kept.
    """
    import orbax.checkpoint as ocp

    _, params, _ = nnx.split(state.model, nnx.Param, ...)
    tree = {"params": params, "opt_state": state.opt_state}
    meta = {
        "step": state.step,
        "train_config": _config_dict(state.cfg),
        "model_config": _config_dict(state.model.cfg) if hasattr(state.model, "cfg") else None,
        "history": state.history.as_dict(),
        "arrays": _array_records(tree),
    }
    meta["meta_sha256"] = _meta_digest(meta)
    json.dumps(meta)  # fail before writing anything if the metadata cannot be stored
    with _manager(directory, max_to_keep) as mngr:
        if state.step in mngr.all_steps():
            mngr.delete(state.step)
        mngr.save(
            state.step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)),
            force=True,
        )
        mngr.wait_until_finished()


def _read_meta(mngr, step: int) -> dict:
    """The metadata of one step, checked; raises _Damaged."""
    import orbax.checkpoint as ocp

    folder = Path(mngr.directory) / str(step)
    if not folder.is_dir() or not any(folder.iterdir()):
        raise _Damaged("the folder is empty")
    try:
        meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as err:  # a missing item, invalid JSON, an unreadable file
        raise _Damaged(f"its metadata (meta/) cannot be read ({_first_line(err)})") from err
    missing = [k for k in ("step", "train_config", "history") if not isinstance(meta, dict)
               or k not in meta]
    if missing:
        raise _Damaged(f"its metadata (meta/) lacks {', '.join(missing)}")
    if ("meta_sha256" in meta) != ("arrays" in meta):  # one edit cannot remove both
        raise _Damaged("its metadata (meta/) has lost one of its two digests")
    if "meta_sha256" in meta and meta["meta_sha256"] != _meta_digest(meta):
        raise _Damaged("its metadata (meta/) does not match the SHA-256 digest saved with it")
    if meta["step"] != step:
        raise _Damaged(f"its metadata is for step {meta['step']}, not {step}")
    return meta


def _read_arrays(mngr, step: int, meta: dict, abstract=None):
    """Restore the arrays of one step into ``abstract`` (default: plain dicts and lists on one
    device, shaped as saved) and verify their digests; raises _Damaged."""
    import orbax.checkpoint as ocp

    try:
        if abstract is None:
            device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            saved = mngr.item_metadata(step)["state"]
            if saved is None:
                raise FileNotFoundError("no state/ item")
            abstract = jax.tree.map(
                lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
        arrays = mngr.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as err:  # missing or truncated files, broken compression, ...
        raise _Damaged(f"its arrays (state/) cannot be read ({_first_line(err)})") from err
    expected = meta.get("arrays")
    if expected is None:
        warnings.warn(f"The checkpoint {Path(mngr.directory) / str(step)} was saved without "
                      "SHA-256 digests (by an older course_lib), so it cannot be verified.",
                      stacklevel=3)
    else:
        found = _array_records(arrays)
        names = list(expected) + [n for n in found if n not in expected]
        bad = [n for n in names if expected.get(n) != found.get(n)]
        if bad:
            raise _Damaged(
                f"{len(bad)} of its {len(expected)} arrays do not match the SHA-256 digest saved "
                f"with them ({', '.join(bad[:3])}{', …' if len(bad) > 3 else ''})"
            )
    return arrays


def _check_step(mngr, step: int) -> None:
    """Raise _Damaged unless the checkpoint of ``step`` reads completely and verifies."""
    _read_arrays(mngr, step, _read_meta(mngr, step))


def latest_step(directory: str | os.PathLike) -> int | None:
    """The step of the newest intact checkpoint in ``directory`` (the one to resume from), or
    None. Intact means its metadata reads and every array matches its saved digest; a damaged
    newer folder is skipped with a warning that names it."""
    if not Path(directory).expanduser().exists():
        return None
    with _manager(directory, None) as mngr:
        for step in sorted(mngr.all_steps(), reverse=True):
            try:
                _check_step(mngr, step)
            except _Damaged as why:
                warnings.warn(f"Skipping the damaged checkpoint {Path(mngr.directory) / str(step)}:"
                              f" {why}.", stacklevel=2)
                continue
            return step
    return None


def _newest_intact(mngr, steps) -> int | None:
    for s in steps:
        try:
            _check_step(mngr, s)
        except _Damaged:
            continue
        return s
    return None


def restore_checkpoint(
    directory: str | os.PathLike, model: nnx.Module, cfg: TrainConfig | None = None,
    *, step: int | None = None, fallback: bool = False,
) -> TrainState:
    """Load a checkpoint into ``model`` (a freshly built model of the same config) and return
    a ``TrainState`` that ``fit`` continues from. ``cfg`` defaults to the saved TrainConfig.

    step: which checkpoint (default: the newest). Every restore verifies the SHA-256 digests
    saved with the arrays and the metadata.
    Damaged checkpoints (an empty folder, missing or invalid metadata, missing or truncated array
    files, a digest that does not match): by default the newest one (or ``step``) being damaged
    raises ``CheckpointError`` naming its folder, because resuming silently from an older step
    would hide that training was lost. ``fallback=True`` restores the newest intact checkpoint
    instead and warns which damaged folders it skipped; the next save of such a step replaces
    the damaged folder. (``latest_step`` names the same intact step.)
    """
    import orbax.checkpoint as ocp

    directory = Path(directory).expanduser()
    if not directory.exists():
        raise FileNotFoundError(f"No checkpoint folder at {directory}.")
    if fallback and step is not None:
        raise ValueError(f"fallback=True picks the newest intact step itself: pass step=None, or "
                         f"fallback=False to restore step {step} or fail.")
    with _manager(directory, None) as mngr:
        steps = sorted(mngr.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(
                f"{directory} holds no complete checkpoint (an interrupted save is ignored)."
            )
        if step is not None and step not in steps:
            raise FileNotFoundError(f"{directory} has no checkpoint of step {step}; it has "
                                    f"steps {sorted(steps)}.")
        skipped = []
        for s in [step] if step is not None else steps:
            folder = Path(mngr.directory) / str(s)
            try:
                meta = _read_meta(mngr, s)
                tcfg = cfg if cfg is not None else _saved_train_config(meta, folder)
                _check_model_config(meta, model)
                _, params, _ = nnx.split(model, nnx.Param, ...)
                template = {"params": params, "opt_state": make_optimizer(tcfg).init(params)}
                abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
                _check_structure(meta, abstract, folder)
                restored = _read_arrays(mngr, s, meta, abstract)
            except _Damaged as why:
                if not fallback:
                    older = _newest_intact(mngr, [t for t in steps if t < s])
                    if older is None:
                        hint = f"no older checkpoint in {directory} is intact either"
                    elif step is None:
                        hint = (f"restore_checkpoint(..., fallback=True) restores the newest "
                                f"intact one, step {older}, and warns")
                    else:
                        hint = f"the newest intact one before it is step={older}"
                    cause = why.__cause__ and _innermost(why.__cause__)
                    raise CheckpointError(
                        f"The checkpoint {folder} is corrupt or incomplete: {why}. Delete that "
                        f"folder (or move it away) to resume from an older one; {hint}."
                    ) from cause
                skipped.append(f"{folder} ({why})")
                continue
            break
        else:
            raise CheckpointError(
                f"No checkpoint in {directory} is intact: " + "; ".join(skipped) + ". Train "
                "from scratch, or put back intact copies of these folders."
            )
    if skipped:
        warnings.warn(f"Restored step {s}, skipping the damaged newer checkpoint(s) "
                      f"{'; '.join(skipped)}. The training after step {s} was lost; saving "
                      "those steps again replaces the damaged folders.", stacklevel=2)
    nnx.update(model, restored["params"])
    return TrainState(model=model, cfg=tcfg, opt_state=restored["opt_state"], step=s,
                      history=History.from_dict(meta["history"]))


def _saved_train_config(meta: dict, folder: Path) -> TrainConfig:
    try:
        return TrainConfig(**meta["train_config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"The TrainConfig saved in {folder} cannot be rebuilt ({err}); pass "
                         "cfg=TrainConfig(...) to restore_checkpoint.") from err


def _check_model_config(meta: dict, model: nnx.Module) -> None:
    saved_model_cfg = meta.get("model_config")
    if saved_model_cfg is not None and hasattr(model, "cfg"):
        mine = _config_dict(model.cfg)
        diff = {k: (v, mine.get(k)) for k, v in saved_model_cfg.items() if mine.get(k) != v}
        if diff:
            raise ValueError(
                "The checkpoint was saved from a model with another configuration "
                f"(saved vs yours: {diff}). Build the model with the saved config."
            )


def _check_structure(meta: dict, abstract, folder: Path) -> None:
    """The arrays the model and optimiser expect must be the ones saved (names, shapes,
    dtypes); otherwise the model or the TrainConfig differs, and the folder is not to blame."""
    saved = meta.get("arrays")
    if saved is None:
        return
    saved = {n: (r["shape"], r["dtype"]) for n, r in saved.items()}
    mine = {n: (r["shape"], r["dtype"]) for n, r in _array_records(abstract, digest=False).items()}
    if saved != mine:
        diff = sorted(n for n in set(saved) | set(mine) if saved.get(n) != mine.get(n))
        raise ValueError(
            f"The arrays saved in {folder} do not fit this model and optimiser (they differ at "
            f"{', '.join(diff[:3])}{', …' if len(diff) > 3 else ''}). Build the model with the "
            "saved config and leave cfg=None to use the saved TrainConfig."
        )


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
