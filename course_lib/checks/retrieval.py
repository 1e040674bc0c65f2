"""Checks for notebook 06b (search, classification, questions and summaries): mean pooling that
skips padding, cosine top-k retrieval, recall@k, and ROC AUC from its pairwise definition."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

from course_lib import metrics
from course_lib.checks._core import (
    _as_array,
    _as_scalar,
    _call,
    _close,
    _diagnose,
    _fail,
    _ok,
    _short,
)

__all__ = [
    "check_mean_pool", "check_cosine_top_k", "check_recall_at_k", "check_roc_auc_pairs",
    "reference_roc_auc_pairs",
]


# ---------------------------------------------------------------- mean pooling


def check_mean_pool(fn: Callable) -> None:
    """Check ``fn(h, mask) -> (B, C)`` against ``retrieval.mean_pool``."""
    name = "mean_pool"
    rng = np.random.default_rng(11)
    B, T, C = 3, 6, 4
    masks = [
        np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool),
        np.array([[1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], bool),
    ]
    for mask in masks:
        h = rng.normal(size=(B, T, C)) + 2.0  # padding states are not zero in a real model
        got = _as_array(name, _call(name, fn, jnp.asarray(h, jnp.float32), jnp.asarray(mask)),
                        (B, C), "one vector per sequence")
        m = mask[..., None].astype(float)  # (B, T, 1)
        total = (h * m).sum(1)  # (B, C)
        n_real = m.sum(1)  # (B, 1)
        want = total / n_real
        if _close(got, want, rtol=1e-4, atol=1e-5):
            continue
        candidates = [
            (h.mean(1), "averaged the padding too: multiply by the mask (mask[..., None]) before "
             "summing over positions, and divide by the number of REAL positions."),
            (total / T, "divided by the full length T: divide by the number of real positions "
             "of each sequence, mask.sum(axis=1)."),
            (total, "forgot to divide: that is the sum of the real positions, not their mean."),
            (h.sum(1) / n_real, "summed the padding positions too: multiply h by the mask "
             "before summing."),
            (h[:, 0], "took the first position only: average over all real positions."),
            (h[np.arange(B), mask.sum(1) - 1], "took the last real position only: average "
             "over all real positions."),
        ]
        hint = _diagnose(got, candidates, rtol=1e-4, atol=1e-5)
        _fail(name, (hint or "wrong values.")
              + f"\n  mask = {_short(mask.astype(int))}\n  expected {_short(want)}\n"
              f"  got      {_short(got)}")
    _ok(name, f"{len(masks)} cases")


# ---------------------------------------------------------------- cosine top-k


def check_cosine_top_k(fn: Callable) -> None:
    """Check ``fn(queries, keys, k) -> indices (Q, k)``, most similar first."""
    name = "cosine_top_k"
    rng = np.random.default_rng(12)
    Q, N, C, k = 4, 9, 5, 3
    for case in range(2):
        keys = rng.normal(size=(N, C)) * rng.uniform(0.2, 5.0, size=(N, 1))  # varied lengths
        queries = keys[rng.choice(N, Q, replace=False)] * 0.5 + rng.normal(size=(Q, C)) * 0.6
        got = _as_array(name, _call(name, fn, jnp.asarray(queries, jnp.float32),
                                    jnp.asarray(keys, jnp.float32), k),
                        (Q, k), "k indices per query")
        qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        kn = keys / np.linalg.norm(keys, axis=1, keepdims=True)
        cos = qn @ kn.T  # (Q, N)
        want = np.argsort(-cos, axis=1, kind="stable")[:, :k]
        if np.array_equal(got, want):
            continue
        dot = queries @ keys.T
        keys_cols = keys / np.linalg.norm(keys, axis=0, keepdims=True)
        candidates = [
            (np.argsort(-dot, axis=1)[:, :k], "forgot to normalise: that ranks by the dot "
             "product, which favours long key vectors. Divide every query and key by its "
             "length (norm over the last axis) first."),
            (np.argsort(-(qn @ keys_cols.T), axis=1)[:, :k], "normalised over the wrong axis "
             "(columns): each key vector is a ROW; use axis=-1."),
            (np.argsort(cos, axis=1)[:, :k], "sorted ascending: those are the k LEAST similar "
             "keys. Sort by descending similarity (argsort of -sims, or jax.lax.top_k)."),
            (want[:, ::-1], "the right keys in the wrong order: put the most similar first."),
        ]
        hint = _diagnose(got, candidates, rtol=0, atol=0)
        _fail(name, (hint or "wrong indices.")
              + f"\n  case {case + 1}: expected {_short(want)}\n  got {_short(got.astype(int))}")
    _ok(name, "2 cases")


# ---------------------------------------------------------------- recall@k


def check_recall_at_k(fn: Callable) -> None:
    """Check ``fn(ranked, targets, k) -> float`` against ``retrieval.recall_at_k``."""
    name = "recall_at_k"
    rng = np.random.default_rng(13)
    Q, K, N = 12, 6, 20
    ranked = np.stack([rng.permutation(N)[:K] for _ in range(Q)])  # (Q, K)
    # Targets at every rank 0..K-1, and some not retrieved at all.
    where = np.array([0, 1, 2, 3, 4, 5, 0, 2, -1, -1, 1, 3])
    targets = np.array([ranked[q, r] if r >= 0 else np.setdiff1d(np.arange(N), ranked[q])[0]
                        for q, r in enumerate(where)])
    for k in (1, 3, 5):
        got = _as_scalar(name, _call(name, fn, jnp.asarray(ranked), jnp.asarray(targets), k),
                         "Return one number: the mean over queries.")
        hit = (ranked[:, :k] == targets[:, None]).any(1)
        want = hit.mean()
        if _close(got, want):
            continue
        candidates = [
            ((ranked[:, 0] == targets).mean() if k > 1 else None, "looked at the first result "
             "only: a hit is the target anywhere among the first k results, ranked[:, :k]."),
            ((ranked[:, : k + 1] == targets[:, None]).any(1).mean(), "off by one: you looked "
             "at k + 1 results; ranked[:, :k] are the first k."),
            ((ranked[:, : k - 1] == targets[:, None]).any(1).mean(),
             "off by one: you looked at k - 1 results; ranked[:, :k] are the first k."),
            (hit.sum(), "counted the hits: recall@k is the FRACTION of queries with a hit "
             "(divide by the number of queries)."),
            ((ranked == targets[:, None]).any(1).mean(), "looked at all results, not the "
             "first k."),
        ]
        hint = _diagnose(got, candidates)
        _fail(name, (hint or "wrong value.") + f"\n  k = {k}: expected {want:.4g}, got {got:.4g}")
    _ok(name, "k = 1, 3, 5")


# ---------------------------------------------------------------- ROC AUC by pairs


def reference_roc_auc_pairs(labels, scores) -> float:
    """ROC AUC from its definition: over every (positive, negative) pair, 1 if the positive
    scores higher, 1/2 on a tie, 0 otherwise; the mean over all n_pos * n_neg pairs.
    labels: (N,) 0/1; scores: (N,). O(n_pos * n_neg) memory: for checking, not for big data."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]  # (n_pos, n_neg)
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def check_roc_auc_pairs(fn: Callable) -> None:
    """Check ``fn(labels, scores) -> float`` against the pairwise definition (= metrics.roc_auc)."""
    name = "roc_auc_pairs"
    rng = np.random.default_rng(14)
    cases = []
    for n in (10, 16, 25):
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        scores = np.round(rng.normal(size=n) + labels, 0)  # rounded: many ties
        cases.append((labels, scores))
    for labels, scores in cases:
        got = _as_scalar(name, _call(name, fn, jnp.asarray(labels), jnp.asarray(scores)),
                         "Return one number: the mean over all (positive, negative) pairs.")
        want = metrics.roc_auc(labels, scores)
        if _close(got, want, rtol=1e-6, atol=1e-9):
            continue
        pos, neg = scores[labels == 1], scores[labels == 0]
        diff = pos[:, None] - neg[None, :]
        wins, ties = (diff > 0).sum(), (diff == 0).sum()
        n_pairs = diff.size
        candidates = [
            (wins / n_pairs, "ties counted as 0: a tie between a positive and a negative counts "
             "one half (the classifier cannot tell them apart)."),
            ((wins + ties) / n_pairs, "ties counted as 1 (>= instead of >): a tie counts one "
             "half."),
            (1 - want, "labels inverted: you get 1 - AUC. The positives are labels == 1; count "
             "the pairs where the POSITIVE scores higher."),
            ((wins + 0.5 * ties) / len(labels) ** 2, "divided by N²: divide by the number of "
             "(positive, negative) pairs, n_pos * n_neg."),
            (wins + 0.5 * ties, "forgot to divide by the number of pairs, n_pos * n_neg."),
        ]
        hint = _diagnose(got, candidates, rtol=1e-6, atol=1e-9)
        _fail(name, (hint or "wrong value.")
              + f"\n  labels = {_short(labels)}\n  scores = {_short(scores)}"
              f"\n  expected {want:.6g}, got {got:.6g}")
    _ok(name, f"{len(cases)} cases with ties")
