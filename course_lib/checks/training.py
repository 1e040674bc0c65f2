"""Exercises of notebook 05 (training): the next-token loss, the learning-rate schedule, gradient
clipping by global norm, and one optimiser step."""

from __future__ import annotations

import math
from functools import partial
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import optax

from course_lib import train
from course_lib.checks._core import (
    Case,
    Exercise,
    Mistake,
    Property,
    _as_array,
    _close,
    _fail,
    _short,
    as_number,
    checker,
)
from course_lib.train import clip_by_global_norm, lr_at, next_token_loss

__all__ = [
    "check_next_token_loss", "check_lr_at", "check_clip_by_global_norm", "check_train_step",
]

# The library's public training step once it exists, else the reference kept beside the checks.
train_step = train.train_step

# ---------------------------------------------------------------- next-token loss


def _loss_cases():
    rng = np.random.default_rng(5)
    B, T, V = 3, 6, 7  # one shape for all cases: JAX compiles each operation once per shape
    return [(jnp.asarray(rng.normal(size=(B, T, V)) * scale, jnp.float32),
             jnp.asarray(rng.integers(0, V, (B, T + 1)), jnp.int32)) for scale in (2.0, 1.0, 3.0)]


def _pick(a, targets):
    """a: (B, T, V), targets (B, T) -> a[b, t, targets[b, t]] (B, T)."""
    return jnp.take_along_axis(a, targets[..., None], axis=-1)[..., 0]


def _nll(logits, tokens, axis=-1):
    """(B, T) -log p(next token), the softmax taken over ``axis``."""
    return -_pick(jax.nn.log_softmax(logits, axis=axis), tokens[:, 1:])


_SUMMED = ("summed instead of taking the mean: the loss is per token, the mean over all B * T "
           "positions.")

NEXT_TOKEN_LOSS = Exercise(
    "next_token_loss",
    doc="Check ``fn(logits, tokens) -> scalar``, the mean next-token cross-entropy.",
    reference=next_token_loss,
    cases=_loss_cases,
    output=as_number, expect="a single number", rtol=1e-4, atol=1e-5,
    shape_hint="Averaged over only some axes? The loss is ONE number: the mean over every "
               "position of every sequence (batch and time).",
    mistakes=[
        Mistake("targets not shifted: the logits at position t were computed from tokens 0..t "
                "and predict token t + 1, so the targets are tokens[:, 1:], not tokens[:, :-1].",
                lambda lg, tk: -_pick(jax.nn.log_softmax(lg), tk[:, :-1]).mean()),
        Mistake("forgot log_softmax: you averaged softmax probabilities. The loss uses "
                "log-probabilities, jax.nn.log_softmax(logits, axis=-1).",
                lambda lg, tk: -_pick(jax.nn.softmax(lg), tk[:, 1:]).mean()),
        Mistake(_SUMMED, lambda lg, tk: _nll(lg, tk).sum()),
        Mistake("summed over time and averaged over the batch (mean over the wrong axis): take "
                "the mean over every position, batch and time.",
                lambda lg, tk: _nll(lg, tk).sum(1).mean()),
        Mistake("summed over the batch and averaged over time (mean over the wrong axis): take "
                "the mean over every position, batch and time.",
                lambda lg, tk: _nll(lg, tk).sum(0).mean()),
        Mistake("averaged over the vocabulary axis too (mean of log_softmax * one_hot over all "
                "axes divides by V): pick each target's log-probability, then take the mean over "
                "positions only.", lambda lg, tk: _nll(lg, tk).mean() / lg.shape[-1]),
        Mistake("forgot the minus sign: the loss is the NEGATIVE mean log-probability (it is "
                ">= 0).", lambda lg, tk: -_nll(lg, tk).mean()),
        Mistake("used the raw logits of the targets: normalise first with "
                "jax.nn.log_softmax(logits, axis=-1).",
                lambda lg, tk: -_pick(lg, tk[:, 1:]).mean()),
        Mistake("normalised over the wrong axis (axis=1, time); the softmax runs over the "
                "vocabulary, axis=-1.", lambda lg, tk: _nll(lg, tk, axis=1).mean()),
        Mistake("averaged over the whole vocabulary instead of picking each target's "
                "log-probability (jnp.take_along_axis or one_hot).",
                lambda lg, tk: -jax.nn.log_softmax(lg).mean()),
    ],
    otherwise="wrong value.",
)

# ---------------------------------------------------------------- learning-rate schedule


