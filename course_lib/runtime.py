"""Where the course runs: smoke mode, the JAX backend, Colab, and picking sizes.

``COURSE_FAST=1`` is the smoke mode the tests use: the same code with tiny sizes.
Without it, sizes are picked by backend, so a GPU or TPU trains a bigger model.
"""

from __future__ import annotations

import os
import sys
from typing import TypeVar

T = TypeVar("T")


def fast_mode() -> bool:
    """True when ``COURSE_FAST`` is set to 1/true/yes (the test suite's smoke mode)."""
    return os.environ.get("COURSE_FAST", "").strip().lower() in {"1", "true", "yes", "on"}


def in_colab() -> bool:
    """True inside a Google Colab runtime."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


def backend() -> str:
    """The JAX backend in use: 'cpu', 'gpu' or 'tpu'."""
    import jax

    return jax.default_backend()


def describe() -> str:
    """One line naming the JAX version, the backend and its devices."""
    import jax

    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    mode = "smoke mode (COURSE_FAST=1)" if fast_mode() else "full mode"
    where = "Colab" if in_colab() else "local"
    return (
        f"JAX {jax.__version__} | backend {jax.default_backend()} | "
        f"{len(devices)} device(s): {', '.join(kinds)} | {mode} | {where}"
    )


def pick(*, full: T, fast: T, gpu: T | None = None, tpu: T | None = None) -> T:
    """Choose a size for the current run.

    ``fast`` in smoke mode; otherwise ``tpu``/``gpu`` on those backends when given,
    else ``full`` (the CPU size, which every notebook must finish with in minutes).
    """
    if fast_mode():
        return fast
    b = backend()
    if b == "tpu" and tpu is not None:
        return tpu
    if b in ("gpu", "tpu") and gpu is not None:
        return gpu
    return full
