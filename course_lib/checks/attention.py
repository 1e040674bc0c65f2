"""Checks for notebook 03 (attention math): scaled dot-product attention, the causal mask,
masked attention, and splitting a layer's channels into heads and merging them back.

The exercises use one head and plain matrices so the formula stays visible:
q (T, d_k), k (S, d_k), v (S, d_v) -> (T, d_v); masks are boolean (T, S), True = "may attend".
The head exercises use the library's layout, (B, T, C) <-> (B, T, H, D) with C = H * D.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from course_lib.checks._core import _as_array, _call, _close, _diagnose, _fail, _ok, _short

__all__ = [
    "check_attention", "check_causal_mask", "check_masked_attention",
    "check_split_heads", "check_merge_heads",
    "reference_split_heads", "reference_merge_heads",
]

# ------------------------------------------------------------------ helpers (float64 NumPy)


def _softmax(x: np.ndarray, axis=-1) -> np.ndarray:
    """A stable softmax; rows that are all -inf come out NaN, as they would in a naive version."""
    with np.errstate(all="ignore"):
        m = np.max(x, axis=axis, keepdims=True)
        e = np.exp(x - m)
        return e / e.sum(axis=axis, keepdims=True)


def _naive_softmax(x: np.ndarray, axis=-1) -> np.ndarray:
    """exp(x) / sum(exp(x)) without subtracting the max, in float32: overflows like the
    learner's version would."""
    with np.errstate(all="ignore"):
        e = np.exp(x.astype(np.float32))
        return (e / e.sum(axis=axis, keepdims=True)).astype(np.float64)


def _qkv(rng, T: int, S: int, d: int, dv: int, spread: float = 1.0):
    q = rng.normal(size=(T, d)) * spread
    k = rng.normal(size=(S, d)) * spread
    v = rng.normal(size=(S, dv))
    # Round to float32 first so the float64 reference sees exactly what the learner gets.
    return tuple(x.astype(np.float32).astype(np.float64) for x in (q, k, v))


def _jnp(*arrays):
    return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


_SCALE_HINTS = {
    "none": "no scale: the scores were not divided by √d_k. Without the scale, q·k grows with "
            "the width d_k and the softmax saturates; use (q @ k.T) / jnp.sqrt(d_k).",
    "d": "divided by d_k instead of √d_k: the scale is 1 / sqrt(d_k) (it undoes the growth of "
         "the standard deviation of q·k, which is √d_k).",
    "times": "multiplied the scores by √d_k instead of dividing by it.",
    "dv": "divided by √d_v, the width of v; the scale uses d_k, the width of q and k "
          "(q.shape[-1]).",
}


def _attention_candidates(q, k, v, mask=None, *, fill=-1e30):
    """(value, hint) pairs: the typical wrong versions of softmax(q kᵀ/√d_k [masked]) v."""
    d, dv = q.shape[-1], v.shape[-1]
    raw = q @ k.T  # (T, S)
    out = []

    def masked(s, m=mask, value=fill):
        return s if m is None else np.where(m, s, value)

    scales = [("none", 1.0), ("d", 1.0 / d), ("times", math.sqrt(d))]
    if dv != d:
        scales.append(("dv", 1.0 / math.sqrt(dv)))
    for key, scale in scales:
        out.append((_softmax(masked(raw * scale)) @ v, _SCALE_HINTS[key]))
    s = raw / math.sqrt(d)
    axis_hint = ("softmax over the wrong axis (axis=0, the queries): the weights of EACH QUERY "
                 "over the keys must sum to 1, so normalise along the keys, axis=-1.")
    out.append((_softmax(masked(s), axis=0) @ v, axis_hint))
    out.append((_softmax(masked(raw), axis=0) @ v, axis_hint + " Also: " + _SCALE_HINTS["none"]))
    out.append((masked(s, value=0.0) @ v, "forgot the softmax: the scores must be turned into "
                "weights that are positive and sum to 1 over the keys (jax.nn.softmax(scores, "
                "axis=-1)) before they multiply v."))
    flat = _softmax(masked(s).reshape(-1)).reshape(s.shape)
    out.append((flat @ v, "softmax over the whole matrix (all T x S entries at once); each "
                "query's row must be normalised on its own: axis=-1."))
    return out


# ------------------------------------------------------------------ exercise 1: attention


