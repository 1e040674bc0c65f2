"""Metrics for language models and classifiers: cross-entropy, perplexity, accuracy, ROC AUC.

``cross_entropy`` and ``perplexity`` work on JAX arrays (and inside ``jit``); the ranking metrics
(``roc_auc``, ``roc_curve``) run on the host with NumPy, since they sort and are used for reports.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from course_lib.model import check_ids


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean negative log-likelihood of integer ``targets`` under ``logits``, in nats.

    logits: (..., V) unnormalised scores over a vocabulary of size V.
    targets: (...) integer ids in [0, V), the same leading shape as ``logits``.
    Returns a scalar: mean over all positions of -log softmax(logits)[target].
    """
    logits = jnp.asarray(logits)
    targets = jnp.asarray(targets)
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"cross_entropy: logits {logits.shape} need shape targets.shape + (V,); "
            f"got targets {targets.shape}."
        )
    if not (jnp.issubdtype(targets.dtype, jnp.integer) or targets.dtype == jnp.bool_):
        raise TypeError(f"cross_entropy: targets must be integer class ids, got dtype "
                        f"{targets.dtype}. Convert with targets.astype(int) if they are whole "
                        "numbers.")
    if targets.size == 0:
        raise ValueError("cross_entropy: no targets, so the mean is undefined.")
    check_ids(targets, logits.shape[-1], "cross_entropy targets",
              f"Targets must index the logits' last axis ({logits.shape[-1]} classes): check "
              "that logits and targets come from the same vocabulary, and that no padding "
              "or ignore value such as -1 or -100 is left in the targets.")
    logp = jax.nn.log_softmax(logits, axis=-1)  # (..., V), stable: subtracts the max first
    picked = jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)  # (..., 1)
    return -jnp.mean(picked)


def perplexity(mean_nll):
    """exp(mean negative log-likelihood in nats): the model's "effective number of choices".

    A Python/NumPy scalar gives a float, a NumPy array a NumPy array, a JAX array a JAX array
    (so it also works inside ``jit``). A uniform model over V tokens has perplexity V.
    A negative or NaN value is an error: it cannot be a negative log-likelihood.
    """
    _check_nll(mean_nll)
    if isinstance(mean_nll, jax.Array):
        return jnp.exp(mean_nll)
    if isinstance(mean_nll, np.ndarray) and mean_nll.ndim > 0:
        return np.exp(mean_nll)
    x = float(mean_nll)
    return math.inf if x > 709.0 else math.exp(x)  # exp overflows float64 beyond ~709.78


def _check_nll(mean_nll) -> None:
    if isinstance(mean_nll, jax.core.Tracer):
        return  # inside jit: no value to check
    x = np.asarray(mean_nll, dtype=np.float64)
    if np.isnan(x).any():
        raise ValueError("perplexity: the mean negative log-likelihood is NaN; a loss became NaN "
                         "(check the training run: lower learning rate, gradient clipping).")
    if (x < -1e-6).any():  # a little rounding below 0 is fine
        raise ValueError(
            f"perplexity: mean_nll must be >= 0 (a negative log-likelihood), got "
            f"{x.min():.4g}. A mean log-probability is negated first: perplexity(-mean_logprob)."
        )


def accuracy(labels, preds) -> float:
    """Fraction of positions where ``preds == labels``.

    labels, preds: arrays of the same shape (class ids or booleans). Returns a float in [0, 1].
    """
    labels, preds = np.asarray(labels), np.asarray(preds)
    if labels.shape != preds.shape:
        raise ValueError(f"accuracy: labels {labels.shape} and preds {preds.shape} differ in shape.")
    if labels.size == 0:
        raise ValueError("accuracy: no examples.")
    return float(np.mean(labels == preds))


