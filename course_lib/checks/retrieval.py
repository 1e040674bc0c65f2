"""Exercises of notebook 06b (search, classification, questions and summaries): mean pooling that
skips padding, cosine top-k retrieval, recall@k, and ROC AUC from its pairwise definition."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from course_lib import metrics
from course_lib.checks._core import Exercise, Mistake, as_number, checker, library

__all__ = ["check_mean_pool", "check_cosine_top_k", "check_recall_at_k", "check_roc_auc_pairs"]

# ---------------------------------------------------------------- mean pooling


def _pool_cases():
    rng = np.random.default_rng(11)
    masks = [
        np.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], bool),
        np.array([[1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], bool),
    ]
    # padding states are not zero in a real model: + 2.0
    return [(jnp.asarray(rng.normal(size=(3, 6, 4)) + 2.0, jnp.float32), jnp.asarray(m))
            for m in masks]


def _masked_sum(h, mask):
    return (h * mask[..., None]).sum(1)  # (B, C)


def _n_real(mask):
    return mask.sum(1, keepdims=True)  # (B, 1)


MEAN_POOL = Exercise(
    "mean_pool",
    doc="Check ``fn(h, mask) -> (B, C)`` against ``retrieval.mean_pool``.",
    reference=library("retrieval", "mean_pool"),
    cases=_pool_cases,
    expect="one vector per sequence", rtol=1e-4, atol=1e-5,
    mistakes=[
        Mistake("averaged the padding too: multiply by the mask (mask[..., None]) before summing "
                "over positions, and divide by the number of REAL positions.",
                lambda h, m: h.mean(1)),
        Mistake("divided by the full length T: divide by the number of real positions of each "
                "sequence, mask.sum(axis=1).", lambda h, m: _masked_sum(h, m) / h.shape[1]),
        Mistake("forgot to divide: that is the sum of the real positions, not their mean.",
                _masked_sum),
        Mistake("summed the padding positions too: multiply h by the mask before summing.",
                lambda h, m: h.sum(1) / _n_real(m)),
        Mistake("took the first position only: average over all real positions.",
                lambda h, m: h[:, 0]),
        Mistake("took the last real position only: average over all real positions.",
                lambda h, m: h[jnp.arange(h.shape[0]), m.sum(1) - 1]),
    ],
)

# ---------------------------------------------------------------- cosine top-k


def _top_k_cases():
    rng = np.random.default_rng(12)
    Q, N, C, k = 4, 9, 5, 3
    cases = []
    for _ in range(2):
        keys = rng.normal(size=(N, C)) * rng.uniform(0.2, 5.0, size=(N, 1))  # varied lengths
        queries = keys[rng.choice(N, Q, replace=False)] * 0.5 + rng.normal(size=(Q, C)) * 0.6
        cases.append((jnp.asarray(queries, jnp.float32), jnp.asarray(keys, jnp.float32), k))
    return cases


def _unit(x, axis=-1):
    return x / jnp.linalg.norm(x, axis=axis, keepdims=True)


def _ranked(sims, k, descending=True):
    return jnp.argsort(-sims if descending else sims, axis=1)[:, :k]  # (Q, k)


COSINE_TOP_K = Exercise(
    "cosine_top_k",
    doc="Check ``fn(queries, keys, k) -> indices (Q, k)``, most similar first.",
    reference=lambda q, keys, k: library("retrieval", "cosine_top_k")(q, keys, k)[0],
    cases=_top_k_cases,
    expect="k indices per query", rtol=0, atol=0, otherwise="wrong indices.",
    mistakes=[
        Mistake("forgot to normalise: that ranks by the dot product, which favours long key "
                "vectors. Divide every query and key by its length (norm over the last axis) "
                "first.", lambda q, keys, k: _ranked(q @ keys.T, k)),
        Mistake("normalised over the wrong axis (columns): each key vector is a ROW; use "
                "axis=-1.", lambda q, keys, k: _ranked(_unit(q) @ _unit(keys, axis=0).T, k)),
        Mistake("sorted ascending: those are the k LEAST similar keys. Sort by descending "
                "similarity (argsort of -sims, or jax.lax.top_k).",
                lambda q, keys, k: _ranked(_unit(q) @ _unit(keys).T, k, descending=False)),
        Mistake("the right keys in the wrong order: put the most similar first.",
                lambda q, keys, k: _ranked(_unit(q) @ _unit(keys).T, k)[:, ::-1]),
    ],
    success="{n} cases",
)

# ---------------------------------------------------------------- recall@k


def _recall_cases():
    rng = np.random.default_rng(13)
    Q, K, N = 12, 6, 20
    ranked = np.stack([rng.permutation(N)[:K] for _ in range(Q)])  # (Q, K)
    # Targets at every rank 0..K-1, and some not retrieved at all.
    where = [0, 1, 2, 3, 4, 5, 0, 2, -1, -1, 1, 3]
    targets = np.array([ranked[q, r] if r >= 0 else np.setdiff1d(np.arange(N), ranked[q])[0]
                        for q, r in enumerate(where)])
    return [(jnp.asarray(ranked), jnp.asarray(targets), k) for k in (1, 3, 5)]


def _hits(ranked, targets, k):
    return (np.asarray(ranked)[:, :k] == np.asarray(targets)[:, None]).any(1)  # (Q,)


RECALL_AT_K = Exercise(
    "recall_at_k",
    doc="Check ``fn(ranked, targets, k) -> float`` against ``retrieval.recall_at_k``.",
    reference=library("retrieval", "recall_at_k"),
    cases=_recall_cases,
    output=as_number, expect="a single number",
    shape_hint="Return one number: the mean over queries.", otherwise="wrong value.",
    mistakes=[
        Mistake("looked at the first result only: a hit is the target anywhere among the first k "
                "results, ranked[:, :k].", lambda r, t, k: _hits(r, t, 1).mean()),
        Mistake("off by one: you looked at k + 1 results; ranked[:, :k] are the first k.",
                lambda r, t, k: _hits(r, t, k + 1).mean()),
        Mistake("off by one: you looked at k - 1 results; ranked[:, :k] are the first k.",
                lambda r, t, k: _hits(r, t, k - 1).mean()),
        Mistake("counted the hits: recall@k is the FRACTION of queries with a hit (divide by the "
                "number of queries).", lambda r, t, k: _hits(r, t, k).sum()),
        Mistake("looked at all results, not the first k.",
                lambda r, t, k: _hits(r, t, r.shape[1]).mean()),
    ],
    success="k = 1, 3, 5",
)

# ---------------------------------------------------------------- ROC AUC by pairs


def _auc_cases():
    rng = np.random.default_rng(14)
    cases = []
    for n in (10, 16, 25):
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        scores = np.round(rng.normal(size=n) + labels, 0)  # rounded: many ties
        cases.append((jnp.asarray(labels), jnp.asarray(scores, jnp.float32)))
    return cases


def _pair_wins(labels, scores):
    """(wins, ties) over all (positive, negative) pairs."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, np.float64)
    diff = scores[labels][:, None] - scores[~labels][None, :]  # (n_pos, n_neg)
    return (diff > 0).sum(), (diff == 0).sum(), diff.size