def check_attention(fn: Callable) -> None:
    """Check ``fn(q, k, v) -> softmax(q kᵀ / √d_k) v`` for one head.

    q: (T, d_k), k: (S, d_k), v: (S, d_v) -> (T, d_v). The checked mistakes: no scale (or the
    wrong one), softmax over the wrong axis, no softmax, an unstable softmax, wrong shapes.
    """
    name = "attention"
    rng = np.random.default_rng(30)
    cases = [  # (T, S, d_k, d_v, spread): T != S and d_k != d_v, so each mistake shows
        (4, 6, 16, 3, 1.0),
        (5, 5, 8, 8, 1.5),
        (3, 7, 8, 5, 12.0),  # scores in the hundreds: a softmax without max-subtraction overflows
    ]
    for T, S, d, dv, spread in cases:
        q, k, v = _qkv(rng, T, S, d, dv, spread)
        want = _softmax(q @ k.T / math.sqrt(d)) @ v  # (T, dv)
        where = f"\n  q {q.shape}, k {k.shape}, v {v.shape}; expected output shape {want.shape}"
        got = _as_array(name, _call(name, fn, *_jnp(q, k, v)), what="an array")
        if got.shape != want.shape:
            if got.shape == (dv, T):
                hint = "wrong shape: your output is transposed; it must be (T, d_v), one row per query."
            elif got.shape == (T, S):
                hint = ("wrong shape: you returned the (T, S) attention weights; multiply them by "
                        "v to get the output (T, d_v).")
            else:
                hint = (f"wrong shape {got.shape}: the weights softmax(q kᵀ/√d_k) are (T, S) = "
                        f"{(T, S)} and weights @ v is (T, d_v) = {(T, dv)}.")
            _fail(name, hint + where)
        if _close(got, want, rtol=1e-4, atol=1e-5):
            continue
        if not np.isfinite(got).all():
            if not np.isfinite(_naive_softmax(q @ k.T / math.sqrt(d)) @ v).all():
                _fail(name, "NaN or inf in the output for large scores: exp overflowed. Use "
                      "jax.nn.softmax, or subtract each row's maximum before exp (the result "
                      "is the same, and exp never sees a number above 0)." + where)
            _fail(name, "your output contains NaN or inf." + where)
        hint = _diagnose(got, _attention_candidates(q, k, v), rtol=1e-4, atol=1e-5)
        _fail(name, (hint or "wrong values.") + where
              + f"\n  expected {_short(want)}\n  got      {_short(got)}")
    _ok(name, f"{len(cases)} cases, T != S and d_k != d_v, large scores included")


# ------------------------------------------------------------------ exercise 2: causal mask


def _fmt_mask(m: np.ndarray) -> str:
    return "\n".join("    " + " ".join("1" if x else "." for x in row) for row in m)


