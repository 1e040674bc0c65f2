"""Exercises of notebook 03 (attention math): scaled dot-product attention, the causal mask,
masked attention, and splitting a layer's channels into heads and merging them back.

The exercises use one head and plain matrices so the formula stays visible:
q (T, d_k), k (S, d_k), v (S, d_v) -> (T, d_v); masks are boolean (T, S), True = "may attend".
The head exercises use the library's layout, (B, T, C) <-> (B, T, H, D) with C = H * D.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from course_lib import attention
from course_lib.checks._core import Exercise, Mistake, _as_array, _close, _fail, _short, checker

__all__ = [
    "check_attention", "check_causal_mask", "check_masked_attention",
    "check_split_heads", "check_merge_heads",
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

check_attention = checker(ATTENTION)
check_causal_mask = checker(CAUSAL_MASK)
check_masked_attention = checker(MASKED_ATTENTION)
check_split_heads = checker(SPLIT_HEADS)
check_merge_heads = checker(MERGE_HEADS)
