"""Checks for notebook 05 (training): the next-token loss, the learning-rate schedule, gradient
clipping by global norm, and one optimiser step."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from course_lib.checks._core import (  # noqa: F401
    _as_array,
    _as_scalar,
    _call,
    _close,
    _diagnose,
    _fail,
    _ok,
    _short,
)

__all__ = [
    "check_next_token_loss", "check_lr_at", "check_clip_by_global_norm", "check_train_step",
    "reference_next_token_loss", "reference_lr_at", "reference_clip_by_global_norm",
    "reference_train_step",
]


# ---------------------------------------------------------------- next-token loss


def reference_next_token_loss(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Mean next-token cross-entropy of a window of text.

    logits: (B, T, V), what the model output after reading tokens[:, :-1].
    tokens: (B, T + 1) int. The logits at position t predict token t + 1, so the targets are
    tokens[:, 1:]. Returns a scalar: the mean over all B * T positions of -log p(target).
    """
    targets = tokens[:, 1:]  # (B, T): shifted by one
    logp = jax.nn.log_softmax(logits, axis=-1)  # (B, T, V)
    picked = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (B, T)
    return -picked.mean()


def _np_log_softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def _pick(a, targets):
    """a: (B, T, V), targets (B, T) -> a[b, t, targets[b, t]] (B, T)."""
    return np.take_along_axis(a, targets[..., None], axis=-1)[..., 0]


def check_next_token_loss(fn: Callable) -> None:
    """Check ``fn(logits, tokens) -> scalar`` against ``reference_next_token_loss``."""
    name = "next_token_loss"
    rng = np.random.default_rng(5)
    B, T, V = 3, 6, 7  # one shape for all cases: JAX compiles each operation once per shape
    cases = [
        (rng.normal(size=(B, T, V)) * 2.0, rng.integers(0, V, (B, T + 1))),
        (rng.normal(size=(B, T, V)), rng.integers(0, V, (B, T + 1))),
        (rng.normal(size=(B, T, V)) * 3.0, rng.integers(0, V, (B, T + 1))),
    ]
    for logits, tokens in cases:
        got = _as_scalar(
            name,
            _call(name, fn, jnp.asarray(logits, jnp.float32), jnp.asarray(tokens, jnp.int32)),
            "Averaged over only some axes? The loss is ONE number: the mean over every "
            "position of every sequence (batch and time).",
        )
        logp = _np_log_softmax(logits)
        y = tokens[:, 1:]
        nll = -_pick(logp, y)  # (B, T)
        want = nll.mean()
        if _close(got, want, rtol=1e-4, atol=1e-5):
            continue
        with np.errstate(all="ignore"):
            p = np.exp(logp)
            y0 = tokens[:, :-1]
            logp_t = _np_log_softmax(logits, axis=1)
            candidates = [
                (-_pick(logp, y0).mean(), "targets not shifted: the logits at position t were "
                 "computed from tokens 0..t and predict token t + 1, so the targets are "
                 "tokens[:, 1:], not tokens[:, :-1]."),
                (-_pick(p, y).mean(), "forgot log_softmax: you averaged softmax probabilities. "
                 "The loss uses log-probabilities, jax.nn.log_softmax(logits, axis=-1)."),
                (-np.log(_pick(p, y)).sum(), "summed instead of taking the mean: the loss is "
                 "per token, the mean over all B * T positions."),
                (nll.sum(), "summed instead of taking the mean: the loss is per token, the "
                 "mean over all B * T positions."),
                (nll.sum(1).mean(), "summed over time and averaged over the batch (mean over "
                 "the wrong axis): take the mean over every position, batch and time."),
                (nll.sum(0).mean(), "summed over the batch and averaged over time (mean over "
                 "the wrong axis): take the mean over every position, batch and time."),
                (want / V, "averaged over the vocabulary axis too (mean of log_softmax * "
                 "one_hot over all axes divides by V): pick each target's log-probability, "
                 "then take the mean over positions only."),
                (-want, "forgot the minus sign: the loss is the NEGATIVE mean log-probability "
                 "(it is >= 0)."),
                (-_pick(logits, y).mean(), "used the raw logits of the targets: normalise "
                 "first with jax.nn.log_softmax(logits, axis=-1)."),
                (-_pick(logp_t, y).mean(), "normalised over the wrong axis (axis=1, time); the "
                 "softmax runs over the vocabulary, axis=-1."),
                (-logp.mean(), "averaged over the whole vocabulary instead of picking each "
                 "target's log-probability (jnp.take_along_axis or one_hot)."),
            ]
        hint = _diagnose(got, candidates, rtol=1e-4, atol=1e-5)
        _fail(
            name,
            (hint or "wrong value.")
            + f"\n  logits: shape {logits.shape}, tokens = {_short(tokens)}"
            + f"\n  expected {want:.6g}, got {got:.6g}",
        )
    _ok(name, f"{len(cases)} cases")


