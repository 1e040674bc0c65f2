"""Checks for notebook 01 (background): perplexity, cross-entropy, bigram counts, sampling."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from course_lib.checks._core import (  # noqa: F401
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
    "check_perplexity_from_logprobs", "check_cross_entropy_from_logits",
    "check_normalize_bigram_counts", "check_sample_bigram",
    "reference_normalize_bigram_counts", "reference_sample_bigram",
]


def check_perplexity_from_logprobs(fn: Callable) -> None:
    """Check ``fn(logprobs) -> perplexity``.

    logprobs: (T,) natural-log probabilities the model gave each actual next token.
    Expected: exp(-mean(logprobs)), a single number >= 1.
    """
    name = "perplexity_from_logprobs"
    # Few distinct shapes: JAX compiles each operation once per input shape.
    rng = np.random.default_rng(1)
    cases = [
        np.log([0.5, 0.25, 0.125, 0.5]),
        np.log(rng.uniform(0.05, 0.9, size=12)),
        np.full(4, -np.log(65.0)),  # a uniform model over 65 tokens: perplexity 65
    ]
    for lp in cases:
        got = _as_scalar(
            name,
            _call(name, fn, jnp.asarray(lp, dtype=jnp.float32)),
            "Perplexity summarises the whole sequence: average the log-probabilities first.",
        )
        want = np.exp(-lp.mean())
        if _close(got, want):
            continue
        if np.isnan(got):
            _fail(name, f"your function returned NaN for logprobs = {_short(lp)}.")
        hint = _diagnose(
            got,
            [
                (np.exp(lp.mean()), "forgot the minus sign: log-probabilities are <= 0, so "
                 "exp(mean) is below 1, but a perplexity is always >= 1. Use exp(-mean(logprobs))."),
                (np.exp(-lp.sum()), "used the sum instead of the mean: perplexity is per token; "
                 "with the sum it grows with the length of the text."),
                (2.0 ** (-lp.mean()), "used base 2 (2 ** ...), but these log-probabilities are "
                 "natural logs, so the inverse is exp (base e)."),
                (10.0 ** (-lp.mean()), "used base 10 (10 ** ...), but these log-probabilities are "
                 "natural logs, so the inverse is exp (base e)."),
                (-lp.mean(), "forgot the exp: -mean(logprobs) is the cross-entropy (in nats); "
                 "perplexity is exp of it."),
                (lp.mean(), "forgot the exp and the minus sign: this is the mean log-probability."),
                (1.0 / np.exp(-lp.sum()), "used exp(sum(logprobs)): the minus sign is missing and "
                 "the sum should be a mean."),
                (np.exp(-lp.sum() / max(len(lp) - 1, 1)), "divided by T - 1 instead of T: average "
                 "over all T tokens."),
            ],
        )
        if hint is None and got < 1.0:
            hint = "a perplexity is never below 1 — check the sign inside the exp."
        _fail(
            name,
            (hint or "wrong value.")
            + f"\n  logprobs = {_short(lp)}\n  expected {want:.6g}, got {got:.6g}",
        )
    _ok(name, f"{len(cases)} cases")


def check_cross_entropy_from_logits(fn: Callable) -> None:
    """Check ``fn(logits, targets) -> mean negative log-likelihood``.

    logits: (N, V) unnormalised scores; targets: (N,) integer ids in [0, V).
    Expected: -mean_n log softmax(logits[n])[targets[n]], a single finite number.
    """
    name = "cross_entropy_from_logits"
    # One shape (N, V) = (6, 5) for all cases: JAX compiles each operation once per shape.
    rng = np.random.default_rng(2)
    huge = rng.normal(size=(6, 5))
    huge[np.arange(6), rng.integers(0, 5, 6)] = 900.0  # logits this large overflow exp()
    cases = [
        (rng.normal(size=(6, 5)) * 2.0, rng.integers(0, 5, 6)),
        (rng.normal(size=(6, 5)), rng.integers(0, 5, 6)),
        (np.zeros((6, 5)), np.array([0, 1, 2, 3, 4, 0])),  # uniform: ln 5
        (huge, rng.integers(0, 5, 6)),
    ]
    for logits, targets in cases:
        got = _as_scalar(
            name,
            _call(name, fn, jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.int32)),
            "Average over the N positions to get one number.",
        )
        lg = logits - logits.max(-1, keepdims=True)
        logp = lg - np.log(np.exp(lg).sum(-1, keepdims=True))  # (N, V), stable in float64
        rows = np.arange(len(targets))
        want = -logp[rows, targets].mean()
        if _close(got, want, rtol=1e-3, atol=1e-4):
            continue
        if not np.isfinite(got):
            _fail(
                name,
                f"got {got} for logits as large as {np.abs(logits).max():g}: exp overflowed. "
                "Use jax.nn.log_softmax (or subtract each row's max before exp), which is "
                "numerically stable.",
            )
        with np.errstate(all="ignore"):
            p = np.exp(logp)
            lg0 = logits - logits.max(0, keepdims=True)
            logp_cols = lg0 - np.log(np.exp(lg0).sum(0, keepdims=True))
            candidates = [
                (-want, "forgot the minus sign: the loss is the NEGATIVE mean log-probability "
                 "(it is >= 0)."),
                (-logp[rows, targets].sum(), "used the sum over positions instead of the mean."),
                (-logits[rows, targets].mean(), "used the raw logits of the targets: normalise "
                 "first with jax.nn.log_softmax(logits, axis=-1)."),
                (-p[rows, targets].mean(), "forgot the log: use log-probabilities "
                 "(jax.nn.log_softmax), not probabilities."),
                (-logp_cols[rows, targets].mean(), "normalised over the wrong axis (axis=0, the "
                 "positions); the softmax runs over the vocabulary, axis=-1."),
                (-logp.mean(), "averaged over the whole vocabulary instead of picking each "
                 "target's log-probability (e.g. logp[jnp.arange(N), targets])."),
            ]
        hint = _diagnose(got, candidates, rtol=1e-3, atol=1e-4)
        _fail(
            name,
            (hint or "wrong value.")
            + f"\n  logits = {_short(logits)}, targets = {_short(targets)}"
            + f"\n  expected {want:.6g}, got {got:.6g}",
        )
    _ok(name, f"{len(cases)} cases")


def reference_normalize_bigram_counts(counts, alpha: float = 1.0) -> jax.Array:
    """Bigram probabilities from counts with add-``alpha`` smoothing.

    counts: (V, V), counts[i, j] = how often token j followed token i.
    Returns P: (V, V) with P[i, j] = (counts[i, j] + alpha) / (sum_j counts[i, j] + alpha * V);
    every row sums to 1. A row with no counts at all (possible only when alpha == 0) becomes
    the uniform distribution 1/V instead of 0/0.
    """
    counts = jnp.asarray(counts, dtype=jnp.float32) + alpha  # (V, V)
    row_sums = counts.sum(axis=1, keepdims=True)  # (V, 1): keepdims so each ROW is divided
    V = counts.shape[1]
    safe = jnp.where(row_sums > 0, row_sums, 1.0)
    return jnp.where(row_sums > 0, counts / safe, 1.0 / V)


def check_normalize_bigram_counts(fn: Callable) -> None:
    """Check ``fn(counts, alpha) -> probs`` against ``reference_normalize_bigram_counts``."""
    name = "normalize_bigram_counts"
    cases = [
        (np.array([[0, 3, 1], [2, 0, 2], [5, 1, 0]]), 1.0),
        (np.array([[4, 0, 1, 0], [1, 1, 6, 0], [0, 2, 0, 8], [3, 0, 0, 1]]), 0.5),
        (np.array([[2, 2, 0, 0], [0, 0, 0, 0], [1, 0, 3, 0], [0, 5, 0, 1]]), 0.0),  # zero row
    ]
    for counts, alpha in cases:
        V = counts.shape[0]
        c = counts.astype(np.float64)
        out = _call(name, fn, jnp.asarray(counts, jnp.int32), alpha)
        got = _as_array(name, out, (V, V), what="a probability matrix")
        want = np.asarray(reference_normalize_bigram_counts(counts, alpha), np.float64)
        if _close(got, want):
            continue
        where = f"\n  counts =\n{counts}\n  alpha = {alpha}"
        zero_row = (c.sum(1) == 0).any()
        if not np.isfinite(got).all():
            if zero_row and alpha == 0:
                _fail(
                    name,
                    "NaN in the result: a row with no counts divides 0 by 0. When a row sums to "
                    "zero (and alpha = 0), return the uniform distribution 1/V for that row, "
                    "e.g. with jnp.where(row_sums > 0, ..., 1.0 / V)." + where,
                )
            _fail(name, "your result contains NaN or inf." + where)
        with np.errstate(all="ignore"):
            smoothed = c + alpha
            rows = smoothed.sum(1, keepdims=True)
            cols = smoothed.sum(0, keepdims=True)
            plain = c / c.sum(1, keepdims=True)
            alpha_one = (c + 1) / (c + 1).sum(1, keepdims=True)
            candidates = [
                (smoothed / cols, "normalised over columns (axis=0): each ROW — the current "
                 "token — must sum to 1. Divide by counts.sum(axis=1, keepdims=True)."),
                (smoothed / rows.T, "divided by the row sums without keepdims=True, so "
                 "broadcasting divided each COLUMN j by row j's sum. Use "
                 "sum(axis=1, keepdims=True) to get shape (V, 1)."),
                (plain if alpha > 0 else None, "forgot the smoothing: add alpha to every count "
                 "so that pairs never seen in training keep a small probability instead of 0."),
                (smoothed / c.sum(1, keepdims=True), "added alpha to the counts but not to the "
                 "denominator, so the rows no longer sum to 1: divide by the row sums of the "
                 "smoothed counts (row total + alpha * V)."),
                (smoothed / (c.sum(1, keepdims=True) + alpha), "added alpha only once to the "
                 "denominator; each of the V entries in the row got + alpha, so the row total "
                 "grows by alpha * V."),
                (alpha_one if alpha != 1 else None, f"ignored the `alpha` argument (this is "
                 f"add-one smoothing, but alpha = {alpha} here)."),
                (np.log(want), "returned log-probabilities; return the probabilities themselves."),
            ]
        hint = _diagnose(got, candidates)
        if hint is None and zero_row and alpha == 0 and np.allclose(got[c.sum(1) == 0], 0):
            hint = ("a row with no counts came out all zeros, which is not a distribution: "
                    "make it uniform (1/V each).")
        if hint is None and not np.allclose(got.sum(1), 1.0, atol=1e-4):
            hint = f"each row must sum to 1; your row sums are {_short(got.sum(1))}."
        if hint is None and (got < 0).any():
            hint = "probabilities cannot be negative."
        _fail(name, (hint or "wrong values.") + where
              + f"\n  expected\n{np.round(want, 4)}\n  got\n{np.round(got, 4)}")
    _ok(name, f"{len(cases)} cases, smoothing and empty rows included")


@partial(jax.jit, static_argnums=2)  # n_steps fixes the output shape, so it is static
def reference_sample_bigram(probs, start: int, n_steps: int, key: jax.Array) -> jax.Array:
    """Sample ``n_steps`` tokens from a bigram model, starting after token ``start``.

    probs: (V, V) rows are next-token distributions. key: a JAX PRNG key.
    Returns (n_steps,) int32 token ids (``start`` itself is not included).
    Each step uses its own key from ``jax.random.split``, so no randomness is reused.
    """
    logp = jnp.log(jnp.asarray(probs))  # (V, V); categorical takes log-probabilities

    def step(current, k):
        nxt = jax.random.categorical(k, logp[current])  # () one draw from row `current`
        return nxt, nxt

    keys = jax.random.split(key, n_steps)  # (n_steps,) a fresh key per step
    _, tokens = jax.lax.scan(step, jnp.int32(start), keys)
    return tokens.astype(jnp.int32)


def check_sample_bigram(fn: Callable) -> None:
    """Check ``fn(probs, start, n_steps, key) -> (n_steps,) int token ids``.

    Exact on a deterministic table, then statistical on a random one (with fixed keys, so the
    verdict is reproducible): follows the rows, uses the key, draws a fresh key per step,
    matches the probabilities.
    """
    name = "sample_bigram"

    def run(probs, start, n, seed):
        out = _call(name, fn, jnp.asarray(probs, jnp.float32), start, n, jax.random.key(seed))
        if out is None:
            _fail(name, "your function returned None — did you forget the `return` statement?")
        arr = np.asarray(out)
        if arr.dtype.kind not in "iu":
            if arr.dtype.kind == "f" and arr.size and np.all(arr == np.round(arr)):
                _fail(name, f"returned {arr.dtype} values; token ids are integers — convert with "
                      "jnp.asarray(tokens, dtype=jnp.int32).")
            _fail(name, f"returned {type(out).__name__} of dtype {arr.dtype}; expected an array "
                  "of integer token ids.")
        return arr

    # 1. A deterministic table: row i puts all its mass on perm[i]. Any correct sampler, and
    #    even argmax, must follow the chain exactly.
    perm = np.array([3, 0, 4, 2, 1])  # one 5-cycle: 0 -> 3 -> 2 -> 4 -> 1 -> 0
    table = np.eye(5)[perm]  # (5, 5), table[i, perm[i]] = 1
    start, n = 2, 6
    chain, cur = [], start
    for _ in range(n):
        cur = perm[cur]
        chain.append(cur)
    chain = np.array(chain)
    got = run(table, start, n, 0)
    if got.shape != (n,):
        if got.shape == (n + 1,) and got[0] == start and np.array_equal(got[1:], chain):
            _fail(name, f"the output starts with the `start` token; return only the {n} new "
                  "tokens.")
        _fail(name, f"returned shape {got.shape}; expected ({n},), one id per step.")
    if not np.array_equal(got, chain):
        inv, c, by_column = np.argsort(perm), start, []
        for _ in range(n):
            c = inv[c]
            by_column.append(c)
        hint = "with a table whose rows each put all mass on one token, the samples must follow "
        hint += "it exactly."
        if np.array_equal(got, by_column):
            hint = ("used the column probs[:, current]; the next-token distribution of `current` "
                    "is its ROW, probs[current].")
        elif np.all(got == perm[start]):
            hint = ("never moved on: every step sampled from the row of `start`. Set "
                    "current = the token just sampled, at the end of each step.")
        elif got[0] != perm[start]:
            hint = "the first token does not follow `start`: begin from probs[start]."
        _fail(name, f"{hint}\n  table: token i -> token {perm.tolist()}[i], start = {start}\n"
              f"  expected {chain.tolist()}, got {got.tolist()}")

    # 2. Same key, same samples.
    skewed = np.tile([0.85, 0.05, 0.05, 0.05], (4, 1))  # every row: token 0 with p = 0.85
    n = 30
    a, b = run(skewed, 1, n, 7), run(skewed, 1, n, 7)
    if a.shape != (n,):
        _fail(name, f"returned shape {a.shape}; expected ({n},).")
    if not np.array_equal(a, b):
        _fail(name, "two calls with the same key gave different samples: you are drawing from "
              "a global generator (np.random, random, or an old key) instead of the `key` "
              "argument. In JAX, randomness comes only from keys.")

    # 3. Different keys give different samples, and each step needs a fresh key. Rows of
    #    [0.4, 0.2, 0.2, 0.2]: argmax always says 0, a reused key repeats one token per run.
    flat = np.tile([0.4, 0.2, 0.2, 0.2], (4, 1))
    runs = [run(flat, 1, 25, seed) for seed in range(21, 29)]
    constant = sum(len(np.unique(r)) == 1 for r in runs)
    if all(np.array_equal(r, runs[0]) for r in runs):
        if np.all(runs[0] == 0):
            _fail(name, "always picked the most likely token (argmax / greedy decoding). Sampling "
                  "means drawing at random in proportion to the probabilities, e.g. "
                  "jax.random.categorical(key, jnp.log(probs[current])).")
        if constant < len(runs):
            _fail(name, "different keys gave identical samples: the `key` argument is ignored.")
    if constant >= len(runs) - 2:
        _fail(name, "every step of a run drew the same token: the same key was reused at every "
              "step. Split it: `key, sub = jax.random.split(key)` and sample with `sub`, or "
              "make `keys = jax.random.split(key, n_steps)` and use keys[t] at step t.")

    # 4. The frequencies match the probabilities (rows of [0.85, 0.05, 0.05, 0.05]).
    runs = [run(skewed, 1, 90, seed) for seed in (11, 12, 13, 14)]
    f0 = float(np.mean(np.concatenate(runs) == 0))  # 0.85 +- 0.019 (one std) if right
    if abs(f0 - 0.85) > 0.07:
        if abs(f0 - 0.426) < 0.07:
            hint = ("passed probabilities where log-probabilities belong: "
                    "jax.random.categorical applies a softmax to its input, so give it "
                    "jnp.log(probs[current]).")
        elif abs(f0 - 0.25) < 0.07:
            hint = "ignored the probabilities: the samples look uniform over the vocabulary."
        else:
            hint = "the sample frequencies do not match the probabilities."
        _fail(name, f"{hint}\n  rows are [0.85, 0.05, 0.05, 0.05]; token 0 came out "
              f"{100 * f0:.0f}% of the time instead of about 85%.")
    _ok(name, "follows the table, reproducible, a fresh key per step, right frequencies")