def _steps(kw) -> list[int]:
    """The steps a schedule is checked at: the start, around the peak, the decay, past the end."""
    w, total = kw["warmup_steps"], kw["total_steps"]
    return sorted({0, 1, w // 2, w - 1, w, w + 1, (w + total) // 2, total - 1, total, total + 5,
                   total + (total - w) // 2})


def _rates(name: str, out, expect: str) -> np.ndarray:
    """Output reader: one learning rate per step, as a float64 array."""
    rates = []
    for value in out:
        arr = _as_array(name, value, what=expect)
        if arr.size != 1:
            _fail(name, f"your function returned an array of shape {arr.shape}; expected a "
                  "single number. Return one learning rate per step.")
        rates.append(float(arr.reshape(())))
    return np.array(rates)


def _cos(s, start, length, low, high, clamp=True):
    """From ``high`` at step ``start`` down a half cosine to ``low`` at ``start + length``."""
    progress = (s - start) / length
    progress = min(max(progress, 0.0), 1.0) if clamp else progress
    return low + (high - low) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _schedule(warm=None, decay=None):
    """lr_at with its warmup or its decay replaced by ``f(step, peak, low, w, total)``."""
    def lr_at_(step, *, peak_lr, min_lr, warmup_steps, total_steps):
        f = warm if step < warmup_steps else decay
        if f is None:
            return lr_at(step, peak_lr=peak_lr, min_lr=min_lr, warmup_steps=warmup_steps,
                         total_steps=total_steps)
        return f(step, peak_lr, min_lr, warmup_steps, total_steps)
    return lr_at_


def _at(step_of):
    """The index of one step in the checked steps, from the case's settings."""
    return lambda case: _steps(case.kwargs).index(step_of(case.kwargs))


def _show_rates(case, got, want) -> str:
    bad = int(np.argmax(~np.isclose(got, want, rtol=1e-4, atol=1e-9))) if got.shape == want.shape \
        else 0
    return (f"\n  settings: {case.kwargs}\n  at step {_steps(case.kwargs)[bad]}: expected "
            f"{want[bad]:.6g}, got {got[bad]:.6g}")


LR_AT = Exercise(
    "lr_at",
    doc="Check ``fn(step, *, peak_lr, min_lr, warmup_steps, total_steps) -> float``.",
    reference=lr_at,
    cases=lambda: [Case(kwargs=kw) for kw in (
        dict(peak_lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=100),
        dict(peak_lr=0.5, min_lr=0.05, warmup_steps=4, total_steps=20),
        dict(peak_lr=4e-3, min_lr=4e-4, warmup_steps=100, total_steps=1200),
    )],
    call=lambda fn, case: [fn(s, **case.kwargs) for s in _steps(case.kwargs)],
    output=_rates, expect="a single number", rtol=1e-4, atol=1e-9, show=_show_rates,
    mistakes=[
        Mistake("warmup off by one: the rate must be 0 at step 0 and reach peak_lr exactly at "
                "step warmup_steps (peak_lr * step / warmup_steps); yours is one step ahead.",
                _schedule(warm=lambda s, p, lo, w, n: p * (s + 1) / w)),
        Mistake("warmup off by one: you reach peak_lr at step warmup_steps - 1; divide by "
                "warmup_steps.", _schedule(warm=lambda s, p, lo, w, n: p * s / max(w - 1, 1))),
        Mistake("no warmup: the schedule starts at the peak. Start at 0 and rise linearly to "
                "peak_lr over the first warmup_steps steps.",
                _schedule(warm=lambda s, p, lo, w, n: _cos(s, 0, n, lo, p),
                          decay=lambda s, p, lo, w, n: _cos(s, 0, n, lo, p))),
        Mistake("the warmup starts at the peak (the rate is peak_lr during warmup); it must rise "
                "linearly from 0.", _schedule(warm=lambda s, p, lo, w, n: p)),
        Mistake("the cosine decays to 0 instead of min_lr: use min_lr + 0.5 * (peak_lr - min_lr) "
                "* (1 + cos(...)).",
                _schedule(decay=lambda s, p, lo, w, n: _cos(s, w, n - w, 0, p))),
        Mistake("the cosine starts at peak_lr + min_lr: scale it by (peak_lr - min_lr), not "
                "peak_lr.", _schedule(decay=lambda s, p, lo, w, n: _cos(s, w, n - w, lo, lo + p))),
        Mistake("the cosine is counted from step 0 instead of from the end of the warmup: "
                "progress = (step - warmup_steps) / (total_steps - warmup_steps).",
                _schedule(decay=lambda s, p, lo, w, n: _cos(s, 0, n, lo, p))),
        Mistake("the cosine does not reach min_lr at total_steps: it must span total_steps - "
                "warmup_steps steps, not total_steps.",
                _schedule(decay=lambda s, p, lo, w, n: _cos(s, w, n, lo, p))),
        Mistake("after total_steps the rate must stay at min_lr; your cosine turns round and "
                "rises again (clamp the progress at 1).",
                _schedule(decay=lambda s, p, lo, w, n: _cos(s, w, n - w, lo, p, clamp=False))),
        Mistake("that is a linear decay; the schedule decays along a half cosine.",
                _schedule(decay=lambda s, p, lo, w, n: p - (p - lo) * min((s - w) / (n - w), 1))),
        Mistake("the rate is constant: it never warms up nor decays.",
                _schedule(warm=lambda s, p, lo, w, n: p, decay=lambda s, p, lo, w, n: p)),
        Mistake("at step 0 the rate must be 0 (the warmup starts from 0).",
                _schedule(warm=lambda s, p, lo, w, n: p * (s + 0.5) / w),
                when=lambda got, want, case: abs(got[_at(lambda kw: 0)(case)]) > 1e-12),
        Mistake("the rate must equal peak_lr exactly at step warmup_steps.",
                _schedule(decay=lambda s, p, lo, w, n: _cos(s, w, n - w, lo, 0.9 * p)),
                when=lambda got, want, case: not math.isclose(
                    got[_at(lambda kw: kw["warmup_steps"])(case)], case.kwargs["peak_lr"],
                    rel_tol=1e-4)),
        Mistake("the cosine must reach min_lr exactly at total_steps.",
                _schedule(decay=lambda s, p, lo, w, n: _cos(s, w, n - w, 2 * lo, p)),
                when=lambda got, want, case: not math.isclose(
                    got[_at(lambda kw: kw["total_steps"])(case)], case.kwargs["min_lr"],
                    rel_tol=1e-4)),
    ],
    otherwise="wrong value.",
    success="{n} schedules, warmup, peak, decay and the end checked",
)

# ---------------------------------------------------------------- gradient clipping

_GRAD_SHAPES = {"w": (4, 3), "b": (3,), "emb": (5, 4)}


def _clip_cases():
    rng = np.random.default_rng(7)

    def grads_with(scales):
        return {k: jnp.asarray(rng.normal(size=shp) * scales[k], jnp.float32)
                for k, shp in _GRAD_SHAPES.items()}

    return [
        (grads_with({"w": 2.0, "b": 1.0, "emb": 1.5}), 1.0),  # large: must shrink
        (grads_with({"w": 0.05, "b": 0.02, "emb": 0.03}), 1.0),  # small: unchanged
        (grads_with({"w": 3.0, "b": 0.1, "emb": 0.1}), 2.0),  # one big tensor, small others
    ]


def _read_grads(name: str, out, expect: str) -> np.ndarray:
    """Output reader: a dict like the gradients given, as one flat float64 vector."""
    if not isinstance(out, dict) or set(out) != set(_GRAD_SHAPES):
        _fail(name, "return the gradients in the same structure you got: a dict with keys "
              f"{sorted(_GRAD_SHAPES)}, e.g. with jax.tree.map(lambda g: g * scale, grads). "
              f"Got {_short(out)}.")
    return np.concatenate([_as_array(name, out[k], _GRAD_SHAPES[k], f"the gradient {k!r}")
                           .ravel() for k in sorted(out)])


def _norm(grads, power=2):
    """The global norm of a gradient dict (power 1: the sum of absolute values)."""
    total = sum(jnp.sum(jnp.abs(g) ** power) for g in grads.values())
    return total ** (1 / power)


def _scaled(factor):
    """Clipping that multiplies every gradient by ``factor(grads, max_norm)``."""
    return lambda g, m: {k: v * factor(g, m) for k, v in g.items()}


def _show_norms(case, got, want) -> str:
    norm = float(_norm(case.args[0]))
    return (f"\n  global norm of the input {norm:.4g}, max_norm {case.args[1]}: expected a global "
            f"norm of {min(norm, case.args[1]):.4g} after clipping, got "
            f"{np.sqrt((got ** 2).sum()):.4g}")


CLIP_BY_GLOBAL_NORM = Exercise(
    "clip_by_global_norm",
    doc="Check ``fn(grads, max_norm) -> clipped grads`` (a dict of arrays in, the same out).",
    reference=clip_by_global_norm,
    cases=_clip_cases,
    output=_read_grads, show=_show_norms,
    mistakes=[
        Mistake("clipped each tensor separately: compute ONE norm over all gradients together, "
                "sqrt(sum of squares of every entry of every array), and scale them all by the "
                "same factor.",
                lambda g, m: {k: v * jnp.minimum(1.0, m / jnp.linalg.norm(v))
                              for k, v in g.items()}),
        Mistake("scaled the gradients up when their norm was already below max_norm: only "
                "shrink, with scale = min(1, max_norm / norm).",
                _scaled(lambda g, m: m / _norm(g))),
        Mistake("clipped each entry (jnp.clip): clip the NORM, which keeps the direction of the "
                "gradient and only shortens it.",
                lambda g, m: {k: jnp.clip(v, -m, m) for k, v in g.items()}),
        Mistake("forgot the square root: the global norm is sqrt(sum of squares).",
                _scaled(lambda g, m: jnp.minimum(1.0, m / _norm(g) ** 2))),
        Mistake("used the sum of absolute values (L1); the global norm is the L2 norm, sqrt(sum "
                "of squares).", _scaled(lambda g, m: jnp.minimum(1.0, m / _norm(g, power=1)))),
        Mistake("returned the gradients unchanged although their global norm is above max_norm.",
                lambda g, m: g),
        Mistake("inverted the scale: multiply by max_norm / norm (when norm > max_norm).",
                _scaled(lambda g, m: _norm(g) / m)),
    ],
    success="{n} cases: shrinks large gradients, leaves small ones alone",
)

# ---------------------------------------------------------------- one train step


def _toy_problem():
    """A softmax regression: 16 examples of 4 features, 3 classes."""
    rng = np.random.default_rng(11)
    x = jnp.asarray(rng.normal(size=(16, 4)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 16), jnp.int32)
    params = {"w": jnp.asarray(rng.normal(size=(4, 3)) * 0.5, jnp.float32),
              "b": jnp.zeros((3,), jnp.float32)}

    def loss_of(p, x, y):
        logits = x @ p["w"] + p["b"][None, :]  # (16, 3)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return params, x, y, loss_of


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(tree)])


