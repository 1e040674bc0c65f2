"""Checks for notebook 07 (scaling out and looking ahead): the shape of one device's shard, rounding
to bfloat16, the training compute in GPU-days, and the fraction of a sample copied from the
training text."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from course_lib.checks._core import _as_array, _as_scalar, _call, _close, _diagnose, _fail, _ok

__all__ = [
    "check_shard_shape", "check_round_to_bf16", "check_training_days", "check_copied_fraction",
    "reference_shard_shape", "reference_round_to_bf16", "reference_training_days",
    "reference_copied_fraction",
]


# ---------------------------------------------------------------- shard shape


def _axes(entry) -> tuple[str, ...]:
    """The mesh axes one PartitionSpec entry names: None -> (), 'data' -> ('data',)."""
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def reference_shard_shape(global_shape: Sequence[int], mesh_shape: dict[str, int],
                          spec: Sequence) -> tuple[int, ...]:
    """The shape of the block of an array that one device holds.

    global_shape: the whole array's shape, e.g. (16, 64). mesh_shape: devices per mesh axis,
    e.g. {'data': 4, 'model': 2}. spec: one entry per array axis, as in a ``PartitionSpec``:
    None (the axis is not split), a mesh axis name (split over that axis), or a tuple of names
    (split over their product). A spec shorter than the array leaves the last axes whole.
    (16, 64), {'data': 4, 'model': 2}, ('data', None) -> (4, 64).
    """
    spec = tuple(spec) + (None,) * (len(global_shape) - len(spec))
    out = []
    for size, entry in zip(global_shape, spec):
        n = math.prod(mesh_shape[a] for a in _axes(entry))  # devices this axis is split over
        if size % n:
            raise ValueError(f"An axis of size {size} cannot be split evenly over {n} devices.")
        out.append(size // n)
    return tuple(out)


def _wrong_shard_shapes(shape, mesh, spec):
    """Typical wrong answers for one case, each with the hint that names the mistake."""
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    n_all = math.prod(mesh.values())

    def per_axis(count):
        return np.array([size / count(e) if count(e) else size for size, e in zip(shape, spec)])

    return [
        (np.array([size * math.prod(mesh[a] for a in _axes(e)) for size, e in zip(shape, spec)]),
         "you multiplied: a device holds a 1/n share of a split axis, so divide its size by the "
         "number of devices it is split over."),
        (np.array([math.prod(mesh[a] for a in _axes(e)) for e in spec]),
         "you returned how many pieces each axis is cut into; return the size of one piece "
         "(global size // number of pieces)."),
        (per_axis(lambda e: mesh[e] if isinstance(e, str) else 1),
         "a tuple entry such as ('data', 'model') splits that axis over BOTH mesh axes: divide "
         "by the product of their sizes (here you left it whole)."),
        (per_axis(lambda e: mesh[_axes(e)[0]] if _axes(e) else 1),
         "a tuple entry such as ('data', 'model') splits that axis over BOTH mesh axes: divide "
         "by the product of their sizes, not by the first one only."),
        (per_axis(lambda e: n_all if _axes(e) else 1),
         "you divided by the total number of devices; an axis is split only over the mesh axes "
         "its spec entry names (mesh_shape[name])."),
    ]


def check_shard_shape(fn: Callable) -> None:
    """Check ``fn(global_shape, mesh_shape, spec) -> tuple`` against ``reference_shard_shape``."""
    name = "shard_shape"
    mesh = {"data": 4, "model": 2}
    cases = [
        ((16, 64), mesh, ("data", None)),
        ((64, 256), mesh, (None, "model")),
        ((16, 64, 128), mesh, ("data", None, "model")),
        ((16, 64), mesh, (("data", "model"), None)),
        ((24, 64, 32), {"data": 2, "model": 4}, ("data",)),
        ((8, 12), {"data": 8, "model": 1}, (None, None)),
    ]
    for shape, mesh_shape, spec in cases:
        want = np.array(reference_shard_shape(shape, mesh_shape, spec), dtype=float)
        out = _call(name, fn, shape, dict(mesh_shape), spec)
        got = _as_array(name, out, what="a tuple of sizes, one per axis")
        if got.ndim == 1 and got.shape != want.shape:
            _fail(name, f"you returned {len(got)} sizes for an array with {len(shape)} axes; "
                  "return one size per axis. A spec shorter than the array leaves the "
                  "remaining axes whole (not split)."
                  f"\n  global_shape={shape}, mesh_shape={mesh_shape}, spec={spec}")
        got = _as_array(name, out, want.shape, "a tuple of sizes, one per axis")
        if _close(got, want, rtol=0, atol=1e-9):
            continue
        hint = _diagnose(got, _wrong_shard_shapes(shape, mesh_shape, spec), rtol=0, atol=1e-9)
        _fail(name, (hint or "wrong shape.")
              + f"\n  global_shape={shape}, mesh_shape={mesh_shape}, spec={spec}"
              + f"\n  expected {tuple(int(v) for v in want)}, got {tuple(got.tolist())}")
    _ok(name, f"{len(cases)} cases")


# ---------------------------------------------------------------- bfloat16 rounding


def reference_round_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 (ties to even); float32 array, same shape.

    bfloat16 is the top 16 bits of a float32: the sign, all 8 exponent bits and the first 7 of
    the 23 mantissa bits. Rounding adds just under half of the dropped part (0x7FFF), plus 1
    when the kept part is odd, so exact ties go to the even neighbour; then the low 16 bits are
    cleared. (Finite inputs; NaN and overflow to infinity are not handled here.)
    """
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    odd = (bits >> 16) & 1
    rounded = (bits + np.uint32(0x7FFF) + odd) & np.uint32(0xFFFF0000)
    return rounded.astype(np.uint32).view(np.float32)