def check_causal_mask(fn: Callable) -> None:
    """Check ``fn(T) -> (T, T)`` boolean mask, True where query i may attend to key j (j <= i).

    The checked mistakes: the upper triangle, an off-by-one that lets the next token through,
    a blocked diagonal, an inverted mask (True = blocked), an additive 0/-inf mask, wrong
    dtype or shape.
    """
    name = "causal_mask"
    for T in (5, 1, 8):
        out = _call(name, fn, T)
        if out is None or isinstance(out, (str, bytes, dict, set)):
            _as_array(name, out)  # fails with the None / wrong-type hint
        arr = np.asarray(out)
        want = np.tril(np.ones((T, T), dtype=bool))
        if arr.shape != (T, T):
            if arr.ndim > 2 and arr.size == T * T:
                hint = (f"wrong shape {arr.shape}: return the plain (T, T) = {(T, T)} matrix; "
                        "it broadcasts to (batch, heads, T, T) by itself when it is used.")
            else:
                hint = f"wrong shape {arr.shape}: expected (T, T) = {(T, T)}, queries x keys."
            _fail(name, hint)
        if arr.dtype == bool:
            pattern, dtype_hint = arr, ""
        elif arr.dtype.kind in "iuf" and np.isin(arr, (0, 1)).all():
            pattern = arr.astype(bool)
            dtype_hint = (f"the mask must be boolean, but yours has dtype {arr.dtype}: build it "
                          "with dtype=bool (or add .astype(bool)); True = may attend.")
        elif arr.dtype.kind == "f" and (arr <= 0).all():
            pattern = arr == 0
            dtype_hint = ("you returned an additive mask (0 where allowed, -inf or a large "
                          "negative where blocked). In this course masks are boolean, True = may "
                          "attend; the attention function turns them into -inf itself. "
                          "Return `additive == 0`, or build it with jnp.tril(jnp.ones((T, T), "
                          "dtype=bool)).")
        else:
            _fail(name, f"returned dtype {arr.dtype} with values {_short(arr)}; expected a "
                  "boolean (T, T) matrix, True where query i may attend to key j.")
        if np.array_equal(pattern, want):
            if dtype_hint:
                _fail(name, "the pattern is right, but " + dtype_hint)
            continue
        hint = None
        for k_off, text in (
            (1, "off by one (like jnp.tril(..., k=1)): it lets the future through — each query "
                "also sees the NEXT token, which is exactly the token it must predict. Use k=0."),
            (-1, "the diagonal is False (a strict lower triangle, k=-1): a token must be allowed "
                 "to attend to itself, otherwise the first token has nothing to attend to. Use "
                 "k=0."),
        ):
            if np.array_equal(pattern, np.tril(np.ones((T, T), bool), k=k_off)):
                hint = text
        if np.array_equal(pattern, np.triu(np.ones((T, T), bool))):
            hint = ("upper triangle: this lets the future through — True above the diagonal lets "
                    "query i attend to later keys j > i. Rows are queries, columns are keys; "
                    "query i may attend to key j only when j <= i: use jnp.tril.")
        elif np.array_equal(pattern, np.triu(np.ones((T, T), bool), k=1)):
            hint = ("inverted: your True marks the blocked (future) positions, but in this course "
                    "True means 'may attend'. Use jnp.tril(jnp.ones((T, T), dtype=bool)), or "
                    "negate your mask with ~.")
        elif pattern.all():
            hint = "everything is True: nothing is masked, so every query sees the future."
        elif not pattern.any():
            hint = "everything is False: every key is blocked, so no query can attend to anything."
        if hint and dtype_hint:
            hint += " Also, " + dtype_hint
        _fail(name, (hint or "wrong pattern.") + f"\n  T = {T}; rows = queries, columns = keys, "
              f"1 = may attend. Expected\n{_fmt_mask(want)}\n  got\n{_fmt_mask(pattern)}")
    _ok(name, "T = 5, 1, 8")


# ------------------------------------------------------------------ exercise 3: masked attention


