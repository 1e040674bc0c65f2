"""Checkpoints: a damaged newest checkpoint is a clear error that names its folder and the fix,
SHA-256 digests catch a flipped bit that Orbax alone restores without a word, and
``fallback=True`` resumes from the newest intact step.

The checkpoint of one short run (steps 10 and 20) is saved once; each test damages a copy.
"""

import dataclasses
import gc
import hashlib
import json
import re
import shutil
import warnings

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from checkhelp import toy_data
from flax import nnx

from course_lib import model as M
from course_lib import train as T

MCFG = M.GPTConfig(vocab_size=12, block_size=16, n_layers=2, n_heads=2, d_model=32, dropout=0.1)
TCFG = T.TrainConfig(steps=20, batch_size=4, lr=3e-3, warmup_steps=5, eval_every=10,
                     eval_batches=2, steps_per_call=10)
ZSTD_MAGIC = bytes.fromhex("28b52ffd")  # the first 4 bytes of every zstd frame

# When one array of a checkpoint cannot be read, Orbax abandons the reads of the others; Python
# reports those unfinished coroutines, and TensorStore's late callbacks into the closed event
# loop, when they are collected. They are expected here.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <coroutine object _read_array_index_and_device_put"
        ":pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings(
        r"ignore:Exception ignored in. None[\s\S]*Event loop is closed"
        ":pytest.PytestUnraisableExceptionWarning"),
]



def new_model(seed=0):
    return M.GPT(MCFG, rngs=nnx.Rngs(seed))


def host_params(model):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.Param))]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    run = tmp_path_factory.mktemp("checkpoints") / "run"
    tr, va = toy_data()
    T.fit(new_model(), tr, va, TCFG, checkpoint_dir=run, checkpoint_every=10, progress=False)
    assert sorted(p.name for p in run.iterdir()) == ["10", "20"]
    return run


@pytest.fixture
def ckpt(saved, tmp_path):
    """A fresh copy of the saved run, as an absolute path without symlinks (as errors print it)."""
    run = (tmp_path / "run").resolve()
    shutil.copytree(saved, run)
    yield run
    gc.collect()  # report Orbax's abandoned reads (see pytestmark) here, not in another module


# --- what Orbax's files look like, and how to damage them -----------------------------------


