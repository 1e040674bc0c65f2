"""Tests for notebook 04's checks: each passes the reference (and the library's modules) and
fails each typical wrong implementation with a hint that names the mistake."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checkhelp import fails_with
from flax import nnx

from course_lib import checks, model

# ---------------------------------------------------------------- mlp_forward


@pytest.fixture
def natural_broadcasting():
    """Learners write ``x @ w + b`` with b of shape (C,); the notebook allows that broadcast."""
    with jax.numpy_rank_promotion("allow"):
        yield


def test_mlp_passes_reference_and_both_gelus(capsys, natural_broadcasting):
    checks.check_mlp_forward(model.mlp_forward)
    checks.check_mlp_forward(
        lambda x, w1, b1, w2, b2: jax.nn.gelu(x @ w1 + b1, approximate=False) @ w2 + b2
    )
    assert capsys.readouterr().out.count("✓ mlp_forward: correct") == 2


def test_mlp_reference_matches_library_mlp():
    cfg = model.GPTConfig(vocab_size=5, block_size=4, n_layers=2, n_heads=2, d_model=8, bias=True)
    mlp = model.MLP(cfg, rngs=nnx.Rngs(0))
    mlp.fc.bias[...] = jnp.linspace(-1, 1, 32)
    mlp.proj.bias[...] = jnp.linspace(1, -1, 8)
    x = jax.random.normal(jax.random.key(1), (6, 8))
    want = model.mlp_forward(
        x, mlp.fc.kernel[...], mlp.fc.bias[...], mlp.proj.kernel[...], mlp.proj.bias[...]
    )
    np.testing.assert_allclose(mlp(x), want, rtol=1e-5, atol=1e-6)


def _gelu(z):
    return jax.nn.gelu(z)


@pytest.mark.parametrize(
    "wrong, words",
    [
        (lambda x, w1, b1, w2, b2: jax.nn.relu(x @ w1 + b1) @ w2 + b2, ["relu", "gelu"]),
        (lambda x, w1, b1, w2, b2: (x @ w1 + b1) @ w2 + b2, ["forgot the activation"]),
        (lambda x, w1, b1, w2, b2: _gelu(x @ w1) @ w2 + b2, ["first bias", "b_fc"]),
        (lambda x, w1, b1, w2, b2: _gelu(x @ w1 + b1) @ w2, ["second bias", "b_proj"]),
        (lambda x, w1, b1, w2, b2: _gelu(x @ w1) @ w2, ["both biases"]),
        (lambda x, w1, b1, w2, b2: (_gelu(x @ w1) + b1) @ w2 + b2, ["after the gelu"]),
        (lambda x, w1, b1, w2, b2: _gelu(_gelu(x @ w1 + b1) @ w2 + b2), ["output as well"]),
        (lambda x, w1, b1, w2, b2: x + _gelu(x @ w1 + b1) @ w2 + b2, ["residual", "block adds"]),
        (lambda x, w1, b1, w2, b2: jnp.tanh(x @ w1 + b1) @ w2 + b2, ["tanh"]),
        (lambda x, w1, b1, w2, b2: _gelu(x @ w1 + b1), ["hidden layer", "w_proj"]),
        (lambda x, w1, b1, w2, b2: (_gelu(x @ w1 + b1) @ w2 + b2)[:, :2], ["shape"]),
        (lambda x, w1, b1, w2, b2: 2.0 * (_gelu(x @ w1 + b1) @ w2 + b2), ["wrong values"]),
    ],
)
def test_mlp_diagnoses(wrong, words, natural_broadcasting):
    fails_with(checks.check_mlp_forward, wrong, *words)


# ---------------------------------------------------------------- block_forward


def test_block_passes_reference(capsys):
    checks.check_block_forward(model.block_forward)

    def two_lines(x, attn, mlp, ln1, ln2):
        h = x + attn(ln1(x))
        return h + mlp(ln2(h))

    checks.check_block_forward(two_lines)
    assert capsys.readouterr().out.count("✓ block_forward: correct") == 2


def test_block_reference_matches_library_block():
    cfg = model.GPTConfig(vocab_size=5, block_size=6, n_layers=2, n_heads=2, d_model=8)
    block = model.Block(cfg, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (2, 6, 8))  # (B, T, C)
    want = model.block_forward(x, block.attn, block.mlp, block.ln1, block.ln2)
    np.testing.assert_allclose(block(x), want, rtol=1e-5, atol=1e-6)


def _post_ln(x, attn, mlp, ln1, ln2):
    h = ln1(x + attn(x))
    return ln2(h + mlp(h))


def _normed_stream(x, attn, mlp, ln1, ln2):
    h = ln1(x)
    h = h + attn(h)
    h = ln2(h)
    return h + mlp(h)


def _mlp_first(x, attn, mlp, ln1, ln2):
    h = x + mlp(ln2(x))
    return h + attn(ln1(h))


@pytest.mark.parametrize(
    "wrong, words",
    [
        (_post_ln, ["post-ln", "pre-ln"]),
        (lambda x, a, m, l1, l2: m(l2(a(l1(x)))), ["forgot the residual connections"]),
        (lambda x, a, m, l1, l2: a(l1(x)) + m(l2(a(l1(x)))), ["forgot the first residual"]),
        (lambda x, a, m, l1, l2: m(l2(x + a(l1(x)))), ["forgot the second residual"]),
        (_normed_stream, ["never normalised", "x = ln1(x)"]),
        (lambda x, a, m, l1, l2: (x + a(x)) + m(x + a(x)), ["forgot the layernorms"]),
        (lambda x, a, m, l1, l2: (x + a(l2(x))) + m(l1(x + a(l2(x)))), ["swapped ln1 and ln2"]),
        (lambda x, a, m, l1, l2: (x + a(l1(x))) + m(l1(x + a(l1(x)))), ["used ln1 twice"]),
        (lambda x, a, m, l1, l2: x + a(l1(x)) + m(l2(x)), ["parallel"]),
        (_mlp_first, ["mlp before attention"]),
        (lambda x, a, m, l1, l2: (x + l1(a(x))) + l2(m(x + l1(a(x)))), ["output instead"]),
        (lambda x, a, m, l1, l2: l2(model.block_forward(x, a, m, l1, l2)),
         ["final layernorm"]),
        (lambda x, a, m, l1, l2: x[:3], ["shape"]),
        (lambda x, a, m, l1, l2: x + a(l1(x)), ["wrong values"]),
    ],
)
def test_block_diagnoses(wrong, words):
    fails_with(checks.check_block_forward, wrong, *words)


# ---------------------------------------------------------------- gpt_param_count


@pytest.mark.parametrize(
    "shape", [(65, 64, 4, 4, 64), (17, 9, 3, 2, 12), (1000, 256, 6, 4, 96)]
)
def test_param_count_reference_equals_real_model(shape):
    V, T, L, H, C = shape
    cfg = model.GPTConfig(vocab_size=V, block_size=T, n_layers=L, n_heads=H, d_model=C)
    n = model.gpt_param_count(V, T, L, C)
    assert n == model.n_params_formula(cfg)
    if C <= 64:  # building the biggest one takes a while
        assert n == model.count_params(model.GPT(cfg, rngs=nnx.Rngs(0)))


def test_param_count_passes_reference(capsys):
    checks.check_gpt_param_count(model.gpt_param_count)
    assert "✓ gpt_param_count: correct" in capsys.readouterr().out


def _count(tied=True, pos=True, tok=True, ln_blocks=2, ln_final=1, ln_bias=False, mlp=8,
           attn_out=1, qkv=3, linear_bias=False, layers=None):
    def fn(V, T, L, C):
        n_l = L if layers is None else layers
        ln = C * (2 if ln_bias else 1)
        block = ln_blocks * ln + qkv * C * C + attn_out * C * C + mlp * C * C
        if linear_bias:
            block += 3 * C + C + 4 * C + C
        return ((V * C if tok else 0) + (T * C if pos else 0) + n_l * block + ln_final * ln
                + (0 if tied else V * C))
    return fn


@pytest.mark.parametrize(
    "wrong, words",
    [
        (_count(tied=False), ["tied"]),
        (_count(pos=False), ["position embeddings"]),
        (_count(tok=False), ["token embedding"]),
        (_count(ln_blocks=0, ln_final=0), ["layernorm parameters"]),
        (_count(ln_final=0), ["final layernorm"]),
        (_count(ln_blocks=0), ["two layernorms inside each block"]),
        (_count(ln_blocks=1), ["one layernorm per block"]),
        (_count(ln_bias=True), ["bias", "scale only"]),
        (_count(mlp=2), ["4x mlp width"]),
        (_count(mlp=4), ["two matrices"]),
        (_count(attn_out=0), ["output projection"]),
        (_count(qkv=1), ["q, k, v"]),
        (_count(linear_bias=True, ln_bias=True), ["biases"]),
        (_count(linear_bias=True), ["biases in the linear layers"]),
        (_count(layers=1), ["one block only"]),
        (lambda V, T, L, C: V * C + T * C, ["wrong count"]),
        (lambda V, T, L, C: jnp.arange(3), ["single number"]),
    ],
)
def test_param_count_diagnoses(wrong, words):
    fails_with(checks.check_gpt_param_count, wrong, *words)


def test_param_count_accepts_float_and_numpy_ints():
    checks.check_gpt_param_count(lambda *a: float(model.gpt_param_count(*a)))
    checks.check_gpt_param_count(lambda *a: np.int64(model.gpt_param_count(*a)))
