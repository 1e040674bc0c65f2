"""Exercises of notebook 03 (attention math): scaled dot-product attention, the causal mask,
masked attention, splitting a layer's channels into heads and merging them back, and rotary
position embeddings (RoPE) with their use inside attention.

The exercises use one head and plain matrices so the formula stays visible:
q (T, d_k), k (S, d_k), v (S, d_v) -> (T, d_v); masks are boolean (T, S), True = "may attend".
The head and RoPE exercises use the library's layouts, (B, T, C) <-> (B, T, H, D) with
C = H * D.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from course_lib import attention
from course_lib.checks._core import (
    Case,
    Exercise,
    Mistake,
    Property,
    _as_array,
    _close,
    _fail,
    _short,
    checker,
)

__all__ = [
    "check_attention", "check_causal_mask", "check_masked_attention",
    "check_split_heads", "check_merge_heads", "check_apply_rope", "check_rope_attention",
]

# ---------------------------------------------------------------- one head, and its mistakes


def _one_head(q, k, v, mask=None):
    """The library's (B, T, H, D) attention on one head: q (T, d_k), k (S, d_k), v (S, d_v)."""
    out = attention.scaled_dot_product_attention(q[None, :, None], k[None, :, None],
                                                 v[None, :, None], mask=mask)
    return out[0, :, 0]  # (T, d_v)


def _attn(q, k, v, mask=None, *, scale="sqrt", axis=-1, softmax="stable", fill=-1e30):
    """softmax(q kᵀ / √d_k) v with switches for the usual mistakes: the scale, the softmax
    (its axis; "naive": exp without subtracting the max; "flat": over the whole matrix;
    "none"), and the value the blocked scores are filled with."""
    d, dv = q.shape[-1], v.shape[-1]
    factor = {"sqrt": 1 / math.sqrt(d), "none": 1.0, "d": 1 / d, "times": math.sqrt(d),
              "dv": 1 / math.sqrt(dv)}[scale]
    s = q @ k.T * factor  # (T, S)
    if mask is not None:
        s = jnp.where(mask, s, fill)
    if softmax == "none":
        return s @ v
    if softmax == "naive":
        e = jnp.exp(s)  # overflows for scores above ~88 in float32
        return e / e.sum(axis=axis, keepdims=True) @ v
    if softmax == "flat":
        return jax.nn.softmax(s.reshape(-1)).reshape(s.shape) @ v
    return jax.nn.softmax(s, axis=axis) @ v  # (T, d_v)


_NO_SCALE = ("no scale: the scores were not divided by √d_k. Without the scale, q·k grows with "
             "the width d_k and the softmax saturates; use (q @ k.T) / jnp.sqrt(d_k).")
_AXIS = ("softmax over the wrong axis (axis=0, the queries): the weights of EACH QUERY over the "
         "keys must sum to 1, so normalise along the keys, axis=-1.")
_WEIGHTS = ("wrong shape: you returned the (T, S) attention weights; multiply them by v to get "
            "the output (T, d_v).")


def _formula_mistakes(masked: bool) -> list[Mistake]:
    """The mistakes in the formula itself, shared by plain and masked attention."""
    def wrong(**kw):
        if masked:
            return lambda q, k, v, m: _attn(q, k, v, m, **kw)
        return lambda q, k, v: _attn(q, k, v, **kw)

    return [
        Mistake(_NO_SCALE, wrong(scale="none")),
        Mistake("divided by d_k instead of √d_k: the scale is 1 / sqrt(d_k) (it undoes the growth "
                "of the standard deviation of q·k, which is √d_k).", wrong(scale="d")),
        Mistake("multiplied the scores by √d_k instead of dividing by it.", wrong(scale="times")),
        Mistake("divided by √d_v, the width of v; the scale uses d_k, the width of q and k "
                "(q.shape[-1]).", wrong(scale="dv")),
        Mistake(_AXIS, wrong(axis=0)),
        Mistake(_AXIS + " Also: " + _NO_SCALE, wrong(axis=0, scale="none")),
        Mistake("forgot the softmax: the scores must be turned into weights that are positive "
                "and sum to 1 over the keys (jax.nn.softmax(scores, axis=-1)) before they "
                "multiply v.", wrong(softmax="none", fill=0.0)),
        Mistake("softmax over the whole matrix (all T x S entries at once); each query's row "
                "must be normalised on its own: axis=-1.", wrong(softmax="flat")),
    ]


def _qkv_cases(shapes, seed):
    """(q, k, v) for each (T, S, d_k, d_v, spread), float32."""
    rng = np.random.default_rng(seed)
    out = []
    for T, S, d, dv, spread, *mask in shapes:
        q, k = rng.normal(size=(T, d)) * spread, rng.normal(size=(S, d)) * spread
        v = rng.normal(size=(S, dv))
        out.append(tuple(jnp.asarray(a, jnp.float32) for a in (q, k, v))
                   + tuple(jnp.asarray(m) for m in mask))
    return out


