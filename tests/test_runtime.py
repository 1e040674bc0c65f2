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