def _step_cases():
    """Three consecutive steps of AdamW, each starting where the reference's previous one ended."""
    params, x, y, loss_of = _toy_problem()
    tx = optax.adamw(0.1, weight_decay=0.1)
    state, cases = tx.init(params), []
    for step in range(3):
        cases.append(Case((params, state, x, y), dict(loss_of=loss_of, tx=tx),
                          f"step {step + 1} of 3 chained steps of optax.adamw on a softmax "
                          "regression"))
        params, state, _ = train_step(params, state, x, y, loss_of=loss_of, tx=tx)
    return cases


def _read_step(name: str, out, expect: str):
    """Output reader: (new_params, new_opt_state, loss) as (flat params, loss, flat state)."""
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        _fail(name, "return three things, in this order: (new_params, new_opt_state, loss). "
              f"Got {_short(out)}.")
    new_p, new_s, loss = out
    if not isinstance(new_p, dict) or set(new_p) != {"w", "b"}:
        _fail(name, "the first thing returned must be the new parameters, a dict with keys "
              f"['b', 'w'] like the params given. Got {_short(new_p)}.")
    loss = _as_array(name, loss, what="the loss")
    if loss.size != 1:
        _fail(name, f"your function returned a loss of shape {loss.shape}; expected a single "
              "number. The loss is one number.")
    try:
        state = _flat(new_s)
    except (TypeError, ValueError):
        state = np.full(1, np.nan)  # not an optimizer state: compares unequal to every state
    return _flat(new_p), loss.reshape(()), state


