"""Exercises of notebook 07 (GPT-2 in the course's GPT): splitting GPT-2's fused q/k/v projection,
bits per character from the losses of a text's tokens, and the log-probability of a continuation
(the score of a multiple-choice option)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from course_lib.checks._core import Case, Exercise, Mistake, _fail, as_number, checker
from course_lib.pretrained import bits_per_char, continuation_logprob, split_qkv

__all__ = ["check_split_qkv", "check_bits_per_char", "check_continuation_logprob"]

# ---------------------------------------------------------------- splitting c_attn


def _split_cases():
    """A fused weight (C, 3C), a fused bias (3C,), and a weight of another width."""
    rng = np.random.default_rng(21)
    return [Case((jnp.asarray(rng.normal(size=shape), jnp.float32),), note=note)
            for shape, note in (((6, 18), "a weight (C, 3C), C = 6"),
                                ((18,), "a bias (3C,), C = 6"),
                                ((4, 12), "a weight (C, 3C), C = 4"))]


def _three_parts(name: str, out, expect: str) -> np.ndarray:
    """Output reader: three arrays of one shape, stacked (3, ...)."""
    if not isinstance(out, (tuple, list)) or len(out) != 3:
        kind = f"{len(out)} items" if isinstance(out, (tuple, list)) else type(out).__name__
        _fail(name, f"your function returned {kind}; expected {expect}: return q, k, v.")
    parts = [np.asarray(p, dtype=np.float64) for p in out]
    if len({p.shape for p in parts}) != 1:
        _fail(name, f"your three parts have the shapes {[p.shape for p in parts]}; q, k and v "
              "each get a third of the LAST axis, so they have one shape: C = "
              "fused.shape[-1] // 3 (for a bias, shape[0] is 3C, not C).")
    return np.stack(parts)


def _thirds(x):
    c = x.shape[-1] // 3
    return x[..., :c], x[..., c:2 * c], x[..., 2 * c:]


SPLIT_QKV = Exercise(
    "split_qkv",
    doc="Check ``fn(fused) -> (q, k, v)``, GPT-2's c_attn weight or bias split in three.",
    reference=split_qkv,
    cases=_split_cases,
    output=_three_parts, expect="a tuple of three arrays (q, k, v)", rtol=0, atol=0,
    shape_hint="Split the LAST axis (the 3C outputs) into three equal blocks; keep every other "
               "axis as it is.",
    mistakes=[
        Mistake("split the first axis: that is the INPUT axis of the weight (C, 3C). The three "
                "results sit side by side on the last axis, the outputs.",
                lambda w: tuple(jnp.split(w, 3, axis=0)), when="shape"),
        Mistake("transposed: GPT-2's Conv1D layers store a weight as (inputs, outputs), exactly "
                "like the kernel of an nnx.Linear, so nothing is transposed (PyTorch's nn.Linear "
                "is the one that stores (outputs, inputs)).",
                lambda w: tuple(p.T for p in _thirds(w))),
        Mistake("interleaved: q, k and v are three consecutive blocks of C columns, [q | k | v], "
                "not every third column.",
                lambda w: (w[..., 0::3], w[..., 1::3], w[..., 2::3])),
        Mistake("the right blocks in the wrong order: the fused layer computes [q | k | v], so "
                "the first block is q.", lambda w: _thirds(w)[::-1]),
        Mistake("the right blocks in the wrong order: the fused layer computes [q | k | v], so "
                "q, then k, then v.", lambda w: (_thirds(w)[1], _thirds(w)[0], _thirds(w)[2])),
    ],
    otherwise="wrong values: q is the first C entries of the last axis, k the next C, v the "
              "last C.",
)

# ---------------------------------------------------------------- bits per character


def _bpc_cases():
    rng = np.random.default_rng(22)
    return [Case((jnp.asarray(rng.uniform(0.5, 6.0, n_tokens), jnp.float32), n_chars),
                 note=f"{n_tokens} tokens, {n_chars} characters")
            for n_tokens, n_chars in ((7, 23), (12, 31), (5, 5 * 4 + 3))]


def _total(nll):
    return float(np.sum(np.asarray(nll, np.float64)))


BITS_PER_CHAR = Exercise(
    "bits_per_char",
    doc="Check ``fn(token_nll, n_chars) -> float``, bits per character of a text.",
    reference=bits_per_char,
    cases=_bpc_cases,
    output=as_number, expect="a single number", rtol=1e-5, atol=1e-7,
    mistakes=[
        Mistake("took the mean over the tokens: that is bits per TOKEN, which depends on the "
                "tokenizer. Sum the NLL of the whole text, then share it out over its n_chars "
                "characters.", lambda nll, n: _total(nll) / len(nll) / math.log(2)),
        Mistake("forgot to turn nats into bits: the NLL is in nats (natural log); one bit is "
                "ln 2 nats, so divide by math.log(2).", lambda nll, n: _total(nll) / n),
        Mistake("multiplied by ln 2: one bit is ln 2 nats, so a number of nats is DIVIDED by "
                "ln 2 to count bits.", lambda nll, n: _total(nll) * math.log(2) / n),
        Mistake("used log base 10: bits are log base 2; divide the nats by math.log(2), not "
                "math.log(10).", lambda nll, n: _total(nll) / math.log(10) / n),
        Mistake("forgot to divide by the number of characters: that is the text's total in "
                "bits.", lambda nll, n: _total(nll) / math.log(2)),
        Mistake("took log2 of the NLL: it is already a log-probability (in nats); converting "
                "it to bits is a division by ln 2.",
                lambda nll, n: float(np.sum(np.log2(np.asarray(nll, np.float64)))) / n),
    ],
)

# ---------------------------------------------------------------- a continuation's log-probability


def _continuation_cases():
    rng = np.random.default_rng(23)
    T, V = 8, 6  # tokens (T,) -> logits (T - 1, V)
    return [Case((jnp.asarray(rng.normal(size=(T - 1, V)) * scale, jnp.float32),
                  jnp.asarray(rng.integers(0, V, T), jnp.int32), n_prompt),
                 note=f"a prompt of {n_prompt} tokens, a continuation of {T - n_prompt}")
            for scale, n_prompt in ((2.0, 5), (1.5, 3), (2.5, 6))]


def _logp(logits, axis=-1):
    return jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=axis)


def _picked(a, tokens, shift=True):
    """a (T - 1, V) -> (T - 1,): a[t, tokens[t + 1]] (shifted) or a[t, tokens[t]]."""
    targets = tokens[1:] if shift else tokens[:-1]
    return jnp.take_along_axis(a, targets[:, None], axis=-1)[:, 0]


CONTINUATION_LOGPROB = Exercise(
    "continuation_logprob",
    doc="Check ``fn(logits, tokens, n_prompt) -> float``, log p(continuation | prompt).",
    reference=continuation_logprob,
    cases=_continuation_cases,
    output=as_number, expect="a single number", rtol=1e-4, atol=1e-5,
    mistakes=[
        Mistake("targets not shifted: logits[t - 1] (computed from tokens 0..t-1) predicts "
                "tokens[t], so the continuation's first token is scored by logits[n_prompt - 1].",
                lambda lg, tk, n: float(_picked(_logp(lg), tk, shift=False)[n:].sum())),
        Mistake("summed the prompt's tokens too: only the continuation's tokens, t >= n_prompt, "
                "count (the prompt is given, the same for every option).",
                lambda lg, tk, n: float(_picked(_logp(lg), tk).sum())),
        Mistake("skipped the continuation's first token: it is predicted by logits[n_prompt - "
                "1], the prompt's last position.",
                lambda lg, tk, n: float(_picked(_logp(lg), tk)[n:].sum())),
        Mistake("used the raw logits: turn them into log-probabilities first, "
                "jax.nn.log_softmax(logits, axis=-1).",
                lambda lg, tk, n: float(_picked(jnp.asarray(lg), tk)[n - 1:].sum())),
        Mistake("normalised over the wrong axis (positions); the softmax runs over the "
                "vocabulary, axis=-1.",
                lambda lg, tk, n: float(_picked(_logp(lg, axis=0), tk)[n - 1:].sum())),
        Mistake("took the mean: that is the score normalised by length. Return the sum, the "
                "log-probability of the whole continuation.",
                lambda lg, tk, n: float(_picked(_logp(lg), tk)[n - 1:].mean())),
        Mistake("returned the negative log-likelihood: the score is log p itself (at most 0), "
                "higher for the likelier option.",
                lambda lg, tk, n: -float(_picked(_logp(lg), tk)[n - 1:].sum())),
        Mistake("summed probabilities: the probability of a sequence is the PRODUCT of its "
                "tokens' probabilities, so its log is the sum of their log-probabilities.",
                lambda lg, tk, n: float(jnp.exp(_picked(_logp(lg), tk)[n - 1:]).sum())),
    ],
)

check_split_qkv = checker(SPLIT_QKV)
check_bits_per_char = checker(BITS_PER_CHAR)
check_continuation_logprob = checker(CONTINUATION_LOGPROB)