ROC_AUC_PAIRS = Exercise(
    "roc_auc_pairs",
    doc="Check ``fn(labels, scores) -> float``, ROC AUC by its pairwise definition.",
    reference=metrics.roc_auc_pairs,
    cases=_auc_cases,
    output=as_number, expect="a single number", rtol=1e-6, atol=1e-9,
    shape_hint="Return one number: the mean over all (positive, negative) pairs.",
    otherwise="wrong value.",
    mistakes=[
        Mistake("ties counted as 0: a tie between a positive and a negative counts one half (the "
                "classifier cannot tell them apart).",
                lambda y, s: (lambda w, t, n: w / n)(*_pair_wins(y, s))),
        Mistake("ties counted as 1 (>= instead of >): a tie counts one half.",
                lambda y, s: (lambda w, t, n: (w + t) / n)(*_pair_wins(y, s))),
        Mistake("labels inverted: you get 1 - AUC. The positives are labels == 1; count the pairs "
                "where the POSITIVE scores higher.",
                lambda y, s: metrics.roc_auc_pairs(1 - np.asarray(y), s)),
        Mistake("divided by N²: divide by the number of (positive, negative) pairs, "
                "n_pos * n_neg.",
                lambda y, s: (lambda w, t, n: (w + 0.5 * t) / len(y) ** 2)(*_pair_wins(y, s))),
        Mistake("forgot to divide by the number of pairs, n_pos * n_neg.",
                lambda y, s: (lambda w, t, n: w + 0.5 * t)(*_pair_wins(y, s))),
    ],
    success="{n} cases with ties",
)

check_mean_pool = checker(MEAN_POOL)
check_cosine_top_k = checker(COSINE_TOP_K)
check_recall_at_k = checker(RECALL_AT_K)
check_roc_auc_pairs = checker(ROC_AUC_PAIRS)