def _bf16_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    e = 2.0**-8  # half a bfloat16 step at 1.0: the tie between 1 and 1 + 2**-7
    ties = [1.0, 1 + e, 1 + 3 * e, -(1 + 3 * e), 2 + 2 * e, 1 + e + 2.0**-20, 1 + e - 2.0**-20]
    specials = [0.0, 1e-3, -2.7182817, 3.1415927, 65504.0, 1e-30, 1.0e30, 0.1]
    return [np.array(ties, np.float32), np.array(specials, np.float32),
            (rng.normal(size=(3, 5)) * 10.0 ** rng.integers(-4, 5, (3, 5))).astype(np.float32)]


def check_round_to_bf16(fn: Callable) -> None:
    """Check ``fn(x) -> x rounded to bfloat16`` (float32 in, float32 out) exactly."""
    name = "round_to_bf16"
    for x in _bf16_cases():
        want = reference_round_to_bf16(x)
        got = _as_array(name, _call(name, fn, x.copy()), x.shape, "an array like x")
        if np.array_equal(got, want.astype(np.float64)):
            continue
        bits = x.view(np.uint32)
        with np.errstate(all="ignore"):
            candidates = [
                (x, "nothing was rounded: the values came back unchanged. Keep only the top 16 "
                 "bits of each float32 (after rounding)."),
                ((bits & np.uint32(0xFFFF0000)).view(np.float32),
                 "you truncated (cleared the low 16 bits) without rounding: add 0x7FFF (+1 if "
                 "the kept part is odd) first, so values round to the NEAREST bfloat16."),
                (((bits + np.uint32(0x8000)) & np.uint32(0xFFFF0000)).view(np.float32),
                 "ties round away from zero here; IEEE rounding sends an exact tie to the EVEN "
                 "neighbour (add 0x7FFF plus the lowest kept bit)."),
                (x.astype(np.float16).astype(np.float32),
                 "that is float16, not bfloat16: float16 has 5 exponent and 10 mantissa bits, "
                 "bfloat16 8 and 7 (the top half of a float32)."),
            ]
        hint = _diagnose(got, candidates, rtol=0, atol=0)
        i = int(np.argmax(got.reshape(-1) != want.reshape(-1)))
        _fail(name, (hint or "wrong values.")
              + f"\n  e.g. x = {float(x.reshape(-1)[i])!r}: expected "
              + f"{float(want.reshape(-1)[i])!r}, got {float(got.reshape(-1)[i])!r}")
    _ok(name, "ties, tiny and huge values, random values")


