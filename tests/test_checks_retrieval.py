"""Tests for notebook 06b's checks: each passes the reference (and the library's version) and
fails each typical wrong implementation with a hint that names the mistake."""

import jax.numpy as jnp
import numpy as np
import pytest
from checkhelp import fails_with

from course_lib import checks, metrics, retrieval

# ---------------------------------------------------------------- mean_pool


def test_mean_pool_passes_library(capsys):
    checks.check_mean_pool(retrieval.mean_pool)
    assert "✓ mean_pool: correct" in capsys.readouterr().out


def _masked_sum(h, mask):
    return (h * mask[..., None]).sum(1)


@pytest.mark.parametrize("wrong, words", [
    (lambda h, m: h.mean(1), ["averaged the padding"]),
    (lambda h, m: _masked_sum(h, m) / h.shape[1], ["full length T", "mask.sum"]),
    (lambda h, m: _masked_sum(h, m), ["forgot to divide"]),
    (lambda h, m: h.sum(1) / m.sum(1, keepdims=True), ["summed the padding"]),
    (lambda h, m: h[:, 0], ["first position"]),
    (lambda h, m: h[jnp.arange(h.shape[0]), m.sum(1) - 1], ["last real position"]),
    (lambda h, m: h.mean(2), ["shape", "one vector per sequence"]),
])
def test_mean_pool_names_the_mistake(wrong, words):
    fails_with(checks.check_mean_pool, wrong, *words)


# ---------------------------------------------------------------- cosine_top_k


def _unit(x, axis=-1):
    return x / jnp.linalg.norm(x, axis=axis, keepdims=True)


def test_cosine_top_k_passes_library(capsys):
    checks.check_cosine_top_k(lambda q, keys, k: retrieval.cosine_top_k(q, keys, k)[0])
    assert "✓ cosine_top_k: correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, words", [
    (lambda q, keys, k: jnp.argsort(-(q @ keys.T), axis=1)[:, :k], ["forgot to normalise"]),
    (lambda q, keys, k: jnp.argsort(-(_unit(q) @ keys.T), axis=1)[:, :k],
     ["forgot to normalise", "every query and key"]),
    (lambda q, keys, k: jnp.argsort(-(_unit(q) @ _unit(keys, 0).T), axis=1)[:, :k],
     ["wrong axis"]),
    (lambda q, keys, k: jnp.argsort(_unit(q) @ _unit(keys).T, axis=1)[:, :k],
     ["sorted ascending"]),
    (lambda q, keys, k: jnp.argsort(-(_unit(q) @ _unit(keys).T), axis=1)[:, :k][:, ::-1],
     ["wrong order"]),
    (lambda q, keys, k: jnp.argsort(-(_unit(q) @ _unit(keys).T), axis=1),
     ["shape", "k indices"]),
])
def test_cosine_top_k_names_the_mistake(wrong, words):
    fails_with(checks.check_cosine_top_k, wrong, *words)


# ---------------------------------------------------------------- recall_at_k


def test_recall_at_k_passes_library(capsys):
    checks.check_recall_at_k(retrieval.recall_at_k)
    assert "✓ recall_at_k: correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, words", [
    (lambda r, t, k: (r[:, 0] == t).mean(), ["first result only"]),
    (lambda r, t, k: (r[:, : k + 1] == t[:, None]).any(1).mean(), ["k + 1"]),
    (lambda r, t, k: (r[:, : k - 1] == t[:, None]).any(1).mean(), ["k - 1"]),
    (lambda r, t, k: (r[:, :k] == t[:, None]).any(1).sum(), ["counted the hits", "fraction"]),
    (lambda r, t, k: (r == t[:, None]).any(1).mean(), ["all results"]),
    (lambda r, t, k: (r[:, :k] == t[:, None]).any(1), ["one number"]),
])
def test_recall_at_k_names_the_mistake(wrong, words):
    fails_with(checks.check_recall_at_k, wrong, *words)


# ---------------------------------------------------------------- roc_auc_pairs


def test_roc_auc_pairs_passes_reference_and_library(capsys):
    checks.check_roc_auc_pairs(metrics.roc_auc_pairs)
    checks.check_roc_auc_pairs(metrics.roc_auc)
    assert capsys.readouterr().out.count("✓ roc_auc_pairs: correct") == 2


def _pairs(labels, scores):
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores)
    return scores[labels][:, None] - scores[~labels][None, :]  # (n_pos, n_neg)


@pytest.mark.parametrize("wrong, words", [
    (lambda y, s: (_pairs(y, s) > 0).mean(), ["ties counted as 0", "one half"]),
    (lambda y, s: (_pairs(y, s) >= 0).mean(), ["ties counted as 1"]),
    (lambda y, s: metrics.roc_auc_pairs(1 - np.asarray(y), s), ["labels inverted"]),
    (lambda y, s: ((_pairs(y, s) > 0) + 0.5 * (_pairs(y, s) == 0)).sum() / len(y) ** 2,
     ["n_pos * n_neg"]),
    (lambda y, s: ((_pairs(y, s) > 0) + 0.5 * (_pairs(y, s) == 0)).sum(), ["forgot to divide"]),
])
def test_roc_auc_pairs_names_the_mistake(wrong, words):
    fails_with(checks.check_roc_auc_pairs, wrong, *words)


def test_reference_roc_auc_pairs_matches_metrics():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.normal(size=200), 1)
    assert metrics.roc_auc_pairs(labels, scores) == pytest.approx(
        metrics.roc_auc(labels, scores))
