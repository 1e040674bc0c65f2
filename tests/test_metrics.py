"""Tests for course_lib.metrics: perplexity, cross-entropy, accuracy, ROC AUC and the ROC curve."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from course_lib import metrics


def brute_force_auc(labels, scores) -> float:
    """The definition: over all (positive, negative) pairs, 1 if the positive scores higher,
    1/2 on a tie, 0 otherwise; averaged. O(n^2)."""
    pos = [s for y, s in zip(labels, scores) if y]
    neg = [s for y, s in zip(labels, scores) if not y]
    total = 0.0
    for p in pos:
        for q in neg:
            total += 1.0 if p > q else 0.5 if p == q else 0.0
    return total / (len(pos) * len(neg))


# ---------------------------------------------------------------- perplexity and cross-entropy


def test_perplexity_types():
    assert metrics.perplexity(0.0) == 1.0
    assert isinstance(metrics.perplexity(1.0), float)
    assert metrics.perplexity(math.log(65)) == pytest.approx(65.0)
    assert isinstance(metrics.perplexity(np.float32(1.0)), float)
    arr = metrics.perplexity(np.array([0.0, math.log(2.0)]))
    assert isinstance(arr, np.ndarray) and np.allclose(arr, [1.0, 2.0])
    jarr = metrics.perplexity(jnp.array([0.0, math.log(3.0)]))
    assert isinstance(jarr, jax.Array) and np.allclose(jarr, [1.0, 3.0], rtol=1e-6)
    assert metrics.perplexity(1000.0) == math.inf


def test_perplexity_under_jit():
    out = jax.jit(metrics.perplexity)(jnp.float32(math.log(5.0)))
    assert float(out) == pytest.approx(5.0, rel=1e-6)


def test_cross_entropy_matches_manual():
    key = jax.random.PRNGKey(0)
    logits = jax.random.normal(key, (3, 4, 7)) * 3.0  # (B, T, V)
    targets = jax.random.randint(jax.random.PRNGKey(1), (3, 4), 0, 7)
    lg = np.asarray(logits, dtype=np.float64)
    logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    manual = -np.mean(np.take_along_axis(logp, np.asarray(targets)[..., None], -1))
    assert float(metrics.cross_entropy(logits, targets)) == pytest.approx(manual, rel=1e-5)


def test_cross_entropy_uniform_is_log_vocab():
    logits = jnp.zeros((10, 65))
    targets = jnp.arange(10)
    ce = metrics.cross_entropy(logits, targets)
    assert float(ce) == pytest.approx(math.log(65), rel=1e-6)
    assert float(metrics.perplexity(ce)) == pytest.approx(65.0, rel=1e-5)


def test_cross_entropy_stable_for_huge_logits():
    logits = jnp.array([[1000.0, 0.0, -1000.0]])
    assert float(metrics.cross_entropy(logits, jnp.array([0]))) == pytest.approx(0.0, abs=1e-6)
    assert np.isfinite(float(metrics.cross_entropy(logits, jnp.array([2]))))


def test_cross_entropy_jit_and_grad():
    logits = jnp.zeros((4, 3))
    targets = jnp.array([0, 1, 2, 0])
    g = jax.jit(jax.grad(metrics.cross_entropy))(logits, targets)
    # d/dlogits of mean CE = (softmax - onehot) / N
    expected = (np.full((4, 3), 1 / 3) - np.eye(3)[[0, 1, 2, 0]]) / 4
    assert np.allclose(g, expected, atol=1e-6)


def test_cross_entropy_shape_error():
    with pytest.raises(ValueError, match="targets"):
        metrics.cross_entropy(jnp.zeros((2, 3, 5)), jnp.zeros((2, 4), dtype=jnp.int32))


# ---------------------------------------------------------------- accuracy


def test_accuracy():
    assert metrics.accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert metrics.accuracy(np.array([True, False]), np.array([True, False])) == 1.0
    with pytest.raises(ValueError, match="shape"):
        metrics.accuracy([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="no examples"):
        metrics.accuracy([], [])


# ---------------------------------------------------------------- ROC AUC


@pytest.mark.parametrize("seed", range(8))
def test_auc_matches_pair_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 120))
    labels = rng.integers(0, 2, n)
    labels[0], labels[1] = 0, 1  # both classes present
    scores = rng.integers(0, 6, n).astype(float)  # few distinct values: many ties
    if seed % 2:
        scores = scores + (labels * rng.random(n))  # some separation, still some ties
    assert metrics.roc_auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores))


def test_auc_perfect_inverted_and_all_tied():
    labels = np.array([0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.9, 0.3, 0.7])
    assert metrics.roc_auc(labels, scores) == 1.0
    assert metrics.roc_auc(labels, -scores) == 0.0
    assert metrics.roc_auc(labels, np.zeros(6)) == 0.5
    assert metrics.roc_auc(labels.astype(bool), scores) == 1.0


def test_auc_random_scores_near_half():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 20_000)
    scores = rng.random(20_000)
    assert abs(metrics.roc_auc(labels, scores) - 0.5) < 0.02


def test_auc_accepts_jax_arrays_and_2d():
    labels = jnp.array([[0, 1], [1, 0]])
    scores = jnp.array([[0.1, 0.9], [0.8, 0.2]])
    assert metrics.roc_auc(labels, scores) == 1.0


@pytest.mark.parametrize(
    "labels, scores, match",
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "only positive"),
        ([0, 0], [0.1, 0.2], "only negative"),
        ([0, 1], [0.1, 0.2, 0.3], "shape"),
        ([0, 2], [0.1, 0.2], "0/1"),
        ([0, 1], [0.1, float("nan")], "NaN"),
    ],
)
def test_auc_errors(labels, scores, match):
    with pytest.raises(ValueError, match=match):
        metrics.roc_auc(labels, scores)
    with pytest.raises(ValueError, match=match):
        metrics.roc_curve(labels, scores)


# ---------------------------------------------------------------- ROC curve


@pytest.mark.parametrize("seed", range(5))
def test_roc_curve_area_equals_auc(seed):
    rng = np.random.default_rng(100 + seed)
    labels = rng.integers(0, 2, 300)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(size=300) + labels, 1)  # rounding creates ties
    fpr, tpr, thr = metrics.roc_curve(labels, scores)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert thr[0] == np.inf and np.all(np.diff(thr[1:]) < 0)
    assert len(thr) == len(np.unique(scores)) + 1
    area = np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)  # trapezoid rule
    assert area == pytest.approx(metrics.roc_auc(labels, scores))


def test_roc_curve_rates_at_thresholds():
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.4, 0.1])
    fpr, tpr, thr = metrics.roc_curve(labels, scores)
    for f, t, th in zip(fpr, tpr, thr):
        pred = scores >= th
        assert t == pred[labels == 1].mean()
        assert f == pred[labels == 0].mean()
