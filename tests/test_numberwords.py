"""English and Chinese number words and dates, and the seeded EN→ZH pairs
(course_lib.numberwords)."""

import datetime

import numpy as np
import pytest

from course_lib import numberwords as N
from course_lib import plots

# ---------------------------------------------------------------- number words, by hand

CHINESE = {
    0: "零", 1: "一", 7: "七", 10: "十", 11: "十一", 15: "十五", 19: "十九", 20: "二十",
    21: "二十一", 99: "九十九", 100: "一百", 101: "一百零一", 105: "一百零五", 110: "一百一十",
    115: "一百一十五", 200: "二百", 999: "九百九十九", 1000: "一千", 1001: "一千零一",
    1005: "一千零五", 1010: "一千零一十", 1050: "一千零五十", 1100: "一千一百",
    2021: "二千零二十一", 4021: "四千零二十一", 9999: "九千九百九十九", 10000: "一万",
    10001: "一万零一", 10010: "一万零一十", 10100: "一万零一百", 11000: "一万一千",
    20000: "二万", 20020: "二万零二十", 99999: "九万九千九百九十九", 100000: "十万",
    100001: "十万零一", 100010: "十万零一十", 100100: "十万零一百", 101000: "十万一千",
    110000: "十一万", 110010: "十一万零一十", 210000: "二十一万", 305060: "三十万五千零六十",
    999999: "九十九万九千九百九十九",
}

ENGLISH = {
    0: "zero", 7: "seven", 13: "thirteen", 21: "twenty-one", 40: "forty", 100: "one hundred",
    101: "one hundred and one", 105: "one hundred and five", 110: "one hundred and ten",
    999: "nine hundred and ninety-nine", 1000: "one thousand", 1001: "one thousand and one",
    1010: "one thousand and ten", 1100: "one thousand one hundred",
    4021: "four thousand and twenty-one", 10001: "ten thousand and one",
    10010: "ten thousand and ten", 20000: "twenty thousand", 100000: "one hundred thousand",
    100010: "one hundred thousand and ten", 101000: "one hundred and one thousand",
    110000: "one hundred and ten thousand",
    999999: "nine hundred and ninety-nine thousand nine hundred and ninety-nine",
}


@pytest.mark.parametrize("n, zh", sorted(CHINESE.items()))
def test_chinese_numbers_by_hand(n, zh):
    assert N.chinese_number(n) == zh


@pytest.mark.parametrize("n, en", sorted(ENGLISH.items()))
def test_english_numbers_by_hand(n, en):
    assert N.english_number(n) == en


def test_every_number_has_a_distinct_spelling_in_both_languages():
    ns = range(0, N.MAX_NUMBER + 1, 7)  # a sample of 140,000 numbers
    zh = {N.chinese_number(n) for n in ns}
    en = {N.english_number(n) for n in ns}
    assert len(zh) == len(en) == len(ns)
    assert all("两" not in z and not z.endswith("零") for z in zh if z != "零")
    assert all(" and and" not in e and "  " not in e for e in en)


def test_dates():
    d = datetime.date(2024, 3, 5)
    assert (N.english_date(d), N.chinese_date(d)) == ("March 5, 2024", "2024年3月5日")
    assert N.kind_of("March 5, 2024") == "date" and N.kind_of("five") == "number"


@pytest.mark.parametrize("bad, err", [(-1, ValueError), (N.MAX_NUMBER + 1, ValueError),
                                      (2.0, TypeError), (True, TypeError)])
def test_out_of_range_numbers_are_clear_errors(bad, err):
    with pytest.raises(err, match="between|int"):
        N.chinese_number(bad)
    with pytest.raises(err):
        N.english_number(bad)


# ---------------------------------------------------------------- data


def test_pairs_are_seeded_and_the_three_sets_are_disjoint():
    assert N.make_pairs(50, seed=3) == N.make_pairs(50, seed=3)
    assert N.make_pairs(50, seed=3) != N.make_pairs(50, seed=4)
    train, val, test = N.split_pairs(3000, 200, 300, seed=0)
    train_src = {s for s, _ in train}
    val_src, test_src = [s for s, _ in val], [s for s, _ in test]
    assert len(set(test_src)) == len(test_src) == 300  # unique
    assert len(set(val_src)) == len(val_src) == 200
    assert not train_src & set(test_src) and not train_src & set(val_src)  # by source string
    assert not set(val_src) & set(test_src)
    blocks = {N.english_number(k) for k in range(100)}  # the building blocks: training only
    assert not blocks & (set(test_src) | set(val_src)) and blocks & train_src
    assert {N.kind_of(s) for s in test_src} == {N.kind_of(s) for s in val_src} == {"date",
                                                                                   "number"}
    for s, t in train[:200] + val + test:
        assert (t[-1] == "日") == (N.kind_of(s) == "date")
    # the test set does not depend on how many validation or training pairs are drawn
    assert N.split_pairs(100, 10, 300, seed=0)[2] == test


def test_longest_and_the_alphabets_cover_every_pair():
    for max_digits in (3, 6):
        src_len, tgt_len = N.longest(max_digits)
        pairs = N.make_pairs(3000, seed=max_digits, max_digits=max_digits)
        assert max(len(s) for s, _ in pairs) <= src_len
        assert max(len(t) for _, t in pairs) <= tgt_len
        assert set("".join(s for s, _ in pairs)) <= set(N.EN_ALPHABET)
        assert set("".join(t for _, t in pairs)) <= set(N.ZH_ALPHABET)
    assert len(N.english_number(777_777)) <= N.longest(6)[0]


def test_pinyin_for_every_chinese_character_and_a_font_lookup():
    assert set(N.PINYIN) == set(N.ZH_CHARACTERS)
    font = plots.cjk_font(N.ZH_CHARACTERS)
    assert font is None or (isinstance(font, str) and not font.startswith("Last Resort"))
    assert plots.cjk_font("a") is not None  # any font draws a Latin letter


def test_max_digits_limits_the_numbers():
    pairs = N.make_pairs(300, seed=1, max_digits=3, date_share=0.0)
    assert all(len(t) <= len("九百九十九") for _, t in pairs)
    with pytest.raises(ValueError, match="max_digits"):
        N.random_number(np.random.default_rng(0), max_digits=7)
