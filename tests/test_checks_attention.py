"""Tests for notebook 03's exercise checks: each passes the reference and fails each typical
wrong implementation with a hint that names the mistake."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checkhelp import fails_with

from course_lib import attention, checks

# ---------------------------------------------------------------- attention (one head)


def scores(q, k, scale=None):
    return (q @ k.T) * (1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)


def attn_ref(q, k, v):
    return jax.nn.softmax(scores(q, k), axis=-1) @ v


def attn_via_library(q, k, v):
    """The library's (B, T, H, D) attention on a single head gives the same numbers."""
    out = attention.scaled_dot_product_attention(q[None, :, None], k[None, :, None],
                                                 v[None, :, None])
    return out[0, :, 0]


def test_attention_passes_reference(capsys):
    checks.check_attention(attn_ref)
    checks.check_attention(attn_via_library)
    assert capsys.readouterr().out.count("✓ attention: correct") == 2


def naive_softmax(s):
    e = jnp.exp(s)
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize(
    "wrong, words",
    [
        (lambda q, k, v: jax.nn.softmax(q @ k.T, axis=-1) @ v, ["no scale", "√d_k"]),
        (lambda q, k, v: jax.nn.softmax(scores(q, k, 1 / q.shape[-1]), axis=-1) @ v,
         ["d_k instead of √d_k"]),
        (lambda q, k, v: jax.nn.softmax(scores(q, k, math.sqrt(q.shape[-1])), axis=-1) @ v,
         ["multiplied"]),
        (lambda q, k, v: jax.nn.softmax(scores(q, k, 1 / math.sqrt(v.shape[-1])), axis=-1) @ v,
         ["d_v"]),
        (lambda q, k, v: jax.nn.softmax(scores(q, k), axis=0) @ v, ["wrong axis", "axis=-1"]),
        (lambda q, k, v: jax.nn.softmax(q @ k.T, axis=0) @ v, ["wrong axis", "no scale"]),
        (lambda q, k, v: scores(q, k) @ v, ["forgot the softmax"]),
        (lambda q, k, v: jax.nn.softmax(scores(q, k).reshape(-1)).reshape(q.shape[0], -1) @ v,
         ["whole matrix"]),
        (lambda q, k, v: naive_softmax(scores(q, k)) @ v, ["overflow", "maximum"]),
        (lambda q, k, v: (jax.nn.softmax(scores(q, k), axis=-1) @ v).T, ["shape", "transposed"]),
        (lambda q, k, v: jax.nn.softmax(scores(q, k), axis=-1), ["shape", "multiply them by v"]),
        (lambda q, k, v: (jax.nn.softmax(scores(q, k), axis=-1) @ v)[None], ["wrong shape"]),
        (lambda q, k, v: jax.nn.softmax(scores(q, k), axis=-1) @ v + 0.01, ["wrong values"]),
    ],
)
def test_attention_diagnoses(wrong, words):
    fails_with(checks.check_attention, wrong, *words)


# ---------------------------------------------------------------- causal mask


def test_causal_mask_passes_reference(capsys):
    checks.check_causal_mask(lambda T: jnp.tril(jnp.ones((T, T), dtype=bool)))
    checks.check_causal_mask(attention.causal_mask)
    checks.check_causal_mask(lambda T: jnp.arange(T)[:, None] >= jnp.arange(T)[None, :])
    assert capsys.readouterr().out.count("✓ causal_mask: correct") == 3


@pytest.mark.parametrize(
    "wrong, words",
    [
        (lambda T: jnp.triu(jnp.ones((T, T), dtype=bool)), ["upper triangle",
                                                             "lets the future through"]),
        (lambda T: jnp.tril(jnp.ones((T, T), dtype=bool), k=1), ["off by one",
                                                                  "lets the future through"]),
        (lambda T: jnp.tril(jnp.ones((T, T), dtype=bool), k=-1), ["diagonal", "itself"]),
        (lambda T: jnp.triu(jnp.ones((T, T), dtype=bool), k=1), ["inverted", "may attend"]),
        (lambda T: jnp.ones((T, T), dtype=bool), ["nothing is masked"]),
        (lambda T: jnp.tril(jnp.ones((T, T))), ["pattern is right", "boolean"]),
        (lambda T: jnp.where(jnp.tril(jnp.ones((T, T), dtype=bool)), 0.0, -jnp.inf),
         ["additive", "boolean"]),
        (lambda T: jnp.triu(jnp.ones((T, T))), ["upper triangle", "boolean"]),
        (lambda T: jnp.tril(jnp.ones((T, T), dtype=bool))[None, None], ["shape", "(t, t)"]),
        (lambda T: jnp.tril(jnp.ones((T, T + 1), dtype=bool)), ["wrong shape"]),
        (lambda T: jnp.eye(T, dtype=bool), ["wrong pattern"]),
    ],
)
def test_causal_mask_diagnoses(wrong, words):
    fails_with(checks.check_causal_mask, wrong, *words)


# ---------------------------------------------------------------- masked attention


