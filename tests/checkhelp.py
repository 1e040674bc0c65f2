"""Shared by the tests of the exercise checks (course_lib.checks)."""

import pytest


def fails_with(check, fn, *words):
    """Run ``check(fn)``; it must raise AssertionError whose message contains every word."""
    with pytest.raises(AssertionError) as info:
        check(fn)
    msg = str(info.value).lower()
    for w in words:
        assert w.lower() in msg, f"expected {w!r} in the hint, got:\n{info.value}"
    return msg
