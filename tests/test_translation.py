"""The EN→ZH task (course_lib.translation) and beam search (course_lib.seq2seq)."""

import datetime

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from course_lib import seq2seq as S
from course_lib import translation as T

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
    assert T.chinese_number(n) == zh


@pytest.mark.parametrize("n, en", sorted(ENGLISH.items()))
def test_english_numbers_by_hand(n, en):
    assert T.english_number(n) == en


def test_every_number_has_a_distinct_spelling_in_both_languages():
    ns = range(0, T.MAX_NUMBER + 1, 7)  # a sample of 140,000 numbers
    zh = {T.chinese_number(n) for n in ns}
    en = {T.english_number(n) for n in ns}
    assert len(zh) == len(en) == len(ns)
    assert all("两" not in z and not z.endswith("零") for z in zh if z != "零")
    assert all(" and and" not in e and "  " not in e for e in en)


def test_dates():
    d = datetime.date(2024, 3, 5)
    assert (T.english_date(d), T.chinese_date(d)) == ("March 5, 2024", "2024年3月5日")
    assert T.kind_of("March 5, 2024") == "date" and T.kind_of("five") == "number"


@pytest.mark.parametrize("bad, err", [(-1, ValueError), (T.MAX_NUMBER + 1, ValueError),
                                      (2.0, TypeError), (True, TypeError)])
def test_out_of_range_numbers_are_clear_errors(bad, err):
    with pytest.raises(err, match="between|int"):
        T.chinese_number(bad)
    with pytest.raises(err):
        T.english_number(bad)


# ---------------------------------------------------------------- data


def test_pairs_are_seeded_and_test_is_disjoint_from_training():
    assert T.make_pairs(50, seed=3) == T.make_pairs(50, seed=3)
    assert T.make_pairs(50, seed=3) != T.make_pairs(50, seed=4)
    train, test = T.split_pairs(3000, 300, seed=0)
    train_src = {s for s, _ in train}
    test_src = [s for s, _ in test]
    assert len(set(test_src)) == len(test_src) == 300  # unique
    assert not train_src & set(test_src)  # disjoint by source string
    assert not {T.english_number(k) for k in range(100)} & set(test_src)  # blocks train only
    kinds = {T.kind_of(s) for s in test_src}
    assert kinds == {"date", "number"}
    for s, t in train[:200] + test:
        assert (t[-1] == "日") == (T.kind_of(s) == "date")


def test_max_digits_limits_the_numbers():
    pairs = T.make_pairs(300, seed=1, max_digits=3, date_share=0.0)
    assert all(len(t) <= len("九百九十九") for _, t in pairs)
    with pytest.raises(ValueError, match="max_digits"):
        T.random_number(np.random.default_rng(0), max_digits=7)


def test_vocab_and_encoding_round_trip():
    data = T.build_data(200, 40, seed=0)
    assert data.src_vocab.size == len(data.src_vocab.chars) + 3
    for s, t in data.train_pairs[:50] + data.test_pairs:
        src = T.encode_sources(data.src_vocab, [s], data.src_len)
        tin, tout = T.encode_targets(data.tgt_vocab, [t], data.tgt_len)
        assert data.src_vocab.decode(src[0]) == s
        assert data.tgt_vocab.decode(tout[0]) == t
        assert tin[0, 0] == T.BOS and data.tgt_vocab.decode(tin[0, 1:]) == t
        n = len(t)
        assert tout[0, n] == T.EOS and (tout[0, n + 1:] == S.PAD).all()
        np.testing.assert_array_equal(tin[0, 1:n + 1], tout[0, :n])  # shifted by one
    # any number or date of the generator fits the arrays
    longest = T.english_number(777_777)
    assert len(longest) <= data.src_len
    assert data.src.shape == (200, data.src_len) and data.tgt_in.shape == (200, data.tgt_len - 1)


def test_encoding_errors_name_the_problem():
    vocab = T.CharVocab.from_texts(["abc"])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        vocab.encode("abz")
    with pytest.raises(ValueError, match="length=2"):
        T.encode_sources(vocab, ["abc"], 2)
    with pytest.raises(ValueError, match="BOS and EOS"):
        T.encode_targets(vocab, ["abc"], 4)


