"""Tests for notebook 08's checks: each passes the reference and fails each typical wrong answer
with a hint that names the mistake; the fast n-gram reference agrees with a plain one."""

import math
import random

import jax.numpy as jnp
import numpy as np
import pytest
from checkhelp import fails_with

from course_lib import checks, metrics, model, parallel

# ---------------------------------------------------------------- shard_shape


def test_shard_shape_passes_reference_and_jax(capsys):
    checks.check_shard_shape(parallel.shard_shape)

    def via_jax_rules(shape, mesh_shape, spec):  # another correct way to write it
        spec = list(spec) + [None] * (len(shape) - len(spec))
        out = []
        for size, e in zip(shape, spec):
            names = () if e is None else (e,) if isinstance(e, str) else e
            out.append(size // math.prod(mesh_shape[a] for a in names))
        return out  # a list is fine too

    checks.check_shard_shape(via_jax_rules)
    assert capsys.readouterr().out.count("✓ shard_shape: correct") == 2


def test_reference_shard_shape_matches_named_sharding():
    from jax.sharding import NamedSharding, PartitionSpec

    from course_lib import parallel

    mesh = parallel.make_mesh(1)  # one device: every shard is the whole array
    assert NamedSharding(mesh, PartitionSpec("data")).shard_shape((6, 4)) == (6, 4)
    assert parallel.shard_shape((6, 4), {"data": 1, "model": 1}, ("data",)) == (6, 4)
    with pytest.raises(ValueError, match="evenly"):
        parallel.shard_shape((6, 4), {"data": 4}, ("data",))


def _names(e):
    return () if e is None else (e,) if isinstance(e, str) else tuple(e)


def _pad(shape, spec):
    return list(spec) + [None] * (len(shape) - len(spec))


@pytest.mark.parametrize("wrong, words", [
    (lambda s, m, p: tuple(n * math.prod(m[a] for a in _names(e)) for n, e in zip(s, _pad(s, p))),
     ["multiplied", "divide"]),
    (lambda s, m, p: tuple(math.prod(m[a] for a in _names(e)) for e in _pad(s, p)),
     ["how many pieces"]),
    (lambda s, m, p: tuple(n // (m[e] if isinstance(e, str) else 1) for n, e in zip(s, _pad(s, p))),
     ["both mesh axes", "left it whole"]),
    (lambda s, m, p: tuple(n // (m[_names(e)[0]] if _names(e) else 1)
                           for n, e in zip(s, _pad(s, p))),
     ["both mesh axes", "first one only"]),
    (lambda s, m, p: tuple(n // (math.prod(m.values()) if _names(e) else 1)
                           for n, e in zip(s, _pad(s, p))),
     ["total number of devices"]),
    (lambda s, m, p: tuple(n // math.prod(m[a] for a in _names(e)) for n, e in zip(s, p)),
     ["one size per axis", "remaining axes whole"]),
])
def test_shard_shape_diagnoses(wrong, words):
    fails_with(checks.check_shard_shape, wrong, *words)


# ---------------------------------------------------------------- round_to_bf16


def test_round_to_bf16_passes_reference_and_jax(capsys):
    checks.check_round_to_bf16(parallel.round_to_bf16)
    checks.check_round_to_bf16(
        lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32)))
    assert capsys.readouterr().out.count("✓ round_to_bf16: correct") == 2


def test_reference_round_to_bf16_equals_jax_cast():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=20_000) * 10.0 ** rng.integers(-30, 30, 20_000)).astype(np.float32)
    want = np.asarray(jnp.asarray(x, jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_array_equal(parallel.round_to_bf16(x), want)


def _bits(x):
    return np.asarray(x, np.float32).view(np.uint32)


@pytest.mark.parametrize("wrong, words", [
    (lambda x: x, ["unchanged"]),
    (lambda x: (_bits(x) & np.uint32(0xFFFF0000)).view(np.float32), ["truncated", "nearest"]),
    (lambda x: ((_bits(x) + np.uint32(0x8000)) & np.uint32(0xFFFF0000)).view(np.float32),
     ["ties", "even"]),
    (lambda x: x.astype(np.float16).astype(np.float32), ["float16", "8 and 7"]),
])
def test_round_to_bf16_diagnoses(wrong, words):
    fails_with(checks.check_round_to_bf16, wrong, *words)


# ---------------------------------------------------------------- training_days


def test_training_days_passes_reference(capsys):
    checks.check_training_days(model.training_days)
    assert "✓ training_days: correct" in capsys.readouterr().out


def test_training_days_gpt3_on_a100s():
    days = model.training_days(175e9, 300e9, 1024, 312e12, 0.4)
    assert 25 < days < 35  # 3.15e23 FLOPs at 128 PFLOP/s: about a month


@pytest.mark.parametrize("wrong, words", [
    (lambda n, d, g, p, u: 2 * n * d / (g * p * u) / 86400, ["forward pass only", "6·n·d"]),
    (lambda n, d, g, p, u: n * d / (g * p * u) / 86400, ["left out the 6"]),
    (lambda n, d, g, p, u: 6 * n * d / (g * p) / 86400, ["left out the utilization"]),
    (lambda n, d, g, p, u: 6 * n * d * u / (g * p) / 86400, ["multiplied by the utilization"]),
    (lambda n, d, g, p, u: 6 * n * d / (p * u) / 86400, ["left out n_gpus"]),
    (lambda n, d, g, p, u: 6 * n * d / (g * p * u), ["seconds", "86,400"]),
    (lambda n, d, g, p, u: 6 * n * d / (g * p * u) / 3600, ["hours"]),
])
def test_training_days_diagnoses(wrong, words):
    fails_with(checks.check_training_days, wrong, *words)


# ---------------------------------------------------------------- copied_fraction


def _plain(sample, text, n):
    wins = [sample[i:i + n] for i in range(len(sample) - n + 1)]
    known = {text[i:i + n] for i in range(len(text) - n + 1)}
    return sum(w in known for w in wins) / len(wins) if wins else 0.0


def test_copied_fraction_passes_reference_and_plain_version(capsys):
    checks.check_copied_fraction(metrics.copied_fraction)
    checks.check_copied_fraction(_plain)
    assert capsys.readouterr().out.count("✓ copied_fraction: correct") == 2


def test_fast_reference_agrees_with_plain_version_on_random_texts():
    rnd = random.Random(0)
    for _ in range(200):
        text = "".join(rnd.choice("ab cé") for _ in range(rnd.randint(1, 300)))
        sample = "".join(rnd.choice("ab cé") for _ in range(rnd.randint(0, 60)))
        n = rnd.randint(1, 9)
        assert metrics.copied_fraction(sample, text, n) == pytest.approx(
            _plain(sample, text, n), abs=1e-12)
    with pytest.raises(ValueError, match="at least 1"):
        metrics.copied_fraction("abc", "abc", 0)


def _count(sample, text, n):
    known = {text[i:i + n] for i in range(len(text) - n + 1)}
    return sum(sample[i:i + n] in known for i in range(len(sample) - n + 1))


@pytest.mark.parametrize("wrong, words", [
    (_count, ["number of copied windows", "divide"]),
    (lambda s, t, n: (lambda w, k: sum(x in k for x in w) / len(w) if w else 0.0)(
        {s[i:i + n] for i in range(len(s) - n + 1)},
        {t[i:i + n] for i in range(len(t) - n + 1)}), ["distinct windows"]),
    (lambda s, t, n: _count(s[:-1], t, n) / max(len(s) - n, 1), ["off by one", "l - n + 1"]),
    (lambda s, t, n: _plain(t, s, n), ["other direction"]),
])
def test_copied_fraction_diagnoses(wrong, words):
    fails_with(checks.check_copied_fraction, wrong, *words)
