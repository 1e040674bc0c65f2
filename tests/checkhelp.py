"""Shared by the tests: exercise-check helpers (course_lib.checks) and toy training data."""

import numpy as np
import pytest


def fails_with(check, fn, *words):
    """Run ``check(fn)``; it must raise AssertionError whose message contains every word."""
    with pytest.raises(AssertionError) as info:
        check(fn)
    msg = str(info.value).lower()
    for w in words:
        assert w.lower() in msg, f"expected {w!r} in the hint, got:\n{info.value}"
    return msg


def toy_data(n=3000, seed=0):
    """A learnable sequence of ids below 12: counting mod 12 with 10 % noise, split 90/10 into
    training and validation data (so saved weights move from step to step)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(n) % 12
    noise = rng.random(n) < 0.1
    ids[noise] = rng.integers(0, 12, noise.sum())
    return ids[: n * 9 // 10].astype(np.int32), ids[n * 9 // 10:].astype(np.int32)
