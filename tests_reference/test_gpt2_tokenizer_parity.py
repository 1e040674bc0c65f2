"""The course's BPETokenizer in GPT-2 mode against Hugging Face's tokenizers, both reading the
same vocab.json and merges.txt, written by to_gpt2_files from a BPE the course trains: equal ids
and equal decoded text on Tiny Shakespeare, on Chinese and on random Unicode."""

import datetime
import random
import sys
import unicodedata

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2TokenizerFast

from course_lib import data, numberwords
from course_lib.tokenizers import ENDOFTEXT, BPETokenizer, bytes_to_unicode, gpt2_split_pattern

# A few paragraphs of Chinese (about language models), and Chinese number words and dates.
CHINESE = (
    "语言模型根据前面的文字预测下一个词。训练时，它读过大量的文本，学会了哪些字经常一起出现。"
    "分词器先把文字切成小块：英文按字母和空格，中文没有空格，所以常见的词语会被合并成一个记号。"
    "一个好的分词器让序列变短，模型就能在同样的上下文里看到更多的内容。\n"
    "今天下午三点，我们在北京大学图书馆见面，然后一起去吃饭。你好，世界！“引号”和（括号）也要测试。\n"
)
rng_zh = np.random.default_rng(0)
CHINESE += "，".join(numberwords.chinese_number(int(n)) for n in rng_zh.integers(0, 999_999, 60))
CHINESE += "。" + "；".join(numberwords.chinese_date(datetime.date(1990, 1, 1)
                                                    + datetime.timedelta(days=int(d)))
                           for d in rng_zh.integers(0, 20_000, 30))


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return data.load_text("tinyshakespeare")


@pytest.fixture(scope="module")
def folder(tmp_path_factory, shakespeare):
    """vocab.json + merges.txt of a BPE the course trains on English and Chinese."""
    bpe = BPETokenizer.train(shakespeare[:200_000] + CHINESE * 5, vocab_size=1000)
    folder = tmp_path_factory.mktemp("tok")
    bpe.to_gpt2_files(folder)
    return folder


@pytest.fixture(scope="module")
def ours(folder) -> BPETokenizer:
    return BPETokenizer.from_gpt2_files(folder / "vocab.json", folder / "merges.txt")


@pytest.fixture(scope="module")
def hf(folder) -> Tokenizer:
    """Hugging Face's byte-level BPE set up as GPT-2's: BPE model, ByteLevel pre-tokenizer
    (GPT-2's pattern, no added prefix space) and ByteLevel decoder."""
    tok = Tokenizer(models.BPE.from_file(str(folder / "vocab.json"), str(folder / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


@pytest.fixture(scope="module")
def fast(folder) -> GPT2TokenizerFast:
    return GPT2TokenizerFast.from_pretrained(folder)


def assigned_unicode(rng: random.Random, n: int) -> str:
    """Random text from the characters this Python's Unicode tables assign (a character only a
    newer Unicode assigns is a letter to Hugging Face but not to this Python: see
    gpt2_split_pattern), with plenty of spaces, separators and contraction pieces."""
    pick = " \t\n\r\x0b\x0c\x1c\x1d\x85\xa0\u2028\u3000'sdtmlrve  "
    out = []
    while len(out) < n:
        if rng.random() < 0.4:
            out.append(rng.choice(pick))
        else:
            c = chr(rng.randint(0, sys.maxunicode))
            if unicodedata.category(c) not in ("Cn", "Cs"):
                out.append(c)
    return "".join(out)


def test_the_pattern_equals_hugging_faces(shakespeare):
    """Pre-tokenisation alone: gpt2_split_pattern's chunks are the ByteLevel pre-tokenizer's."""
    split = pre_tokenizers.ByteLevel(add_prefix_space=False)
    enc = bytes_to_unicode()
    rng = random.Random(0)
    texts = [shakespeare[:20_000], CHINESE] + [assigned_unicode(rng, 60) for _ in range(300)]
    for text in texts:
        ours = ["".join(enc[b] for b in c.encode("utf-8"))
                for c in gpt2_split_pattern().findall(text)]
        assert ours == [piece for piece, _ in split.pre_tokenize_str(text)], repr(text[:80])


def test_tiny_shakespeare(ours, hf, fast, shakespeare):
    ids = ours.encode(shakespeare)
    assert ids == hf.encode(shakespeare).ids
    assert len(ids) < 0.5 * len(shakespeare)  # the merges do compress
    assert hf.decode(ids) == ours.decode(ids) == shakespeare
    passage = shakespeare[300_000:310_000]
    assert fast.encode(passage) == ours.encode(passage)


def test_chinese(ours, hf, fast):
    ids = ours.encode(CHINESE)
    assert ids == hf.encode(CHINESE).ids == fast.encode(CHINESE)
    assert len(ids) < len(CHINESE.encode("utf-8")) / 2  # Chinese merges were learned
    assert hf.decode(ids) == ours.decode(ids) == CHINESE


def test_random_unicode(ours, hf):
    rng = random.Random(1)
    for _ in range(500):
        text = assigned_unicode(rng, rng.randint(0, 50))
        ids = ours.encode(text)
        assert ids == hf.encode(text).ids, repr(text)
        assert ours.decode(ids) == hf.decode(ids) == text


def test_decoding_any_ids(ours, hf):
    """Id sequences that cut characters in half decode alike too (U+FFFD for broken bytes)."""
    rng = np.random.default_rng(2)
    n_real = ours.vocab_size - 1  # <|endoftext|> is not an ordinary token to hf's model
    for _ in range(300):
        ids = rng.integers(0, n_real, rng.integers(1, 20)).tolist()
        assert ours.decode(ids) == hf.decode(ids)


def test_endoftext(ours, fast):
    eot = ours.special_tokens[ENDOFTEXT]
    assert fast.convert_tokens_to_ids(ENDOFTEXT) == eot
    text = "First document.<|endoftext|>第二个文件。<|endoftext|>"
    ids = ours.encode(text, allowed_special="all")
    assert ids == fast.encode(text)  # transformers recognises its special tokens in text
    assert ids.count(eot) == 2
    assert fast.decode(ids) == ours.decode(ids) == text