# ---------------------------------------------------------------- learning-rate schedule


def reference_lr_at(step: int, *, peak_lr: float, min_lr: float, warmup_steps: int,
                    total_steps: int) -> float:
    """Linear warmup from 0 (at step 0) to ``peak_lr`` (at ``warmup_steps``), then a half
    cosine from ``peak_lr`` down to ``min_lr`` at ``total_steps``, then ``min_lr``.
    The same numbers as ``train.lr_schedule`` (optax.warmup_cosine_decay_schedule)."""
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # 0 -> 1 over the decay
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def _wrong_schedules(s, peak, lo, w, total):
    """Typical wrong schedules at step s, with the hint that names each mistake."""
    def cos_from(start, length, floor=lo, scale=None):
        prog = np.clip((s - start) / length, 0.0, 1.0)
        c = 0.5 * (1.0 + np.cos(np.pi * prog))
        return floor + (peak - floor if scale is None else scale) * c

    decay = cos_from(w, total - w)
    warm = peak * s / w
    ref = np.where(s < w, warm, decay)
    unclamped = lo + 0.5 * (peak - lo) * (1 + np.cos(np.pi * (s - w) / (total - w)))
    return [
        (np.where(s < w, peak * (s + 1) / w, decay), "warmup off by one: the rate must be 0 at "
         "step 0 and reach peak_lr exactly at step warmup_steps (peak_lr * step / "
         "warmup_steps); yours is one step ahead."),
        (np.where(s < w, peak * s / max(w - 1, 1), decay), "warmup off by one: you reach "
         "peak_lr at step warmup_steps - 1; divide by warmup_steps."),
        (cos_from(0, total), "no warmup: the schedule starts at the peak. Start at 0 and rise "
         "linearly to peak_lr over the first warmup_steps steps."),
        (np.where(s < w, peak, decay), "the warmup starts at the peak (the rate is peak_lr "
         "during warmup); it must rise linearly from 0."),
        (np.where(s < w, warm, cos_from(w, total - w, floor=0.0, scale=peak)), "the cosine "
         "decays to 0 instead of min_lr: use min_lr + 0.5 * (peak_lr - min_lr) * (1 + cos(...))."),
        (np.where(s < w, warm, cos_from(w, total - w, scale=peak)), "the cosine starts at "
         "peak_lr + min_lr: scale it by (peak_lr - min_lr), not peak_lr."),
        (np.where(s < w, warm, cos_from(0, total)), "the cosine is counted from step 0 instead "
         "of from the end of the warmup: progress = (step - warmup_steps) / (total_steps - "
         "warmup_steps)."),
        (np.where(s < w, warm, cos_from(w, total)), "the cosine does not reach min_lr at "
         "total_steps: it must span total_steps - warmup_steps steps, not total_steps."),
        (np.where(s < w, warm, unclamped), "after total_steps the rate must stay at min_lr; "
         "your cosine turns round and rises again (clamp the progress at 1)."),
        (np.where(s < w, warm, peak - (peak - lo) * np.clip((s - w) / (total - w), 0, 1)),
         "that is a linear decay; the schedule decays along a half cosine."),
        (ref * 0 + peak, "the rate is constant: it never warms up nor decays."),
    ]


