"""The Llama-era options of the one GPT: rotary positions (RoPE), RMSNorm, SwiGLU and
grouped-query attention, tested against their definitions; every combination counts its
parameters by formula, trains with ``fit`` and generates the same greedy text with and without the
key/value cache."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from course_lib import attention as A
from course_lib import generate as G
from course_lib import model as M
from course_lib import train as T

LLAMA = dict(pos_encoding="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=2)


def cfg_of(**kw):
    base = dict(vocab_size=12, block_size=16, n_layers=2, n_heads=4, d_model=16)
    return M.GPTConfig(**{**base, **kw})


def randn(*shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


# ---------------------------------------------------------------- RoPE against its definition


def test_rope_scores_depend_only_on_the_offset():
    q, k = randn(1, 1, 3, 8, seed=1), randn(1, 1, 3, 8, seed=2)

    def score(m, n):  # q rotated to position m, k to position n: one score per head
        qm = A.apply_rope(q, jnp.array([m]))
        kn = A.apply_rope(k, jnp.array([n]))
        return np.asarray(jnp.sum(qm * kn, axis=-1))[0, 0]  # (H,)

    for m, n in [(5, 2), (0, 7), (30, 30)]:
        for shift in (1, 13, 250):
            np.testing.assert_allclose(score(m + shift, n + shift), score(m, n), atol=1e-4)
    # ...and it does depend on the offset (the rotation is not the identity)
    assert np.abs(score(5, 2) - score(5, 3)).max() > 1e-2


def test_rope_keeps_norms_and_leaves_position_zero_alone():
    x = randn(2, 6, 3, 8)
    out = A.apply_rope(x, jnp.arange(6) * 7)
    np.testing.assert_allclose(jnp.linalg.norm(out, axis=-1), jnp.linalg.norm(x, axis=-1),
                               rtol=1e-5)
    np.testing.assert_allclose(A.apply_rope(x, jnp.zeros(6, jnp.int32)), x, atol=1e-7)
    assert out.shape == x.shape and out.dtype == x.dtype
    bf = A.apply_rope(x.astype(jnp.bfloat16), jnp.arange(6))
    assert bf.dtype == jnp.bfloat16


def test_rope_is_the_rotation_of_pairs_i_and_i_plus_half():
    D, theta, pos = 6, 100.0, 3
    x = randn(1, 1, 1, D)
    out = np.asarray(A.apply_rope(x, jnp.array([pos]), theta))[0, 0, 0]
    v = np.asarray(x)[0, 0, 0]
    for i in range(D // 2):
        a = pos * theta ** (-2 * i / D)
        x1, x2 = v[i], v[i + D // 2]
        np.testing.assert_allclose(out[i], x1 * np.cos(a) - x2 * np.sin(a), atol=1e-6)
        np.testing.assert_allclose(out[i + D // 2], x1 * np.sin(a) + x2 * np.cos(a), atol=1e-6)
    np.testing.assert_allclose(A.rope_frequencies(4), [1.0, 0.01])


def test_rope_positions_per_row_equal_shared_positions():
    x = randn(2, 5, 2, 4)
    shared = A.apply_rope(x, jnp.arange(5) + 3)
    per_row = A.apply_rope(x, jnp.tile(jnp.arange(5)[None] + 3, (2, 1)))
    np.testing.assert_allclose(shared, per_row, atol=0)
    rows = A.apply_rope(x, jnp.stack([jnp.arange(5), jnp.arange(5) + 3]))
    np.testing.assert_allclose(rows[1], shared[1], atol=0)
    np.testing.assert_allclose(rows[0], A.apply_rope(x, jnp.arange(5))[0], atol=0)


def test_rope_clear_errors():
    with pytest.raises(ValueError, match="head_dim must be even"):
        A.apply_rope(randn(1, 4, 2, 5), jnp.arange(4))
    with pytest.raises(ValueError, match=r"positions must have shape \(seq,\) = \(4,\)"):
        A.apply_rope(randn(1, 4, 2, 6), jnp.arange(5))
    with pytest.raises(ValueError, match="batch, seq, heads, head_dim"):
        A.apply_rope(randn(4, 6), jnp.arange(4))
    with pytest.raises(TypeError, match="positions must be numbers"):
        A.apply_rope(randn(1, 4, 2, 6), jnp.ones(4, bool))
    with pytest.raises(ValueError, match="rope_theta must be"):
        A.apply_rope(randn(1, 4, 2, 6), jnp.arange(4), theta=0.5)


# ---------------------------------------------------------------- grouped-query attention


def attention_by_hand(attn, x, kv_head_of):
    """Causal attention from the module's own projections, query head h reading key/value head
    kv_head_of(h), one head at a time."""
    q, k, v = attn.heads(x)  # (B, T, H, D), (B, T, Hkv, D), (B, T, Hkv, D)
    outs = []
    for h in range(q.shape[2]):
        g = kv_head_of(h)
        outs.append(A.scaled_dot_product_attention(q[:, :, h:h + 1], k[:, :, g:g + 1],
                                                   v[:, :, g:g + 1], causal=True))
    return attn.proj(A.merge_heads(jnp.concatenate(outs, axis=2)))


def test_n_kv_heads_equal_to_n_heads_is_plain_multi_head_attention():
    cfg, x = cfg_of(n_kv_heads=4), randn(2, 7, 16, seed=3)
    attn = M.Attention(cfg, causal=True, rngs=nnx.Rngs(0))
    mha = M.Attention(cfg_of(), causal=True, rngs=nnx.Rngs(0))  # n_kv_heads=None
    np.testing.assert_allclose(attn(x), mha(x), atol=0)  # the same layer, weights and all
    q, k, v = attn.heads(x)
    by_hand = attn.proj(A.merge_heads(A.scaled_dot_product_attention(q, k, v, causal=True)))
    np.testing.assert_allclose(attn(x), by_hand, atol=1e-6)


def test_multi_query_attention_repeats_its_one_key_value_head():
    cfg, x = cfg_of(n_kv_heads=1), randn(2, 7, 16, seed=4)
    attn = M.Attention(cfg, causal=True, rngs=nnx.Rngs(0))
    assert attn.k.kernel.shape == (16, 4) and attn.v.kernel.shape == (16, 4)  # one head of D=4
    q, k, v = attn.heads(x)
    assert k.shape == (2, 7, 1, 4)
    k4, v4 = jnp.tile(k, (1, 1, 4, 1)), jnp.tile(v, (1, 1, 4, 1))  # the one head, 4 times
    by_hand = attn.proj(A.merge_heads(A.scaled_dot_product_attention(q, k4, v4, causal=True)))
    np.testing.assert_allclose(attn(x), by_hand, atol=1e-6)
    np.testing.assert_allclose(attn(x), attention_by_hand(attn, x, lambda h: 0), atol=1e-6)


def test_grouped_query_attention_shares_each_key_value_head_within_its_group():
    cfg, x = cfg_of(n_kv_heads=2), randn(2, 7, 16, seed=5)
    attn = M.Attention(cfg, causal=True, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(attn(x), attention_by_hand(attn, x, lambda h: h // 2), atol=1e-6)
    y, w = attn(x, return_weights=True)
    np.testing.assert_allclose(y, attn(x), atol=1e-6)
    assert w.shape == (2, 4, 7, 7)


def test_repeat_kv():
    k = jnp.arange(2 * 3 * 2 * 1).reshape(2, 3, 2, 1)
    r = A.repeat_kv(k, 3)
    assert r.shape == (2, 3, 6, 1)
    np.testing.assert_array_equal(r[:, :, :3], jnp.repeat(k[:, :, :1], 3, axis=2))
    assert A.repeat_kv(k, 1) is k


# ---------------------------------------------------------------- RMSNorm and SwiGLU


def test_rmsnorm_matches_its_formula():
    cfg = cfg_of(norm="rmsnorm", ln_eps=1e-5)
    norm = M.layer_norm(cfg, nnx.Rngs(0))
    assert isinstance(norm, nnx.RMSNorm)
    norm.scale[...] = randn(16, seed=6)
    x = randn(3, 5, 16, seed=7) * 3 + 1
    want = x / jnp.sqrt(jnp.mean(x**2, axis=-1, keepdims=True) + 1e-5) * norm.scale[...][None, None]
    np.testing.assert_allclose(norm(x), want, rtol=1e-5, atol=1e-6)
    assert "bias" not in nnx.state(M.layer_norm(cfg_of(norm="rmsnorm", bias=True), nnx.Rngs(0)))


def test_swiglu_matches_its_formula():
    cfg = cfg_of(mlp="swiglu", bias=True)
    mlp = M.MLP(cfg, rngs=nnx.Rngs(0))
    assert cfg.hidden == 48 and mlp.gate.kernel.shape == (16, 48)  # 2/3 of 4 * 16, rounded to 8
    x = randn(3, 5, 16, seed=8)
    for layer in (mlp.gate, mlp.fc, mlp.proj):  # non-zero biases, so that each one counts
        layer.bias[...] = randn(*layer.bias.shape, seed=9) * 0.1
    dense = lambda layer, h: h @ layer.kernel[...] + layer.bias[...][None, None]  # noqa: E731
    want = dense(mlp.proj, jax.nn.silu(dense(mlp.gate, x)) * dense(mlp.fc, x))
    np.testing.assert_allclose(mlp(x), want, rtol=1e-5, atol=1e-6)
    assert M.mlp_hidden(cfg_of(mlp="swiglu", mlp_hidden=40)) == 40


# ---------------------------------------------------------------- every combination


COMBOS = list(itertools.product(["learned", "rope"], ["layernorm", "rmsnorm"],
                                 ["gelu", "swiglu"], [None, 2, 1]))


def combo_cfg(pos, norm, mlp, n_kv, **kw):
    return cfg_of(pos_encoding=pos, norm=norm, mlp=mlp, n_kv_heads=n_kv, **kw)


@pytest.mark.parametrize("bias,tied", [(False, True), (True, False)])
def test_parameter_formula_equals_count_for_every_combination(bias, tied):
    for combo in COMBOS:
        cfg = combo_cfg(*combo, bias=bias, tie_embeddings=tied)
        abstract = nnx.eval_shape(lambda c=cfg: M.GPT(c, rngs=nnx.Rngs(0)))
        assert M.count_params(abstract) == M.n_params_formula(cfg), combo


def test_published_parameter_counts():
    llama2_7b = M.GPTConfig(vocab_size=32000, block_size=4096, n_layers=32, n_heads=32,
                            d_model=4096, mlp_hidden=11008, tie_embeddings=False, **{
                                **LLAMA, "n_kv_heads": None})
    assert M.n_params_formula(llama2_7b) == 6_738_415_616  # "6.74 B"
    llama3_8b = dataclasses.replace(llama2_7b, vocab_size=128256, block_size=8192,
                                    n_kv_heads=8, mlp_hidden=14336, rope_theta=500_000.0)
    assert M.n_params_formula(llama3_8b) == 8_030_261_248  # "8.03 B"


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(map(str, c)))
def test_every_combination_trains_and_generates_the_same_with_and_without_cache(combo):
    cfg = combo_cfg(*combo, n_layers=1)
    ids = (np.arange(400) * 7 % 12).astype(np.int32)  # a simple periodic text
    tcfg = T.TrainConfig(steps=4, batch_size=4, lr=1e-2, warmup_steps=1, eval_every=4,
                         eval_batches=1, steps_per_call=4)
    result = T.fit(M.GPT(cfg, rngs=nnx.Rngs(0)), ids[:300], ids[300:], tcfg, progress=False)
    hist = result.history
    assert np.all(np.isfinite(hist.train_loss)) and hist.train_loss[-1] < hist.train_loss[0]
    prompt = jnp.asarray([[1, 8, 3], [5, 0, 7]], jnp.int32)
    key = jax.random.key(0)
    # 13 new tokens fill the context of 16 exactly: both paths must agree on every token.
    cached = G.generate(result.model, prompt, 13, key=key, temperature=0.0, use_cache=True)
    plain = G.generate(result.model, prompt, 13, key=key, temperature=0.0, use_cache=False)
    np.testing.assert_array_equal(cached, plain)


def test_cache_holds_only_the_key_value_heads():
    for n_kv, want in ((None, 4), (2, 2), (1, 1)):
        net = M.GPT(cfg_of(n_kv_heads=n_kv, **{k: v for k, v in LLAMA.items()
                                               if k != "n_kv_heads"}), rngs=nnx.Rngs(0))
        k, v = net.init_cache(3)[0]
        assert k.shape == v.shape == (3, 16, want, 4)


def test_rope_model_has_no_position_table_and_untied_head_is_its_own():
    net = M.GPT(cfg_of(pos_encoding="rope", tie_embeddings=False), rngs=nnx.Rngs(0))
    names = {".".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(net, nnx.Param))}
    assert not any(n.startswith("wpe") for n in names)
    assert "lm_head.kernel" in names
    tied = M.GPT(cfg_of(), rngs=nnx.Rngs(0))
    assert not hasattr(tied, "lm_head") and hasattr(tied, "wpe")


def test_rope_model_runs_at_a_longer_context_with_the_same_weights():
    short = M.GPT(cfg_of(**LLAMA), rngs=nnx.Rngs(0))
    long = M.GPT(cfg_of(**LLAMA, block_size=64), rngs=nnx.Rngs(1))
    nnx.update(long, nnx.state(short, nnx.Param))
    ids = jnp.asarray(np.arange(40)[None] % 12, jnp.int32)
    np.testing.assert_allclose(long(ids)[:, :16], short(ids[:, :16]), atol=1e-5)
    with pytest.raises(ValueError, match="block_size"):
        short(ids)


def test_clear_errors_for_bad_combinations():
    with pytest.raises(ValueError, match="n_kv_heads=3 must divide n_heads=4.*\\[1, 2, 4\\]"):
        cfg_of(n_kv_heads=3)
    with pytest.raises(ValueError, match="head_dim must be even"):
        cfg_of(pos_encoding="rope", d_model=12, n_heads=4)  # head_dim 3
    cfg_of(d_model=12, n_heads=4)  # ...which is fine with learned positions
    with pytest.raises(ValueError, match="n_kv_heads must be None"):
        cfg_of(n_kv_heads=0)
    with pytest.raises(ValueError, match=r"norm must be one of \('layernorm', 'rmsnorm'\)"):
        cfg_of(norm="batchnorm")
    with pytest.raises(ValueError, match="mlp must be one of"):
        cfg_of(mlp="relu")
    with pytest.raises(ValueError, match="pos_encoding must be one of"):
        cfg_of(pos_encoding="sinusoidal")
    with pytest.raises(ValueError, match="rope_theta must be"):
        cfg_of(pos_encoding="rope", rope_theta=-1.0)
    with pytest.raises(ValueError, match="mlp_hidden must be None"):
        cfg_of(mlp_hidden=0)
