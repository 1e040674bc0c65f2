"""GPT and encoder-decoder: shapes, parameter counts, causality, cached decoding, errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from course_lib import model as M
from course_lib import seq2seq as S
from course_lib.train import loss_fn

CFG = M.GPTConfig(vocab_size=50, block_size=16, n_layers=2, n_heads=4, d_model=32)


@pytest.fixture(scope="module")
def gpt():
    m = M.GPT(CFG, rngs=nnx.Rngs(0))
    m.eval()
    return m


def ids(B=2, T=16, V=50, seed=0):
    return jax.random.randint(jax.random.PRNGKey(seed), (B, T), 0, V)


def test_logits_shape_and_dtype(gpt):
    out = gpt(ids(3, 10))
    assert out.shape == (3, 10, 50) and out.dtype == jnp.float32


@pytest.mark.parametrize("bias", [False, True])
def test_parameter_count_matches_formula(bias):
    cfg = M.GPTConfig(61, 24, 3, 2, 48, bias=bias)
    assert M.count_params(M.GPT(cfg, rngs=nnx.Rngs(0))) == M.n_params_formula(cfg)


def test_nanogpt_recipe_size_and_flops():
    cfg = M.GPTConfig(65, 64, 4, 4, 128)
    assert M.n_params_formula(cfg) == 804_096
    assert M.flops_per_token(cfg) == 6 * (804_096 - 64 * 128) + 12 * 4 * 64 * 128


def test_loss_at_init_is_close_to_log_vocab(gpt):
    x = ids(8, 16, seed=1)
    loss = float(loss_fn(gpt(x), ids(8, 16, seed=2)))
    assert abs(loss - math.log(50)) < 0.1


def test_changing_the_future_leaves_the_past_unchanged(gpt):
    x = ids(1, 16)
    y = x.at[0, 9].set((x[0, 9] + 1) % 50)
    a, b = gpt(x), gpt(y)
    np.testing.assert_allclose(a[:, :9], b[:, :9], atol=1e-6)
    assert float(jnp.abs(a[:, 9:] - b[:, 9:]).max()) > 1e-4


def test_cached_decoding_matches_the_full_forward_pass(gpt):
    x = ids(2, 12)
    full = gpt(x)
    logits, cache = gpt.decode(x[:, :7], gpt.init_cache(2), 0)  # prefill 7 tokens
    steps = [logits]
    for t in range(7, 12):  # then one token at a time
        lg, cache = gpt.decode(x[:, t:t + 1], cache, t)
        steps.append(lg)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)


def test_dropout_only_in_train_mode():
    m = M.GPT(M.GPTConfig(50, 16, 1, 2, 16, dropout=0.5), rngs=nnx.Rngs(0))
    x = ids(2, 8)
    m.eval()
    np.testing.assert_array_equal(m(x), m(x))
    m.train()
    a = m(x, rngs=nnx.Rngs(dropout=1))
    b = m(x, rngs=nnx.Rngs(dropout=2))
    assert float(jnp.abs(a - b).max()) > 1e-3


def test_clear_errors(gpt):
    with pytest.raises(ValueError, match="block_size"):
        gpt(ids(1, 17))
    with pytest.raises(ValueError, match="ids\\[None, :\\]"):
        gpt(jnp.zeros((5,), jnp.int32))
    with pytest.raises(TypeError, match="integer"):
        gpt(jnp.zeros((1, 4)))
    with pytest.raises(ValueError, match="divisible"):
        M.GPTConfig(10, 8, 1, 3, 32)
    with pytest.raises(ValueError, match="positive"):
        M.GPTConfig(0, 8, 1, 1, 32)


# --- encoder-decoder -----------------------------------------------------------------------
SCFG = S.Seq2SeqConfig(src_vocab_size=20, tgt_vocab_size=30, src_len=10, tgt_len=8,
                       n_layers=2, n_heads=2, d_model=32)


@pytest.fixture(scope="module")
def s2s():
    m = S.Seq2Seq(SCFG, rngs=nnx.Rngs(0))
    m.eval()
    return m


def test_seq2seq_shapes_and_decoder_causality(s2s):
    src = jax.random.randint(jax.random.PRNGKey(0), (2, 10), 1, 20)
    tgt = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 1, 30)
    out = s2s(src, tgt)
    assert out.shape == (2, 8, 30)
    out2 = s2s(src, tgt.at[:, 5].set(3))
    np.testing.assert_allclose(out[:, :5], out2[:, :5], atol=1e-6)


def test_source_padding_is_ignored(s2s):
    src = jax.random.randint(jax.random.PRNGKey(0), (1, 6), 1, 20)
    tgt = jax.random.randint(jax.random.PRNGKey(1), (1, 8), 1, 30)
    short = jnp.pad(src, ((0, 0), (0, 4)))  # 6 tokens + 4 PAD
    other = short.at[0, 7].set(0)
    np.testing.assert_allclose(s2s(short, tgt), s2s(other, tgt), atol=1e-6)
    # and the padded source gives the same result as the unpadded one
    np.testing.assert_allclose(s2s(short, tgt), s2s(src, tgt), atol=1e-5)


def test_masked_loss_skips_padding():
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 30))
    tgt = jnp.array([[5, 6, 0, 0], [7, 0, 0, 0]])
    full = jax.vmap(jax.vmap(lambda l, t: -jax.nn.log_softmax(l)[t]))(logits, tgt)
    expected = (full[0, 0] + full[0, 1] + full[1, 0]) / 3
    np.testing.assert_allclose(S.masked_loss(logits, tgt), expected, rtol=1e-6)


def test_greedy_decode_and_cross_attention_maps(s2s):
    src = jax.random.randint(jax.random.PRNGKey(0), (3, 10), 1, 20)
    out = S.greedy_decode(s2s, src, bos=1, max_len=8)
    assert out.shape == (3, 8) and bool((out[:, 0] == 1).all())
    maps = s2s.cross_attention(src, out)
    assert len(maps) == 2 and maps[0].shape == (3, 2, 8, 10)
    np.testing.assert_allclose(maps[0].sum(-1), 1.0, atol=1e-5)


def test_hidden_states_are_what_the_output_layer_reads(gpt):
    x = ids(2, 12)
    h = gpt.hidden_states(x)
    assert h.shape == (2, 12, CFG.d_model)
    np.testing.assert_allclose(gpt.wte.attend(h), gpt(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="block_size"):
        gpt.hidden_states(ids(1, CFG.block_size + 1))


# --- one set of layers ---------------------------------------------------------------------


def test_no_public_signature_takes_batch_and_time_sizes():
    """Layers take (B, T, C) arrays and read the sizes from them: no public function or method of
    the library asks for B or T as arguments."""
    import importlib
    import inspect

    import course_lib

    offenders = []
    for name in course_lib._MODULES:
        mod = importlib.import_module(f"course_lib.{name}")
        for obj_name, obj in vars(mod).items():
            if obj_name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            members = [(obj_name, obj)]
            if inspect.isclass(obj):
                members += [(f"{obj_name}.{m}", f) for m, f in vars(obj).items()
                            if callable(f) and (not m.startswith("_") or m == "__call__")]
            for qual, fn in members:
                try:
                    params = inspect.signature(fn).parameters
                except (TypeError, ValueError):
                    continue
                if {"B", "T"} <= set(params):
                    offenders.append(f"{name}.{qual}")
    assert not offenders, offenders


def test_one_attention_class_serves_self_cross_causal_and_bidirectional():
    cfg = M.GPTConfig(vocab_size=10, block_size=8, n_layers=1, n_heads=2, d_model=8)
    x = jax.random.normal(jax.random.key(0), (2, 5, 8))
    ctx = jax.random.normal(jax.random.key(1), (2, 7, 8))
    causal = M.Attention(cfg, causal=True, rngs=nnx.Rngs(0))
    both = M.Attention(cfg, causal=False, rngs=nnx.Rngs(0))  # same weights, no mask
    y_c, w_c = causal(x, return_weights=True)
    y_b, w_b = both(x, return_weights=True)
    np.testing.assert_allclose(y_c, causal(x), rtol=1e-5, atol=1e-6)  # both code paths agree
    assert bool(jnp.all(jnp.triu(w_c[0, 0], k=1) == 0)) and bool(jnp.all(w_b > 0))
    assert not np.allclose(y_c, y_b)
    y_x, w_x = both(x, ctx, return_weights=True)  # cross-attention: keys from the context
    assert y_x.shape == (2, 5, 8) and w_x.shape == (2, 2, 5, 7)
    np.testing.assert_allclose(w_x.sum(-1), 1.0, rtol=1e-5)


def test_linear_merges_leading_axes_without_changing_the_result():
    lin = M.Linear(4, 3, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 5, 4))
    np.testing.assert_allclose(lin(x), nnx.Linear.__call__(lin, x), rtol=1e-6, atol=1e-6)
    assert lin(x[0, 0]).shape == (3,)


def test_decoder_block_needs_its_context():
    cfg = S.Seq2SeqConfig(src_vocab_size=10, tgt_vocab_size=10, src_len=5, tgt_len=5, d_model=8,
                          n_heads=2)
    block = M.Block(cfg, causal=True, cross=True, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="pass the encoder's output as context"):
        block(jnp.zeros((1, 3, 8)))


def test_encoder_decoder_blocks_are_the_gpt_blocks(s2s):
    assert all(type(b) is M.Block for b in list(s2s.encoder) + list(s2s.decoder))
    assert not s2s.encoder[0].attn.causal and s2s.decoder[0].attn.causal
    assert s2s.decoder[0].cross and not s2s.encoder[0].cross
