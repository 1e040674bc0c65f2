"""Exercises of notebook 06a (generation and translation): top-k filtering, top-p (nucleus)
filtering, and Chinese numerals for 0-9999."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from course_lib import generate
from course_lib.checks._core import Case, Exercise, Mistake, _close, _fail, checker, library

__all__ = ["check_top_k_filter", "check_top_p_filter", "check_chinese_number_small"]

# ---------------------------------------------------------------- top-k


def _top_k(logits, k):
    """The library's top-k filter on NumPy or JAX logits (..., V)."""
    return generate.filter_top_k(jnp.asarray(logits), k)


def _keep_smallest(logits, k):
    kth = np.sort(logits, axis=-1)[..., k - 1][..., None]
    return np.where(logits > kth, -np.inf, logits)


def _top_k_cases():
    rng = np.random.default_rng(3)
    return [(np.asarray(logits, np.float32), k) for logits, k in (
        (rng.normal(size=8) * 2, 3), (rng.normal(size=(4, 10)) * 2, 3),
        (rng.normal(size=(3, 6)), 1), (rng.normal(size=5), 5))]


TOP_K_FILTER = Exercise(
    "top_k_filter",
    doc="Check ``fn(logits, k) -> filtered logits`` with the shape of ``logits``.",
    reference=_top_k,
    cases=_top_k_cases,
    expect="the filtered logits (same shape as logits)", rtol=1e-5, atol=1e-6,
    mistakes=[
        Mistake("kept k - 1 tokens: an off-by-one. Compare with the k-th largest value (index -k "
                "of the sorted logits) and keep every logit >= it.",
                lambda logits, k: _top_k(logits, k - 1)),
        Mistake("kept k + 1 tokens: an off-by-one. The k-th largest value is at index -k of the "
                "ascending sort (or the last of jax.lax.top_k(logits, k)[0]).",
                lambda logits, k: _top_k(logits, k + 1)),
        Mistake("kept the k SMALLEST logits: top-k keeps the most likely tokens, the largest "
                "logits.", _keep_smallest),
        Mistake("set the removed logits to 0: a logit of 0 is still a possible token. Use -inf "
                "(jnp.where(..., -jnp.inf, logits)).",
                lambda logits, k: jnp.where(jnp.isinf(_top_k(logits, k)), 0.0, logits)),
        Mistake("returned probabilities: return logits, the kept ones unchanged and the others "
                "-inf; the sampler applies softmax.",
                lambda logits, k: jax.nn.softmax(_top_k(logits, k), axis=-1)),
        Mistake("filtered along the wrong axis: the vocabulary is the LAST axis (axis=-1).",
                lambda logits, k: _top_k(logits.T, k).T),
        Mistake("the right tokens are removed but the kept logits changed: leave them exactly as "
                "they were (no softmax, no shift, no temperature).",
                lambda logits, k: _top_k(logits, k) - 1.0,
                when=lambda got, want, case: np.array_equal(np.isinf(got), np.isinf(want))),
    ],
    success="{n} cases, 1-D and batched",
)

# ---------------------------------------------------------------- top-p


def _nucleus_of(probs, p):
    """The nucleus distribution, from the library: softmax of the top-p filtered log-probs."""
    return generate.next_token_probs(jnp.log(jnp.asarray(probs)), top_p=p)


def _nucleus(probs, p, *, crossing=True, ascending=False, renormalise=True):
    """A nucleus with switches for the usual mistakes: the token that crosses p excluded
    (``crossing=False``), tokens taken least likely first, no renormalisation."""
    probs = np.asarray(probs, np.float64)
    order = np.argsort(probs if ascending else -probs, axis=-1)
    sorted_p = np.take_along_axis(probs, order, axis=-1)
    ranked_above = np.cumsum(sorted_p, axis=-1) - (sorted_p if crossing else 0.0)
    keep = np.zeros(probs.shape, bool)
    np.put_along_axis(keep, order, ranked_above < p, axis=-1)  # back to vocabulary order
    kept = np.where(keep, probs, 0.0)
    return kept / kept.sum(-1, keepdims=True) if renormalise else kept