def check_masked_attention(fn: Callable) -> None:
    """Check ``fn(q, k, v, mask) -> (T, d_v)``: softmax over the keys of the scaled scores,
    with the scores of blocked keys (mask False) replaced by a large negative number BEFORE the
    softmax. A row whose keys are all blocked must give finite numbers (any finite value).

    The checked mistakes: the mask applied after softmax, an inverted mask, masked scores set
    to 0, the mask ignored, NaN from -inf in a fully masked row, no scale, softmax over the
    wrong axis, wrong shapes.
    """
    name = "masked_attention"
    rng = np.random.default_rng(31)
    padding = rng.random((4, 7)) < 0.6
    padding[np.arange(4), rng.integers(0, 7, 4)] = True  # every row keeps at least one key
    left_padded = np.tril(np.ones((4, 7), bool), k=3)
    left_padded[:, :2] = False  # two padding keys at the start ...
    left_padded[0] = False  # ... and the first query is padding too: it may attend to nothing
    cases = [  # (T, S, d_k, d_v, mask)
        (5, 5, 16, 3, np.tril(np.ones((5, 5), bool))),  # causal self-attention
        (4, 7, 8, 5, padding),  # random padding: T != S
        (4, 7, 8, 5, left_padded),  # one fully masked row
    ]
    for T, S, d, dv, mask in cases:
        q, k, v = _qkv(rng, T, S, d, dv, 1.0)
        s = q @ k.T / math.sqrt(d)  # (T, S)
        want = _softmax(np.where(mask, s, -1e30)) @ v  # (T, dv)
        live = mask.any(axis=1)  # rows with at least one key to attend to
        where = (f"\n  q {q.shape}, k {k.shape}, v {v.shape}, mask {mask.shape} (True = may "
                 f"attend); expected output shape {want.shape}")
        got = _as_array(name, _call(name, fn, *_jnp(q, k, v), jnp.asarray(mask)), what="an array")
        if got.shape != want.shape:
            if got.shape == (T, S):
                hint = ("wrong shape: you returned the (T, S) attention weights; multiply them by "
                        "v to get the output (T, d_v).")
            elif got.shape == (dv, T):
                hint = "wrong shape: your output is transposed; it must be (T, d_v)."
            else:
                hint = f"wrong shape {got.shape}; expected (T, d_v) = {(T, dv)}."
            _fail(name, hint + where)
        rows_ok = _close(got[live], want[live], rtol=1e-4, atol=1e-5)
        dead_finite = bool(np.isfinite(got[~live]).all())
        if rows_ok and dead_finite:
            continue
        if rows_ok:
            _fail(name, "a query whose keys are ALL masked gave NaN (or inf). With -inf in every "
                  "position the softmax computes exp(-inf) / sum(exp(-inf)) = 0 / 0. Fill the "
                  "masked scores with a finite large negative number instead, e.g. "
                  "jnp.finfo(scores.dtype).min: the row stays finite and every other row is "
                  "unchanged." + where + f"\n  fully masked rows: {np.flatnonzero(~live).tolist()}")
        candidates = _attention_candidates(q, k, v, mask)
        weights = _softmax(s)
        candidates = [
            ((weights * mask) @ v, "applied the mask after softmax: the softmax had already "
             "given weight to the blocked keys, so zeroing them afterwards leaves rows that no "
             "longer sum to 1 — and the blocked keys (for a causal mask: the future) still "
             "change the result through the denominator. Mask the SCORES before the softmax."),
            (_softmax(np.where(mask, -1e30, s)) @ v, "inverted mask: True means 'may attend', so "
             "keep the scores where mask is True and fill where it is False: "
             "jnp.where(mask, scores, big_negative)."),
            (_softmax(np.where(mask, s, 0.0)) @ v, "masked scores were set to 0, but exp(0) = 1, "
             "so the blocked keys still get weight. Fill them with a large negative number "
             "(-inf, or jnp.finfo(dtype).min) before the softmax."),
            (_softmax(s) @ v, "the mask was ignored: the output equals plain attention over all "
             "keys. Replace the blocked scores (mask False) with a large negative number before "
             "the softmax."),
        ] + candidates
        with np.errstate(all="ignore"):
            live_candidates = [(c[live], h) for c, h in candidates]
        hint = _diagnose(got[live], live_candidates, rtol=1e-4, atol=1e-5)
        if hint is None and not np.isfinite(got[live]).all():
            hint = "NaN or inf in rows that have keys to attend to."
        _fail(name, (hint or "wrong values.") + where
              + f"\n  expected {_short(want)}\n  got      {_short(got)}")
    _ok(name, "causal, padding, and a fully masked row")


# ------------------------------------------------------------------ exercise 4: heads


def reference_split_heads(x: jax.Array, n_heads: int) -> jax.Array:
    """(B, T, C) -> (B, T, H, D) with H = n_heads and D = C // H: head h gets the channels
    h*D .. (h+1)*D - 1. A reshape only: the last axis is cut into H contiguous blocks."""
    B, T, C = x.shape
    if C % n_heads:
        raise ValueError(f"C = {C} channels do not split into {n_heads} heads of equal width.")
    return x.reshape(B, T, n_heads, C // n_heads)


def reference_merge_heads(x: jax.Array) -> jax.Array:
    """(B, T, H, D) -> (B, T, H*D): concatenate the heads, the inverse of ``split_heads``."""
    B, T, H, D = x.shape
    return x.reshape(B, T, H * D)


def _numbered(shape) -> np.ndarray:
    """Distinct values, so any element out of place shows."""
    return np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)


_LAYOUT = ("This course keeps the (B, T, H, D) layout of jax.nn.dot_product_attention and "
           "course_lib.attention.")


