"""Attention: parity with jax.nn.dot_product_attention, flash = naive, masks, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from course_lib.attention import (
    attention_weights,
    causal_mask,
    flash_attention,
    scaled_dot_product_attention,
)


def qkv(B=2, T=7, S=7, H=3, D=8, dtype=jnp.float32, seed=0):
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    return (
        jax.random.normal(kq, (B, T, H, D)).astype(dtype),
        jax.random.normal(kk, (B, S, H, D)).astype(dtype),
        jax.random.normal(kv, (B, S, H, D)).astype(dtype),
    )


@pytest.mark.parametrize("B,T,S,H,D", [(1, 1, 1, 1, 4), (2, 7, 7, 3, 8), (3, 5, 11, 2, 16),
                                       (1, 33, 20, 4, 32)])
def test_matches_jax_without_mask(B, T, S, H, D):
    q, k, v = qkv(B, T, S, H, D)
    ref = jax.nn.dot_product_attention(q, k, v)
    np.testing.assert_allclose(scaled_dot_product_attention(q, k, v), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T", [1, 5, 16, 31])
def test_matches_jax_causal(T):
    q, k, v = qkv(T=T, S=T)
    ref = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    np.testing.assert_allclose(scaled_dot_product_attention(q, k, v, causal=True), ref, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 6, 9), (2, 1, 6, 9), (1, 3, 1, 9), (6, 9), (9,)])
def test_matches_jax_with_boolean_masks(shape):
    q, k, v = qkv(T=6, S=9)
    mask = jax.random.bernoulli(jax.random.PRNGKey(3), 0.6, shape)
    mask4 = jnp.reshape(mask, (1,) * (4 - mask.ndim) + mask.shape)
    ref = jax.nn.dot_product_attention(q, k, v, mask=mask4)
    np.testing.assert_allclose(scaled_dot_product_attention(q, k, v, mask=mask), ref, atol=1e-5)


def test_mask_and_causal_combine():
    q, k, v = qkv(T=6, S=6)
    pad = jnp.array([True] * 4 + [False] * 2)[None, None, None, :]  # last two keys are padding
    ref = jax.nn.dot_product_attention(q, k, v, mask=pad & causal_mask(6)[None, None])
    out = scaled_dot_product_attention(q, k, v, mask=pad, causal=True)
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("dtype,atol", [(jnp.bfloat16, 3e-2), (jnp.float16, 3e-3)])
def test_low_precision(dtype, atol):
    q, k, v = qkv(T=16, S=16, dtype=dtype)
    out = scaled_dot_product_attention(q, k, v, causal=True)
    assert out.dtype == dtype
    ref = jax.nn.dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)), is_causal=True)
    np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=atol)


def test_fully_masked_row_is_finite_and_matches_jax():
    q, k, v = qkv(T=4, S=5)
    mask = jnp.ones((4, 5), bool).at[2].set(False)  # query 2 may attend to nothing
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    assert bool(jnp.isfinite(out).all())
    ref = jax.nn.dot_product_attention(q, k, v, mask=mask[None, None])
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_jit_and_grad():
    q, k, v = qkv()
    f = jax.jit(scaled_dot_product_attention, static_argnames="causal")
    np.testing.assert_allclose(f(q, k, v, causal=True),
                               scaled_dot_product_attention(q, k, v, causal=True), atol=1e-6)
    g = jax.grad(lambda q: scaled_dot_product_attention(q, k, v, causal=True).sum())(q)
    assert bool(jnp.isfinite(g).all())


def test_weights_sum_to_one_and_respect_causality():
    q, k, _ = qkv(T=6, S=6)
    w = attention_weights(q, k, causal=True)
    assert w.shape == (2, 3, 6, 6)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
    assert float(jnp.abs(jnp.triu(w, k=1)).max()) == 0.0


def test_causal_mask_shapes():
    np.testing.assert_array_equal(causal_mask(3), np.tril(np.ones((3, 3), bool)))
    # Two new queries at the end of a 4-key sequence see 3 and 4 keys.
    np.testing.assert_array_equal(causal_mask(2, 4), [[1, 1, 1, 0], [1, 1, 1, 1]])


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T,S,block", [(16, 16, 4), (37, 37, 8), (10, 23, 7), (5, 5, 64)])
def test_flash_equals_naive(T, S, block, causal):
    if causal and S < T:
        pytest.skip("causal with fewer keys than queries leaves rows empty by design")
    q, k, v = qkv(T=T, S=S)
    ref = scaled_dot_product_attention(q, k, v, causal=causal)
    np.testing.assert_allclose(flash_attention(q, k, v, causal=causal, block_size=block), ref,
                               atol=2e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_flash_gradients_equal_naive(causal):
    q, k, v = qkv(T=19, S=19)
    w = jax.random.normal(jax.random.PRNGKey(9), q.shape)

    def loss(f):
        return lambda q, k, v: (f(q, k, v) * w).sum()

    naive = jax.grad(loss(lambda q, k, v: scaled_dot_product_attention(q, k, v, causal=causal)),
                     argnums=(0, 1, 2))(q, k, v)
    flash = jax.grad(loss(lambda q, k, v: flash_attention(q, k, v, causal=causal, block_size=5)),
                     argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(naive, flash):
        np.testing.assert_allclose(a, b, atol=5e-5)


def test_flash_never_materialises_the_score_matrix():
    """The compiled forward pass's scratch memory is far below one T x T float32 matrix."""
    T, block = 2048, 128
    q, k, v = qkv(B=1, T=T, S=T, H=1, D=32)
    naive = jax.jit(scaled_dot_product_attention).lower(q, k, v).compile().memory_analysis()
    flash = jax.jit(lambda q, k, v: flash_attention(q, k, v, block_size=block)).lower(
        q, k, v).compile().memory_analysis()
    if naive is None or flash is None:
        pytest.skip("this backend reports no memory analysis")
    matrix = T * T * 4
    assert naive.temp_size_in_bytes >= matrix
    assert flash.temp_size_in_bytes < matrix / 4


def test_clear_errors():
    q, k, v = qkv(T=4, S=6)
    with pytest.raises(ValueError, match="4 axes"):
        scaled_dot_product_attention(q[0], k, v)
    with pytest.raises(ValueError, match="same sequence length"):
        scaled_dot_product_attention(q, k, v[:, :5])
    with pytest.raises(ValueError, match="heads"):
        scaled_dot_product_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3))
    with pytest.raises(ValueError, match="head_dim"):
        scaled_dot_product_attention(q, k[..., :4], v)
    with pytest.raises(TypeError, match="boolean"):
        scaled_dot_product_attention(q, k, v, mask=jnp.zeros((4, 6)))
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(q, k, v, mask=jnp.ones((5, 6), bool))
