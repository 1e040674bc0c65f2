"""Exercises of notebook 08 (scaling out and looking ahead): the shape of one device's shard,
rounding to bfloat16, the training compute in GPU-days, and the fraction of a sample copied from
the training text."""

from __future__ import annotations

import math

import numpy as np

from course_lib import metrics
from course_lib.checks._core import Exercise, Mistake, as_number, checker
from course_lib.model import training_days
from course_lib.parallel import _axes, round_to_bf16, shard_shape

__all__ = [
    "check_shard_shape", "check_round_to_bf16", "check_training_days", "check_copied_fraction",
]

# ---------------------------------------------------------------- shard shape


def _padded(global_shape, spec) -> tuple:
    return tuple(spec) + (None,) * (len(global_shape) - len(spec))  # one entry per axis


def _per_axis(divisor):
    """A shard shape that divides each axis by ``divisor(entry, mesh)`` (its spec entry)."""
    def shape(global_shape, mesh, spec):
        return tuple(size / divisor(e, mesh)
                     for size, e in zip(global_shape, _padded(global_shape, spec)))
    return shape


def _devices(e, mesh):
    return math.prod(mesh[a] for a in _axes(e))  # the devices an axis is split over


_BOTH = ("a tuple entry such as ('data', 'model') splits that axis over BOTH mesh axes: divide by "
         "the product of their sizes")

