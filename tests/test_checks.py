"""Tests for course_lib.checks: every check passes the reference solution and fails each typical
wrong implementation with a hint that names the mistake."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checkhelp import fails_with

from course_lib import checks, generate, metrics

# ---------------------------------------------------------------- perplexity_from_logprobs


def ppl_ref(lp):
    return jnp.exp(-jnp.mean(lp))


def test_perplexity_passes_reference(capsys):
    checks.check_perplexity_from_logprobs(ppl_ref)
    checks.check_perplexity_from_logprobs(lambda lp: metrics.perplexity(-jnp.mean(lp)))
    out = capsys.readouterr().out
    assert out.count("✓ perplexity_from_logprobs: correct") == 2


def test_perplexity_alternative_correct_form_passes():
    # 2 ** (cross-entropy in bits) is the same number.
    checks.check_perplexity_from_logprobs(lambda lp: 2.0 ** (-jnp.mean(lp) / jnp.log(2.0)))


@pytest.mark.parametrize(
    "wrong, words",
    [
        (lambda lp: jnp.exp(jnp.mean(lp)), ["minus sign"]),
        (lambda lp: jnp.exp(-jnp.sum(lp)), ["sum", "mean"]),
        (lambda lp: 2.0 ** (-jnp.mean(lp)), ["base 2"]),
        (lambda lp: 10.0 ** (-jnp.mean(lp)), ["base 10"]),
        (lambda lp: -jnp.mean(lp), ["forgot the exp", "cross-entropy"]),
        (lambda lp: jnp.mean(lp), ["exp", "minus"]),
        (lambda lp: jnp.exp(-lp), ["shape", "single number"]),
        (lambda lp: jnp.exp(-jnp.sum(lp) / (lp.shape[0] - 1)), ["t - 1"]),
        (lambda lp: jnp.float32(jnp.nan), ["nan"]),
    ],
)
def test_perplexity_diagnoses(wrong, words):
    fails_with(checks.check_perplexity_from_logprobs, wrong, *words)


# ---------------------------------------------------------------- cross_entropy_from_logits


def test_cross_entropy_passes_reference(capsys):
    checks.check_cross_entropy_from_logits(metrics.cross_entropy)
    assert "✓ cross_entropy_from_logits: correct" in capsys.readouterr().out


def _logp(logits):
    return logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)


@pytest.mark.parametrize(
    "wrong, words",
    [
        (lambda lg, t: jnp.mean(_logp(lg)[jnp.arange(len(t)), t]), ["minus sign"]),
        (lambda lg, t: -jnp.sum(_logp(lg)[jnp.arange(len(t)), t]), ["sum", "mean"]),
        (lambda lg, t: -jnp.mean(lg[jnp.arange(len(t)), t]), ["raw logits", "log_softmax"]),
        (lambda lg, t: -jnp.mean(jax.nn.softmax(lg)[jnp.arange(len(t)), t]), ["forgot the log"]),
        (lambda lg, t: -jnp.mean(jax.nn.log_softmax(lg, axis=0)[jnp.arange(len(t)), t]),
         ["wrong axis"]),
        (lambda lg, t: -jnp.mean(_logp(lg)), ["whole vocabulary"]),
        (lambda lg, t: -_logp(lg)[jnp.arange(len(t)), t], ["single number"]),
        # Naive softmax overflows on huge logits.
        (lambda lg, t: -jnp.mean(jnp.log((jnp.exp(lg) / jnp.exp(lg).sum(-1, keepdims=True))
                                         [jnp.arange(len(t)), t])), ["overflow", "log_softmax"]),
    ],
)
def test_cross_entropy_diagnoses(wrong, words):
    fails_with(checks.check_cross_entropy_from_logits, wrong, *words)


# ---------------------------------------------------------------- normalize_bigram_counts


def test_normalize_passes_reference(capsys):
    checks.check_normalize_bigram_counts(generate.normalize_bigram_counts)
    assert "✓ normalize_bigram_counts: correct" in capsys.readouterr().out


def test_reference_normalize_rows_sum_to_one():
    counts = jnp.array([[0, 0, 0], [1, 2, 3], [0, 0, 9]])
    for alpha in (0.0, 0.1, 1.0):
        p = generate.normalize_bigram_counts(counts, alpha)
        assert np.allclose(p.sum(1), 1.0, atol=1e-6) and bool(jnp.all(p >= 0))
    assert np.allclose(generate.normalize_bigram_counts(counts, 0.0)[0], 1 / 3)


def _rowsafe(c, alpha):
    c = c + alpha
    s = c.sum(1, keepdims=True)
    return jnp.where(s > 0, c / jnp.where(s > 0, s, 1), 1.0 / c.shape[1])


@pytest.mark.parametrize(
    "wrong, words",
    [
        # normalised over columns
        (lambda c, a: (c + a) / (c + a).sum(0, keepdims=True), ["columns", "axis=1"]),
        # no keepdims: broadcasting along the wrong axis
        # = dividing by .sum(1) without keepdims (spelled out: the tests forbid rank promotion)
        (lambda c, a: (c + a) / (c + a).sum(1)[None, :], ["keepdims"]),
        # forgot smoothing (but handles zero rows)
        (lambda c, a: _rowsafe(c, 0.0), ["forgot the smoothing"]),
        # smoothing only in the numerator
        (lambda c, a: (c + a) / c.sum(1, keepdims=True), ["denominator"]),
        # + alpha once in the denominator
        (lambda c, a: (c + a) / (c.sum(1, keepdims=True) + a), ["alpha * v"]),
        # hard-coded add-one smoothing
        (lambda c, a: _rowsafe(c, 1.0), ["ignored the `alpha`"]),
        # zero rows not handled: 0 / 0
        (lambda c, a: (c + a) / (c + a).sum(1, keepdims=True), ["nan", "uniform"]),
        # zero rows left as zeros
        (lambda c, a: (c + a) / jnp.maximum((c + a).sum(1, keepdims=True), 1), ["uniform"]),
        # log-probabilities
        (lambda c, a: jnp.log(_rowsafe(c, a)), ["log-probabilities"]),
        # wrong shape
        (lambda c, a: _rowsafe(c, a)[:, :-1], ["shape"]),
    ],
)
def test_normalize_diagnoses(wrong, words):
    fails_with(checks.check_normalize_bigram_counts, wrong, *words)


# ---------------------------------------------------------------- sample_bigram


def sample_loop(probs, start, n_steps, key):
    """A correct sampler written the way a learner would: a Python loop, a split per step."""
    out, cur = [], start
    for _ in range(n_steps):
        key, sub = jax.random.split(key)
        cur = int(jax.random.categorical(sub, jnp.log(probs[cur])))
        out.append(cur)
    return jnp.array(out)


def sample_choice(probs, start, n_steps, key):
    """Correct too: jax.random.choice with p=, keys split up front."""
    keys = jax.random.split(key, n_steps)
    out, cur = [], start
    for t in range(n_steps):
        cur = int(jax.random.choice(keys[t], probs.shape[1], p=probs[cur]))
        out.append(cur)
    return np.array(out)


def test_sample_passes_reference_and_learner_styles(capsys):
    checks.check_sample_bigram(generate.sample_bigram)
    checks.check_sample_bigram(sample_loop)
    checks.check_sample_bigram(sample_choice)
    assert capsys.readouterr().out.count("✓ sample_bigram: correct") == 3


def test_reference_sample_is_deterministic_and_in_range():
    probs = jnp.full((5, 5), 0.2)
    a = generate.sample_bigram(probs, 0, 50, jax.random.key(3))
    b = generate.sample_bigram(probs, 0, 50, jax.random.key(3))
    c = generate.sample_bigram(probs, 0, 50, jax.random.key(4))
    assert a.shape == (50,) and a.dtype == jnp.int32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert int(a.min()) >= 0 and int(a.max()) < 5


def reuse_key(probs, start, n_steps, key):
    out, cur = [], start
    for _ in range(n_steps):
        cur = int(jax.random.categorical(key, jnp.log(probs[cur])))
        out.append(cur)
    return jnp.array(out)


def greedy(probs, start, n_steps, key):
    out, cur = [], start
    for _ in range(n_steps):
        cur = int(jnp.argmax(probs[cur]))
        out.append(cur)
    return jnp.array(out)


def uniform(probs, start, n_steps, key):
    keys = jax.random.split(key, n_steps)
    out, cur = [], start
    for t in range(n_steps):
        # a "sampler" that looks only at which tokens are possible, not how likely
        cur = int(jax.random.categorical(keys[t], jnp.where(probs[cur] > 0, 0.0, -jnp.inf)))
        out.append(cur)
    return jnp.array(out)


def probs_as_logits(probs, start, n_steps, key):
    keys = jax.random.split(key, n_steps)
    out, cur = [], start
    for t in range(n_steps):
        cur = int(jax.random.categorical(keys[t], jnp.where(probs[cur] > 0, probs[cur], -jnp.inf)))
        out.append(cur)
    return jnp.array(out)


def global_rng(probs, start, n_steps, key):
    rng = np.random.default_rng()
    out, cur = [], start
    for _ in range(n_steps):
        p = np.asarray(probs[cur], dtype=np.float64)
        cur = int(rng.choice(len(p), p=p / p.sum()))
        out.append(cur)
    return np.array(out)


def ignores_key(probs, start, n_steps, key):
    return sample_loop(probs, start, n_steps, jax.random.key(0))


def columns(probs, start, n_steps, key):
    return sample_loop(probs.T, start, n_steps, key)


def never_moves(probs, start, n_steps, key):
    keys = jax.random.split(key, n_steps)
    return jnp.array([jax.random.categorical(k, jnp.log(probs[start])) for k in keys])


def includes_start(probs, start, n_steps, key):
    return jnp.concatenate([jnp.array([start]), sample_loop(probs, start, n_steps, key)])


def floats(probs, start, n_steps, key):
    return sample_loop(probs, start, n_steps, key).astype(jnp.float32)


@pytest.mark.parametrize(
    "wrong, words",
    [
        (reuse_key, ["same key was reused", "split"]),
        (greedy, ["argmax"]),
        (uniform, ["ignored the probabilities", "uniform"]),
        (probs_as_logits, ["log-probabilities", "categorical"]),
        (global_rng, ["same key", "global generator"]),
        (ignores_key, ["key", "ignored"]),
        (columns, ["column", "row"]),
        (never_moves, ["never moved on"]),
        (includes_start, ["start", "only the"]),
        (floats, ["integers"]),
    ],
)
def test_sample_diagnoses(wrong, words):
    fails_with(checks.check_sample_bigram, wrong, *words)