ATTENTION = Exercise(
    "attention",
    doc="""Check ``fn(q, k, v) -> softmax(q kᵀ / √d_k) v`` for one head:
    q: (T, d_k), k: (S, d_k), v: (S, d_v) -> (T, d_v).""",
    reference=_one_head,
    cases=lambda: _qkv_cases([  # T != S and d_k != d_v, so each mistake shows
        (4, 6, 16, 3, 1.0),
        (5, 5, 8, 8, 1.5),
        (3, 7, 8, 5, 12.0),  # scores in the hundreds: a softmax without max-subtraction overflows
    ], seed=30),
    rtol=1e-4, atol=1e-5,
    shape_hint="The weights softmax(q kᵀ/√d_k) are (T, S) and weights @ v is (T, d_v).",
    mistakes=[
        Mistake("wrong shape: your output is transposed; it must be (T, d_v), one row per query.",
                lambda q, k, v: _attn(q, k, v).T, when="shape"),
        Mistake(_WEIGHTS, lambda q, k, v: jax.nn.softmax(q @ k.T / math.sqrt(q.shape[-1])),
                when="shape"),
        Mistake("NaN or inf in the output for large scores: exp overflowed. Use jax.nn.softmax, or "
                "subtract each row's maximum before exp (the result is the same, and exp never "
                "sees a number above 0).", lambda q, k, v: _attn(q, k, v, softmax="naive"),
                when=lambda got, want, case: not np.isfinite(got).all()
                and not np.isfinite(_attn(*case.args, softmax="naive")).all()),
        *_formula_mistakes(masked=False),
    ],
    success="{n} cases, T != S and d_k != d_v, large scores included",
)

# ---------------------------------------------------------------- the causal mask


def _pattern(mask: np.ndarray) -> np.ndarray:
    """The allowed positions of a boolean, 0/1 or additive (0 / -inf) mask."""
    if mask.dtype == bool:
        return mask
    return mask.astype(bool) if np.isin(mask, (0, 1)).all() else mask == 0


def _mask_kind(mask: np.ndarray) -> str:
    if mask.dtype == bool:
        return "bool"
    return "0/1" if np.isin(mask, (0, 1)).all() else "additive"


def _read_mask(name: str, out, expect: str) -> np.ndarray:
    """Output reader: a boolean, 0/1 or additive mask, kept as it is (its dtype is checked)."""
    if out is None or isinstance(out, (str, bytes, dict, set)):
        _as_array(name, out)  # fails with the None / wrong-type hint
    arr = np.asarray(out)
    if arr.dtype == bool or (arr.dtype.kind in "iuf" and np.isin(arr, (0, 1)).all()) or (
            arr.dtype.kind == "f" and (arr <= 0).all()):
        return arr
    _fail(name, f"returned dtype {arr.dtype} with values {_short(arr)}; expected a boolean "
          "(T, T) matrix, True where query i may attend to key j.")


_BOOLEAN = ("the mask must be boolean: build it with dtype=bool (or add .astype(bool)); "
            "True = may attend.")
_ADDITIVE = ("you returned an additive mask (0 where allowed, -inf or a large negative where "
             "blocked). In this course masks are boolean, True = may attend; the attention "
             "function turns them into -inf itself. Return `additive == 0`, or build it with "
             "jnp.tril(jnp.ones((T, T), dtype=bool)).")


def _also_dtype(got, want, case) -> str:
    kind = _mask_kind(got)
    return "" if kind == "bool" else " Also, " + (_BOOLEAN if kind == "0/1" else _ADDITIVE)


def _tri(T, k=0, upper=False, dtype=bool):
    ones = jnp.ones((T, T), dtype=dtype)
    return jnp.triu(ones, k=k) if upper else jnp.tril(ones, k=k)


def _fmt_mask(m: np.ndarray) -> str:
    if m.ndim != 2:
        return f"    (an array of shape {m.shape})"
    return "\n".join("    " + " ".join("1" if x else "." for x in row) for row in m)


def _right_pattern(kind):
    return lambda got, want, case: _mask_kind(got) == kind and np.array_equal(_pattern(got), want)


