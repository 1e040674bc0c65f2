"""course_lib.runtime: smoke mode, backend description, Colab detection, size picking."""

from __future__ import annotations

import sys

import jax
import pytest

from course_lib import runtime


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "on", " 1 "])
def test_fast_mode_on(monkeypatch, value):
    monkeypatch.setenv("COURSE_FAST", value)
    assert runtime.fast_mode()


@pytest.mark.parametrize("value", ["", "0", "false", "no", "off", "2"])
def test_fast_mode_off(monkeypatch, value):
    monkeypatch.setenv("COURSE_FAST", value)
    assert not runtime.fast_mode()


def test_fast_mode_unset(monkeypatch):
    monkeypatch.delenv("COURSE_FAST", raising=False)
    assert not runtime.fast_mode()


def test_pick_fast_wins_on_every_backend(monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "1")
    for backend in ("cpu", "gpu", "tpu"):
        monkeypatch.setattr(runtime, "backend", lambda b=backend: b)
        assert runtime.pick(full=100, fast=2, gpu=1000, tpu=5000) == 2


@pytest.mark.parametrize(
    ("backend", "kwargs", "expected"),
    [
        ("cpu", dict(full=100, fast=2, gpu=1000, tpu=5000), 100),
        ("gpu", dict(full=100, fast=2, gpu=1000, tpu=5000), 1000),
        ("tpu", dict(full=100, fast=2, gpu=1000, tpu=5000), 5000),
        ("tpu", dict(full=100, fast=2, gpu=1000), 1000),  # a TPU takes the GPU size if no TPU one
        ("gpu", dict(full=100, fast=2), 100),  # no accelerator size: the CPU size
    ],
)
def test_pick_full_mode_by_backend(monkeypatch, backend, kwargs, expected):
    monkeypatch.delenv("COURSE_FAST", raising=False)
    monkeypatch.setattr(runtime, "backend", lambda: backend)
    assert runtime.pick(**kwargs) == expected


def test_pick_real_backend(monkeypatch):
    monkeypatch.delenv("COURSE_FAST", raising=False)
    expected = {"cpu": "c", "gpu": "g", "tpu": "t"}[jax.default_backend()]
    assert runtime.pick(full="c", fast="f", gpu="g", tpu="t") == expected


def test_describe_names_version_backend_and_mode(monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "1")
    line = runtime.describe()
    assert "\n" not in line
    assert jax.__version__ in line
    assert jax.default_backend() in line
    assert "smoke" in line
    monkeypatch.delenv("COURSE_FAST")
    assert "full" in runtime.describe()


def test_not_in_colab_here(monkeypatch):
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    assert not runtime.in_colab()
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20250101-060000_RC00")
    assert runtime.in_colab()


# ---- best_time ------------------------------------------------------------------------------


class CountingFn:
    """A function that records its calls and returns a small JAX array."""

    def __init__(self):
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)
        return jax.numpy.ones(4) * len(self.calls)


@pytest.mark.parametrize(("repeats", "warmup"), [(3, 1), (1, 0), (5, 2)])
def test_best_time_calls_warmup_plus_repeats(repeats, warmup):
    fn = CountingFn()
    seconds = runtime.best_time(fn, "a", 2, repeats=repeats, warmup=warmup)
    assert len(fn.calls) == warmup + repeats
    assert all(args == ("a", 2) for args in fn.calls)  # the arguments reach fn unchanged
    assert isinstance(seconds, float) and seconds > 0


def test_best_time_waits_for_every_result(monkeypatch):
    waited = []
    real = jax.block_until_ready
    monkeypatch.setattr(jax, "block_until_ready", lambda x: waited.append(x) or real(x))
    fn = CountingFn()
    runtime.best_time(fn, repeats=2, warmup=1)
    assert [float(w[0]) for w in waited] == [1.0, 2.0, 3.0]  # each call's own result


def test_best_time_returns_the_fastest_timed_call(monkeypatch):
    # A fake clock: the timed calls take 0.5, 0.2 and 0.3 s; the warm-up call is not timed.
    ticks = iter([0.0, 0.5, 1.0, 1.2, 2.0, 2.3])
    monkeypatch.setattr(runtime, "time", type("FakeTime", (), {"perf_counter": lambda: next(ticks)}))
    assert runtime.best_time(lambda: None, repeats=3) == pytest.approx(0.2)


def test_best_time_times_a_jitted_function():
    f = jax.jit(lambda x: x @ x)
    x = jax.numpy.ones((64, 64))
    assert runtime.best_time(f, x) > 0


def test_best_time_bad_input():
    with pytest.raises(TypeError, match="best_time\\(fn, x\\), not fn\\(x\\)"):
        runtime.best_time(jax.numpy.ones(3))  # the result of a call instead of the function
    with pytest.raises(ValueError, match="repeats >= 1"):
        runtime.best_time(lambda: None, repeats=0)
    with pytest.raises(ValueError, match="warmup >= 0"):
        runtime.best_time(lambda: None, warmup=-1)
