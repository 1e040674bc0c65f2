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


# ---------------------------------------------------------------- RoPE
# The implementations below are written as a learner writes them in the notebook, where NumPy's
# implicit broadcasting between ranks is allowed (angles[..., None, :] times (B, T, H, D/2)
# halves): the RoPE tests run with it allowed, as the notebook does.


@pytest.fixture
def notebook_broadcasting():
    with jax.numpy_rank_promotion("allow"):
        yield


def rope_halves(x, positions, theta=10000.0):
    """RoPE written as a learner would: speeds in float32, 'rotate half'."""
    D = x.shape[-1]
    speeds = theta ** (-2 * jnp.arange(D // 2) / D)  # (D/2,)
    angles = jnp.asarray(positions)[..., None] * speeds  # (T, D/2) or (B, T, D/2)
    cos, sin = jnp.cos(angles)[..., None, :], jnp.sin(angles)[..., None, :]
    rotate_half = jnp.concatenate([-x[..., D // 2:], x[..., :D // 2]], axis=-1)
    return x * jnp.concatenate([cos, cos], -1) + rotate_half * jnp.concatenate([sin, sin], -1)


def rope_complex(x, positions, theta=10000.0):
    """Also right: pair i as the complex number x_i + i x_{i+D/2}, times e^{i a}, in float64."""
    x = np.asarray(x, np.float64)
    D = x.shape[-1]
    speeds = theta ** (-np.arange(0, D, 2) / D)
    angles = np.asarray(positions, np.float64)[..., None, None] * speeds  # (.., T, 1, D/2)
    z = (x[..., :D // 2] + 1j * x[..., D // 2:]) * np.exp(1j * angles)
    return np.concatenate([z.real, z.imag], axis=-1)


def rope_by_permutation(x, positions, theta=10000.0):
    """Also right: reorder the dimensions to the interleaved layout, rotate pairs (2i, 2i+1),
    and put them back. The two conventions differ only by this permutation."""
    D = x.shape[-1]
    order = np.stack([np.arange(D // 2), D // 2 + np.arange(D // 2)], axis=1).reshape(-1)
    y = interleaved(x[..., order], positions, theta)
    return y[..., np.argsort(order)]


def interleaved(x, positions, theta=10000.0):
    """Meta's original Llama convention: pairs (2i, 2i + 1)."""
    D = x.shape[-1]
    angles = jnp.asarray(positions)[..., None, None] * theta ** (-jnp.arange(0, D, 2) / D)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    y = jnp.stack([x1 * jnp.cos(angles) - x2 * jnp.sin(angles),
                   x1 * jnp.sin(angles) + x2 * jnp.cos(angles)], axis=-1)
    return y.reshape(x.shape)


def test_apply_rope_passes_reference_and_other_right_answers(capsys, notebook_broadcasting):
    for fn in (attention.apply_rope, rope_halves, rope_complex, rope_by_permutation):
        checks.check_apply_rope(fn)
    assert capsys.readouterr().out.count("✓ apply_rope: correct") == 4


def with_speeds(speeds_of, angle_of=lambda p, s: p * s):
    """RoPE in the asked layout with its own speeds(D, theta) and angle(positions, speeds)."""
    def rope(x, positions, theta=10000.0):
        D = x.shape[-1]
        a = angle_of(jnp.asarray(positions, jnp.float32)[..., None], speeds_of(D, theta))
        cos, sin = jnp.cos(a)[..., None, :], jnp.sin(a)[..., None, :]
        x1, x2 = x[..., :D // 2], x[..., D // 2:]
        return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return rope


def right_speeds(D, theta):
    return theta ** (-2 * jnp.arange(D // 2) / D)


def no_head_axis(x, positions, theta=10000.0):
    D = x.shape[-1]
    a = jnp.asarray(positions)[..., None] * right_speeds(D, theta)  # (T, D/2): no heads axis
    x1, x2 = x[..., :D // 2], x[..., D // 2:]
    return jnp.concatenate([x1 * jnp.cos(a) - x2 * jnp.sin(a),
                            x1 * jnp.sin(a) + x2 * jnp.cos(a)], axis=-1)


def only_1d_positions(x, positions, theta=10000.0):
    """jnp.outer flattens (B, T) positions: right for (T,), a crash for (B, T)."""
    angles = jnp.outer(positions, right_speeds(x.shape[-1], theta))[:, None, :]  # (T, 1, D/2)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return jnp.concatenate([x1 * jnp.cos(angles) - x2 * jnp.sin(angles),
                            x1 * jnp.sin(angles) + x2 * jnp.cos(angles)], axis=-1)


def cos_sin_table(n, take):
    """A cos/sin table precomputed for n positions (as many implementations cache it)."""
    def rope(x, positions, theta=10000.0):
        D = x.shape[-1]
        angles = jnp.arange(n)[:, None] * right_speeds(D, theta)  # (n, D/2)
        cos, sin = jnp.cos(angles), jnp.sin(angles)
        pos = jnp.asarray(positions)
        if take:
            cos, sin = jnp.take(cos, pos, axis=0), jnp.take(sin, pos, axis=0)
        else:
            cos, sin = cos[pos], sin[pos]
        cos, sin = cos[..., None, :], sin[..., None, :]
        x1, x2 = x[..., :D // 2], x[..., D // 2:]
        return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return rope


@pytest.mark.parametrize(
    "wrong, words",
    [
        (lambda x, p, theta=10000.0: x, ["nothing was rotated"]),
        (lambda x, p, theta=10000.0: rope_halves(x, -jnp.asarray(p), theta), ["wrong way"]),
        (lambda x, p, theta=10000.0: rope_halves(x, p, theta)[..., ::-1], ["wrong values"]),
        (interleaved, ["interleaved", "valid convention", "i + d/2"]),
        (with_speeds(lambda D, t: t ** (-jnp.arange(D // 2) / D)), ["wrong frequencies",
                                                                     "factor 2"]),
        (with_speeds(lambda D, t: t ** (-2 * jnp.arange(0, D, 2) / D)), ["wrong frequencies",
                                                                          "-4i / d"]),
        (with_speeds(lambda D, t: right_speeds(D, 10000.0)), ["theta argument is ignored"]),
        (with_speeds(right_speeds, lambda p, s: p + 0 * s), ["same speed", "per-pair"]),
        (with_speeds(right_speeds, lambda p, s: s + 0 * p), ["not multiplied"]),
        (no_head_axis, ["heads axis", "[..., none, :]"]),
        (only_1d_positions, ["raised", "(b, t)", "heads axis"]),
        (cos_sin_table(40, take=False), ["later positions", "right up to position 30",
                                         "from position 45"]),
        (cos_sin_table(200, take=True), ["length", "nan", "table"]),
        (cos_sin_table(500, take=False), ["relative-position", "start at 1000"]),
        (lambda x, p, theta=10000.0: None, ["returned none"]),
        (lambda x, p, theta=10000.0: rope_halves(x, p, theta)[0], ["wrong shape"]),
    ],
)
def test_apply_rope_diagnoses(wrong, words, notebook_broadcasting):
    fails_with(checks.check_apply_rope, wrong, *words)


def test_apply_rope_stub_is_not_done_yet():
    def stub(x, positions, theta=10000.0):
        raise NotImplementedError
    fails_with(checks.check_apply_rope, stub, "not done yet")


def test_apply_rope_hint_shows_the_first_wrong_vector(notebook_broadcasting):
    msg = fails_with(checks.check_apply_rope, interleaved, "first wrong vector")
    assert "x of shape (2, 4, 4, 8)" in msg and "position 1" in msg


# ---------------------------------------------------------------- RoPE inside attention


def rope_attn(q, k, v, positions):
    q, k = attention.apply_rope(q, positions), attention.apply_rope(k, positions)
    return attention.scaled_dot_product_attention(q, k, v, causal=True)


def test_rope_attention_passes_reference(capsys):
    checks.check_rope_attention(rope_attn)
    # Only offsets matter: rotating by 0..T-1 instead of the given positions (20..24 in the
    # second case) changes no score, so it is right too.
    checks.check_rope_attention(lambda q, k, v, p: rope_attn(q, k, v, jnp.arange(q.shape[1])))
    assert capsys.readouterr().out.count("✓ rope_attention: correct") == 2


def rope_parts(rotate, causal=True):
    def fn(q, k, v, positions):
        r = {name: attention.apply_rope(a, positions) if name in rotate else a
             for name, a in (("q", q), ("k", k), ("v", v))}
        return attention.scaled_dot_product_attention(r["q"], r["k"], r["v"], causal=causal)
    return fn


@pytest.mark.parametrize(
    "wrong, words",
    [
        (rope_parts("qkv"), ["rotated v too"]),
        (rope_parts("q"), ["rotated only q"]),
        (rope_parts("k"), ["rotated only k"]),
        (rope_parts(""), ["nothing was rotated"]),
        (lambda q, k, v, p: attention.apply_rope(rope_parts("")(q, k, v, p), p),
         ["rotated the output"]),
        (rope_parts("qk", causal=False), ["causal mask is missing"]),
        (lambda q, k, v, p: rope_attn(q, k, v, p)[:, :, 0], ["wrong shape"]),
        (lambda q, k, v, p: rope_attn(q, k, v, p) * 2, ["wrong outputs at positions"]),
    ],
)
def test_rope_attention_diagnoses(wrong, words):
    fails_with(checks.check_rope_attention, wrong, *words)
