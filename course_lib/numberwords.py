"""Numbers and dates in English and Chinese words, and the seeded EN→ZH pairs of the translation
task of notebook 06a (``course_lib.translation`` turns them into arrays).

    "four thousand and twenty-one"  ->  "四千零二十一"
    "March 5, 2024"                 ->  "2024年3月5日"

English numbers are written in the British style, with "and" before the last two digits
("one hundred and five", "two thousand and ten"). Chinese numbers follow the usual written rules:
a run of zeros inside a number is read as one 零 (1005 一千零五, 1050 一千零五十), trailing zeros
are silent, 10–19 at the start of a number drop the 一 (10 十, 15 十五, 100000 十万) but keep it
inside one (110 一百一十). Convention here: the digit 2 is always 二 (二百, 二千, 二万), as written
in arithmetic; speech often says 两千 / 两万, and a real translator should accept both.

Every pair comes from a seeded generator, so the data needs no download and no licence. The test
set is drawn first, then the validation set, and the training set never contains a source
string of either.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable

import numpy as np

MAX_NUMBER = 999_999  # the converters cover 0 .. MAX_NUMBER

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
ZH_DIGITS = "零一二三四五六七八九"
ZH_CHARACTERS = ZH_DIGITS + "十百千万年月日"  # every Chinese character the task writes

# Every character a source or a target can contain (the vocabularies are built from these, so
# any number or date can be encoded).
EN_ALPHABET = "".join(sorted(set("".join(_ONES + _TENS + MONTHS)
                                 + " hundred thousand and-,0123456789")))
ZH_ALPHABET = ZH_CHARACTERS + "0123456789"

# Pinyin (with tone marks) of every Chinese character of the task: plot labels that any Latin
# font can draw, for machines without a Chinese font (see ``plots.cjk_font``).
PINYIN = {"零": "líng", "一": "yī", "二": "èr", "三": "sān", "四": "sì", "五": "wǔ",
          "六": "liù", "七": "qī", "八": "bā", "九": "jiǔ", "十": "shí", "百": "bǎi",
          "千": "qiān", "万": "wàn", "年": "nián", "月": "yuè", "日": "rì"}


def _check_number(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"Expected an int, got {type(n).__name__}: {n!r}.")
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"Numbers must be between 0 and {MAX_NUMBER:,}, got {n:,}.")
    return int(n)


# ---------------------------------------------------------------- English


def _en_below_100(n: int) -> str:
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")  # twenty-one


def _en_below_1000(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    if not hundreds:
        return _en_below_100(rest)
    words = f"{_ONES[hundreds]} hundred"
    return f"{words} and {_en_below_100(rest)}" if rest else words


def english_number(n: int) -> str:
    """0 <= n <= 999,999 in British English words: 105 -> 'one hundred and five',
    4021 -> 'four thousand and twenty-one', 101000 -> 'one hundred and one thousand'."""
    n = _check_number(n)
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    parts = [f"{_en_below_1000(thousands)} thousand"] if thousands else []
    if rest:
        # "and" joins a last part below 100 to the thousands: "two thousand and ten".
        parts.append(f"and {_en_below_100(rest)}" if thousands and rest < 100
                     else _en_below_1000(rest))
    return " ".join(parts)


# ---------------------------------------------------------------- Chinese


def _zh_section(n: int) -> str:
    """1 <= n <= 9999 -> digits with 千百十; inner runs of zeros become one 零, trailing
    zeros are silent. The leading 一 of 一十 is kept here (110 一百一十)."""
    out, pending_zero = [], False
    for power, unit in ((3, "千"), (2, "百"), (1, "十"), (0, "")):
        digit = n // 10**power % 10
        if digit == 0:
            pending_zero = bool(out)  # a zero after some digit: maybe one 零 later
            continue
        if pending_zero:
            out.append("零")
            pending_zero = False
        out.append(ZH_DIGITS[digit] + unit)
    return "".join(out)


def chinese_number(n: int) -> str:
    """0 <= n <= 999,999 in Chinese numerals: 1005 一千零五, 1050 一千零五十, 10 十,
    110 一百一十, 10010 一万零一十, 100000 十万, 20000 二万 (always 二, never 两)."""
    n = _check_number(n)
    if n == 0:
        return "零"
    wan, rest = divmod(n, 10_000)  # 万 = ten thousand: Chinese groups digits by four
    text = _zh_section(wan) + "万" if wan else ""
    if rest:
        if wan and rest < 1000:  # the 千 place of the lower group is empty: 一万零五
            text += "零"
        text += _zh_section(rest)
    return text[1:] if text.startswith("一十") else text  # 十五, 十万; but 一百一十


# ---------------------------------------------------------------- dates


def english_date(d: datetime.date) -> str:
    """datetime.date(2024, 3, 5) -> 'March 5, 2024'."""
    return f"{MONTHS[d.month - 1]} {d.day}, {d.year}"


def chinese_date(d: datetime.date) -> str:
    """datetime.date(2024, 3, 5) -> '2024年3月5日' (Arabic digits, year first)."""
    return f"{d.year}年{d.month}月{d.day}日"


def kind_of(source: str) -> str:
    """'date' or 'number', read from an English source string."""
    return "date" if source.split(" ", 1)[0] in MONTHS else "number"


def longest(max_digits: int = 6) -> tuple[int, int]:
    """The most characters an English source and a Chinese target can have, for numbers of up
    to ``max_digits`` digits and for dates."""
    widest = [int("7" * max_digits), int("2" + "1" * (max_digits - 1))]  # longest in words
    return (max(len("September 30, 2000"), *(len(english_number(n)) for n in widest)),
            max(len("2000年12月30日"), *(len(chinese_number(n)) for n in widest)))


# ---------------------------------------------------------------- random pairs


def random_number(rng: np.random.Generator, max_digits: int = 6) -> int:
    """A number with 1 to ``max_digits`` digits (more digits more often); half of them get
    extra zeros, so the tricky 零 cases (1005, 10010, 100100) are common."""
    if not 1 <= max_digits <= 6:
        raise ValueError(f"max_digits must be between 1 and 6, got {max_digits}.")
    weights = np.array([1, 2, 3, 4, 4, 4][:max_digits], float)
    n_digits = int(rng.choice(max_digits, p=weights / weights.sum())) + 1
    digits = rng.integers(0, 10, n_digits)
    digits[0] = rng.integers(1, 10) if n_digits > 1 else digits[0]
    if rng.random() < 0.5:  # zero out some of the other digits
        digits[1:] *= rng.random(n_digits - 1) < 0.5
    return int("".join(map(str, digits)))


def random_date(rng: np.random.Generator) -> datetime.date:
    """A day between 1900-01-01 and 2099-12-31."""
    first, last = datetime.date(1900, 1, 1), datetime.date(2099, 12, 31)
    return first + datetime.timedelta(days=int(rng.integers(0, (last - first).days + 1)))


def random_pair(rng: np.random.Generator, *, max_digits: int = 6, date_share: float = 0.3
                ) -> tuple[str, str]:
    """One (english, chinese) pair: a date with probability ``date_share``, else a number."""
    if rng.random() < date_share:
        d = random_date(rng)
        return english_date(d), chinese_date(d)
    n = random_number(rng, max_digits)
    return english_number(n), chinese_number(n)


def make_pairs(n: int, seed: int, *, exclude: Iterable[str] = (), unique: bool = False,
               max_digits: int = 6, date_share: float = 0.3) -> list[tuple[str, str]]:
    """``n`` (english, chinese) pairs from a seeded generator. Sources in ``exclude`` are
    skipped; ``unique=True`` also skips repeats (for a test set)."""
    rng = np.random.default_rng(seed)
    banned, pairs = set(exclude), []
    for _ in range(100 * n + 1000):
        if len(pairs) == n:
            return pairs
        src, tgt = random_pair(rng, max_digits=max_digits, date_share=date_share)
        if src in banned:
            continue
        if unique:
            banned.add(src)
        pairs.append((src, tgt))
    raise RuntimeError(f"Could not draw {n} pairs with these exclusions; ask for fewer.")


def split_pairs(n_train: int, n_val: int, n_test: int, seed: int = 0, *, max_digits: int = 6
                ) -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """A training set, a validation set and a test set; no source string is in two of them.

    The test set is drawn first (unique sources), the validation set next (unique sources, none
    of the test set's), the training set last without the sources of either (its pairs may
    repeat). Numbers below 100 are the building blocks every other number is made of, like the
    words of a dictionary: they stay in training, never in validation or test."""
    blocks = {english_number(k) for k in range(100)}
    test = make_pairs(n_test, seed + 1, exclude=blocks, unique=True, max_digits=max_digits)
    test_sources = {s for s, _ in test}
    val = make_pairs(n_val, seed + 3, exclude=blocks | test_sources, unique=True,
                     max_digits=max_digits)
    held_out = test_sources | {s for s, _ in val}
    train = make_pairs(n_train, seed + 2, exclude=held_out, max_digits=max_digits)
    assert not held_out & {s for s, _ in train}, "training and held-out pairs overlap"
    return train, val, test
