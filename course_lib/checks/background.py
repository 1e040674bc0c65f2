"""Exercises of notebook 01 (background): perplexity, cross-entropy, bigram counts, sampling."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from course_lib import generate, metrics
from course_lib.checks._core import (
    Exercise,
    Mistake,
    Property,
    _fail,
    _short,
    as_number,
    checker,
)

__all__ = [
    "check_perplexity_from_logprobs", "check_cross_entropy_from_logits",
    "check_normalize_bigram_counts", "check_sample_bigram",
]

f32 = jnp.float32


def _nonfinite(got, want, case) -> bool:
    return not np.isfinite(got).all()


# ---------------------------------------------------------------- perplexity


def _perplexity_cases():
    rng = np.random.default_rng(1)  # few distinct shapes: JAX compiles once per shape
    return [(jnp.log(jnp.asarray(lp, f32)),) for lp in (
        [0.5, 0.25, 0.125, 0.5],
        rng.uniform(0.05, 0.9, size=12),
        np.full(4, 1 / 65),  # a uniform model over 65 tokens: perplexity 65
    )]


_BASE = "but these log-probabilities are natural logs, so the inverse is exp (base e)."

PERPLEXITY = Exercise(
    "perplexity_from_logprobs",
    doc="""Check ``fn(logprobs) -> perplexity``.

    logprobs: (T,) natural-log probabilities the model gave each actual next token.
    Expected: exp(-mean(logprobs)), a single number >= 1.""",
    reference=lambda lp: metrics.perplexity(-jnp.mean(lp)),
    cases=_perplexity_cases,
    output=as_number, expect="a single number",
    shape_hint="Perplexity summarises the whole sequence: average the log-probabilities first.",
    mistakes=[
        Mistake("your function returned NaN", lambda lp: jnp.exp(-jnp.mean(jnp.log(lp))),
                when=lambda got, want, case: np.isnan(got).any(),
                detail=lambda got, want, case: f" for logprobs = {_short(case.args[0])}."),
        Mistake("forgot the minus sign: log-probabilities are <= 0, so exp(mean) is below 1, but "
                "a perplexity is always >= 1. Use exp(-mean(logprobs)).",
                lambda lp: jnp.exp(jnp.mean(lp))),
        Mistake("used the sum instead of the mean: perplexity is per token; with the sum it "
                "grows with the length of the text.", lambda lp: jnp.exp(-jnp.sum(lp))),
        Mistake("used base 2 (2 ** ...), " + _BASE, lambda lp: 2.0 ** (-jnp.mean(lp))),
        Mistake("used base 10 (10 ** ...), " + _BASE, lambda lp: 10.0 ** (-jnp.mean(lp))),
        Mistake("forgot the exp: -mean(logprobs) is the cross-entropy (in nats); perplexity is "
                "exp of it.", lambda lp: -jnp.mean(lp)),
        Mistake("forgot the exp and the minus sign: this is the mean log-probability.",
                lambda lp: jnp.mean(lp)),
        Mistake("used exp(sum(logprobs)): the minus sign is missing and the sum should be a "
                "mean.", lambda lp: jnp.exp(jnp.sum(lp))),
        Mistake("divided by T - 1 instead of T: average over all T tokens.",
                lambda lp: jnp.exp(-jnp.sum(lp) / (lp.shape[0] - 1))),
        Mistake("a perplexity is never below 1 — check the sign inside the exp.",
                lambda lp: jnp.exp(jnp.mean(lp) / 2), when=lambda got, want, case: got < 1.0),
    ],
    otherwise="wrong value.",
)

# ---------------------------------------------------------------- cross-entropy


def _cross_entropy_cases():
    rng = np.random.default_rng(2)  # one shape (N, V) = (6, 5) for all cases
    huge = rng.normal(size=(6, 5))
    huge[np.arange(6), rng.integers(0, 5, 6)] = 900.0  # logits this large overflow exp()
    cases = [
        (rng.normal(size=(6, 5)) * 2.0, rng.integers(0, 5, 6)),
        (rng.normal(size=(6, 5)), rng.integers(0, 5, 6)),
        (np.zeros((6, 5)), np.array([0, 1, 2, 3, 4, 0])),  # uniform: ln 5
        (huge, rng.integers(0, 5, 6)),
    ]
    return [(jnp.asarray(lg, f32), jnp.asarray(t, jnp.int32)) for lg, t in cases]


def _picked(logp, targets):
    """logp: (N, V), targets: (N,) -> (N,) the log-probability of each target."""
    return jnp.take_along_axis(logp, targets[:, None], axis=1)[:, 0]


def _naive_log_softmax(logits, axis=-1):
    e = jnp.exp(logits)  # overflows for logits above ~88 in float32
    return jnp.log(e / e.sum(axis=axis, keepdims=True))


CROSS_ENTROPY = Exercise(
    "cross_entropy_from_logits",
    doc="""Check ``fn(logits, targets) -> mean negative log-likelihood``.

    logits: (N, V) unnormalised scores; targets: (N,) integer ids in [0, V).
    Expected: -mean_n log softmax(logits[n])[targets[n]], a single finite number.""",
    reference=metrics.cross_entropy,
    cases=_cross_entropy_cases,
    output=as_number, expect="a single number", rtol=1e-3, atol=1e-4,
    shape_hint="Average over the N positions to get one number.",
    mistakes=[
        Mistake("exp overflowed: use jax.nn.log_softmax (or subtract each row's max before exp), "
                "which is numerically stable.",
                lambda lg, t: -_picked(_naive_log_softmax(lg), t).mean(), when=_nonfinite,
                detail=lambda got, want, case:
                f" You got {got} for logits as large as {np.abs(case.args[0]).max():g}."),
        Mistake("forgot the minus sign: the loss is the NEGATIVE mean log-probability (it is "
                ">= 0).", lambda lg, t: _picked(jax.nn.log_softmax(lg), t).mean()),
        Mistake("used the sum over positions instead of the mean.",
                lambda lg, t: -_picked(jax.nn.log_softmax(lg), t).sum()),
        Mistake("used the raw logits of the targets: normalise first with "
                "jax.nn.log_softmax(logits, axis=-1).", lambda lg, t: -_picked(lg, t).mean()),
        Mistake("forgot the log: use log-probabilities (jax.nn.log_softmax), not probabilities.",
                lambda lg, t: -_picked(jax.nn.softmax(lg), t).mean()),
        Mistake("normalised over the wrong axis (axis=0, the positions); the softmax runs over "
                "the vocabulary, axis=-1.",
                lambda lg, t: -_picked(jax.nn.log_softmax(lg, axis=0), t).mean()),
        Mistake("averaged over the whole vocabulary instead of picking each target's "
                "log-probability (e.g. logp[jnp.arange(N), targets]).",
                lambda lg, t: -jax.nn.log_softmax(lg).mean()),
    ],
    otherwise="wrong value.",
)

# ---------------------------------------------------------------- bigram counts -> probabilities


def _bigram_count_cases():
    return [(jnp.asarray(c, jnp.int32), alpha) for c, alpha in (
        ([[0, 3, 1], [2, 0, 2], [5, 1, 0]], 1.0),
        ([[4, 0, 1, 0], [1, 1, 6, 0], [0, 2, 0, 8], [3, 0, 0, 1]], 0.5),
        ([[2, 2, 0, 0], [0, 0, 0, 0], [1, 0, 3, 0], [0, 5, 0, 1]], 0.0),  # an empty row
    )]


def _smoothed(counts, alpha):
    return jnp.asarray(counts, f32) + alpha  # (V, V)


def _rows(x):
    return x.sum(axis=1, keepdims=True)  # (V, 1)


def _empty_rows(case) -> np.ndarray:
    counts, alpha = case.args
    return (np.asarray(counts).sum(1) == 0) & (alpha == 0)  # (V,) rows that are 0 / 0


def _show_counts(case, got, want) -> str:
    counts, alpha = case.args
    return (f"\n  counts =\n{np.asarray(counts)}\n  alpha = {alpha}"
            f"\n  expected\n{np.round(want, 4)}\n  got\n{np.round(got, 4)}")


NORMALIZE_BIGRAM_COUNTS = Exercise(
    "normalize_bigram_counts",
    doc="Check ``fn(counts, alpha) -> probs`` against ``generate.normalize_bigram_counts``.",
    reference=generate.normalize_bigram_counts,
    cases=_bigram_count_cases,
    expect="a probability matrix",
    show=_show_counts,
    mistakes=[
        Mistake("NaN in the result: a row with no counts divides 0 by 0. When a row sums to zero "
                "(and alpha = 0), return the uniform distribution 1/V for that row, e.g. with "
                "jnp.where(row_sums > 0, ..., 1.0 / V).",
                lambda c, a: _smoothed(c, a) / _rows(_smoothed(c, a)),
                when=lambda got, want, case: _nonfinite(got, want, case)
                and _empty_rows(case).any()),
        Mistake("normalised over columns (axis=0): each ROW — the current token — must sum to 1. "
                "Divide by counts.sum(axis=1, keepdims=True).",
                lambda c, a: _smoothed(c, a) / _smoothed(c, a).sum(axis=0, keepdims=True)),
        Mistake("divided by the row sums without keepdims=True, so broadcasting divided each "
                "COLUMN j by row j's sum. Use sum(axis=1, keepdims=True) to get shape (V, 1).",
                lambda c, a: _smoothed(c, a) / _rows(_smoothed(c, a)).T),
        Mistake("forgot the smoothing: add alpha to every count so that pairs never seen in "
                "training keep a small probability instead of 0.",
                lambda c, a: generate.normalize_bigram_counts(c, 0.0)),
        Mistake("added alpha to the counts but not to the denominator, so the rows no longer sum "
                "to 1: divide by the row sums of the smoothed counts (row total + alpha * V).",
                lambda c, a: _smoothed(c, a) / _rows(_smoothed(c, 0.0))),
        Mistake("added alpha only once to the denominator; each of the V entries in the row got "
                "+ alpha, so the row total grows by alpha * V.",
                lambda c, a: _smoothed(c, a) / (_rows(_smoothed(c, 0.0)) + a)),
        Mistake("ignored the `alpha` argument",
                lambda c, a: generate.normalize_bigram_counts(c, 1.0),
                detail=lambda got, want, case: f" (this is add-one smoothing, but alpha = "
                f"{case.args[1]} here)."),
        Mistake("returned log-probabilities; return the probabilities themselves.",
                lambda c, a: jnp.log(generate.normalize_bigram_counts(c, a))),
        Mistake("a row with no counts came out all zeros, which is not a distribution: make it "
                "uniform (1/V each).",
                lambda c, a: _smoothed(c, a) / jnp.maximum(_rows(_smoothed(c, a)), 1.0),
                when=lambda got, want, case: _empty_rows(case).any()
                and np.allclose(got[_empty_rows(case)], 0)),
        Mistake("each row must sum to 1", lambda c, a: _smoothed(c, a) / 10.0,
                when=lambda got, want, case: not np.allclose(got.sum(1), 1.0, atol=1e-4),
                detail=lambda got, want, case: f"; your row sums are {_short(got.sum(1))}."),
        Mistake("probabilities cannot be negative.",
                lambda c, a: generate.normalize_bigram_counts(c, a)
                + jnp.asarray([[-0.5, 0.5] + [0.0] * (c.shape[1] - 2)]),
                when=lambda got, want, case: (got < 0).any()),
    ],
    success="{n} cases, smoothing and empty rows included",
)

# ---------------------------------------------------------------- sampling from a bigram model

_PERM = [3, 0, 4, 2, 1]  # one 5-cycle: 0 -> 3 -> 2 -> 4 -> 1 -> 0
_SKEWED = [0.85, 0.05, 0.05, 0.05]  # every row of the frequency test: token 0 with p = 0.85


def _token_ids(name: str, out, expect: str) -> np.ndarray:
    """Output reader: an array of integer token ids."""
    arr = np.asarray(out)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(arr == np.round(arr)):
            _fail(name, f"returned {arr.dtype} values; token ids are integers — convert with "
                  "jnp.asarray(tokens, dtype=jnp.int32).")
        _fail(name, f"returned {type(out).__name__} of dtype {arr.dtype}; expected an array of "
              "integer token ids.")
    return arr


def _loop_sampler(draw, *, fresh_keys: bool = True, start_row: bool = False):
    """A learner-style sampler: a Python loop that draws ``draw(key, row)`` from the row of the
    current token, with a fresh key per step (or the same key at every step), or always from the
    row of ``start`` (``start_row``)."""

    def sample(probs, start, n_steps, key):
        keys = jax.random.split(key, n_steps) if fresh_keys else [key] * n_steps
        out, cur = [], start
        for k in keys:
            cur = int(draw(k, probs[start if start_row else cur]))
            out.append(cur)
        return jnp.array(out, jnp.int32)

    return sample


def _categorical(k, row):
    return jax.random.categorical(k, jnp.log(row))


def _global_rng(probs, start, n_steps, key):
    rng, out, cur = np.random.default_rng(), [], start
    for _ in range(n_steps):
        p = np.asarray(probs[cur], dtype=np.float64)
        cur = int(rng.choice(len(p), p=p / p.sum()))
        out.append(cur)
    return np.array(out)


def _sampling_facts(probe) -> SimpleNamespace:
    """Samples from fixed keys: the same key twice, eight keys, and long runs for frequencies."""
    skewed = jnp.tile(jnp.asarray(_SKEWED, f32), (4, 1))
    flat = jnp.tile(jnp.asarray([0.4, 0.2, 0.2, 0.2], f32), (4, 1))  # argmax always says 0
    runs = [probe(flat, 1, 25, jax.random.key(seed)) for seed in range(21, 29)]
    long = np.concatenate([probe(skewed, 1, 90, jax.random.key(s)) for s in (11, 12, 13, 14)])
    return SimpleNamespace(
        twice=(probe(skewed, 1, 30, jax.random.key(7)), probe(skewed, 1, 30, jax.random.key(7))),
        runs=runs,
        all_equal=all(np.array_equal(r, runs[0]) for r in runs),
        constant=sum(len(np.unique(r)) == 1 for r in runs),  # runs that repeat one token
        f0=float(np.mean(long == 0)),  # 0.85 +- 0.019 (one std) when right
    )


def _frequency(hint_if):
    """A frequency property: token 0 is off its 85 % and ``hint_if(f0)``."""
    def broken(f):
        if abs(f.f0 - 0.85) > 0.07 and hint_if(f.f0):
            return (f"\n  rows are [0.85, 0.05, 0.05, 0.05]; token 0 came out {100 * f.f0:.0f}% "
                    "of the time instead of about 85%.")
        return False
    return broken


SAMPLE_BIGRAM = Exercise(
    "sample_bigram",
    doc="""Check ``fn(probs, start, n_steps, key) -> (n_steps,) int token ids``.

    Exact on a deterministic table, then statistical on a random one (with fixed keys, so the
    verdict is reproducible): follows the rows, uses the key, draws a fresh key per step,
    matches the probabilities.""",
    reference=generate.sample_bigram,
    # A deterministic table: row i puts all its mass on _PERM[i], so any correct sampler (and
    # even argmax) must follow the chain 2 -> 4 -> 1 -> 0 -> 3 -> 2 exactly.
    cases=lambda: [(jnp.asarray(np.eye(5)[_PERM], f32), 2, 6, jax.random.key(0))],
    output=_token_ids, expect="one id per step", rtol=0, atol=0,
    show=lambda case, got, want: (f"\n  table: token i -> token {_PERM}[i], start = "
                                  f"{case.args[1]}\n  expected {want.tolist()}, got "
                                  f"{got.tolist()}"),
    mistakes=[
        Mistake("the output starts with the `start` token; return only the new tokens.",
                lambda p, s, n, k: jnp.concatenate([jnp.array([s]), generate.sample_bigram(
                    p, s, n, k)])),
        Mistake("used the column probs[:, current]; the next-token distribution of `current` is "
                "its ROW, probs[current].",
                lambda p, s, n, k: generate.sample_bigram(p.T, s, n, k)),
        Mistake("never moved on: every step sampled from the row of `start`. Set current = the "
                "token just sampled, at the end of each step.",
                _loop_sampler(_categorical, start_row=True)),
        Mistake("the first token does not follow `start`: begin from probs[start].",
                lambda p, s, n, k: generate.sample_bigram(p, 0, n, k),
                when=lambda got, want, case: got.shape[:1] != (0,) and got[0] != want[0]),
    ],
    otherwise="with a table whose rows each put all mass on one token, the samples must "
              "follow it exactly.",
    facts=_sampling_facts,
    properties=[
        Property("two calls with the same key gave different samples: you are drawing from a "
                 "global generator (np.random, random, or an old key) instead of the `key` "
                 "argument. In JAX, randomness comes only from keys.",
                 lambda f: not np.array_equal(*f.twice), _global_rng),
        Property("always picked the most likely token (argmax / greedy decoding). Sampling means "
                 "drawing at random in proportion to the probabilities, e.g. "
                 "jax.random.categorical(key, jnp.log(probs[current])).",
                 lambda f: f.all_equal and np.all(f.runs[0] == 0),
                 _loop_sampler(lambda k, row: jnp.argmax(row))),
        Property("different keys gave identical samples: the `key` argument is ignored.",
                 lambda f: f.all_equal and f.constant < len(f.runs),
                 lambda p, s, n, k: _loop_sampler(_categorical)(p, s, n, jax.random.key(0))),
        Property("every step of a run drew the same token: the same key was reused at every "
                 "step. Split it: `key, sub = jax.random.split(key)` and sample with `sub`, or "
                 "make `keys = jax.random.split(key, n_steps)` and use keys[t] at step t.",
                 lambda f: f.constant >= len(f.runs) - 2,
                 _loop_sampler(_categorical, fresh_keys=False)),
        Property("passed probabilities where log-probabilities belong: jax.random.categorical "
                 "applies a softmax to its input, so give it jnp.log(probs[current]).",
                 _frequency(lambda f0: abs(f0 - 0.426) < 0.07),
                 _loop_sampler(lambda k, row: jax.random.categorical(
                     k, jnp.where(row > 0, row, -jnp.inf)))),
        Property("ignored the probabilities: the samples look uniform over the vocabulary.",
                 _frequency(lambda f0: abs(f0 - 0.25) < 0.07),
                 _loop_sampler(lambda k, row: jax.random.categorical(
                     k, jnp.where(row > 0, 0.0, -jnp.inf)))),
        Property("the sample frequencies do not match the probabilities.",
                 _frequency(lambda f0: True),
                 _loop_sampler(lambda k, row: jax.random.categorical(k, 3 * jnp.log(row)))),
    ],
    success="follows the table, reproducible, a fresh key per step, right frequencies",
)

check_perplexity_from_logprobs = checker(PERPLEXITY)
check_cross_entropy_from_logits = checker(CROSS_ENTROPY)
check_normalize_bigram_counts = checker(NORMALIZE_BIGRAM_COUNTS)
check_sample_bigram = checker(SAMPLE_BIGRAM)