def _top_p_cases():
    rng = np.random.default_rng(4)

    def dist(shape, scale):
        e = np.exp(rng.normal(size=shape) * scale)
        return e / e.sum(-1, keepdims=True)

    peaked = np.array([0.05, 0.6, 0.1, 0.15, 0.02, 0.08])  # p below the top probability
    # The first case is flat enough that every wrong nucleus differs from the right one.
    return [(np.asarray(probs, np.float32), p) for probs, p in (
        (dist(8, 0.7), 0.5), (dist((2, 10), 1.0), 0.9), (peaked, 0.5), (dist((3, 7), 2.0), 0.8))]


_CROSSING = ("excluded the token that crosses p: keep a token when the mass of the tokens ranked "
             "ABOVE it is below p (cumsum - probs < p), so the set reaches at least p (and the "
             "most likely token is always kept).")
_ASCENDING = ("sorted ascending: the nucleus is made of the MOST likely tokens, so sort in "
              "descending order (argsort of -probs).")

TOP_P_FILTER = Exercise(
    "top_p_filter",
    doc="Check ``fn(probs, p) -> nucleus probabilities`` with the shape of ``probs``.",
    reference=_nucleus_of,
    cases=_top_p_cases,
    expect="the nucleus probabilities (same shape as probs)", rtol=1e-4, atol=1e-6,
    mistakes=[
        Mistake("a row came out empty (all zeros or NaN): always keep at least one token, the "
                "most likely, even when its probability alone exceeds p. Keep a token when the "
                "mass ranked above it is below p; the first has 0 above it.",
                lambda probs, p: _nucleus(probs, p) * (np.max(probs) < p),
                when=lambda got, want, case: not np.isfinite(got).all()
                or (np.abs(got).sum(-1) < 1e-9).any()),
        Mistake(_CROSSING, lambda probs, p: _nucleus(probs, p, crossing=False)),
        Mistake(_CROSSING, lambda probs, p: _nucleus(probs, p, crossing=False, renormalise=False)),
        Mistake(_ASCENDING, lambda probs, p: _nucleus(probs, p, ascending=True)),
        Mistake(_ASCENDING, lambda probs, p: _nucleus(probs, p, ascending=True, renormalise=False)),
        Mistake("returned the probabilities unchanged: zero every token outside the nucleus.",
                lambda probs, p: probs),
        Mistake("the right tokens are kept but not renormalised: divide by their sum so the "
                "nucleus adds up to 1.", lambda probs, p: _nucleus(probs, p, renormalise=False)),
        Mistake("returned the probabilities in sorted order: put each back at its token's "
                "position in the vocabulary.",
                lambda probs, p: np.sort(_nucleus(probs, p), axis=-1)[..., ::-1]),
        Mistake("returned a mask: return the renormalised probabilities of the kept tokens.",
                lambda probs, p: (_nucleus(probs, p) > 0).astype(np.float32)),
        Mistake("each row must add up to 1 (renormalise the kept probabilities).",
                lambda probs, p: 0.9 * _nucleus(probs, p),
                when=lambda got, want, case: not _close(got.sum(-1), np.ones(got.shape[:-1]))),
    ],
    success="{n} cases, including p below the top probability",
)

# ---------------------------------------------------------------- Chinese numerals

_ZH = "零一二三四五六七八九"
_UNITS = ((3, "千"), (2, "百"), (1, "十"), (0, ""))


def _zh(n: int, *, zero: str = "one", drop_leading_one: bool = True, drop_inner_one: bool = False,
        liang: bool = False, trailing_zero: bool = False, zero_word: str = "零") -> str:
    """0..9999 in Chinese numerals, with switches that reproduce typical mistakes (without any,
    the same as ``numberwords.chinese_number``).
    zero: 'one' (one 零 per run of zeros), 'none', or 'each' (one 零 per zero digit)."""
    if n == 0:
        return zero_word
    out, pending = [], 0
    for power, unit in _UNITS:
        d = n // 10**power % 10
        if d == 0:
            pending += bool(out)
            continue
        if pending and zero != "none":
            out.append("零" * (pending if zero == "each" else 1))
        pending = 0
        digit = "两" if liang and d == 2 and power >= 2 else _ZH[d]
        if d == 1 and power == 1 and drop_inner_one and out:
            digit = ""
        out.append(digit + unit)
    if trailing_zero and pending:
        out.append("零")
    text = "".join(out)
    return text[1:] if drop_leading_one and text.startswith("一十") else text