def largest_array_file(step_dir):
    """The biggest data file of Orbax's array store (OCDBT): it holds the zstd-compressed chunks
    of the larger arrays, one compressed value after another."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    return max(files, key=lambda p: p.stat().st_size)


def metadata_file(step_dir):
    path = step_dir / "meta" / "metadata"  # where Orbax's JsonCheckpointHandler writes
    assert path.is_file(), sorted(p.name for p in (step_dir / "meta").iterdir())
    return path


def flip_bit(path, offset, bit=4):
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def leaf_name(path):
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def orbax_alone(step_dir):
    """The arrays of ``step_dir`` as plain Orbax restores them, without course_lib's checks."""
    tree = ocp.StandardCheckpointer().restore(step_dir / "state")
    return {leaf_name(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def find_silent_flip(step_dir, scratch):
    """(file, offset, changed arrays) of a one-bit flip in the largest array file that plain Orbax
    restores without an error but with different values. Zstd frames here carry no checksum, so
    most flips inside the compressed data decode to other numbers; the few that break the
    stream instead are skipped."""
    clean = orbax_alone(step_dir)
    target = largest_array_file(step_dir).relative_to(step_dir)
    size = (step_dir / target).stat().st_size
    for offset in np.linspace(0.1 * size, 0.9 * size, 17).astype(int):
        trial = scratch / f"flip_{offset}"
        shutil.copytree(step_dir, trial)
        flip_bit(trial / target, offset)
        try:
            got = orbax_alone(trial)
        except Exception:
            continue
        changed = [k for k in clean if not np.array_equal(clean[k], got[k], equal_nan=True)]
        if changed:
            return target, offset, changed
    pytest.fail("No single flipped bit changed a stored value: has Orbax's on-disk format changed?")


def empty_folder(step_dir):
    shutil.rmtree(step_dir)
    step_dir.mkdir()


def no_metadata(step_dir):
    shutil.rmtree(step_dir / "meta")


def invalid_metadata_json(step_dir):
    metadata_file(step_dir).write_text('{"step": 20, "train_config": ')


def edited_metadata(step_dir):
    path = metadata_file(step_dir)
    meta = json.loads(path.read_text())
    meta["history"]["train_loss"][3] += 0.5  # still valid JSON, but not what was saved
    path.write_text(json.dumps(meta))


def no_arrays(step_dir):
    shutil.rmtree(step_dir / "state")


def missing_array_file(step_dir):
    largest_array_file(step_dir).unlink()


def truncated_array_file(step_dir):
    path = largest_array_file(step_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = [
    (empty_folder, "the folder is empty"),
    (no_metadata, r"its metadata \(meta/\) cannot be read"),
    (invalid_metadata_json, r"its metadata \(meta/\) cannot be read \(JSONDecodeError"),
    (edited_metadata, "does not match the SHA-256 digest"),
    (no_arrays, r"its arrays \(state/\) cannot be read"),
    (missing_array_file, r"its arrays \(state/\) cannot be read"),
    (truncated_array_file, r"its arrays \(state/\) cannot be read"),
]


# --- tests ------------------------------------------------------------------------------------


def test_digests_are_the_sha256_of_each_saved_array(ckpt):
    meta = json.loads(metadata_file(ckpt / "20").read_text())
    state = T.restore_checkpoint(ckpt, new_model())
    wte = np.asarray(state.model.wte.embedding[...])
    record = meta["arrays"]["params/wte/embedding/value"]
    assert record == {"shape": [12, 32], "dtype": "float32",
                      "sha256": hashlib.sha256(wte.tobytes()).hexdigest()}
    assert len(meta["arrays"]) == len(jax.tree.leaves({"p": nnx.state(state.model, nnx.Param),
                                                       "o": state.opt_state}))


@pytest.mark.parametrize("damage, why", DAMAGES, ids=[d.__name__ for d, _ in DAMAGES])
def test_a_damaged_newest_checkpoint_is_an_error_naming_the_folder_and_the_fix(ckpt, damage, why):
    folder = ckpt / "20"
    damage(folder)
    with pytest.raises(T.CheckpointError) as err:
        T.restore_checkpoint(ckpt, new_model())
    msg = str(err.value)
    assert f"The checkpoint {folder} is corrupt or incomplete" in msg
    assert re.search(why, msg), msg
    assert "Delete that folder" in msg and "fallback=True" in msg and "step 10" in msg
    assert isinstance(err.value, ValueError)  # callers that catch ValueError still do
    with pytest.warns(UserWarning, match=f"Skipping the damaged checkpoint {re.escape(str(folder))}"):
        assert T.latest_step(ckpt) == 10  # the step to resume from, not the damaged one


def test_a_flipped_bit_that_orbax_restores_silently_is_caught(ckpt, tmp_path):
    folder = ckpt / "20"
    target, offset, changed = find_silent_flip(folder, tmp_path / "scratch")
    flip_bit(folder / target, offset)
    assert orbax_alone(folder)  # plain Orbax still restores it, with other values (see above)
    with pytest.raises(T.CheckpointError, match="do not match the SHA-256 digest") as err:
        T.restore_checkpoint(ckpt, new_model())
    msg = str(err.value)
    assert str(folder) in msg and "fallback=True" in msg
    assert any(name in msg for name in changed), (changed, msg)  # it names the damaged array


def test_a_flipped_bit_that_breaks_decompression_is_caught(ckpt):
    folder = ckpt / "20"
    path = largest_array_file(folder)
    assert path.read_bytes()[:4] == ZSTD_MAGIC  # the file starts with a zstd frame
    flip_bit(path, 0, bit=0)  # the frame's magic number: the chunk cannot be decoded
    with pytest.raises(Exception):  # noqa: B017 (Orbax raises its plain Exception)
        orbax_alone(folder)
    with pytest.raises(T.CheckpointError, match=r"arrays \(state/\) cannot be read") as err:
        T.restore_checkpoint(ckpt, new_model())
    assert str(folder) in str(err.value) and "zstd" in str(err.value).lower()


def test_fallback_restores_the_newest_intact_step_and_resuming_replaces_the_damaged_one(ckpt):
    params_20 = host_params(T.restore_checkpoint(ckpt, new_model()).model)
    truncated_array_file(ckpt / "20")
    with pytest.warns(UserWarning, match=f"Restored step 10, skipping .*{re.escape(str(ckpt))}/20"):
        state = T.restore_checkpoint(ckpt, new_model(seed=5), fallback=True)
    assert state.step == 10 and len(state.history.train_loss) == 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an intact step asked for by number: no warning
        exact = T.restore_checkpoint(ckpt, new_model(seed=6), step=10)
    for a, b in zip(host_params(state.model), host_params(exact.model), strict=True):
        np.testing.assert_array_equal(a, b)

    # Resuming redoes the lost steps exactly, and saving step 20 replaces the damaged folder.
    tr, va = toy_data()
    T.fit(state, tr, va, checkpoint_dir=ckpt, checkpoint_every=10, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert T.latest_step(ckpt) == 20
        again = T.restore_checkpoint(ckpt, new_model())
    for a, b in zip(host_params(again.model), params_20, strict=True):
        np.testing.assert_array_equal(a, b)


def test_when_no_checkpoint_is_intact(ckpt):
    empty_folder(ckpt / "10")
    truncated_array_file(ckpt / "20")
    with pytest.raises(T.CheckpointError, match="no older checkpoint in .* is intact either"):
        T.restore_checkpoint(ckpt, new_model())
    with pytest.raises(T.CheckpointError, match=f"No checkpoint in {re.escape(str(ckpt))} is "
                                                "intact: .*/20 .*; .*/10 .*Train from scratch"):
        T.restore_checkpoint(ckpt, new_model(), fallback=True)
    with pytest.warns(UserWarning, match="Skipping the damaged checkpoint"):
        assert T.latest_step(ckpt) is None


def test_choosing_a_step(ckpt):
    empty_folder(ckpt / "20")
    assert T.restore_checkpoint(ckpt, new_model(), step=10).step == 10
    with pytest.raises(T.CheckpointError, match=f"{re.escape(str(ckpt))}/20 is corrupt.*the "
                                                "newest intact one before it is step=10"):
        T.restore_checkpoint(ckpt, new_model(), step=20)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint of step 15; it has steps \[10, 20\]"):
        T.restore_checkpoint(ckpt, new_model(), step=15)
    with pytest.raises(ValueError, match="fallback=True picks the newest intact step itself"):
        T.restore_checkpoint(ckpt, new_model(), step=10, fallback=True)


def test_another_optimiser_is_a_mismatch_not_damage(ckpt):
    no_clipping = dataclasses.replace(TCFG, grad_clip=0.0)  # no clip_by_global_norm in the chain
    with pytest.raises(ValueError, match="do not fit this model and optimiser") as err:
        T.restore_checkpoint(ckpt, new_model(), no_clipping)
    assert not isinstance(err.value, T.CheckpointError)
    assert "leave cfg=None" in str(err.value)


def test_a_checkpoint_saved_without_digests_restores_with_a_warning(ckpt):
    path = metadata_file(ckpt / "20")
    meta = json.loads(path.read_text())
    del meta["arrays"], meta["meta_sha256"]  # the layout before digests were saved
    path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="saved without SHA-256 digests"):
        state = T.restore_checkpoint(ckpt, new_model())
    assert state.step == 20