def test_exact_match():
    assert T.exact_match(["一", "二"], ["一", "三"]) == 0.5
    with pytest.raises(ValueError, match="as many"):
        T.exact_match(["一"], ["一", "二"])


def test_cjk_font_is_a_name_or_none():
    font = T.cjk_font()
    assert font is None or (isinstance(font, str) and not font.startswith("Last Resort"))
    assert set(T.PINYIN) == set(T.ZH_DIGITS + "十百千万年月日")


# ---------------------------------------------------------------- a tiny model trains


@pytest.fixture(scope="module")
def trained():
    data = T.build_data(2000, 50, seed=0, max_digits=3)
    cfg = S.Seq2SeqConfig(data.src_vocab.size, data.tgt_vocab.size, data.src_len, data.tgt_len,
                          n_layers=1, n_heads=2, d_model=32)
    model = S.Seq2Seq(cfg, rngs=nnx.Rngs(0))
    losses = T.fit_translator(model, data, steps=150, batch_size=32, lr=3e-3, warmup=20,
                              steps_per_call=50)
    return model, data, losses


def test_a_tiny_model_learns(trained):
    model, data, losses = trained
    assert len(losses) == 150 and np.isfinite(losses).all()
    assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:20])
    out = T.translate(model, data, [s for s, _ in data.test_pairs[:10]])
    assert len(out) == 10 and all(isinstance(o, str) for o in out)


def test_fit_translator_rejects_bad_settings(trained):
    model, data, _ = trained
    with pytest.raises(ValueError, match="steps"):
        T.fit_translator(model, data, steps=0)


# ---------------------------------------------------------------- beam search


def _cut(ids, eos=T.EOS):
    """Rows of ids up to and including the first EOS, as tuples."""
    out = []
    for row in np.asarray(ids).tolist():
        out.append(tuple(row[: row.index(eos) + 1]) if eos in row else tuple(row))
    return out


def test_beam_of_width_one_is_greedy(trained):
    model, data, _ = trained
    src = jnp.asarray(T.encode_sources(data.src_vocab, [s for s, _ in data.test_pairs],
                                       data.src_len))
    greedy = S.greedy_decode(model, src, bos=T.BOS, max_len=data.tgt_len)
    beam, score = S.beam_search(model, src, bos=T.BOS, eos=T.EOS, max_len=data.tgt_len,
                                beam_size=1)
    assert _cut(beam) == _cut(greedy)
    np.testing.assert_allclose(score, S.sequence_logprob(model, src, greedy, eos=T.EOS),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("which", ["trained", "untrained"])
def test_beam_finds_sequences_at_least_as_probable_as_greedy(trained, which):
    model, data, _ = trained
    if which == "untrained":
        model = S.Seq2Seq(model.cfg, rngs=nnx.Rngs(1))
        model.eval()
    src = jnp.asarray(T.encode_sources(data.src_vocab, [s for s, _ in data.test_pairs],
                                       data.src_len))
    greedy = S.greedy_decode(model, src, bos=T.BOS, max_len=data.tgt_len)
    beam, score = S.beam_search(model, src, bos=T.BOS, eos=T.EOS, max_len=data.tgt_len,
                                beam_size=4)
    lp_greedy = np.asarray(S.sequence_logprob(model, src, greedy, eos=T.EOS))
    lp_beam = np.asarray(S.sequence_logprob(model, src, beam, eos=T.EOS))
    np.testing.assert_allclose(score, lp_beam, rtol=1e-4, atol=1e-4)  # its score is right
    assert (lp_beam >= lp_greedy - 1e-4).all()
    assert (np.asarray(beam)[:, 0] == T.BOS).all()


def test_beam_search_rejects_a_bad_width(trained):
    model, data, _ = trained
    src = jnp.ones((1, data.src_len), jnp.int32)
    with pytest.raises(ValueError, match="beam_size"):
        S.beam_search(model, src, bos=T.BOS, eos=T.EOS, max_len=4, beam_size=0)


def test_translate_batches_give_the_same_answers(trained):
    model, data, _ = trained
    sources = [s for s, _ in data.test_pairs[:7]]
    assert T.translate(model, data, sources, batch_size=3) == T.translate(model, data, sources)