_ZH_CASES = (0, 3, 10, 15, 19, 20, 21, 99, 100, 101, 105, 110, 111, 115, 120, 200, 999, 1000,
             1001, 1005, 1010, 1050, 1100, 1234, 2005, 2020, 3040, 4300, 6008, 9999)


def _numerals(name: str, out: dict, expect: str) -> dict:
    """Output reader: {n: the string returned for n}."""
    for n, text in out.items():
        if text is None:
            _fail(name, "your function returned None — did you forget the `return` statement?")
        if not isinstance(text, str):
            _fail(name, f"your function returned a {type(text).__name__} for n = {n}; expected "
                  f"a str such as {_zh(n)!r}.")
    return out


def _wrong(got) -> list[int]:
    return [n for n, text in got.items() if text != _zh(n)]


def _same_where_wrong(got, other, case) -> bool:
    """Two answers agree on every number the learner got wrong (so a mistake that shows only
    in some numbers is still named)."""
    return all(got[n] == other[n] for n in _wrong(got))


def _show_numerals(case, got, want) -> str:
    wrong = _wrong(got)
    shown = ", ".join(f"{n} -> expected {_zh(n)!r}, got the string {got[n]!r}" for n in wrong[:3])
    return f"\n  {shown}" + (f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else "")


CHINESE_NUMBER_SMALL = Exercise(
    "chinese_number_small",
    doc="Check ``fn(n) -> str`` for 0 <= n <= 9999 against ``numberwords.chinese_number``.",
    reference=library("numberwords", "chinese_number"),
    cases=lambda: [Case((_ZH_CASES,))],
    call=lambda fn, case: {n: fn(n) for n in case.args[0]},
    output=_numerals, match=_same_where_wrong, show=_show_numerals,
    mistakes=[
        Mistake("no 零: a zero between two non-zero digits is read as 零 (1005 一千零五, 105 "
                "一百零五).", lambda n: _zh(n, zero="none")),
        Mistake("one 零 per zero digit: a RUN of zeros is read as a single 零 (1005 一千零五, not "
                "一千零零五).", lambda n: _zh(n, zero="each")),
        Mistake("a 零 at the end: trailing zeros are silent (1050 一千零五十, 100 一百).",
                lambda n: _zh(n, trailing_zero=True)),
        Mistake("一十 at the start: 10-19 are read 十, 十一 ... 十九 (without 一) when they begin "
                "the number.", lambda n: _zh(n, drop_leading_one=False)),
        Mistake("dropped the 一 of 一十 inside a number: only a LEADING 一十 loses its 一; 110 is "
                "一百一十, 1015 一千零一十五.", lambda n: _zh(n, drop_inner_one=True)),
        Mistake("used 两: this course always writes 二 (二百, 二千), the form of written "
                "arithmetic; 两 is the spoken form.", lambda n: _zh(n, liang=True)),
        Mistake("zero itself is 零: return '零' for n = 0.", lambda n: _zh(n, zero_word="")),
        Mistake("returned Latin characters: write Chinese numerals, from the digits "
                "'零一二三四五六七八九' and the units 十, 百, 千.", str,
                when=lambda got, want, case: all(got[n].strip().isascii() for n in _wrong(got))),
        Mistake("read the digits one by one: insert the units 千, 百, 十 after each non-zero digit "
                "(1234 一千二百三十四).", lambda n: "".join(_ZH[int(c)] for c in str(n)),
                when=lambda got, want, case: all(
                    got[n] == "".join(_ZH[int(c)] for c in str(n)) for n in _wrong(got))),
    ],
    otherwise="some numbers are wrong.",
    success=f"{len(_ZH_CASES)} numbers, zeros and 十 included",
)

check_top_k_filter = checker(TOP_K_FILTER)
check_top_p_filter = checker(TOP_P_FILTER)
check_chinese_number_small = checker(CHINESE_NUMBER_SMALL)