CAUSAL_MASK = Exercise(
    "causal_mask",
    doc="Check ``fn(T) -> (T, T)`` boolean mask, True where query i may attend to key j <= i.",
    reference=attention.causal_mask,
    cases=lambda: [(5,), (1,), (8,)],
    output=_read_mask, expect="a boolean (T, T) mask, queries x keys",
    match=lambda got, other, case: got.shape == other.shape and np.array_equal(
        _pattern(got), _pattern(other)),
    show=lambda case, got, want: (f"\n  T = {case.args[0]}; rows = queries, columns = keys, "
                                  f"1 = may attend. Expected\n{_fmt_mask(want)}\n  got\n"
                                  f"{_fmt_mask(_pattern(got))}"),
    mistakes=[
        Mistake("the pattern is right, but " + _BOOLEAN, lambda T: _tri(T, dtype=jnp.float32),
                when=_right_pattern("0/1"), always=True,
                detail=lambda got, want, case: f" Yours has dtype {got.dtype}."),
        Mistake("the pattern is right, but " + _ADDITIVE,
                lambda T: jnp.where(_tri(T), 0.0, -jnp.inf), when=_right_pattern("additive"),
                always=True),
        Mistake("wrong shape: return the plain (T, T) matrix; it broadcasts to (batch, heads, T, "
                "T) by itself when it is used.", lambda T: _tri(T)[None, None], when="shape"),
        Mistake("off by one (like jnp.tril(..., k=1)): it lets the future through — each query "
                "also sees the NEXT token, which is exactly the token it must predict. Use k=0.",
                lambda T: _tri(T, k=1), detail=_also_dtype),
        Mistake("the diagonal is False (a strict lower triangle, k=-1): a token must be allowed "
                "to attend to itself, otherwise the first token has nothing to attend to. Use "
                "k=0.", lambda T: _tri(T, k=-1), detail=_also_dtype),
        Mistake("upper triangle: this lets the future through — True above the diagonal lets "
                "query i attend to later keys j > i. Rows are queries, columns are keys; query i "
                "may attend to key j only when j <= i: use jnp.tril.",
                lambda T: _tri(T, upper=True), detail=_also_dtype),
        Mistake("inverted: your True marks the blocked (future) positions, but in this course "
                "True means 'may attend'. Use jnp.tril(jnp.ones((T, T), dtype=bool)), or negate "
                "your mask with ~.", lambda T: _tri(T, k=1, upper=True), detail=_also_dtype),
        Mistake("everything is True: nothing is masked, so every query sees the future.",
                lambda T: jnp.ones((T, T), dtype=bool), detail=_also_dtype),
        Mistake("everything is False: every key is blocked, so no query can attend to anything.",
                lambda T: jnp.zeros((T, T), dtype=bool), detail=_also_dtype),
    ],
    otherwise="wrong pattern.",
    success="T = 5, 1, 8",
)

# ---------------------------------------------------------------- masked attention


def _live(case) -> np.ndarray:
    """(T,) the queries that have at least one key to attend to."""
    return np.asarray(case.args[3]).any(axis=1)


def _masked_cases():
    rng = np.random.default_rng(31)
    padding = rng.random((4, 7)) < 0.6
    padding[np.arange(4), rng.integers(0, 7, 4)] = True  # every row keeps at least one key
    left_padded = np.tril(np.ones((4, 7), bool), k=3)
    left_padded[:, :2] = False  # two padding keys at the start ...
    left_padded[0] = False  # ... and the first query is padding too: it may attend to nothing
    masks = [np.tril(np.ones((5, 5), bool)), padding, left_padded]  # causal, padding, empty row
    return _qkv_cases([(5, 5, 16, 3, 1.0, masks[0]), (4, 7, 8, 5, 1.0, masks[1]),
                       (4, 7, 8, 5, 1.0, masks[2])], seed=31)


def _same_live_rows(got, other, case) -> bool:
    """Rows with a key to attend to must match; a fully masked row may hold any finite value."""
    live = _live(case)
    return got.shape == other.shape and _close(got[live], other[live], rtol=1e-4, atol=1e-5)


