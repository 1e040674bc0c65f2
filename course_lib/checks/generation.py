"""Checks for notebook 06a (generation and translation): top-k filtering, top-p (nucleus)
filtering, and Chinese numerals for 0-9999."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from course_lib.checks._core import (
    _as_array,
    _call,
    _close,
    _diagnose,
    _fail,
    _ok,
    _short,
)

__all__ = [
    "check_top_k_filter", "check_top_p_filter", "check_chinese_number_small",
    "reference_top_k_filter", "reference_top_p_filter", "reference_chinese_number_small",
]

NEG_INF = -np.inf


# ---------------------------------------------------------------- top-k


def reference_top_k_filter(logits, k: int):
    """Keep the ``k`` largest logits on the last axis unchanged, set the others to -inf.
    (..., V) -> (..., V). The same as ``course_lib.generate.filter_top_k``."""
    logits = np.asarray(logits, np.float64)
    kth = np.sort(logits, axis=-1)[..., -k][..., None]  # (..., 1) the k-th largest
    return np.where(logits < kth, NEG_INF, logits)


def _keep_smallest(logits, k):
    kth = np.sort(logits, axis=-1)[..., k - 1][..., None]
    return np.where(logits > kth, NEG_INF, logits)


def check_top_k_filter(fn: Callable) -> None:
    """Check ``fn(logits, k) -> filtered logits`` with the shape of ``logits``."""
    name = "top_k_filter"
    rng = np.random.default_rng(3)
    cases = [(rng.normal(size=8) * 2, 3), (rng.normal(size=(4, 10)) * 2, 3),
             (rng.normal(size=(3, 6)), 1), (rng.normal(size=5), 5)]
    for logits, k in cases:
        out = _call(name, fn, np.asarray(logits, np.float32), k)
        got = _as_array(name, out, logits.shape, "the filtered logits (same shape as logits)")
        want = reference_top_k_filter(np.asarray(logits, np.float32), k)
        if _close(got, want, rtol=1e-5, atol=1e-6):
            continue
        with np.errstate(all="ignore"):
            soft = np.exp(want - want.max(-1, keepdims=True))
            candidates = [
                (reference_top_k_filter(logits, k - 1) if k > 1 else None,
                 "kept k - 1 tokens: an off-by-one. Compare with the k-th largest value "
                 "(index -k of the sorted logits) and keep every logit >= it."),
                (reference_top_k_filter(logits, k + 1) if k < logits.shape[-1] else None,
                 "kept k + 1 tokens: an off-by-one. The k-th largest value is at index -k of "
                 "the ascending sort (or the last of jax.lax.top_k(logits, k)[0])."),
                (_keep_smallest(logits, k), "kept the k SMALLEST logits: top-k keeps the most "
                 "likely tokens, the largest logits."),
                (np.where(np.isinf(want), 0.0, want), "set the removed logits to 0: a logit of "
                 "0 is still a possible token. Use -inf (jnp.where(..., -jnp.inf, logits))."),
                (soft / soft.sum(-1, keepdims=True), "returned probabilities: return logits, "
                 "the kept ones unchanged and the others -inf; the sampler applies softmax."),
                (reference_top_k_filter(logits.T, k).T
                 if logits.ndim == 2 and k <= logits.shape[0] else None,
                 "filtered along the wrong axis: the vocabulary is the LAST axis (axis=-1)."),
            ]
        hint = _diagnose(got, candidates, rtol=1e-5, atol=1e-6)
        if hint is None and np.array_equal(np.isinf(got), np.isinf(want)):
            hint = ("the right tokens are removed but the kept logits changed: leave them "
                    "exactly as they were (no softmax, no shift, no temperature).")
        _fail(name, (hint or "wrong values.") + f"\n  logits = {_short(logits)}, k = {k}"
              + f"\n  expected {_short(want)}\n  got      {_short(got)}")
    _ok(name, f"{len(cases)} cases, 1-D and batched")


# ---------------------------------------------------------------- top-p


def reference_top_p_filter(probs, p: float):
    """The nucleus distribution: keep the smallest set of most likely tokens whose
    probabilities add up to at least ``p`` (the token that crosses ``p`` is kept; the most
    likely token always is), zero the others and renormalise. (..., V) -> (..., V)."""
    probs = np.asarray(probs, np.float64)
    order = np.argsort(-probs, axis=-1)  # most likely first
    sorted_p = np.take_along_axis(probs, order, axis=-1)
    mass_before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass of the tokens ranked above
    keep_sorted = mass_before < p
    keep = np.zeros_like(keep_sorted)
    np.put_along_axis(keep, order, keep_sorted, axis=-1)  # back to vocabulary order
    kept = np.where(keep, probs, 0.0)
    return kept / kept.sum(-1, keepdims=True)


def _nucleus_variants(probs, p):
    """Typical wrong nuclei, each as (kept probabilities before renormalising, hint)."""
    order = np.argsort(-probs, axis=-1)
    sorted_p = np.take_along_axis(probs, order, axis=-1)
    csum = np.cumsum(sorted_p, axis=-1)

    def unsort(mask_sorted):
        keep = np.zeros_like(mask_sorted)
        np.put_along_axis(keep, order, mask_sorted, axis=-1)
        return np.where(keep, probs, 0.0)

    asc = np.argsort(probs, axis=-1)
    sorted_asc = np.take_along_axis(probs, asc, axis=-1)
    keep_asc = np.zeros(probs.shape, bool)
    np.put_along_axis(keep_asc, asc, np.cumsum(sorted_asc, -1) - sorted_asc < p, axis=-1)
    return [
        (unsort(csum < p), "excluded the token that crosses p: keep a token when the mass of "
         "the tokens ranked ABOVE it is below p (cumsum - probs < p), so the set reaches at "
         "least p (and the most likely token is always kept)."),
        (np.where(keep_asc, probs, 0.0), "sorted ascending: the nucleus is made of the MOST "
         "likely tokens, so sort in descending order (argsort of -probs)."),
    ]


def check_top_p_filter(fn: Callable) -> None:
    """Check ``fn(probs, p) -> nucleus probabilities`` with the shape of ``probs``."""
    name = "top_p_filter"
    rng = np.random.default_rng(4)

    def dist(shape, scale):
        e = np.exp(rng.normal(size=shape) * scale)
        return e / e.sum(-1, keepdims=True)

    peaked = np.array([0.05, 0.6, 0.1, 0.15, 0.02, 0.08])  # p below the top probability
    # The first case is flat enough that every wrong nucleus differs from the right one.
    cases = [(dist(8, 0.7), 0.5), (dist((2, 10), 1.0), 0.9), (peaked, 0.5),
             (dist((3, 7), 2.0), 0.8)]
    for probs, p in cases:
        probs = probs.astype(np.float32).astype(np.float64)
        out = _call(name, fn, np.asarray(probs, np.float32), p)
        got = _as_array(name, out, probs.shape, "the nucleus probabilities (same shape as "
                        "probs)")
        want = reference_top_p_filter(probs, p)
        if _close(got, want, rtol=1e-4, atol=1e-6):
            continue
        where = f"\n  probs = {_short(probs)}, p = {p}\n  expected {_short(want)}\n  got      " \
                f"{_short(got)}"
        if not np.all(np.isfinite(got)) or np.any(np.abs(got).sum(-1) < 1e-9):
            _fail(name, "a row came out empty (all zeros or NaN): always keep at least one "
                  "token, the most likely, even when its probability alone exceeds p. Keep a "
                  "token when the mass ranked above it is below p; the first has 0 above it."
                  + where)
        with np.errstate(all="ignore"):
            candidates = []
            for kept, hint in _nucleus_variants(probs, p):
                candidates += [(kept / kept.sum(-1, keepdims=True), hint), (kept, hint)]
            kept_right = np.where(want > 0, probs, 0.0)
            candidates += [
                (probs, "returned the probabilities unchanged: zero every token outside the "
                 "nucleus."),
                (kept_right, "the right tokens are kept but not renormalised: divide by their "
                 "sum so the nucleus adds up to 1."),
                (np.sort(want, axis=-1)[..., ::-1], "returned the probabilities in sorted "
                 "order: put each back at its token's position in the vocabulary."),
                (np.where(want > 0, 1.0, 0.0), "returned a mask: return the renormalised "
                 "probabilities of the kept tokens."),
            ]
        hint = _diagnose(got, candidates, rtol=1e-4, atol=1e-6)
        if hint is None and not _close(got.sum(-1), np.ones(got.shape[:-1]), rtol=1e-4):
            hint = "each row must add up to 1 (renormalise the kept probabilities)."
        _fail(name, (hint or "wrong values.") + where)
    _ok(name, f"{len(cases)} cases, including p below the top probability")


# ---------------------------------------------------------------- Chinese numerals

_ZH = "零一二三四五六七八九"
_UNITS = ((3, "千"), (2, "百"), (1, "十"), (0, ""))


def _zh(n: int, *, zero: str = "one", drop_leading_one: bool = True, drop_inner_one: bool = False,
        liang: bool = False, trailing_zero: bool = False, zero_word: str = "零") -> str:
    """0..9999 in Chinese numerals, with switches that reproduce typical mistakes.
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