# ---------------------------------------------------------------- training compute


def reference_training_days(n_params: float, n_tokens: float, n_gpus: int,
                            flops_per_gpu: float, utilization: float) -> float:
    """Days to train a model of ``n_params`` parameters on ``n_tokens`` tokens.

    Training compute C = 6 N D floating-point operations: 2 N per token for the forward pass
    (a multiply and an add per weight) and 4 N for the backward pass. The cluster delivers
    n_gpus * flops_per_gpu * utilization FLOP/s (utilization: the fraction of the peak rate
    reached in practice, typically 0.3-0.5).
    """
    flops = 6.0 * n_params * n_tokens
    seconds = flops / (n_gpus * flops_per_gpu * utilization)
    return seconds / 86_400.0


def check_training_days(fn: Callable) -> None:
    """Check ``fn(n_params, n_tokens, n_gpus, flops_per_gpu, utilization) -> days``."""
    name = "training_days"
    cases = [
        (175e9, 300e9, 1024, 312e12, 0.4),  # GPT-3 on A100s
        (70e9, 1.4e12, 2048, 989e12, 0.35),  # a Chinchilla-sized run on H100s
        (1e6, 1e7, 1, 1e11, 0.3),  # a laptop-sized model
    ]
    for args in cases:
        n, d, g, peak, u = args
        want = reference_training_days(*args)
        got = _as_scalar(name, _call(name, fn, *args))
        if _close(got, want, rtol=1e-3, atol=0):
            continue
        candidates = [
            (want / 3, "that is 2·N·D, the forward pass only; training also runs the backward "
             "pass, about twice the forward: 6·N·D in total."),
            (want / 6, "you left out the 6 in C = 6·N·D (2 N FLOPs per token forward, 4 N "
             "backward)."),
            (want * u, "you left out the utilization: GPUs reach only a fraction of their peak "
             "rate, so divide by n_gpus * flops_per_gpu * utilization."),
            (want * u * u, "you multiplied by the utilization; the achieved rate is peak * "
             "utilization, so divide by it."),
            (want * g, "you left out n_gpus: the work is shared by all the GPUs."),
            (want * 86_400, "that is in seconds; divide by 86,400 to get days."),
            (want * 24, "that is in hours; divide by 24 more to get days."),
        ]
        hint = _diagnose(got, candidates, rtol=1e-3, atol=0)
        _fail(name, (hint or "wrong value.")
              + f"\n  called with n_params={n:g}, n_tokens={d:g}, n_gpus={g}, "
              + f"flops_per_gpu={peak:g}, utilization={u}"
              + f"\n  expected {want:.6g} days, got {got:.6g}")
    _ok(name, f"{len(cases)} cases")


# ---------------------------------------------------------------- memorisation

_HASH_BASE = 0x9E3779B97F4A7C15  # odd, so it has an inverse modulo 2**64
_prefix_cache: dict = {}
_window_cache: dict = {}


def _prefix(text: str):
    """Prefix sums of c_i * B**i and the inverse powers B**-i, modulo 2**64 (uint64 wraps)."""
    key = (len(text), hash(text))
    if key not in _prefix_cache:
        if len(_prefix_cache) >= 8:
            _prefix_cache.pop(next(iter(_prefix_cache)))
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64) + 1
        n = len(codes)
        powers = np.full(n, _HASH_BASE, dtype=np.uint64)
        powers[0] = 1
        inverse = np.full(n, pow(_HASH_BASE, -1, 2**64), dtype=np.uint64)
        inverse[0] = 1
        with np.errstate(over="ignore"):
            powers, inverse = np.cumprod(powers), np.cumprod(inverse)  # B**i, B**-i
            sums = np.concatenate([[np.uint64(0)], np.cumsum(codes * powers, dtype=np.uint64)])
        _prefix_cache[key] = (sums, inverse)
    return _prefix_cache[key]