def masked_ref(q, k, v, mask):
    s = jnp.where(mask, scores(q, k), jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(s, axis=-1) @ v


def masked_additive(q, k, v, mask):
    """Also right: an additive bias of 0 / -1e9 (finite, so a fully masked row is uniform)."""
    return jax.nn.softmax(scores(q, k) + jnp.where(mask, 0.0, -1e9), axis=-1) @ v


def masked_via_library(q, k, v, mask):
    out = attention.scaled_dot_product_attention(q[None, :, None], k[None, :, None],
                                                 v[None, :, None], mask=mask)
    return out[0, :, 0]


def test_masked_attention_passes_reference(capsys):
    for fn in (masked_ref, masked_additive, masked_via_library):
        checks.check_masked_attention(fn)
    assert capsys.readouterr().out.count("✓ masked_attention: correct") == 3


def _fill(mask, s, value):
    return jnp.where(mask, s, value)


@pytest.mark.parametrize(
    "wrong, words",
    [
        # mask after softmax (no renormalisation)
        (lambda q, k, v, m: (jax.nn.softmax(scores(q, k), axis=-1) * m) @ v,
         ["after softmax", "before"]),
        # mask after softmax, by setting the weights to 0 with where
        (lambda q, k, v, m: _fill(m, jax.nn.softmax(scores(q, k), axis=-1), 0.0) @ v,
         ["after softmax"]),
        (lambda q, k, v, m: jax.nn.softmax(_fill(~m, scores(q, k), -1e9), axis=-1) @ v,
         ["inverted"]),
        (lambda q, k, v, m: jax.nn.softmax(_fill(m, scores(q, k), 0.0), axis=-1) @ v,
         ["set to 0", "exp(0)"]),
        (lambda q, k, v, m: jax.nn.softmax(scores(q, k), axis=-1) @ v, ["mask was ignored"]),
        # -inf: right everywhere except the fully masked row, which becomes NaN
        (lambda q, k, v, m: jax.nn.softmax(_fill(m, scores(q, k), -jnp.inf), axis=-1) @ v,
         ["all masked", "nan", "finfo"]),
        (lambda q, k, v, m: jax.nn.softmax(_fill(m, q @ k.T, -1e9), axis=-1) @ v, ["no scale"]),
        (lambda q, k, v, m: jax.nn.softmax(_fill(m, scores(q, k), -1e9), axis=0) @ v,
         ["wrong axis"]),
        (lambda q, k, v, m: jax.nn.softmax(_fill(m, scores(q, k), -1e9), axis=-1),
         ["shape", "multiply them by v"]),
        (lambda q, k, v, m: (jax.nn.softmax(_fill(m, scores(q, k), -1e9), axis=-1) @ v).T,
         ["shape", "transposed"]),
    ],
)
def test_masked_attention_diagnoses(wrong, words):
    fails_with(checks.check_masked_attention, wrong, *words)


# ---------------------------------------------------------------- split / merge heads


def test_split_and_merge_pass_reference(capsys):
    checks.check_split_heads(attention.split_heads)
    checks.check_split_heads(lambda x, h: x.reshape(*x.shape[:2], h, -1))
    checks.check_merge_heads(attention.merge_heads)
    checks.check_merge_heads(lambda x: x.reshape(*x.shape[:2], -1))
    out = capsys.readouterr().out
    assert out.count("✓ split_heads: correct") == 2
    assert out.count("✓ merge_heads: correct") == 2


def test_reference_heads_round_trip_and_error():
    x = jax.random.normal(jax.random.key(0), (2, 5, 12))
    h = attention.split_heads(x, 3)
    assert h.shape == (2, 5, 3, 4)
    np.testing.assert_array_equal(h[:, :, 1], x[:, :, 4:8])  # head 1 = channels 4..7
    np.testing.assert_array_equal(attention.merge_heads(h), x)
    with pytest.raises(ValueError, match="equal width"):
        attention.split_heads(x, 5)


def split_bhtd_direct(x, h):
    B, T, C = x.shape
    return x.reshape(B, h, T, C // h)


def split_bhtd_transposed(x, h):
    B, T, C = x.shape
    return x.reshape(B, T, h, C // h).transpose(0, 2, 1, 3)


@pytest.mark.parametrize(
    "wrong, words",
    [
        (split_bhtd_direct, ["wrong head reshape", "straight to (b, h, t, d)"]),
        (split_bhtd_transposed, ["layout is (b, h, t, d)", "drop the transpose"]),
        (lambda x, h: x.reshape(*x.shape[:2], -1, h), ["wrong head reshape", "(b, t, d, h)"]),
        (lambda x, h: x.reshape(*x.shape[:2], -1, h).swapaxes(2, 3), ["mixed heads",
                                                                      "contiguous"]),
        (lambda x, h: split_bhtd_direct(x, h).swapaxes(1, 2), ["wrong head reshape",
                                                               "then transposed"]),
        (lambda x, h: x.reshape(x.shape[0], -1, x.shape[2] // h), ["wrong shape"]),
        (lambda x, h: x.reshape(*x.shape[:2], h, -1)[:, ::-1], ["wrong places"]),
    ],
)
def test_split_heads_diagnoses(wrong, words):
    fails_with(checks.check_split_heads, wrong, *words)


@pytest.mark.parametrize(
    "wrong, words",
    [
        (lambda x: x.swapaxes(1, 2).reshape(*x.shape[:2], -1), ["wrong head reshape",
                                                                "mixes time steps"]),
        (lambda x: x.swapaxes(2, 3).reshape(*x.shape[:2], -1), ["mixed heads", "interleaves"]),
        (lambda x: x, ["wrong shape", "separate heads"]),
        (lambda x: x.swapaxes(1, 2).reshape(x.shape[0], x.shape[2], -1), ["wrong shape",
                                                                          "(b, h, t, d)"]),
        (lambda x: x.reshape(x.shape[0], -1), ["wrong shape"]),
    ],
)
def test_merge_heads_diagnoses(wrong, words):
    fails_with(checks.check_merge_heads, wrong, *words)