def reference_chinese_number_small(n: int) -> str:
    """0 <= n <= 9999 in Chinese numerals: 1005 一千零五, 1050 一千零五十, 10 十, 15 十五,
    110 一百一十, 2000 二千. The same as ``course_lib.translation.chinese_number`` there."""
    return _zh(n)


_ZH_CASES = [0, 3, 10, 15, 19, 20, 21, 99, 100, 101, 105, 110, 111, 115, 120, 200, 999, 1000,
             1001, 1005, 1010, 1050, 1100, 1234, 2005, 2020, 3040, 4300, 6008, 9999]

_ZH_MISTAKES = [
    (dict(zero="none"), "no 零: a zero between two non-zero digits is read as 零 "
     "(1005 一千零五, 105 一百零五)."),
    (dict(zero="each"), "one 零 per zero digit: a RUN of zeros is read as a single 零 "
     "(1005 一千零五, not 一千零零五)."),
    (dict(trailing_zero=True), "a 零 at the end: trailing zeros are silent (1050 一千零五十, "
     "100 一百)."),
    (dict(drop_leading_one=False), "一十 at the start: 10-19 are read 十, 十一 ... 十九 "
     "(without 一) when they begin the number."),
    (dict(drop_inner_one=True), "dropped the 一 of 一十 inside a number: only a LEADING 一十 "
     "loses its 一; 110 is 一百一十, 1015 一千零一十五."),
    (dict(liang=True), "used 两: this course always writes 二 (二百, 二千), the form of written "
     "arithmetic; 两 is the spoken form."),
    (dict(zero_word=""), "zero itself is 零: return '零' for n = 0."),
]


