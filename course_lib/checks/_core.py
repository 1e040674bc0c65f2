"""The machinery of the exercise checks: an exercise declared as data, and one runner.

An exercise is declared once, as an :class:`Exercise`: its reference solution, its test cases,
its tolerance, how to read the learner's output, and its typical mistakes. A :class:`Mistake` is a
wrong implementation (same signature as the exercise) with the hint it earns; a :class:`Property`
is something one output cannot show (the function uses its key, raises on unknown input, works
under ``jax.jit``). :func:`run` checks a learner's function against the declaration:

1. call it on each case: a stub gets "not done yet", a crash the inputs that crashed it;
2. read its output (``Exercise.output``): None or a wrong type fails with a hint;
3. compare with the reference's output on the same case; when it differs, run each mistake on
   the case: the first whose output the learner's matches names the mistake; otherwise a
   generic hint (wrong shape, NaN, wrong values);
4. once every case passes, test the properties;
5. print one line: ``✓ name: correct (detail)``.

``checker(exercise)`` makes the public ``check_<name>(fn)`` function; ``.exercise`` on it gives
the declaration back (the tests walk every declared mistake through it).
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------- messages and safe calls


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
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
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


# ---------------------------------------------------------------- reading the learner's output


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
        _fail(name, f"your function returned shape {arr.shape}; expected {what} of shape "
              f"{tuple(shape)}.")
    return arr


def as_array(name: str, out, expect: str) -> np.ndarray:
    """Output reader: a float64 array of any shape (the runner compares the shape)."""
    return _as_array(name, out, what=expect)


def as_number(name: str, out, expect: str) -> np.ndarray:
    """Output reader: one number, as a 0-d float64 array (an array of several values keeps its
    shape, so the runner reports it)."""
    arr = _as_array(name, out, what=expect)
    return arr.reshape(()) if arr.size == 1 else arr


def as_ids(name: str, out, expect: str) -> list[int]:
    """Output reader: a list of Python ints (token ids), failing with a hint otherwise."""
    if isinstance(out, (str, bytes)):
        _fail(name, f"your function returned a {type(out).__name__} ({_short(out)}); expected "
              f"{expect}.")
    if isinstance(out, dict):
        _fail(name, f"your function returned a dict; expected {expect}.")
    try:
        items = list(np.asarray(out).reshape(-1)) if hasattr(out, "shape") else list(out)
    except TypeError:
        _fail(name, f"your function returned a {type(out).__name__}; expected {expect}.")
    if any(isinstance(v, str) for v in items):
        _fail(name, f"your list holds characters ({_short(items[:5])}...), not ids; expected "
              f"{expect}.")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
        kinds = sorted({type(v).__name__ for v in items})
        _fail(name, f"the items you returned are {', '.join(kinds)}; token ids are integers "
              "(int).")
    return [int(v) for v in items]


def _shape(value) -> tuple[int, ...] | None:
    return value.shape if isinstance(value, np.ndarray) else None


def _close(a, b, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    """Arrays: same shape and allclose; tuples: element by element; anything else: ==."""
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_close(x, y, rtol, atol) for x, y in zip(a, b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        with np.errstate(all="ignore"):
            return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol))
    return a == b


def _diagnose(got, candidates: Sequence[tuple[object, str]], **tol) -> str | None:
    """The hint of the first candidate wrong answer that ``got`` matches, if any."""
    for value, hint in candidates:
        if value is not None and _close(got, value, **tol):
            return hint
    return None


# ---------------------------------------------------------------- the declarations


@dataclass(frozen=True)
class Case:
    """One set of inputs: the function is called as ``fn(*args, **kwargs)``; ``note`` says
    in messages which case it is (e.g. "step 2 of 3")."""

    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Mistake:
    """A typical mistake and the hint it earns.

    wrong: a wrong implementation, with the exercise's signature. By default the learner's output
        is compared with ``wrong``'s output on the same case (within the exercise's tolerance).
    when: how the mistake is recognised instead, when not by value:
        ``"shape"``: the learner's output has the shape of ``wrong``'s (not the expected one);
        a function ``when(got, want, case) -> bool`` on the learner's output (tested only when
        it has the expected shape); ``wrong`` is then an example the test catches (the unit
        tests feed it to the check).
    detail: ``detail(got, want, case) -> str`` appended to the hint (this case's numbers).
    always: test it even when the output equals the reference's (e.g. a mask of the right
        pattern but the wrong dtype).
    """

    hint: str
    wrong: Callable
    when: Callable | str | None = None
    detail: Callable | None = None
    always: bool = False


@dataclass(frozen=True)
class Property:
    """Something the learner's function must do that no single output shows (draw its
    randomness from its key, raise on input it cannot handle, work under ``jax.jit``).

    broken: ``broken(facts) -> bool | str`` on what ``Exercise.facts`` gathered; True, or a
        string of details appended to the hint, when the function lacks the property.
    wrong: an implementation that lacks it (the unit tests feed it to the check).
    """

    hint: str
    broken: Callable
    wrong: Callable


def _apply(fn: Callable, case: Case):
    return fn(*case.args, **case.kwargs)


@dataclass(frozen=True)
class Exercise:
    """One exercise: ``check_<name>(fn)`` is ``run(exercise, fn)``.

    reference: the right answer's implementation (its output on each case is the expected one).
    cases: ``cases() -> iterable`` of inputs, each a :class:`Case` or a tuple of positional args
        (built when the check runs: random inputs, JAX keys).
    mistakes: checked in order, only when the output differs from the reference's (unless
        ``always``); the first that matches gives the hint.
    properties: tested in order after every case passed, on ``facts(probe)``: ``probe(*args)``
        calls the learner's function and reads its output; ``probe.fn`` is the function itself.
    output: ``output(name, out, expect) -> value`` reads an output other than None (the
        learner's, the reference's, a mistake's): fails with a hint on a wrong type.
    expect: what the output should be, in words, for messages ("a probability matrix").
    shape_hint: added to the message when the output has the wrong shape.
    call: ``call(fn, case) -> out``, how to call an implementation on a case (default
        ``fn(*case.args, **case.kwargs)``).
    match: ``match(got, other, case) -> bool``, whether two read outputs count as the same
        (default: equal within ``rtol``/``atol``).
    accept: other correct implementations (e.g. the exact GELU besides the tanh one).
    show: ``show(case, got, want) -> str``, the lines under the hint (default: the inputs, the
        expected and the returned output).
    otherwise: the hint when the output is wrong and no mistake matches.
    success: the detail of the ✓ line; ``{n}`` is the number of cases.
    crash_hint: added to the message when the learner's function crashes.
    """

    name: str
    reference: Callable
    cases: Callable[[], Iterable]
    mistakes: Sequence[Mistake] = ()
    properties: Sequence[Property] = ()
    facts: Callable | None = None
    output: Callable = as_array
    expect: str = "an array"
    shape_hint: str = ""
    call: Callable = _apply
    match: Callable | None = None
    accept: Sequence[Callable] = ()
    rtol: float = 1e-4
    atol: float = 1e-6
    show: Callable | None = None
    otherwise: str = "wrong values."
    success: str = "{n} cases"
    crash_hint: str = ""
    doc: str = ""

    def read(self, out):
        """An output as a comparable value (fails with a hint on None or a wrong type)."""
        if out is None:
            _fail(self.name, "your function returned None — did you forget the `return` "
                  "statement?")
        return self.output(self.name, out, self.expect)

    def same(self, got, other, case: Case) -> bool:
        if self.match is not None:
            return bool(self.match(got, other, case))
        return _close(got, other, rtol=self.rtol, atol=self.atol)


class Probe:
    """The learner's function as properties see it: ``probe(*args)`` calls it safely and reads
    its output; ``probe.fn`` is the raw function."""

    def __init__(self, exercise: Exercise, fn: Callable):
        self.exercise, self.fn = exercise, fn

    def __call__(self, *args, **kwargs):
        ex = self.exercise
        return ex.read(_learner(ex, self.fn)(*args, **kwargs))


# ---------------------------------------------------------------- the runner


def _learner(ex: Exercise, fn: Callable) -> Callable:
    """``fn`` wrapped so that a stub or a crash becomes the learner's AssertionError."""

    def call(*args, **kwargs):
        try:
            return _call(ex.name, fn, *args, **kwargs)
        except AssertionError as err:
            if not ex.crash_hint or "raised" not in str(err):
                raise
            raise AssertionError(f"{err}\n  Hint: {ex.crash_hint}") from None

    return call


def _fresh(value):
    """A copy of a mutable input (list, dict, NumPy array), so the case itself stays intact."""
    if isinstance(value, (list, dict, np.ndarray)):
        return copy.deepcopy(value)
    return value


def _default_show(case: Case, got, want) -> str:
    args = ", ".join([_short(a, 80) for a in case.args]
                     + [f"{k}={_short(v, 80)}" for k, v in case.kwargs.items()])
    note = f" ({case.note})" if case.note else ""
    return (f"\n  called with ({args}){note}\n  expected {_short(want, 200)}"
            f"\n  got      {_short(got, 200)}")


def _caught(ex: Exercise, m: Mistake, got, want, case: Case) -> bool:
    """Whether the learner's output ``got`` shows mistake ``m`` on this case."""
    with np.errstate(all="ignore"):
        try:
            if callable(m.when):  # a test on the output: only when the shape is the expected one
                return _shape(got) == _shape(want) and bool(m.when(got, want, case))
            other = ex.read(ex.call(m.wrong, case))
        except Exception:  # noqa: BLE001 - a test or mistake that cannot run here: no match
            return False
        if m.when == "shape":
            return _shape(got) is not None and _shape(got) == _shape(other) != _shape(want)
        return ex.same(got, other, case)


def _verdict(ex: Exercise, got, want, case: Case) -> str | None:
    """None when ``got`` is right, else the hint: the first matching mistake, or a generic one."""
    right = ex.same(got, want, case) or any(
        ex.same(got, ex.read(ex.call(alt, case)), case) for alt in ex.accept)
    for m in ex.mistakes:
        if (m.always or not right) and _caught(ex, m, got, want, case):
            return m.hint + (m.detail(got, want, case) if m.detail else "")
    if right:
        return None
    if _shape(got) is not None and _shape(got) != _shape(want):
        of = f" of shape {want.shape}" if want.ndim else ""
        return (f"wrong shape: your function returned shape {got.shape}; expected {ex.expect}{of}."
                + (f" {ex.shape_hint}" if ex.shape_hint else ""))
    if isinstance(got, np.ndarray) and not np.isfinite(got).all() and np.isfinite(want).all():
        return "your output contains NaN or inf."
    return ex.otherwise


def run(ex: Exercise, fn: Callable) -> None:
    """Check the learner's ``fn`` against exercise ``ex``: print ✓ or raise AssertionError."""
    learner = _learner(ex, fn)
    n = 0
    for case in ex.cases():
        case = case if isinstance(case, Case) else Case(tuple(case))
        want = ex.read(ex.call(ex.reference, case))
        given = Case(tuple(_fresh(a) for a in case.args),
                     {k: _fresh(v) for k, v in case.kwargs.items()}, case.note)
        got = ex.read(ex.call(learner, given))
        for before, after in zip(case.args, given.args):
            if isinstance(before, list) and before != after:
                _fail(ex.name, "your function changed the list it was given (e.g. with del, pop "
                      "or item assignment). Build and return a NEW list; the caller may still "
                      f"need the old one.\n  before: {before}\n  after:  {after}")
        hint = _verdict(ex, got, want, case)
        if hint is not None:
            _fail(ex.name, hint + (ex.show or _default_show)(case, got, want))
        n += 1
    if ex.properties:
        facts = ex.facts(Probe(ex, fn))
        for p in ex.properties:
            broken = p.broken(facts)
            if broken:
                _fail(ex.name, p.hint + (broken if isinstance(broken, str) else ""))
    _ok(ex.name, ex.success.format(n=n))


def library(module: str, name: str) -> Callable:
    """``course_lib.<module>.<name>``, imported when first called: the checks load even while a
    module that only a few exercises use (retrieval, numberwords) cannot be imported."""

    def call(*args, **kwargs):
        return getattr(importlib.import_module(f"course_lib.{module}"), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"``course_lib.{module}.{name}``, imported when first called."
    return call


def checker(ex: Exercise) -> Callable[[Callable], None]:
    """The public ``check_<name>(fn)`` of an exercise; ``.exercise`` is the declaration."""

    def check(fn: Callable) -> None:
        run(ex, fn)

    check.__name__ = check.__qualname__ = f"check_{ex.name}"
    check.__doc__ = ex.doc or f"Check the learner's ``{ex.name}``."
    check.exercise = ex
    return check

