"""Training: one step, the compiled loop built from it, fit on any model with its own batches and
loss; it learns, resumes exactly from a checkpoint, fails clearly, runs on a mesh."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from checkhelp import toy_data
from flax import nnx

from course_lib import model as M
from course_lib import train as T

MCFG = M.GPTConfig(vocab_size=12, block_size=16, n_layers=2, n_heads=2, d_model=32, dropout=0.1)
TCFG = T.TrainConfig(steps=40, batch_size=4, lr=3e-3, warmup_steps=5, eval_every=20,
                     eval_batches=2, steps_per_call=10)


def new_model(seed=0):
    return M.GPT(MCFG, rngs=nnx.Rngs(seed))


# ---------------------------------------------------------------- one step and the references


def toy_regression():
    params = {"w": jnp.array([1.0, -2.0, 0.5]), "b": jnp.array(0.1)}
    x = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
    y = x @ jnp.array([0.5, 0.5, -1.0])

    def loss_of(p, x, y):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    return params, x, y, loss_of


def test_train_step_is_one_optax_step():
    params, x, y, loss_of = toy_regression()
    tx = optax.chain(optax.clip_by_global_norm(0.5), optax.adamw(0.1, weight_decay=0.1))
    state = tx.init(params)
    new_params, new_state, loss = T.train_step(params, state, x, y, loss_of=loss_of, tx=tx)
    grads = jax.grad(loss_of)(params, x, y)
    updates, want_state = tx.update(grads, state, params)
    want = optax.apply_updates(params, updates)
    for k in params:
        np.testing.assert_allclose(new_params[k], want[k], rtol=1e-6)
    np.testing.assert_allclose(jax.tree.leaves(new_state)[0], jax.tree.leaves(want_state)[0])
    assert float(loss) == pytest.approx(float(loss_of(params, x, y)))  # the loss before the step
    *same, norm = T.train_step(params, state, x, y, loss_of=loss_of, tx=tx, grad_norm=True)
    assert float(norm) == pytest.approx(float(optax.tree.norm(grads)), rel=1e-6)
    np.testing.assert_array_equal(same[0]["w"], new_params["w"])
    jitted = jax.jit(lambda p, s: T.train_step(p, s, x, y, loss_of=loss_of, tx=tx))
    np.testing.assert_allclose(jitted(params, state)[0]["w"], new_params["w"], rtol=1e-6)


def test_the_exercise_references_agree_with_the_optax_versions():
    tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 9), 0, 12)
    logits = jax.random.normal(jax.random.PRNGKey(2), (3, 8, 12))
    assert float(T.next_token_loss(logits, tokens)) == pytest.approx(
        float(T.loss_fn(logits, tokens[:, 1:])), rel=1e-6)
    cfg = T.TrainConfig(steps=100, lr=1e-2, min_lr=1e-3, warmup_steps=10)
    sched = T.lr_schedule(cfg)
    for step in (0, 5, 10, 37, 100, 120):
        assert T.lr_at(step, peak_lr=1e-2, min_lr=1e-3, warmup_steps=10,
                       total_steps=100) == pytest.approx(float(sched(step)), rel=1e-5, abs=1e-9)
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([[12.0]])}  # global norm 13
    clip = optax.clip_by_global_norm(1.0)
    want, _ = clip.update(grads, clip.init(grads))
    got = T.clip_by_global_norm(grads, 1.0)
    for k in grads:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6)


# ---------------------------------------------------------------- fit


def test_schedule_warmup_then_cosine():
    sched = T.lr_schedule(T.TrainConfig(steps=100, lr=1.0, min_lr=0.1, warmup_steps=10))
    assert float(sched(0)) == 0.0
    assert abs(float(sched(10)) - 1.0) < 1e-6
    assert abs(float(sched(100)) - 0.1) < 1e-6
    assert float(sched(50)) < float(sched(20))


def test_loss_goes_down_and_history_is_complete():
    tr, va = toy_data()
    state = T.fit(new_model(), tr, va, TCFG, progress=False)
    h = state.history
    assert state.step == 40 and len(h.train_loss) == 40 and h.step == list(range(40))
    assert h.val_step == [0, 20, 40]
    assert h.val_loss[-1] < h.val_loss[0] - 0.5
    assert all(np.isfinite(h.grad_norm)) and h.lr[0] == 0.0
    assert h.call_steps == [10] * 4 and len(h.call_seconds) == 4  # one entry per compiled call
    assert h.tokens_per_second > 0 and h.compile_seconds >= 0


def test_the_compiled_chunk_is_fits_loop():
    """Trainer.chunk from step 0 gives the losses fit records; one Trainer per structure."""
    tr, va = toy_data()
    fitted = T.fit(new_model(), tr, va, TCFG, progress=False)
    model = new_model()
    trainer = T.Trainer.for_model(model, TCFG)
    assert T.Trainer.for_model(nnx.clone(model), TCFG) is trainer  # one structure, one Trainer
    params, rest = trainer.split(model)
    _, _, (losses, norms, lrs) = trainer.run(40, params, trainer.tx.init(params), rest,
                                             jnp.asarray(tr), jnp.int32(0))
    np.testing.assert_allclose(losses, fitted.history.train_loss, rtol=1e-5)
    np.testing.assert_allclose(lrs, fitted.history.lr, rtol=1e-6)
    # A fresh model of the same config has the same structure, and reuses the compiled code
    # (on flax 0.11 too, whose layers keep their initializer functions in the structure).
    assert nnx.split(new_model(seed=3))[0] == nnx.split(model)[0]
    assert T.Trainer.for_model(new_model(seed=5), TCFG) is trainer
    again = T.fit(new_model(seed=3), tr, va, TCFG, progress=False)
    assert again.history.compile_seconds == 0.0  # compiled by the first fit


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fit_and_evaluate_leave_the_models_mode_alone(mode):
    tr, va = toy_data()
    model = new_model()
    getattr(model, mode)()
    before = nnx.split(model)[0]
    T.fit(model, tr, va, TCFG, steps=10, progress=False)
    loss = T.evaluate(model, va, TCFG)
    assert nnx.split(model)[0] == before
    model.eval()
    assert T.evaluate(model, va, TCFG) == loss  # evaluation never uses dropout


class Regressor(nnx.Module):
    """Not a language model: a linear regression with dropout on its inputs."""

    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(3, 1, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)

    def __call__(self, x, *, rngs=None):
        return self.linear(self.drop(x, rngs=rngs))[:, 0]


def random_rows(data, batch_size, key):
    x, y = data
    idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
    return x[idx], y[idx]


def mse(model, x, y, rngs=None):
    return jnp.mean((model(x, rngs=rngs) - y) ** 2)


def regression_data(n, seed):
    x = np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)
    return x, x @ np.array([1.0, -2.0, 0.5], np.float32) + 0.3


def test_any_model_trains_through_fit_with_its_own_batches_and_loss(tmp_path):
    cfg = T.TrainConfig(steps=60, batch_size=16, lr=0.05, warmup_steps=5, weight_decay=0.0,
                        eval_every=20, eval_batches=4, steps_per_call=10)
    tr, va = regression_data(200, 0), regression_data(50, 1)
    kw = dict(sample_batch=random_rows, loss=mse, progress=False)
    full = T.fit(Regressor(nnx.Rngs(0)), tr, va, cfg, **kw)
    h = full.history
    assert h.val_step == [0, 20, 40, 60] and h.val_loss[-1] < 0.2 * h.val_loss[0]
    assert h.tokens_per_second > 0  # here: targets (one per row) per second
    assert T.evaluate(full.model, va, cfg, sample_batch=random_rows, loss=mse) == pytest.approx(
        h.val_loss[-1], rel=1e-6)
    # checkpoints and an exact resume, as for the GPT
    T.fit(Regressor(nnx.Rngs(0)), tr, va, cfg, steps=20, checkpoint_dir=tmp_path, **kw)
    resumed = T.restore_checkpoint(tmp_path, Regressor(nnx.Rngs(9)))
    resumed = T.fit(resumed, tr, va, **kw)
    np.testing.assert_array_equal(resumed.history.train_loss, h.train_loss)
    np.testing.assert_array_equal(resumed.history.val_loss, h.val_loss)


def test_fit_names_what_a_model_without_token_windows_needs():
    tr = regression_data(50, 0)
    with pytest.raises(ValueError, match="pass sample_batch=... and loss=..."):
        T.fit(Regressor(nnx.Rngs(0)), tr, tr, TCFG, progress=False)
    with pytest.raises(TypeError, match="sample_batch must be a function"):
        T.fit(Regressor(nnx.Rngs(0)), tr, tr, TCFG, sample_batch="rows", loss=mse)
    with pytest.raises(TypeError, match="loss must be a function"):
        T.fit(Regressor(nnx.Rngs(0)), tr, tr, TCFG, sample_batch=random_rows, loss=0.5)
    with pytest.raises(ValueError, match="holds no arrays"):
        T.fit(Regressor(nnx.Rngs(0)), (), tr, TCFG, sample_batch=random_rows, loss=mse)


def test_resume_from_checkpoint_reproduces_the_uninterrupted_run(tmp_path):
    tr, va = toy_data()
    full = T.fit(new_model(), tr, va, TCFG, progress=False)
    T.fit(new_model(), tr, va, TCFG, steps=20, progress=False, checkpoint_dir=tmp_path)
    assert T.latest_step(tmp_path) == 20
    resumed = T.restore_checkpoint(tmp_path, new_model(seed=123))  # other init: overwritten
    assert resumed.step == 20 and len(resumed.history.train_loss) == 20
    resumed = T.fit(resumed, tr, va, progress=False)
    np.testing.assert_array_equal(resumed.history.train_loss, full.history.train_loss)
    np.testing.assert_array_equal(resumed.history.val_loss, full.history.val_loss)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    tr, va = toy_data()
    state = T.fit(new_model(), tr, va, TCFG, steps=20, progress=False, checkpoint_dir=tmp_path)
    state = T.fit(state, tr, va, progress=False)  # now at step 40, not yet saved

    class PowerCut(Exception):
        pass

    def crash(*args, **kwargs):
        raise PowerCut("power cut half-way through the save")

    monkeypatch.setattr(ocp.JsonCheckpointHandler, "save", crash)
    monkeypatch.setattr(ocp.JsonCheckpointHandler, "async_save", crash)
    with pytest.raises(PowerCut):
        T.save_checkpoint(tmp_path, state)
    monkeypatch.undo()
    assert T.latest_step(tmp_path) == 20
    restored = T.restore_checkpoint(tmp_path, new_model())
    assert restored.step == 20


def test_restore_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        T.restore_checkpoint(tmp_path / "missing", new_model())
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        T.restore_checkpoint(tmp_path / "empty", new_model())
    tr, va = toy_data()
    T.fit(new_model(), tr, va, TCFG, steps=10, progress=False, checkpoint_dir=tmp_path / "c")
    other = M.GPT(M.GPTConfig(12, 16, 1, 2, 32), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="another configuration"):
        T.restore_checkpoint(tmp_path / "c", other)


def test_corrupt_checkpoint_is_reported(tmp_path):
    tr, va = toy_data()
    T.fit(new_model(), tr, va, TCFG, steps=10, progress=False, checkpoint_dir=tmp_path)
    files = [p for p in (tmp_path / "10").rglob("*") if p.is_file() and "state" in str(p)]
    for p in files:
        p.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        T.restore_checkpoint(tmp_path, new_model())


def test_nan_loss_stops_with_advice():
    tr, va = toy_data()
    m = new_model()
    nnx.update(m, jax.tree.map(lambda p: p * jnp.nan, nnx.state(m, nnx.Param)))
    with pytest.raises(T.TrainingDiverged, match="lower learning rate"):
        T.fit(m, tr, va, TCFG, progress=False)


def test_bad_input_errors():
    tr, va = toy_data()
    with pytest.raises(ValueError, match="fewer than block_size"):
        T.fit(new_model(), tr, va[:10], TCFG, progress=False)
    with pytest.raises(ValueError, match="TrainConfig"):
        T.fit(new_model(), tr, va, progress=False)


def test_fit_on_a_mesh_of_8_simulated_devices_matches_one_device():
    """Runs in a subprocess: the device count must be set before JAX starts."""
    code = textwrap.dedent("""
        import jax, numpy as np
        from flax import nnx
        from course_lib import model as M, train as T
        assert jax.device_count() == 8, jax.devices()
        ids = (np.arange(4000) % 12).astype(np.int32)
        mcfg = M.GPTConfig(12, 16, 2, 2, 32)
        tcfg = T.TrainConfig(steps=20, batch_size=8, eval_every=10, eval_batches=2,
                             steps_per_call=10, warmup_steps=2)
        mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
        one = T.fit(M.GPT(mcfg, rngs=nnx.Rngs(0)), ids[:3600], ids[3600:], tcfg, progress=False)
        many = T.fit(M.GPT(mcfg, rngs=nnx.Rngs(0)), ids[:3600], ids[3600:], tcfg, mesh=mesh,
                     progress=False)
        np.testing.assert_allclose(many.history.train_loss, one.history.train_loss, rtol=2e-5)
        np.testing.assert_allclose(many.history.val_loss, one.history.val_loss, rtol=2e-5)
        bad = T.TrainConfig(steps=2, batch_size=6, steps_per_call=1)
        try:
            T.fit(M.GPT(mcfg, rngs=nnx.Rngs(0)), ids[:3600], ids[3600:], bad, mesh=mesh,
                  progress=False)
            raise SystemExit("expected an error for a batch not divisible by 8")
        except ValueError as err:
            assert "divisible" in str(err)
        print("MESH-OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert "MESH-OK" in out.stdout, out.stderr[-3000:]


def test_time_budget_stops_early():
    tr, va = toy_data()
    state = T.fit(new_model(), tr, va, T.TrainConfig(steps=10_000, batch_size=4, eval_every=500,
                                                     eval_batches=2, steps_per_call=10),
                  max_seconds=0.5, progress=False)
    assert 0 < state.step < 10_000
    assert state.history.val_step[-1] == state.step  # the last point is evaluated