def _step_with(apply=None, *, state="new", loss="before", fresh_state=False):
    """A train step with switches for the usual mistakes: how the parameters are updated,
    which state and which loss are returned, a fresh optimizer state at every step."""
    def step(params, opt_state, x, y, *, loss_of, tx):
        if fresh_state:
            opt_state = tx.init(params)
        value, grads = jax.value_and_grad(loss_of)(params, x, y)
        updates, new_state = tx.update(grads, opt_state, params)
        new_params = (apply or (lambda p, g, u: optax.apply_updates(p, u)))(params, grads, updates)
        if loss == "after":
            value = loss_of(new_params, x, y)
        return new_params, {"new": new_state, "old": opt_state}[state], value
    return step


def _part_differs(i):
    """A test: component ``i`` (0 params, 1 loss, 2 state) of the output is wrong."""
    return lambda got, want, case: not _close(got[i], want[i], rtol=1e-4, atol=1e-6)


def _jit_facts(probe) -> SimpleNamespace:
    """The learner's step run once under jax.jit, and the first reference step."""
    params, x, y, loss_of = _toy_problem()
    tx = optax.adamw(0.1, weight_decay=0.1)
    first = train_step(params, tx.init(params), x, y, loss_of=loss_of, tx=tx)[0]
    try:
        jitted = jax.jit(partial(probe.fn, loss_of=loss_of, tx=tx))
        return SimpleNamespace(params=jitted(params, tx.init(params), x, y)[0], first=first,
                               error=None)
    except Exception as err:  # noqa: BLE001 - any failure under jit becomes a hint
        return SimpleNamespace(params=None, first=first, error=err)


