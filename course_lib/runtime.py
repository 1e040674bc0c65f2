"""Where the course runs: smoke mode, the JAX backend, Colab, picking sizes, and timing.

``COURSE_FAST=1`` is the smoke mode the tests use: the same code with tiny sizes.
Without it, sizes are picked by backend, so a GPU or TPU trains a bigger model.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

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


def best_time(fn: Callable[..., Any], *args: Any, repeats: int = 3, warmup: int = 1) -> float:
    """Seconds taken by the fastest of ``repeats`` calls ``fn(*args)``.

    The ``warmup`` calls before them are not timed: the first call of a jitted function traces
    and compiles it, later calls reuse the compiled code. JAX returns before its work is done
    (it dispatches asynchronously), so every call waits for its result with
    ``jax.block_until_ready`` (an array, any pytree of arrays, or None). The fastest call is the
    one least disturbed by other programs on the machine, so it is the most repeatable number.
    Keyword arguments for ``fn`` go in a lambda: ``best_time(lambda: f(x, causal=True))``.

    Example: ``1000 * best_time(jax.jit(f), x, repeats=5)`` is f's time in milliseconds after
    one compiling call.
    """
    import jax

    if not callable(fn):
        raise TypeError(f"best_time needs a function to call, got {type(fn).__name__}: pass the "
                        "function and its arguments separately, best_time(fn, x), not fn(x).")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"best_time needs repeats >= 1 and warmup >= 0, got repeats={repeats}, "
                         f"warmup={warmup}.")
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)