def check_lr_at(fn: Callable) -> None:
    """Check ``fn(step, *, peak_lr, min_lr, warmup_steps, total_steps) -> float``."""
    name = "lr_at"
    cases = [
        dict(peak_lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=100),
        dict(peak_lr=0.5, min_lr=0.05, warmup_steps=4, total_steps=20),
        dict(peak_lr=4e-3, min_lr=4e-4, warmup_steps=100, total_steps=1200),
    ]
    for kw in cases:
        w, total = kw["warmup_steps"], kw["total_steps"]
        steps = sorted({0, 1, w // 2, w - 1, w, w + 1, (w + total) // 2, total - 1, total,
                        total + 5, total + (total - w) // 2})
        got = np.array([
            _as_scalar(name, _call(name, fn, s, **kw), "Return one learning rate per step.")
            for s in steps
        ])
        want = np.array([reference_lr_at(s, **kw) for s in steps])
        if _close(got, want, rtol=1e-4, atol=1e-9):
            continue
        s = np.array(steps, dtype=np.float64)
        hint = _diagnose(got, _wrong_schedules(s, kw["peak_lr"], kw["min_lr"], w, total),
                         rtol=1e-4, atol=1e-9)
        if hint is None:
            i0, iw, it = steps.index(0), steps.index(w), steps.index(total)
            if abs(got[i0]) > 1e-12:
                hint = "at step 0 the rate must be 0 (the warmup starts from 0)."
            elif not math.isclose(got[iw], kw["peak_lr"], rel_tol=1e-4):
                hint = "the rate must equal peak_lr exactly at step warmup_steps."
            elif not math.isclose(got[it], kw["min_lr"], rel_tol=1e-4):
                hint = "the cosine must reach min_lr exactly at total_steps."
        bad = int(np.argmax(~np.isclose(got, want, rtol=1e-4, atol=1e-9)))
        _fail(
            name,
            (hint or "wrong value.")
            + f"\n  settings: {kw}"
            + f"\n  at step {steps[bad]}: expected {want[bad]:.6g}, got {got[bad]:.6g}",
        )
    _ok(name, f"{len(cases)} schedules, warmup, peak, decay and the end checked")


# ---------------------------------------------------------------- gradient clipping


def reference_clip_by_global_norm(grads, max_norm: float):
    """Scale every gradient by min(1, max_norm / global_norm), where global_norm is the
    norm of all gradients together, sqrt(sum of squares of every entry of every array).
    Same result as ``optax.clip_by_global_norm(max_norm)``. Returns a pytree like ``grads``."""
    norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))
    scale = jnp.minimum(1.0, max_norm / norm)
    return jax.tree.map(lambda g: g * scale, grads)


def _flat_dict(d, keys) -> np.ndarray:
    """The arrays of dict d, in the order of keys, as one flat float64 vector."""
    return np.concatenate([np.ravel(np.asarray(d[k], np.float64)) for k in keys])