def _not_jittable(params, opt_state, x, y, *, loss_of, tx):
    new_params, new_state, loss = train_step(params, opt_state, x, y, loss_of=loss_of, tx=tx)
    return new_params, new_state, float(loss)  # float() fails on a tracer


def _eager_only(params, opt_state, x, y, *, loss_of, tx):
    new_params, new_state, loss = train_step(params, opt_state, x, y, loss_of=loss_of, tx=tx)
    traced = isinstance(loss, jax.core.Tracer)  # a Python branch that jit sees differently
    return (params if traced else new_params), new_state, loss


TRAIN_STEP = Exercise(
    "train_step",
    doc="""Check ``fn(params, opt_state, x, y, *, loss_of, tx) -> (params, opt_state, loss)`` on
    three consecutive steps of AdamW on a small softmax regression, eagerly and under jax.jit.""",
    reference=train_step,
    cases=_step_cases,
    output=_read_step, expect="(new_params, new_opt_state, loss)",
    show=lambda case, got, want: f"\n  ({case.note})",
    mistakes=[
        Mistake("forgot to apply the updates: the parameters did not change. new_params = "
                "optax.apply_updates(params, updates).", _step_with(lambda p, g, u: p)),
        Mistake("subtracted the raw gradient: pass the gradients through tx.update(grads, "
                "opt_state, params) and apply the updates it returns (AdamW rescales them).",
                _step_with(lambda p, g, u: jax.tree.map(jnp.subtract, p, g))),
        Mistake("subtracted the updates: optax's updates already point downhill (they include "
                "the minus sign), so add them with optax.apply_updates(params, updates).",
                _step_with(lambda p, g, u: jax.tree.map(jnp.subtract, p, u))),
        Mistake("returned the updates instead of the new parameters (optax.apply_updates(params, "
                "updates)).", _step_with(lambda p, g, u: u)),
        Mistake("returned the gradients instead of the new parameters.",
                _step_with(lambda p, g, u: g)),
        Mistake("returned the loss AFTER the update; return the loss of the params you were "
                "given (the value jax.value_and_grad computed).", _step_with(loss="after")),
        Mistake("returned the old optimizer state: return the new one from tx.update, or Adam's "
                "running averages and step count never advance.", _step_with(state="old")),
        Mistake("the first step was right but a later one is not: return the NEW optimizer state "
                "from tx.update (Adam keeps running averages in it).",
                _step_with(fresh_state=True),
                when=lambda got, want, case: _part_differs(0)(got, want, case)
                and not case.note.startswith("step 1 ")),
        Mistake("the new parameters are wrong.",
                _step_with(lambda p, g, u: jax.tree.map(lambda a, b: a + 2 * b, p, u)),
                when=_part_differs(0)),
        Mistake("the loss returned is wrong.", lambda *a, **kw: (*train_step(*a, **kw)[:2], 0.0),
                when=_part_differs(1)),
        Mistake("the second thing returned must be the new optimizer state, from `updates, "
                "new_opt_state = tx.update(grads, opt_state, params)`.",
                lambda *a, **kw: (lambda p, s, v: (p, jax.tree.map(lambda t: t + 1, s), v))(
                    *train_step(*a, **kw)),
                when=_part_differs(2)),
    ],
    facts=_jit_facts,
    properties=[
        Property("correct when run eagerly, but it fails under jax.jit. Inside a jitted function "
                 "values are tracers: do not call float(), .item() or print them, return the "
                 "arrays instead.",
                 lambda f: f.error is not None
                 and f" ({type(f.error).__name__}: {str(f.error)[:200]})", _not_jittable),
        Property("gives different results under jax.jit than when run eagerly: avoid Python side "
                 "effects (globals, lists) inside the step.",
                 lambda f: not _close(_flat(f.params), _flat(f.first), rtol=1e-4, atol=1e-6),
                 _eager_only),
    ],
    success="3 chained AdamW steps, eagerly and under jax.jit",
)

check_next_token_loss = checker(NEXT_TOKEN_LOSS)
check_lr_at = checker(LR_AT)
check_clip_by_global_norm = checker(CLIP_BY_GLOBAL_NORM)
check_train_step = checker(TRAIN_STEP)
