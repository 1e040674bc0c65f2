"""Tests for notebook 07's checks: each passes the library's version and fails typical wrong
implementations with a hint that names the mistake."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checkhelp import fails_with

from course_lib import checks, pretrained

# ---------------------------------------------------------------- split_qkv


def test_split_qkv_passes_library(capsys):
    checks.check_split_qkv(pretrained.split_qkv)
    checks.check_split_qkv(lambda w: jnp.split(w, 3, axis=-1))  # a list of three is fine too
    assert "✓ split_qkv: correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, words", [
    (lambda w: jnp.split(w, 3, axis=0), ["split the first axis"]),
    (lambda w: tuple(p.T for p in jnp.split(w, 3, axis=-1)), ["transposed", "(inputs, outputs)"]),
    (lambda w: (w[..., 0::3], w[..., 1::3], w[..., 2::3]), ["interleaved"]),
    (lambda w: tuple(jnp.split(w, 3, axis=-1))[::-1], ["wrong order"]),
    (lambda w: (w[..., :w.shape[0]], w[..., w.shape[0]:2 * w.shape[0]],
                w[..., 2 * w.shape[0]:]), ["one shape", "shape[0] is 3C"]),
    (lambda w: jnp.split(w, 3, axis=-1)[0], ["expected a tuple of three arrays"]),
    (lambda w: jnp.split(w, 2, axis=-1), ["2 items"]),
])
def test_split_qkv_names_the_mistake(wrong, words):
    fails_with(checks.check_split_qkv, wrong, *words)


# ---------------------------------------------------------------- bits_per_char


def test_bits_per_char_passes_library(capsys):
    checks.check_bits_per_char(pretrained.bits_per_char)
    checks.check_bits_per_char(lambda nll, n: float(jnp.sum(nll)) / math.log(2) / n)
    assert "✓ bits_per_char: correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, words", [
    (lambda nll, n: float(np.mean(nll)) / math.log(2), ["bits per token"]),
    (lambda nll, n: float(np.sum(nll)) / n, ["nats", "math.log(2)"]),
    (lambda nll, n: float(np.sum(nll)) / math.log(10) / n, ["base 10"]),
    (lambda nll, n: float(np.sum(nll)) / math.log(2), ["number of characters"]),
    (lambda nll, n: float(np.sum(nll)) / math.log(2) / (n + 1), ["wrong values"]),
    (lambda nll, n: None, ["return"]),
])
def test_bits_per_char_names_the_mistake(wrong, words):
    fails_with(checks.check_bits_per_char, wrong, *words)


# ---------------------------------------------------------------- continuation_logprob


def _logp(logits):
    return jax.nn.log_softmax(logits, axis=-1)


def _picked(a, tokens):
    return jnp.take_along_axis(a, tokens[1:, None], axis=-1)[:, 0]


def test_continuation_logprob_passes_library(capsys):
    checks.check_continuation_logprob(pretrained.continuation_logprob)
    checks.check_continuation_logprob(
        lambda lg, tk, n: sum(float(_logp(lg)[t - 1, tk[t]]) for t in range(n, len(tk))))
    assert "✓ continuation_logprob: correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, words", [
    (lambda lg, tk, n: float(jnp.take_along_axis(_logp(lg), tk[:-1, None], axis=-1)[n:].sum()),
     ["not shifted"]),
    (lambda lg, tk, n: float(_picked(_logp(lg), tk).sum()), ["prompt's tokens too"]),
    (lambda lg, tk, n: float(_picked(_logp(lg), tk)[n:].sum()), ["skipped", "first token"]),
    (lambda lg, tk, n: float(_picked(lg, tk)[n - 1:].sum()), ["raw logits"]),
    (lambda lg, tk, n: float(_picked(_logp(lg), tk)[n - 1:].mean()), ["mean", "normalised"]),
    (lambda lg, tk, n: -float(_picked(_logp(lg), tk)[n - 1:].sum()), ["negative"]),
    (lambda lg, tk, n: float(jnp.exp(_picked(_logp(lg), tk)[n - 1:]).sum()), ["PRODUCT"]),
])
def test_continuation_logprob_names_the_mistake(wrong, words):
    fails_with(checks.check_continuation_logprob, wrong, *words)