def check_clip_by_global_norm(fn: Callable) -> None:
    """Check ``fn(grads, max_norm) -> clipped grads`` (a dict of arrays in, the same out)."""
    name = "clip_by_global_norm"
    rng = np.random.default_rng(7)
    shapes = {"w": (4, 3), "b": (3,), "emb": (5, 4)}

    def grads_with(scales):
        return {k: rng.normal(size=shp) * scales[k] for k, shp in shapes.items()}

    cases = [
        (grads_with({"w": 2.0, "b": 1.0, "emb": 1.5}), 1.0),  # large: must shrink
        (grads_with({"w": 0.05, "b": 0.02, "emb": 0.03}), 1.0),  # small: unchanged
        (grads_with({"w": 3.0, "b": 0.1, "emb": 0.1}), 2.0),  # one big tensor, small others
    ]
    for grads, max_norm in cases:
        out = _call(name, fn, {k: jnp.asarray(v, jnp.float32) for k, v in grads.items()},
                    max_norm)
        if out is None:
            _fail(name, "your function returned None — did you forget the `return` statement?")
        if not isinstance(out, dict) or set(out) != set(grads):
            _fail(name, f"return the gradients in the same structure you got: a dict with keys "
                  f"{sorted(grads)}, e.g. with jax.tree.map(lambda g: g * scale, grads). "
                  f"Got {_short(out)}.")
        got = {k: _as_array(name, out[k], grads[k].shape, f"the gradient {k!r}") for k in grads}
        flat = partial(_flat_dict, keys=sorted(grads))
        norm = np.sqrt(sum((g ** 2).sum() for g in grads.values()))
        want = {k: g * min(1.0, max_norm / norm) for k, g in grads.items()}
        if _close(flat(got), flat(want), rtol=1e-4, atol=1e-6):
            continue
        with np.errstate(all="ignore"):
            per_tensor = {k: g * min(1.0, max_norm / np.sqrt((g ** 2).sum()))
                          for k, g in grads.items()}
            sq = sum((g ** 2).sum() for g in grads.values())
            l1 = sum(np.abs(g).sum() for g in grads.values())
            candidates = [
                (flat(per_tensor), "clipped each tensor separately: compute ONE norm over all "
                 "gradients together, sqrt(sum of squares of every entry of every array), and "
                 "scale them all by the same factor."),
                (flat({k: g * max_norm / norm for k, g in grads.items()}), "scaled the "
                 "gradients up when their norm was already below max_norm: only shrink, with "
                 "scale = min(1, max_norm / norm)."),
                (flat({k: np.clip(g, -max_norm, max_norm) for k, g in grads.items()}),
                 "clipped each entry (jnp.clip): clip the NORM, which keeps the direction of "
                 "the gradient and only shortens it."),
                (flat({k: g * min(1.0, max_norm / sq) for k, g in grads.items()}),
                 "forgot the square root: the global norm is sqrt(sum of squares)."),
                (flat({k: g * min(1.0, max_norm / l1) for k, g in grads.items()}),
                 "used the sum of absolute values (L1); the global norm is the L2 norm, "
                 "sqrt(sum of squares)."),
                (flat(grads), "returned the gradients unchanged although their global norm "
                 f"({norm:.3g}) is above max_norm ({max_norm})."),
                (flat({k: g * norm / max_norm for k, g in grads.items()}),
                 "inverted the scale: multiply by max_norm / norm (when norm > max_norm)."),
            ]
        hint = _diagnose(flat(got), candidates, rtol=1e-4, atol=1e-6)
        got_norm = np.sqrt((flat(got) ** 2).sum())
        _fail(
            name,
            (hint or "wrong values.")
            + f"\n  global norm of the input {norm:.4g}, max_norm {max_norm}: expected a global "
            f"norm of {min(norm, max_norm):.4g} after clipping, got {got_norm:.4g}",
        )
    _ok(name, f"{len(cases)} cases: shrinks large gradients, leaves small ones alone")


# ---------------------------------------------------------------- one train step


def reference_train_step(params, opt_state, x, y, *, loss_of: Callable,
                         tx: optax.GradientTransformation):
    """One optimiser step. loss_of(params, x, y) -> scalar loss; tx: an optax transformation.

    Returns (new_params, new_opt_state, loss), where loss is the loss of the params passed in.
    Jit it with ``jax.jit(partial(reference_train_step, loss_of=..., tx=...))``.
    """
    loss, grads = jax.value_and_grad(loss_of)(params, x, y)  # grads: same tree as params
    updates, opt_state = tx.update(grads, opt_state, params)  # params: for weight decay
    params = optax.apply_updates(params, updates)  # params + updates (updates point downhill)
    return params, opt_state, loss


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