def check_split_heads(fn: Callable) -> None:
    """Check ``fn(x, n_heads)``: (B, T, C) -> (B, T, H, D), head h = channels h*D..(h+1)*D-1.

    The checked mistakes: reshaping straight to (B, H, T, D), the (B, H, T, D) layout,
    heads that take every H-th channel (mixed heads), time steps mixed into heads, wrong shapes.
    """
    name = "split_heads"
    for B, T, C, H in ((2, 3, 20, 4), (1, 5, 12, 3), (2, 4, 6, 1)):
        D = C // H
        x = _numbered((B, T, C))
        want = x.reshape(B, T, H, D)
        where = f"\n  x {x.shape}, n_heads = {H}: expected shape (B, T, H, D) = {want.shape}"
        got = _as_array(name, _call(name, fn, jnp.asarray(x, jnp.float32), H), what="an array")
        if got.shape == want.shape and np.array_equal(got, want):
            continue
        if got.shape == (B, H, T, D):
            if np.array_equal(got, x.reshape(B, H, T, D)):
                hint = ("wrong head reshape: you reshaped (B, T, C) straight to (B, H, T, D). A "
                        "reshape never moves data, so that cuts the memory in the wrong places "
                        "and mixes time steps into heads. Reshape to (B, T, H, D).")
            elif np.array_equal(got, want.transpose(0, 2, 1, 3)):
                hint = ("the heads are right but the layout is (B, H, T, D) (PyTorch's habit). "
                        "Return (B, T, H, D): drop the transpose.")
            else:
                hint = "shape (B, H, T, D) and the values are scrambled."
            _fail(name, hint + " " + _LAYOUT + where)
        if got.shape == (B, T, D, H) and H != D:
            _fail(name, "wrong head reshape: you reshaped to (B, T, D, H) — the last two axes are "
                  "swapped, and each head would take every H-th channel. Use "
                  "x.reshape(B, T, n_heads, C // n_heads)." + where)
        if got.shape != want.shape:
            _fail(name, f"wrong shape {got.shape}." + where)
        hint = _diagnose(got, [
            (x.reshape(B, T, D, H).swapaxes(2, 3), "mixed heads: each head must take ONE "
             "contiguous block of D = C // n_heads channels (head h = channels h*D .. (h+1)*D-1), "
             "but yours takes every n_heads-th channel (reshape to (B, T, D, H) and a transpose). "
             "Reshape to (B, T, n_heads, D) directly."),
            (x.reshape(B, H, T, D).swapaxes(1, 2), "wrong head reshape: you reshaped to "
             "(B, H, T, D) and then transposed. The reshape already mixed time steps into heads "
             "(it never moves data); reshape to (B, T, H, D) directly, no transpose."),
        ], rtol=0, atol=0)
        _fail(name, (hint or "the shape is right but values are in the wrong places.") + where
              + f"\n  expected {_short(want)}\n  got      {_short(got)}")
    _ok(name, "3 shapes, every channel in its place")


def check_merge_heads(fn: Callable) -> None:
    """Check ``fn(x)``: (B, T, H, D) -> (B, T, H*D), heads concatenated along the channels.

    The checked mistakes: transposing time and heads before the reshape (mixes time steps),
    transposing H and D (interleaves the heads), merging the wrong axes, wrong shapes.
    """
    name = "merge_heads"
    for B, T, H, D in ((2, 3, 4, 5), (1, 5, 3, 4), (2, 4, 1, 6)):
        x = _numbered((B, T, H, D))
        want = x.reshape(B, T, H * D)
        where = f"\n  x {x.shape} = (B, T, H, D): expected shape (B, T, H*D) = {want.shape}"
        got = _as_array(name, _call(name, fn, jnp.asarray(x, jnp.float32)), what="an array")
        if got.shape == want.shape and np.array_equal(got, want):
            continue
        if got.shape == x.shape:
            _fail(name, "wrong shape: the output still has separate heads; merge the last two "
                  "axes into one of width H * D." + where)
        if got.shape == (B, H, T * D):
            _fail(name, "wrong shape (B, H, T*D): you merged time and channels as if the input "
                  "were (B, H, T, D). " + _LAYOUT + where)
        if got.shape != want.shape:
            _fail(name, f"wrong shape {got.shape}." + where)
        hint = _diagnose(got, [
            (x.swapaxes(1, 2).reshape(B, T, H * D), "wrong head reshape: you transposed T and H "
             "before reshaping (as if the input were (B, H, T, D)), which mixes time steps. The "
             "input is already (B, T, H, D): reshape(B, T, H * D) directly."),
            (x.swapaxes(2, 3).reshape(B, T, H * D), "mixed heads: transposing H and D before the "
             "reshape interleaves the heads channel by channel. Concatenate them: "
             "reshape(B, T, H * D)."),
        ], rtol=0, atol=0)
        _fail(name, (hint or "the shape is right but values are in the wrong places.") + where
              + f"\n  expected {_short(want)}\n  got      {_short(got)}")
    _ok(name, "3 shapes, heads concatenated in order")
