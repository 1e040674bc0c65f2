"""Tests for notebook 06a's checks: each passes the reference (and the library's version) and
fails each typical wrong implementation with a hint that names the mistake."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checkhelp import fails_with

from course_lib import checks, generate, numberwords
from course_lib.checks.generation import _zh

# ---------------------------------------------------------------- top-k


def test_top_k_passes_reference_and_library(capsys):
    checks.check_top_k_filter(lambda logits, k: generate.filter_top_k(jnp.asarray(logits), k))
    assert capsys.readouterr().out.count("✓ top_k_filter: correct") == 1


def _top_k(logits, k, largest=True):
    logits = jnp.asarray(logits)
    kth = jnp.sort(logits, axis=-1)[..., -k if largest else k - 1][..., None]
    return jnp.where(logits < kth if largest else logits > kth, -jnp.inf, logits)


@pytest.mark.parametrize("wrong, words", [
    (lambda lg, k: _top_k(lg, max(k - 1, 1)) if k > 1 else _top_k(lg, 1), ["k - 1"]),
    (lambda lg, k: _top_k(lg, min(k + 1, lg.shape[-1])), ["k + 1"]),
    (lambda lg, k: _top_k(lg, k, largest=False), ["smallest"]),
    (lambda lg, k: jnp.where(jnp.isinf(_top_k(lg, k)), 0.0, lg), ["set the removed", "-inf"]),
    (lambda lg, k: jax.nn.softmax(_top_k(lg, k), axis=-1), ["probabilities"]),
    (lambda lg, k: _top_k(lg, k) - jnp.max(jnp.asarray(lg), -1, keepdims=True),
     ["kept logits changed"]),
    (lambda lg, k: _top_k(jnp.asarray(lg).T, k).T if jnp.ndim(lg) == 2 else _top_k(lg, k),
     ["wrong axis"]),
    (lambda lg, k: jax.lax.top_k(jnp.asarray(lg), k)[0], ["shape"]),
])
def test_top_k_diagnoses(wrong, words):
    fails_with(checks.check_top_k_filter, wrong, *words)


# ---------------------------------------------------------------- top-p


def test_top_p_passes_reference_and_library(capsys):
    checks.check_top_p_filter(lambda probs, p: jax.nn.softmax(
        generate.filter_top_p(jnp.log(jnp.asarray(probs)), p), axis=-1))
    checks.check_top_p_filter(lambda probs, p: generate.next_token_probs(
        jnp.log(jnp.asarray(probs)), top_p=p))
    assert capsys.readouterr().out.count("✓ top_p_filter: correct") == 2


def _nucleus(probs, p, *, crossing=True, ascending=False, renormalise=True, at_least_one=True):
    probs = np.asarray(probs, np.float64)
    order = np.argsort(probs if ascending else -probs, axis=-1)
    sp = np.take_along_axis(probs, order, axis=-1)
    before = np.cumsum(sp, -1) - sp
    keep_sorted = (before < p) if crossing else (np.cumsum(sp, -1) < p)
    if at_least_one:
        keep_sorted[..., 0] = True
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)
    kept = np.where(keep, probs, 0.0)
    return kept / kept.sum(-1, keepdims=True) if renormalise else kept


@pytest.mark.parametrize("wrong, words", [
    (lambda pr, p: _nucleus(pr, p, crossing=False), ["crosses p"]),
    (lambda pr, p: _nucleus(pr, p) if np.max(pr) < p else np.zeros_like(pr), ["at least one"]),
    (lambda pr, p: _nucleus(pr, p, crossing=False, at_least_one=False), ["crosses p"]),
    (lambda pr, p: _nucleus(pr, p, ascending=True), ["ascending"]),
    (lambda pr, p: _nucleus(pr, p, renormalise=False), ["renormalised"]),
    (lambda pr, p: np.sort(_nucleus(pr, p), axis=-1)[..., ::-1], ["sorted order"]),
    (lambda pr, p: (_nucleus(pr, p) > 0).astype(float), ["mask"]),
    (lambda pr, p: np.asarray(pr), ["unchanged"]),
    (lambda pr, p: np.full_like(pr, 1.0 / pr.shape[-1]), ["wrong values"]),
])
def test_top_p_diagnoses(wrong, words):
    fails_with(checks.check_top_p_filter, wrong, *words)


# ---------------------------------------------------------------- Chinese numerals


def test_chinese_number_small_passes_reference_and_library(capsys):
    checks.check_chinese_number_small(numberwords.chinese_number)
    checks.check_chinese_number_small(_zh)
    assert capsys.readouterr().out.count("✓ chinese_number_small: correct") == 2


def test_mistake_generator_without_mistakes_is_the_library_everywhere():
    # The check compares answers with _zh where the learner is wrong: it must be right itself.
    for n in range(10_000):
        assert _zh(n) == numberwords.chinese_number(n), n


def _digits_only(n):
    return "".join("零一二三四五六七八九"[int(c)] for c in str(n))


def _each_zero(n):
    """One 零 for every zero digit between non-zero digits: 1005 -> 一千零零五."""
    if n == 0:
        return "零"
    digits, out, zeros = str(n), [], 0
    for i, c in enumerate(digits):
        if c == "0":
            zeros += 1
            continue
        out.append("零" * zeros + "零一二三四五六七八九"[int(c)] + ["", "十", "百", "千"][len(digits) - 1 - i])
        zeros = 0
    text = "".join(out)
    return text[1:] if text.startswith("一十") else text


def _no_leading_one_rule(n):
    s = numberwords.chinese_number(n)
    return "一" + s if 10 <= n <= 19 else s


@pytest.mark.parametrize("wrong, words", [
    (lambda n: numberwords.chinese_number(n).replace("零", "") or "零", ["no 零"]),
    (_each_zero, ["run of zeros"]),
    (lambda n: numberwords.chinese_number(n) + ("零" if n % 10 == 0 and n else ""),
     ["trailing zeros"]),
    (_no_leading_one_rule, ["10-19"]),
    (lambda n: numberwords.chinese_number(n).replace("一十", "十"), ["inside a number"]),
    (lambda n: numberwords.chinese_number(n).replace("二千", "两千").replace("二百", "两百"),
     ["两"]),
    (lambda n: "" if n == 0 else numberwords.chinese_number(n), ["n = 0"]),
    (_digits_only, ["one by one"]),
    (lambda n: 5, ["returned a int", "str"]),
    (lambda n: str(n), ["latin characters"]),
])
def test_chinese_number_small_diagnoses(wrong, words):
    fails_with(checks.check_chinese_number_small, wrong, *words)