MASKED_ATTENTION = Exercise(
    "masked_attention",
    doc="""Check ``fn(q, k, v, mask) -> (T, d_v)``: softmax over the keys of the scaled scores,
    with the scores of blocked keys (mask False) replaced by a large negative number BEFORE the
    softmax. A row whose keys are all blocked must give finite numbers (any finite value).""",
    reference=_one_head,
    cases=_masked_cases,
    match=_same_live_rows,
    mistakes=[
        Mistake("a query whose keys are ALL masked gave NaN (or inf). With -inf in every position "
                "the softmax computes exp(-inf) / sum(exp(-inf)) = 0 / 0. Fill the masked scores "
                "with a finite large negative number instead, e.g. jnp.finfo(scores.dtype).min: "
                "the row stays finite and every other row is unchanged.",
                lambda q, k, v, m: _attn(q, k, v, m, fill=-jnp.inf), always=True,
                when=lambda got, want, case: _same_live_rows(got, want, case)
                and not np.isfinite(got[~_live(case)]).all(),
                detail=lambda got, want, case:
                f"\n  fully masked rows: {np.flatnonzero(~_live(case)).tolist()}"),
        Mistake(_WEIGHTS, lambda q, k, v, m: jax.nn.softmax(q @ k.T), when="shape"),
        Mistake("wrong shape: your output is transposed; it must be (T, d_v).",
                lambda q, k, v, m: _attn(q, k, v, m).T, when="shape"),
        Mistake("applied the mask after softmax: the softmax had already given weight to the "
                "blocked keys, so zeroing them afterwards leaves rows that no longer sum to 1 — "
                "and the blocked keys (for a causal mask: the future) still change the result "
                "through the denominator. Mask the SCORES before the softmax.",
                lambda q, k, v, m: (jax.nn.softmax(q @ k.T / math.sqrt(q.shape[-1])) * m) @ v),
        Mistake("inverted mask: True means 'may attend', so keep the scores where mask is True "
                "and fill where it is False: jnp.where(mask, scores, big_negative).",
                lambda q, k, v, m: _attn(q, k, v, ~m)),
        Mistake("masked scores were set to 0, but exp(0) = 1, so the blocked keys still get "
                "weight. Fill them with a large negative number (-inf, or jnp.finfo(dtype).min) "
                "before the softmax.", lambda q, k, v, m: _attn(q, k, v, m, fill=0.0)),
        Mistake("the mask was ignored: the output equals plain attention over all keys. Replace "
                "the blocked scores (mask False) with a large negative number before the "
                "softmax.", lambda q, k, v, m: _attn(q, k, v)),
        *_formula_mistakes(masked=True),
        Mistake("NaN or inf in rows that have keys to attend to.",
                lambda q, k, v, m: _attn(q, k, v, ~m, fill=-jnp.inf),
                when=lambda got, want, case: not np.isfinite(got[_live(case)]).all()),
    ],
    success="causal, padding, and a fully masked row",
)

# ---------------------------------------------------------------- heads

_LAYOUT = (" This course keeps the (B, T, H, D) layout of jax.nn.dot_product_attention and "
           "course_lib.attention.")


def _numbered(shape) -> jax.Array:
    """Distinct values, so any element out of place shows."""
    return jnp.arange(math.prod(shape), dtype=jnp.float32).reshape(shape)