def _window_hashes(text: str, n: int) -> np.ndarray:
    """A 64-bit hash of each of the len(text) - n + 1 windows of n characters."""
    sums, inverse = _prefix(text)
    count = len(text) - n + 1
    with np.errstate(over="ignore"):
        return (sums[n:n + count] - sums[:count]) * inverse[:count]  # sum c_j B**(j - i)


def _sorted_windows(text: str, n: int) -> np.ndarray:
    key = (len(text), hash(text), n)
    if key not in _window_cache:
        if len(_window_cache) >= 16:
            _window_cache.pop(next(iter(_window_cache)))
        _window_cache[key] = np.sort(_window_hashes(text, n))  # (np.unique is far slower)
    return _window_cache[key]


def reference_copied_fraction(sample: str, train_text: str, n: int) -> float:
    """The fraction of the len(sample) - n + 1 windows of n characters of ``sample`` that occur
    somewhere in ``train_text`` (0.0 when the sample is shorter than n).

    Fast for long texts: every window is reduced to a 64-bit polynomial hash (computed for all
    windows at once from prefix sums), and the sample's hashes are looked up in the sorted
    hashes of the training text. Two different windows share a hash with probability ~2**-64.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    if len(sample) < n or len(train_text) < n:
        return 0.0
    known = _sorted_windows(train_text, n)
    mine = _window_hashes(sample, n)
    at = np.minimum(np.searchsorted(known, mine), len(known) - 1)
    return float(np.mean(known[at] == mine))


def _windows(s: str, n: int) -> list[str]:
    return [s[i:i + n] for i in range(len(s) - n + 1)]


def check_copied_fraction(fn: Callable) -> None:
    """Check ``fn(sample, train_text, n) -> fraction`` on small texts."""
    name = "copied_fraction"
    train = "to be or not to be, that is the question"
    cases = [
        ("to be or not to go", train, 5),
        ("be, be, be, that is it", train, 4),
        ("not to be? the question is that", train, 6),
        ("xyz xyz xyz", train, 3),
        ("the question", train, 12),
        ("to be", train, 8),  # shorter than n: no windows, so 0.0
    ]
    for sample, text, n in cases:
        wins, known = _windows(sample, n), set(_windows(text, n))
        want = sum(w in known for w in wins) / len(wins) if wins else 0.0
        got = _as_scalar(name, _call(name, fn, sample, text, n))
        if _close(got, want, rtol=1e-6, atol=1e-9):
            continue
        distinct = set(wins)
        mine = set(wins)
        train_wins = _windows(text, n)
        candidates = [
            (sum(w in known for w in wins), "you returned the number of copied windows; divide "
             "by the number of windows in the sample to get a fraction."),
            (len([w for w in distinct if w in known]) / max(len(distinct), 1),
             "you counted distinct windows (a set); count every window of the sample, repeats "
             "included: a sample that repeats a copied phrase copies more."),
            (sum(w in known for w in wins[:-1]) / max(len(wins) - 1, 1),
             "off by one: a text of length L has L - n + 1 windows of length n "
             "(range(len(sample) - n + 1))."),
            (sum(w in mine for w in train_wins) / len(train_wins),
             "you measured the other direction (training windows found in the sample); count "
             "the sample's windows found in the training text."),
        ]
        hint = _diagnose(got, candidates, rtol=1e-6, atol=1e-9)
        _fail(name, (hint or "wrong value.")
              + f"\n  sample={sample!r}, n={n}, train_text={text!r}"
              + f"\n  expected {want:.6g}, got {got:.6g}")
    _ok(name, f"{len(cases)} cases")
