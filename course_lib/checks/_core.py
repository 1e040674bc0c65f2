"""The shared machinery of the exercise checks: call the learner's function safely, compare,
diagnose, and report in one line."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _ok(name: str, detail: str = "") -> None:
    """Print the one-line success message."""
    print(f"✓ {name}: correct" + (f" ({detail})" if detail else ""))


def _fail(name: str, hint: str) -> None:
    """Raise the AssertionError a learner sees: the exercise name, then the hint."""
    raise AssertionError(f"{name}: {hint}")


def _short(x, limit: int = 90) -> str:
    """A compact, one-line description of a test input or output."""
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return "key"
    if isinstance(x, (jax.Array, np.ndarray)):
        arr = np.asarray(x)
        if arr.ndim == 0:
            return f"{arr.item():.6g}" if arr.dtype.kind == "f" else str(arr.item())
        body = np.array2string(arr, precision=4, separator=", ", threshold=12, max_line_width=10**6)
        body = " ".join(body.split())
        text = f"array{tuple(arr.shape)} {body}"
    else:
        text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _call(name: str, fn: Callable, *args, **kwargs):
    """Call the learner's function; turn a stub or a crash into a helpful AssertionError."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise AssertionError(
            f"{name}: exercise not done yet — replace the `raise NotImplementedError` line with "
            "your code and run this cell again. (The notebook continues with the library's "
            "reference, so the cells below still work.)"
        ) from None
    except Exception as err:  # noqa: BLE001 - any crash in learner code becomes a hint
        shown = ", ".join(_short(a, 60) for a in args)
        raise AssertionError(
            f"{name}: your function raised {type(err).__name__}: {err}\n"
            f"  called with: ({shown})\n"
            "  Hint: run it on that input in a cell of its own and read the traceback."
        ) from err


def _as_array(name: str, out, shape: tuple[int, ...] | None = None, what: str = "an array"):
    """The learner's output as a float64 NumPy array, failing with a hint on None/type/shape."""
    if out is None:
        _fail(name, "your function returned None — did you forget the `return` statement?")
    if isinstance(out, (str, bytes, dict, set)):
        _fail(name, f"your function returned a {type(out).__name__}; expected {what}.")
    try:
        arr = np.asarray(out, dtype=np.float64)
    except (TypeError, ValueError):
        _fail(name, f"your function returned a {type(out).__name__}; expected {what}.")
    if shape is not None and arr.shape != tuple(shape):
        _fail(
            name,
            f"your function returned shape {arr.shape}; expected {what} of shape {tuple(shape)}.",
        )
    return arr


def _as_scalar(name: str, out, hint_if_array: str = "") -> float:
    """The learner's output as one float; an array of several values fails with a hint."""
    arr = _as_array(name, out, what="a single number")
    if arr.size != 1:
        _fail(
            name,
            f"your function returned an array of shape {arr.shape}; expected a single number. "
            + hint_if_array,
        )
    return float(arr.reshape(()))


def _close(a, b, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol))


def _diagnose(got, candidates: Sequence[tuple[object, str]], **tol) -> str | None:
    """The hint of the first candidate wrong answer that ``got`` matches, if any."""
    for value, hint in candidates:
        with np.errstate(all="ignore"):
            if value is not None and _close(got, value, **tol):
                return hint
    return None