def _bhtd(x, n_heads):
    """The (B, T, C) input reshaped straight to (B, H, T, D): time steps mixed into heads."""
    B, T, C = x.shape
    return x.reshape(B, n_heads, T, C // n_heads)


def _btdh(x, n_heads):
    """The last axis cut as (D, H) instead of (H, D)."""
    B, T, C = x.shape
    return x.reshape(B, T, C // n_heads, n_heads)


SPLIT_HEADS = Exercise(
    "split_heads",
    doc="Check ``fn(x, n_heads)``: (B, T, C) -> (B, T, H, D), head h = channels h*D..(h+1)*D-1.",
    reference=attention.split_heads,
    cases=lambda: [(_numbered((B, T, C)), H) for B, T, C, H in
                   ((2, 3, 20, 4), (1, 5, 12, 3), (2, 4, 6, 1))],
    rtol=0, atol=0,
    mistakes=[
        Mistake("wrong head reshape: you reshaped (B, T, C) straight to (B, H, T, D). A reshape "
                "never moves data, so that cuts the memory in the wrong places and mixes time "
                "steps into heads. Reshape to (B, T, H, D)." + _LAYOUT, _bhtd),
        Mistake("the heads are right but the layout is (B, H, T, D) (PyTorch's habit). Return "
                "(B, T, H, D): drop the transpose." + _LAYOUT,
                lambda x, h: attention.split_heads(x, h).transpose(0, 2, 1, 3)),
        Mistake("shape (B, H, T, D) and the values are scrambled." + _LAYOUT,
                lambda x, h: _bhtd(x, h)[:, ::-1], when="shape"),
        Mistake("wrong head reshape: you reshaped to (B, T, D, H) — the last two axes are "
                "swapped, and each head would take every H-th channel. Use "
                "x.reshape(B, T, n_heads, C // n_heads).", _btdh, when="shape"),
        Mistake("mixed heads: each head must take ONE contiguous block of D = C // n_heads "
                "channels (head h = channels h*D .. (h+1)*D-1), but yours takes every "
                "n_heads-th channel (reshape to (B, T, D, H) and a transpose). Reshape to "
                "(B, T, n_heads, D) directly.", lambda x, h: _btdh(x, h).swapaxes(2, 3)),
        Mistake("wrong head reshape: you reshaped to (B, H, T, D) and then transposed. The "
                "reshape already mixed time steps into heads (it never moves data); reshape to "
                "(B, T, H, D) directly, no transpose.", lambda x, h: _bhtd(x, h).swapaxes(1, 2)),
    ],
    otherwise="the shape is right but values are in the wrong places.",
    success="3 shapes, every channel in its place",
)

MERGE_HEADS = Exercise(
    "merge_heads",
    doc="Check ``fn(x)``: (B, T, H, D) -> (B, T, H*D), heads concatenated along the channels.",
    reference=attention.merge_heads,
    cases=lambda: [(_numbered(shape),) for shape in ((2, 3, 4, 5), (1, 5, 3, 4), (2, 4, 1, 6))],
    rtol=0, atol=0,
    mistakes=[
        Mistake("wrong shape: the output still has separate heads; merge the last two axes into "
                "one of width H * D.", lambda x: x, when="shape"),
        Mistake("wrong shape (B, H, T*D): you merged time and channels as if the input were "
                "(B, H, T, D)." + _LAYOUT,
                lambda x: x.swapaxes(1, 2).reshape(x.shape[0], x.shape[2], -1), when="shape"),
        Mistake("wrong head reshape: you transposed T and H before reshaping (as if the input "
                "were (B, H, T, D)), which mixes time steps. The input is already (B, T, H, D): "
                "reshape(B, T, H * D) directly.",
                lambda x: x.swapaxes(1, 2).reshape(*x.shape[:2], -1)),
        Mistake("mixed heads: transposing H and D before the reshape interleaves the heads "
                "channel by channel. Concatenate them: reshape(B, T, H * D).",
                lambda x: x.swapaxes(2, 3).reshape(*x.shape[:2], -1)),
    ],
    otherwise="the shape is right but values are in the wrong places.",
    success="3 shapes, heads concatenated in order",
)

# ---------------------------------------------------------------- rotary position embeddings


def _speeds(D, theta):
    """RoPE's D/2 speeds theta ** (-2i / D), float32, exactly as the library computes them."""
    return jnp.asarray(attention.rope_frequencies(D, theta), jnp.float32)


def _rope_with(x, positions, theta=10_000.0, *, speeds=_speeds, angle=None, pairs="half",
               minus=True, head_axis=True):
    """RoPE with switches for the usual mistakes: ``speeds(D, theta)`` the D/2 speeds;
    ``angle(pos, speeds)`` the angles (default pos * speeds); ``pairs``: "half" (i, i + D/2) or
    "interleaved" (2i, 2i + 1); ``minus=False``: rotate-half without its minus sign (not a
    rotation); ``head_axis=False``: the angles broadcast against the heads axis."""
    x = jnp.asarray(x, jnp.float32)
    T, D = x.shape[1], x.shape[-1]
    pos = jnp.asarray(positions).astype(jnp.float32)[..., None]  # (T, 1) or (B, T, 1)
    f = jnp.asarray(speeds(D, theta), jnp.float32).reshape((1,) * (pos.ndim - 1) + (D // 2,))
    a = pos * f if angle is None else angle(pos, f)  # (T, D/2) or (B, T, D/2)
    # Every broadcast is explicit (the tests forbid implicit rank promotion):
    if head_axis:  # (1 or B, T, 1, D/2): the same angle for every head
        a = a.reshape(-1, T, 1, D // 2)
    else:  # what x1 * a does to angles (T, D/2): they line up with the heads axis
        a = a.reshape(1, 1, T, D // 2)
    cos, sin = jnp.cos(a), jnp.sin(a)
    if pairs == "half":
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
    else:
        x1, x2 = x[..., 0::2], x[..., 1::2]
    sign = 1.0 if minus else -1.0
    y1, y2 = x1 * cos - sign * x2 * sin, x1 * sin + x2 * cos
    if pairs == "half":
        return jnp.concatenate([y1, y2], axis=-1)
    return jnp.stack([y1, y2], axis=-1).reshape(x.shape)  # back to 2i, 2i + 1


def _rope_table(n_positions, fill):
    """RoPE reading its angles from a table built for positions 0 .. n_positions - 1. JAX does
    not raise on a position past the end: ``table[pos]`` clamps it to the last row (fill=False)
    and ``jnp.take`` returns NaN (fill=True)."""
    def rope(x, positions, theta=10_000.0):
        table = jnp.outer(jnp.arange(n_positions, dtype=jnp.float32),
                          _speeds(x.shape[-1], theta))  # (n_positions, D/2)
        pos = jnp.asarray(positions)
        a = jnp.take(table, pos, axis=0) if fill else table[pos]  # (T, D/2) or (B, T, D/2)
        return _rope_with(x, positions, theta, angle=lambda p, f: a)
    return rope


def _rope_cases():
    rng = np.random.default_rng(32)

    def x(*shape):
        return jnp.asarray(rng.normal(size=shape), jnp.float32)

    two_rows = jnp.asarray([np.arange(5), 7 + np.arange(5)], jnp.int32)  # (B, T) = (2, 5)
    return [
        Case((x(2, 4, 4, 8), jnp.arange(4)), note="positions (T,), T = H = 4"),
        Case((x(2, 5, 3, 6), two_rows), {"theta": 500.0},
             note="positions (B, T): the second row starts at 7; theta = 500"),
        Case((x(1, 7, 2, 16), jnp.asarray([0, 3, 9, 17, 30, 45, 60])),
             note="positions (T,) with gaps, up to 60"),
    ]


def _rows(got, want, case):
    """(positions (B, T), ok (B, T)): which (batch, position) vectors match the reference."""
    x, positions = case.args[:2]
    B, T = x.shape[:2]
    pos = np.broadcast_to(np.asarray(positions), (B, T))
    ok = np.isclose(got, want, rtol=1e-4, atol=1e-5).all(axis=(2, 3))  # (B, T)
    return pos, ok


def _right_until_late(got, want, case) -> bool:
    """Right at the early positions (up to 8 at least), wrong at every later one."""
    pos, ok = _rows(got, want, case)
    return bool(ok.any() and not ok.all() and pos[ok].max() >= 8
                and pos[~ok].min() > pos[ok].max())


def _where_late(got, want, case) -> str:
    pos, ok = _rows(got, want, case)
    return (f" Your output is right up to position {pos[ok].max()} and wrong from position "
            f"{pos[~ok].min()} on.")


def _rope_show(case, got, want) -> str:
    x, positions = case.args[:2]
    theta = case.kwargs.get("theta", 10_000.0)
    text = (f"\n  called with x of shape {tuple(x.shape)}, positions {_short(positions, 60)}, "
            f"theta={theta:g} ({case.note})")
    if got.shape != want.shape:
        return text + f"\n  expected shape {want.shape}, got shape {got.shape}"
    pos, ok = _rows(got, want, case)
    b, t = np.argwhere(~ok)[0] if not ok.all() else (0, 0)
    h = int(np.argmax(np.abs(got[b, t] - want[b, t]).max(axis=-1)))
    return (text + f"\n  first wrong vector: batch {b}, position {pos[b, t]}, head {h}"
            f"\n  expected {_short(want[b, t, h], 200)}\n  got      {_short(got[b, t, h], 200)}")


_ROPE_PROBE = (1, 8, 2, 16)  # x of the property tests: (B, T, H, D)
_ROPE_STARTS = (0, 1, 100, 1000)  # the first position of each probe


def _rope_facts(probe) -> SimpleNamespace:
    """The learner's rotation of one query and one key sequence, started at several positions:
    the change of each vector's norm, and of the (T, T) scores q·k against the start at 0."""
    rng = np.random.default_rng(33)
    q, k = (jnp.asarray(rng.normal(size=_ROPE_PROBE), jnp.float32) for _ in range(2))
    T = _ROPE_PROBE[1]
    norm_change, score_change, base = {}, {}, None
    for start in _ROPE_STARTS:
        pos = start + jnp.arange(T)
        qr, kr = probe(q, pos), probe(k, pos)
        if qr.shape != q.shape or kr.shape != k.shape:
            _fail(probe.exercise.name, f"for x of shape {_ROPE_PROBE} your function returned "
                  f"shape {qr.shape}; expected x's shape.")
        n0 = np.linalg.norm(np.asarray(q, np.float64), axis=-1)
        with np.errstate(all="ignore"):
            norm_change[start] = float(np.max(np.abs(np.linalg.norm(qr, axis=-1) - n0) / n0))
            scores = np.einsum("bthd,bshd->bhts", qr, kr)  # every query against every key
            base = scores if base is None else base
            score_change[start] = float(np.max(np.abs(scores - base)) / np.abs(base).max())
    return SimpleNamespace(norm_change=norm_change, score_change=score_change)


def _norms_broken(f):
    bad = [s for s, c in f.norm_change.items() if not c <= 1e-4]  # NaN is broken too
    if not bad:
        return False
    return "".join(f"\n  positions {s}..{s + _ROPE_PROBE[1] - 1}: the length "
                   + ("became NaN" if np.isnan(f.norm_change[s]) else
                      f"changed by up to {f.norm_change[s]:.1%}") for s in bad)


def _relative_broken(f):
    bad = [s for s, c in f.score_change.items() if not c <= 1e-3]
    if not bad:
        return False
    return "".join(f"\n  both sequences moved to start at {s}: the scores changed by up to "
                   f"{f.score_change[s]:.1%} of the largest score" for s in bad)


_TABLE = (" A table of angles (or cos and sin) built for a fixed number of positions does this: "
          "JAX does not raise on a position past its end — table[pos] silently repeats the last "
          "row and jnp.take returns NaN. Compute the angles from the positions themselves: "
          "positions[..., None] * speeds.")

APPLY_ROPE = Exercise(
    "apply_rope",
    doc="""Check ``fn(x, positions, theta=10000.0)``: rotary position embedding of x (B, T, H, D)
    at positions (T,) or (B, T). Dimension i is paired with i + D/2, and pair i turns by the
    angle ``position * theta ** (-2i / D)``:
    (x_i, x_{i+D/2}) -> (x_i cos a - x_{i+D/2} sin a, x_i sin a + x_{i+D/2} cos a).""",
    reference=attention.apply_rope,
    cases=_rope_cases,
    rtol=1e-4, atol=1e-5,
    expect="an array of x's shape (B, T, H, D)",
    show=_rope_show,
    crash_hint="positions come as (T,) or (B, T). positions[..., None] * speeds has shape "
               "(T, D/2) or (B, T, D/2); add the heads axis (angles[..., None, :]) before "
               "multiplying with the halves of x, which are (B, T, H, D/2).",
    mistakes=[
        Mistake("nothing was rotated: the output equals x. Turn each pair (x_i, x_{i+D/2}) by "
                "its angle a = position * theta ** (-2i / D).", lambda x, p, theta=1e4: x),
        Mistake("rotated the wrong way (by -a instead of a): the signs of the sin terms are "
                "swapped. The first half gets x1 cos a - x2 sin a, the second half "
                "x1 sin a + x2 cos a.",
                lambda x, p, theta=1e4: _rope_with(x, p, theta, angle=lambda p, f: -p * f)),
        Mistake("the minus sign is missing: x1 cos a + x2 sin a with x2 cos a + x1 sin a is not "
                "a rotation (it changes the lengths of the vectors). The first half gets "
                "x1 cos a - x2 sin a (in 'rotate half' form: rotate_half(x) = "
                "concatenate([-x2, x1])).",
                lambda x, p, theta=1e4: _rope_with(x, p, theta, minus=False)),
        Mistake("interleaved pairs: you rotated dimensions (2i, 2i + 1) together. That is a "
                "valid convention (Meta's original Llama code and the RoFormer paper use it), but "
                "not the one asked here: pair dimension i with dimension i + D/2 (the 'rotate "
                "half' layout of GPT-NeoX, Hugging Face's Llama and course_lib), e.g. "
                "x1, x2 = x[..., :D // 2], x[..., D // 2:].",
                lambda x, p, theta=1e4: _rope_with(x, p, theta, pairs="interleaved")),
        Mistake("wrong frequencies: theta ** (-i / D) falls too slowly; the exponent has a "
                "factor 2, speed_i = theta ** (-2i / D) for i = 0 .. D/2 - 1 (or, the same, "
                "theta ** (-jnp.arange(0, D, 2) / D)).",
                lambda x, p, theta=1e4: _rope_with(
                    x, p, theta, speeds=lambda D, t: t ** (-jnp.arange(D // 2) / D))),
        Mistake("wrong frequencies: theta ** (-4i / D) falls too fast. Either i ran over "
                "0, 2, 4, ... AND was doubled again, or the exponent was divided by D/2 instead "
                "of D. Use theta ** (-2i / D) for i = 0 .. D/2 - 1, or "
                "theta ** (-jnp.arange(0, D, 2) / D).",
                lambda x, p, theta=1e4: _rope_with(
                    x, p, theta, speeds=lambda D, t: t ** (-4 * jnp.arange(D // 2) / D))),
        Mistake("the theta argument is ignored (10000 is built in): the speeds are "
                "theta ** (-2i / D) for the theta passed in.",
                lambda x, p, theta=1e4: _rope_with(x, p, 10_000.0)),
        Mistake("the positions are not multiplied in: every token turns by the same angles, "
                "speed_i, so nothing depends on the position. The angle of pair i at position p "
                "is p * speed_i.",
                lambda x, p, theta=1e4: _rope_with(
                    x, p, theta, angle=lambda p, f: jnp.broadcast_to(f, p.shape[:-1] + f.shape[-1:]))),
        Mistake("every pair turns at the same speed (angle = position): the per-pair speeds are "
                "missing. Pair i turns by position * theta ** (-2i / D): fast pairs tell "
                "neighbours apart, slow ones near from far.",
                lambda x, p, theta=1e4: _rope_with(
                    x, p, theta, speeds=lambda D, t: jnp.ones(D // 2, jnp.float32))),
        Mistake("the angles were broadcast against the heads axis: an array of angles of shape "
                "(T, D/2) lines up with (H, D/2) of x's (B, T, H, D/2) halves, so head h was "
                "turned by the angle of position h. Insert the heads axis: "
                "angles[..., None, :] has shape (T, 1, D/2).",
                lambda x, p, theta=1e4: _rope_with(x, p, theta, head_axis=False)),
        Mistake("wrong at the later positions only." + _TABLE, _rope_table(32, fill=False),
                when=_right_until_late, detail=_where_late),
    ],
    facts=_rope_facts,
    properties=[
        Property("a rotation keeps the length of every vector, at every position; yours does "
                 "not at large positions (NaN counts as changed)." + _TABLE,
                 _norms_broken, _rope_table(64, fill=True)),
        Property("the relative-position property fails: moving a query and a key by the same "
                 "number of positions must leave their score q·k unchanged (it depends on the "
                 "offset only), at any position." + _TABLE,
                 _relative_broken, _rope_table(64, fill=False)),
    ],
    success="{n} cases, positions (T,) and (B, T), theta = 500; lengths kept and scores "
            "depend only on the offset, up to position 1007",
)

# ---------------------------------------------------------------- RoPE inside attention


def _rope_attention(q, k, v, positions, *, rotate="qk", causal=True, rotate_out=False):
    """Causal attention with RoPE on the letters of ``rotate`` ("qk": the right way)."""
    def maybe(name, a):
        return attention.apply_rope(a, positions) if name in rotate else a

    out = attention.scaled_dot_product_attention(maybe("q", q), maybe("k", k), maybe("v", v),
                                                 causal=causal)
    return attention.apply_rope(out, positions) if rotate_out else out


def _rope_attention_cases():
    rng = np.random.default_rng(35)

    def qkv(*shape):
        return tuple(jnp.asarray(rng.normal(size=shape), jnp.float32) for _ in range(3))

    return [Case((*qkv(2, 6, 2, 8), jnp.arange(6)), note="positions 0..5"),
            Case((*qkv(1, 5, 3, 4), 20 + jnp.arange(5)), note="positions 20..24")]


def _rope_attention_show(case, got, want) -> str:
    q, positions = case.args[0], case.args[3]
    text = (f"\n  called with q, k, v of shape {tuple(q.shape)}, positions "
            f"{_short(positions, 60)}")
    if got.shape != want.shape:
        return text + f"\n  expected shape {want.shape}, got shape {got.shape}"
    wrong = ~np.isclose(got, want, rtol=1e-4, atol=1e-5).all(axis=(0, 2, 3))  # (T,)
    return text + f"\n  wrong outputs at positions {np.asarray(positions)[wrong].tolist()}"


ROPE_ATTENTION = Exercise(
    "rope_attention",
    doc="""Check ``fn(q, k, v, positions)``: causal attention in which the queries and the keys
    (not the values) are rotated by RoPE at their positions. q, k, v: (B, T, H, D); positions:
    (T,) -> (B, T, H, D).""",
    reference=_rope_attention,
    cases=_rope_attention_cases,
    rtol=1e-4, atol=1e-5,
    expect="an array of shape (B, T, H, D)",
    show=_rope_attention_show,
    mistakes=[
        Mistake("rotated v too: RoPE belongs to the comparison q·k only. The values are what a "
                "position hands over; rotating them stamps each key's absolute position onto "
                "the output. Rotate q and k, and pass v as it is.",
                lambda q, k, v, p: _rope_attention(q, k, v, p, rotate="qkv")),
        Mistake("rotated only q: the score of a rotated query with an unrotated key depends on "
                "the query's absolute position, not on the offset. Rotate the keys too, with "
                "their own positions.",
                lambda q, k, v, p: _rope_attention(q, k, v, p, rotate="q")),
        Mistake("rotated only k: the queries must be rotated too, so that q·k sees the offset "
                "between the two positions.",
                lambda q, k, v, p: _rope_attention(q, k, v, p, rotate="k")),
        Mistake("nothing was rotated: this is plain causal attention. Apply RoPE to q and k "
                "(attention.apply_rope(q, positions), the same for k) before attending.",
                lambda q, k, v, p: _rope_attention(q, k, v, p, rotate="")),
        Mistake("rotated the output instead of q and k: by then the scores were computed "
                "without any position. Rotate q and k before attending.",
                lambda q, k, v, p: _rope_attention(q, k, v, p, rotate="", rotate_out=True)),
        Mistake("the causal mask is missing: every position sees the future. Pass causal=True "
                "to attention.scaled_dot_product_attention.",
                lambda q, k, v, p: _rope_attention(q, k, v, p, causal=False)),
    ],
    success="{n} cases: q and k rotated, v not, causal",
)

check_attention = checker(ATTENTION)
check_causal_mask = checker(CAUSAL_MASK)
check_masked_attention = checker(MASKED_ATTENTION)
check_split_heads = checker(SPLIT_HEADS)
check_merge_heads = checker(MERGE_HEADS)
check_apply_rope = checker(APPLY_ROPE)
check_rope_attention = checker(ROPE_ATTENTION)