SHARD_SHAPE = Exercise(
    "shard_shape",
    doc="Check ``fn(global_shape, mesh_shape, spec) -> tuple``, the block one device holds.",
    reference=shard_shape,
    cases=lambda: [
        ((16, 64), {"data": 4, "model": 2}, ("data", None)),
        ((64, 256), {"data": 4, "model": 2}, (None, "model")),
        ((16, 64, 128), {"data": 4, "model": 2}, ("data", None, "model")),
        ((16, 64), {"data": 4, "model": 2}, (("data", "model"), None)),
        ((24, 64, 32), {"data": 2, "model": 4}, ("data",)),
        ((8, 12), {"data": 8, "model": 1}, (None, None)),
    ],
    expect="a tuple of sizes, one per axis", rtol=0, atol=1e-9, otherwise="wrong shape.",
    mistakes=[
        Mistake("return one size per axis. A spec shorter than the array leaves the remaining "
                "axes whole (not split).",
                lambda s, m, p: tuple(n // _devices(e, m) for n, e in zip(s, p)), when="shape",
                detail=lambda got, want, case: f" You returned {got.size} sizes for an array "
                f"with {len(case.args[0])} axes."),
        Mistake("you multiplied: a device holds a 1/n share of a split axis, so divide its size "
                "by the number of devices it is split over.",
                _per_axis(lambda e, m: 1 / _devices(e, m))),
        Mistake("you returned how many pieces each axis is cut into; return the size of one "
                "piece (global size // number of pieces).",
                lambda s, m, p: tuple(_devices(e, m) for e in _padded(s, p))),
        Mistake(_BOTH + " (here you left it whole).",
                _per_axis(lambda e, m: m[e] if isinstance(e, str) else 1)),
        Mistake(_BOTH + ", not by the first one only.",
                _per_axis(lambda e, m: m[_axes(e)[0]] if _axes(e) else 1)),
        Mistake("you divided by the total number of devices; an axis is split only over the mesh "
                "axes its spec entry names (mesh_shape[name]).",
                _per_axis(lambda e, m: math.prod(m.values()) if _axes(e) else 1)),
    ],
)

# ---------------------------------------------------------------- bfloat16 rounding


def _bf16_cases():
    rng = np.random.default_rng(7)
    e = 2.0**-8  # half a bfloat16 step at 1.0: the tie between 1 and 1 + 2**-7
    ties = [1.0, 1 + e, 1 + 3 * e, -(1 + 3 * e), 2 + 2 * e, 1 + e + 2.0**-20, 1 + e - 2.0**-20]
    specials = [0.0, 1e-3, -2.7182817, 3.1415927, 65504.0, 1e-30, 1.0e30, 0.1]
    return [(np.array(ties, np.float32),), (np.array(specials, np.float32),),
            ((rng.normal(size=(3, 5)) * 10.0 ** rng.integers(-4, 5, (3, 5))).astype(np.float32),)]


def _bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


def _show_first_difference(case, got, want) -> str:
    x = case.args[0].reshape(-1)
    if got.shape != want.shape:
        return f"\n  x has shape {case.args[0].shape}, you returned shape {got.shape}"
    i = int(np.argmax(got.reshape(-1) != want.reshape(-1)))
    return (f"\n  e.g. x = {float(x[i])!r}: expected {float(want.reshape(-1)[i])!r}, got "
            f"{float(got.reshape(-1)[i])!r}")


ROUND_TO_BF16 = Exercise(
    "round_to_bf16",
    doc="Check ``fn(x) -> x rounded to bfloat16`` (float32 in, float32 out) exactly.",
    reference=round_to_bf16,
    cases=_bf16_cases,
    expect="an array like x", rtol=0, atol=0, show=_show_first_difference,
    mistakes=[
        Mistake("nothing was rounded: the values came back unchanged. Keep only the top 16 bits "
                "of each float32 (after rounding).", lambda x: x),
        Mistake("you truncated (cleared the low 16 bits) without rounding: add 0x7FFF (+1 if the "
                "kept part is odd) first, so values round to the NEAREST bfloat16.",
                lambda x: (_bits(x) & np.uint32(0xFFFF0000)).view(np.float32)),
        Mistake("ties round away from zero here; IEEE rounding sends an exact tie to the EVEN "
                "neighbour (add 0x7FFF plus the lowest kept bit).",
                lambda x: ((_bits(x) + np.uint32(0x8000)) & np.uint32(0xFFFF0000)).view(
                    np.float32)),
        Mistake("that is float16, not bfloat16: float16 has 5 exponent and 10 mantissa bits, "
                "bfloat16 8 and 7 (the top half of a float32).",
                lambda x: x.astype(np.float16).astype(np.float32)),
    ],
    success="ties, tiny and huge values, random values",
)

# ---------------------------------------------------------------- training compute


def _days(flops_per_param_token=6.0, *, use=True, gpus=True, unit=86_400.0):
    """Days of training with switches for the usual mistakes."""
    def days(n_params, n_tokens, n_gpus, flops_per_gpu, utilization):
        rate = flops_per_gpu * (n_gpus if gpus else 1) * (utilization if use is True else 1.0)
        rate /= utilization if use == "times" else 1.0
        return flops_per_param_token * n_params * n_tokens / rate / unit
    return days


TRAINING_DAYS = Exercise(
    "training_days",
    doc="Check ``fn(n_params, n_tokens, n_gpus, flops_per_gpu, utilization) -> days``.",
    reference=training_days,
    cases=lambda: [
        (175e9, 300e9, 1024, 312e12, 0.4),  # GPT-3 on A100s
        (70e9, 1.4e12, 2048, 989e12, 0.35),  # a Chinchilla-sized run on H100s
        (1e6, 1e7, 1, 1e11, 0.3),  # a laptop-sized model
    ],
    output=as_number, expect="a single number", rtol=1e-3, atol=0, otherwise="wrong value.",
    mistakes=[
        Mistake("that is 2·N·D, the forward pass only; training also runs the backward pass, "
                "about twice the forward: 6·N·D in total.", _days(2.0)),
        Mistake("you left out the 6 in C = 6·N·D (2 N FLOPs per token forward, 4 N backward).",
                _days(1.0)),
        Mistake("you left out the utilization: GPUs reach only a fraction of their peak rate, so "
                "divide by n_gpus * flops_per_gpu * utilization.", _days(use=False)),
        Mistake("you multiplied by the utilization; the achieved rate is peak * utilization, so "
                "divide by it.", _days(use="times")),
        Mistake("you left out n_gpus: the work is shared by all the GPUs.", _days(gpus=False)),
        Mistake("that is in seconds; divide by 86,400 to get days.", _days(unit=1.0)),
        Mistake("that is in hours; divide by 24 more to get days.", _days(unit=3600.0)),
    ],
)

# ---------------------------------------------------------------- memorisation


def _windows(s: str, n: int) -> list[str]:
    return [s[i:i + n] for i in range(len(s) - n + 1)]


def _copied(sample_windows, text, n):
    """The fraction of the given windows found in ``text`` (0.0 for none)."""
    known = set(_windows(text, n))
    return sum(w in known for w in sample_windows) / max(len(sample_windows), 1)


_TRAIN = "to be or not to be, that is the question"

COPIED_FRACTION = Exercise(
    "copied_fraction",
    doc="Check ``fn(sample, train_text, n) -> fraction`` on small texts.",
    reference=metrics.copied_fraction,
    cases=lambda: [
        ("to be or not to go", _TRAIN, 5),
        ("be, be, be, that is it", _TRAIN, 4),
        ("not to be? the question is that", _TRAIN, 6),
        ("xyz xyz xyz", _TRAIN, 3),
        ("the question", _TRAIN, 12),
        ("to be", _TRAIN, 8),  # shorter than n: no windows, so 0.0
    ],
    output=as_number, expect="a single number", rtol=1e-6, atol=1e-9, otherwise="wrong value.",
    mistakes=[
        Mistake("you returned the number of copied windows; divide by the number of windows in "
                "the sample to get a fraction.",
                lambda s, t, n: _copied(_windows(s, n), t, n) * len(_windows(s, n))),
        Mistake("you counted distinct windows (a set); count every window of the sample, repeats "
                "included: a sample that repeats a copied phrase copies more.",
                lambda s, t, n: _copied(sorted(set(_windows(s, n))), t, n)),
        Mistake("off by one: a text of length L has L - n + 1 windows of length n "
                "(range(len(sample) - n + 1)).",
                lambda s, t, n: _copied(_windows(s, n)[:-1], t, n)),
        Mistake("you measured the other direction (training windows found in the sample); count "
                "the sample's windows found in the training text.",
                lambda s, t, n: _copied(_windows(t, n), s, n)),
    ],
)

check_shard_shape = checker(SHARD_SHAPE)
check_round_to_bf16 = checker(ROUND_TO_BF16)
check_training_days = checker(TRAINING_DAYS)
check_copied_fraction = checker(COPIED_FRACTION)