def check_train_step(fn: Callable) -> None:
    """Check ``fn(params, opt_state, x, y, *, loss_of, tx) -> (params, opt_state, loss)`` for
    three chained steps of AdamW on a small softmax regression, eagerly and under jax.jit."""
    name = "train_step"
    params, x, y, loss_of = _toy_problem()
    tx = optax.adamw(0.1, weight_decay=0.1)
    ref_p, ref_s = params, tx.init(params)
    p, s = params, tx.init(params)
    for step in range(3):
        out = _call(name, fn, p, s, x, y, loss_of=loss_of, tx=tx)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            _fail(name, "return three things, in this order: (new_params, new_opt_state, loss). "
                  f"Got {_short(out)}.")
        new_p, new_s, loss = out
        if not isinstance(new_p, dict) or set(new_p) != set(params):
            _fail(name, "the first thing returned must be the new parameters, a dict with keys "
                  f"{sorted(params)} like the params given. Got {_short(new_p)}.")
        grads = jax.grad(loss_of)(p, x, y)
        want_loss = float(loss_of(ref_p, x, y))
        updates, want_s = tx.update(grads, ref_s, ref_p)
        want_p = optax.apply_updates(ref_p, updates)
        got_loss = _as_scalar(name, loss, "The loss is one number.")
        got_p = _flat(new_p)
        where = f"\n  (step {step + 1} of 3 chained steps of optax.adamw on a softmax regression)"
        if not _close(got_p, _flat(want_p), rtol=1e-4, atol=1e-6):
            with np.errstate(all="ignore"):
                candidates = [
                    (_flat(p), "forgot to apply the updates: the parameters did not change. "
                     "new_params = optax.apply_updates(params, updates)."),
                    (_flat(jax.tree.map(lambda a, g: a - g, p, grads)), "subtracted the raw "
                     "gradient: pass the gradients through tx.update(grads, opt_state, params) "
                     "and apply the updates it returns (AdamW rescales them)."),
                    (_flat(jax.tree.map(lambda a, u: a - u, p, updates)), "subtracted the "
                     "updates: optax's updates already point downhill (they include the minus "
                     "sign), so add them with optax.apply_updates(params, updates)."),
                    (_flat(updates), "returned the updates instead of the new parameters "
                     "(optax.apply_updates(params, updates))."),
                    (_flat(grads), "returned the gradients instead of the new parameters."),
                ]
            hint = _diagnose(got_p, candidates, rtol=1e-4, atol=1e-6)
            if hint is None and step > 0:
                hint = ("the first step was right but a later one is not: return the NEW "
                        "optimizer state from tx.update (Adam keeps running averages in it).")
            _fail(name, (hint or "the new parameters are wrong.") + where)
        if not math.isclose(got_loss, want_loss, rel_tol=1e-4, abs_tol=1e-6):
            after = float(loss_of(want_p, x, y))
            hint = "the loss returned is wrong."
            if math.isclose(got_loss, after, rel_tol=1e-4, abs_tol=1e-6):
                hint = ("returned the loss AFTER the update; return the loss of the params you "
                        "were given (the value jax.value_and_grad computed).")
            _fail(name, hint + f"\n  expected {want_loss:.6g}, got {got_loss:.6g}" + where)
        try:
            same_state = _close(_flat(new_s), _flat(want_s), rtol=1e-4, atol=1e-6)
        except (TypeError, ValueError):
            same_state = False
        if not same_state:
            if jax.tree.structure(new_s) == jax.tree.structure(s) and _close(
                    _flat(new_s), _flat(s)):
                _fail(name, "returned the old optimizer state: return the new one from "
                      "tx.update, or Adam's running averages and step count never advance."
                      + where)
            _fail(name, "the second thing returned must be the new optimizer state, from "
                  "`updates, new_opt_state = tx.update(grads, opt_state, params)`." + where)
        p, s = new_p, new_s
        ref_p, ref_s = want_p, want_s
    try:
        jitted = jax.jit(partial(fn, loss_of=loss_of, tx=tx))
        jp, _, jloss = jitted(params, tx.init(params), x, y)
    except Exception as err:  # noqa: BLE001 - any failure under jit becomes a hint
        _fail(name, f"correct when run eagerly, but it fails under jax.jit "
              f"({type(err).__name__}: {str(err)[:200]}). Inside a jitted function values are "
              "tracers: do not call float(), .item() or print them, return the arrays instead.")
    first = optax.apply_updates(params, tx.update(jax.grad(loss_of)(params, x, y),
                                                  tx.init(params), params)[0])
    if not _close(_flat(jp), _flat(first), rtol=1e-4, atol=1e-6):
        _fail(name, "gives different results under jax.jit than when run eagerly: avoid Python "
              "side effects (globals, lists) inside the step.")
    _ok(name, "3 chained AdamW steps, eagerly and under jax.jit")
