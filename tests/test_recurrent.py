"""The recurrent language models: shapes, the recurrence equations, causality, the loss at
initialisation, parameter counts, clear errors, and that train.fit trains them unchanged."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checkhelp import toy_data
from flax import nnx

from course_lib import generate as G
from course_lib import model as M
from course_lib import recurrent as R
from course_lib import train as T

CELLS = ["rnn", "lstm"]


def new_model(cell, *, V=12, T_=16, C=16, L=1, dropout=0.0, seed=0):
    cfg = R.RNNConfig(vocab_size=V, block_size=T_, d_model=C, n_layers=L, cell=cell,
                      dropout=dropout)
    return R.RecurrentLM(cfg, rngs=nnx.Rngs(seed))


def random_ids(B, T_, V, seed=0):
    return jax.random.randint(jax.random.key(seed), (B, T_), 0, V)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("L", [1, 2])
def test_shapes_and_dtype(cell, L):
    m = new_model(cell, L=L)
    logits = m(random_ids(3, 10, 12))
    assert logits.shape == (3, 10, 12) and logits.dtype == jnp.float32
    assert m(random_ids(2, 16, 12)).shape == (2, 16, 12)  # the full block_size
    assert np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("L", [1, 2])
def test_param_count_matches_formula(cell, L):
    cfg = R.RNNConfig(vocab_size=65, block_size=64, d_model=48, n_layers=L, cell=cell)
    m = R.RecurrentLM(cfg, rngs=nnx.Rngs(0))
    assert M.count_params(m) == R.n_params_formula(cfg)
    gates = 4 if cell == "lstm" else 1
    by_hand = 65 * 48 + L * gates * (48 * 48 + 48 * 48 + 48) + 48 * 65 + 65
    assert R.n_params_formula(cfg) == by_hand


def _numpy_forward(m, ids):
    """The recurrence written as a plain Python loop over time, in float64."""
    p = lambda x: np.asarray(x[...], np.float64)  # noqa: E731
    x = p(m.embed.embedding)[np.asarray(ids)]  # (B, T, C)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    for layer in m.layers:
        w_x, w_h, b = p(layer.w_x), p(layer.w_h), p(layer.b)
        H = w_h.shape[0]
        h = np.zeros((x.shape[0], H))
        c = np.zeros_like(h)
        out = []
        for t in range(x.shape[1]):
            z = x[:, t] @ w_x + h @ w_h + b
            if layer.cell == "lstm":
                i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
                c = sig(f) * c + sig(i) * np.tanh(g)
                h = sig(o) * np.tanh(c)
            else:
                h = np.tanh(z)
            out.append(h)
        x = np.stack(out, axis=1)
    return x @ p(m.head.kernel) + p(m.head.bias)


@pytest.mark.parametrize("cell", CELLS)
def test_scan_matches_a_plain_loop_over_time(cell):
    m = new_model(cell, L=2)
    ids = random_ids(2, 9, 12, seed=3)
    np.testing.assert_allclose(np.asarray(m(ids)), _numpy_forward(m, ids), rtol=1e-4, atol=1e-5)


def test_lstm_forget_gate_bias_starts_at_one():
    m = new_model("lstm", C=8)
    b = np.asarray(m.layers[0].b[...])
    np.testing.assert_array_equal(b[8:16], 1.0)  # gate order i, f, g, o
    np.testing.assert_array_equal(np.r_[b[:8], b[16:]], 0.0)


@pytest.mark.parametrize("cell", CELLS)
def test_causal_a_future_token_does_not_change_earlier_logits(cell):
    m = new_model(cell, L=2)
    ids = random_ids(2, 12, 12, seed=1)
    t = 7
    changed = ids.at[:, t].set((ids[:, t] + 5) % 12)
    a, b = np.asarray(m(ids)), np.asarray(m(changed))
    np.testing.assert_array_equal(a[:, :t], b[:, :t])
    assert np.abs(a[:, t:] - b[:, t:]).max() > 1e-4  # and later positions do see it


@pytest.mark.parametrize("cell", CELLS)
def test_loss_at_init_is_close_to_ln_vocab(cell):
    m = new_model(cell, V=65, T_=32, C=64)
    ids = random_ids(8, 33, 65, seed=2)
    loss = float(T.loss_fn(m(ids[:, :-1]), ids[:, 1:]))
    assert abs(loss - math.log(65)) < 0.05, loss


def test_dropout_only_in_training_mode():
    m = new_model("lstm", dropout=0.5)
    ids = random_ids(2, 8, 12)
    m.train()
    a = m(ids, rngs=nnx.Rngs(dropout=1))
    b = m(ids, rngs=nnx.Rngs(dropout=2))
    assert not np.allclose(np.asarray(a), np.asarray(b))
    m.eval()
    np.testing.assert_array_equal(np.asarray(m(ids)), np.asarray(m(ids)))


def test_clear_errors():
    with pytest.raises(ValueError, match="cell must be one of"):
        R.RNNConfig(vocab_size=12, block_size=8, d_model=8, cell="gru")
    with pytest.raises(ValueError, match="positive integer"):
        R.RNNConfig(vocab_size=12, block_size=8, d_model=0)
    with pytest.raises(ValueError, match="dropout"):
        R.RNNConfig(vocab_size=12, block_size=8, d_model=8, dropout=1.0)
    m = new_model("rnn")
    with pytest.raises(ValueError, match="block_size"):
        m(random_ids(1, 17, 12))
    with pytest.raises(ValueError, match="shape"):
        m(jnp.zeros((5,), jnp.int32))
    with pytest.raises(TypeError, match="integer"):
        m(jnp.zeros((1, 4)))



@pytest.mark.parametrize("cell", CELLS)
def test_fit_trains_it_unchanged(cell, tmp_path):
    tr, va = toy_data()
    cfg = T.TrainConfig(steps=40, batch_size=4, lr=1e-2, warmup_steps=5, eval_every=20,
                        eval_batches=2, steps_per_call=10)
    m = new_model(cell, dropout=0.1)
    state = T.fit(m, tr, va, cfg, progress=False, checkpoint_dir=tmp_path)
    h = state.history
    assert h.val_step == [0, 20, 40] and len(h.train_loss) == 40
    assert h.val_loss[-1] < h.val_loss[0] - 0.5
    assert h.tokens_per_second > 0
    restored = T.restore_checkpoint(tmp_path, new_model(cell, dropout=0.1, seed=9))
    assert restored.step == 40
    assert T.evaluate(restored.model, va, cfg) == pytest.approx(T.evaluate(m, va, cfg), rel=1e-6)


def test_generate_without_cache():
    m = new_model("lstm")
    out = G.generate(m, jnp.zeros((2, 3), jnp.int32), 20, key=jax.random.key(0),
                     use_cache=False)
    assert out.shape == (2, 23)
    assert int(out.min()) >= 0 and int(out.max()) < 12