def _binary_inputs(labels, scores, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and flatten binary labels (0/1 or bool) and real scores of the same shape."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape:
        raise ValueError(f"{name}: labels {labels.shape} and scores {scores.shape} differ in shape.")
    labels, scores = labels.ravel(), scores.ravel()
    if not np.all((labels == 0) | (labels == 1)):
        raise ValueError(f"{name}: labels must be 0/1 or booleans; got values {np.unique(labels)}.")
    if np.isnan(scores).any():
        raise ValueError(f"{name}: scores contain NaN.")
    labels = labels.astype(bool)
    n_pos = int(labels.sum())
    if n_pos == 0 or n_pos == labels.size:
        only = "positive" if n_pos else "negative"
        raise ValueError(
            f"{name}: only {only} examples are present; ROC needs both classes "
            f"(got {labels.size} example(s))."
        )
    return labels, scores


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``; tied values share the mean of the ranks they span."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # Start index of each run of equal values, and the run lengths.
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    lengths = np.diff(np.r_[starts, len(xs)])
    mean_rank = starts + (lengths + 1) / 2.0  # 1-based mean rank of each run
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, lengths)
    return ranks


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve: P(score of a random positive > score of a random negative),
    ties counting one half (the Mann–Whitney U statistic divided by n_pos * n_neg).

    labels: (N,) 0/1 or bool, both classes present. scores: (N,) reals, higher = more positive.
    Returns a float in [0, 1]: 1 = perfect ranking, 0.5 = chance, 0 = perfectly inverted.
    """
    labels, scores = _binary_inputs(labels, scores, "roc_auc")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    ranks = _average_ranks(scores)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0  # pairs a positive wins (+ half ties)
    return float(u / (n_pos * n_neg))


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points of the ROC curve, one per distinct score, for plotting.

    labels: (N,) 0/1 or bool, both classes present. scores: (N,) reals.
    Returns (fpr, tpr, thresholds), each (K + 1,) for K distinct scores: predicting
    "positive" when score >= thresholds[k] gives false/true positive rates fpr[k], tpr[k].
    thresholds[0] is +inf (nothing predicted positive), so the curve starts at (0, 0) and
    ends at (1, 1); its trapezoid area equals ``roc_auc`` (ties as diagonal segments).
    """
    labels, scores = _binary_inputs(labels, scores, "roc_curve")
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_run = np.r_[s[1:] != s[:-1], True]  # the last index of each run of equal scores
    tp = np.cumsum(y)[last_of_run]
    fp = np.cumsum(~y)[last_of_run]
    tpr = np.r_[0.0, tp / tp[-1]]
    fpr = np.r_[0.0, fp / fp[-1]]
    thresholds = np.r_[np.inf, s[last_of_run]]
    return fpr, tpr, thresholds


# ---------------------------------------------------------------- definitions, written out
# Reference solutions of exercises (checked by checks.check_roc_auc_pairs and
# checks.check_copied_fraction).


def roc_auc_pairs(labels, scores) -> float:
    """ROC AUC from its definition: over every (positive, negative) pair, 1 if the positive
    scores higher, 1/2 on a tie, 0 otherwise; the mean over all n_pos * n_neg pairs.
    labels: (N,) 0/1; scores: (N,). Same value as ``roc_auc``, but O(n_pos * n_neg) memory:
    for checking, not for big data."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, dtype=np.float64)
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]  # (n_pos, n_neg)
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


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


def copied_fraction(sample: str, train_text: str, n: int) -> float:
    """The fraction of the len(sample) - n + 1 windows of n characters of ``sample`` that occur
    somewhere in ``train_text`` (0.0 when the sample is shorter than n): how much of a generated
    text is copied from the training text.

    Fast for long texts: every window is reduced to a 64-bit polynomial hash (computed for all
    windows at once from prefix sums), and the sample's hashes are looked up in the sorted
    hashes of the training text. Two different windows share a hash with probability ~2**-64.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}.")
    if len(sample) < n or len(train_text) < n:
        return 0.0
    known = _sorted_windows(train_text, n)  # (len(train_text) - n + 1,) sorted hashes
    mine = _window_hashes(sample, n)  # (len(sample) - n + 1,)
    at = np.minimum(np.searchsorted(known, mine), len(known) - 1)
    return float(np.mean(known[at] == mine))
