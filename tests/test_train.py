"""Training: it learns, resumes exactly from a checkpoint, fails clearly, runs on a mesh."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
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