def check_chinese_number_small(fn: Callable) -> None:
    """Check ``fn(n) -> str`` for 0 <= n <= 9999 against ``reference_chinese_number_small``."""
    name = "chinese_number_small"
    got = {}
    for n in _ZH_CASES:
        out = _call(name, fn, n)
        if out is None:
            _fail(name, "your function returned None — did you forget the `return` statement?")
        if not isinstance(out, str):
            _fail(name, f"your function returned a {type(out).__name__} for n = {n}; expected "
                  f"a str such as {_zh(n)!r}.")
        got[n] = out
    wrong = [n for n in _ZH_CASES if got[n] != _zh(n)]
    if not wrong:
        _ok(name, f"{len(_ZH_CASES)} numbers, zeros and 十 included")
        return
    hint = None
    for switches, text in _ZH_MISTAKES:
        variant = {n: _zh(n, **switches) for n in _ZH_CASES}
        if all(got[n] == variant[n] for n in wrong) and any(got[n] != _zh(n) for n in wrong):
            hint = text
            break
    if hint is None and all(got[n].strip().isascii() for n in wrong):
        hint = ("returned Latin characters: write Chinese numerals, from the digits "
                "'零一二三四五六七八九' and the units 十, 百, 千.")
    if hint is None and all(got[n] == "".join(_ZH[int(c)] for c in str(n)) for n in wrong):
        hint = ("read the digits one by one: insert the units 千, 百, 十 after each non-zero "
                "digit (1234 一千二百三十四).")
    shown = ", ".join(f"{n} -> expected {_zh(n)!r}, got the string {got[n]!r}" for n in wrong[:3])
    _fail(name, (hint or "some numbers are wrong.") + f"\n  {shown}"
          + (f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""))
