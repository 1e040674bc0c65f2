"""Tests for course_lib.tokenizers: round trips on any Unicode, errors, save/load, determinism."""

import json
import random
from collections import Counter

import numpy as np
import pytest

from course_lib import data
from course_lib.tokenizers import (
    SPLIT_PATTERN,
    BPETokenizer,
    CharTokenizer,
    compression_ratio,
)

TRICKY = [
    "大规模语言模型",
    "👩‍👩‍👧‍👦 👍🏽",
    "e\u0301",  # "é" as e + combining acute accent
    "\n\n\t",
    "",
    "  leading and trailing spaces  ",
    "snake_case_name = 42_000 ;;; 3.14",
    "naïve café — «quoted» ¡hola! ½ ²",
    "\r\n\x00\x7f\u200b\ufeff",
]


def random_unicode(rng: random.Random, n: int) -> str:
    """A random string from ASCII, Latin-1, combining marks, CJK, emoji, ZWJ, private use and
    the astral planes; the ranges leave out the surrogates U+D800..U+DFFF (not valid text)."""
    ranges = [(0x20, 0x7E), (0x09, 0x0D), (0xA0, 0xFF), (0x0300, 0x036F), (0x4E00, 0x9FFF),
              (0x1F300, 0x1FAFF), (0x200D, 0x200D), (0xE000, 0xF8FF), (0x10000, 0x10FFFF)]
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(n))


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return data.load_text("tinyshakespeare")


@pytest.fixture(scope="module")
def bpe(shakespeare) -> BPETokenizer:
    return BPETokenizer.train(shakespeare[:100_000], vocab_size=400)


# ---------------------------------------------------------------- CharTokenizer

def test_char_round_trip_and_vocab():
    text = "hello, world!\nçà 大"
    tok = CharTokenizer.from_text(text)
    assert tok.chars == sorted(set(text))
    assert tok.vocab_size == len(set(text))
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
    assert tok.decode(np.array(ids)) == text
    assert tok.decode([]) == ""


def test_char_decodes_jax_arrays():
    jnp = pytest.importorskip("jax.numpy")
    tok = CharTokenizer.from_text("abc")
    assert tok.decode(jnp.array([2, 1, 0])) == "cba"


def test_char_unknown_character_error_names_it():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError) as e:
        tok.encode("abz😀")
    msg = str(e.value)
    assert "'z'" in msg and "U+007A" in msg
    assert "U+1F600" in msg
    assert "training text" in msg


def test_char_decode_out_of_range():
    tok = CharTokenizer.from_text("abc")
    for bad in ([3], [-1]):
        with pytest.raises(ValueError, match="out of range"):
            tok.decode(bad)


def test_char_save_load(tmp_path):
    tok = CharTokenizer.from_text("To be, or not to be — 是否")
    tok.save(tmp_path / "char.json")
    tok2 = CharTokenizer.load(tmp_path / "char.json")
    assert tok2.chars == tok.chars
    assert tok2.encode("be 是") == tok.encode("be 是")


# ---------------------------------------------------------------- BPETokenizer

def test_split_pattern_covers_everything():
    rng = random.Random(1)
    for s in TRICKY + [random_unicode(rng, 50) for _ in range(100)]:
        assert "".join(SPLIT_PATTERN.findall(s)) == s


def test_bpe_vocab_size_accounting():
    text = "the cat sat on the mat with the hat " * 20
    tok = BPETokenizer.train(text, vocab_size=270)
    assert tok.vocab_size == 270
    assert len(tok.merges) == 270 - 256
    assert [new_id for _, new_id in tok.merges] == list(range(256, 270))
    assert BPETokenizer.train(text, vocab_size=256).merges == []
    with pytest.raises(ValueError, match="256"):
        BPETokenizer.train(text, vocab_size=255)


def test_bpe_runs_out_of_pairs_with_a_warning():
    with pytest.warns(UserWarning, match="ran out of pairs"):
        tok = BPETokenizer.train("abab", vocab_size=300)
    assert tok.vocab_size < 300
    assert tok.decode(tok.encode("abab")) == "abab"


def test_bpe_first_merge_is_most_frequent_pair():
    tok = BPETokenizer.train("aaab aaab aaab", vocab_size=257)
    assert tok.merges == [((ord("a"), ord("a")), 256)]


def reference_bpe(text: str, n_merges: int) -> list[tuple[int, int]]:
    """Slow textbook BPE: recount every pair after every merge (same chunks, same tie-break)."""
    words = [list(c.encode("utf-8")) for c in SPLIT_PATTERN.findall(text)]
    merges = []
    for r in range(n_merges):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges.append(pair)
        new_words = []
        for w in words:
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and (w[i], w[i + 1]) == pair:
                    out.append(256 + r)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new_words.append(out)
        words = new_words
    return merges


def test_bpe_incremental_counts_match_full_recount(shakespeare):
    text = shakespeare[:5_000] + " aaaa aaaaa  bbbb\n\n\n 大大大大"  # runs test overlapping pairs
    tok = BPETokenizer.train(text, vocab_size=256 + 60)
    assert [p for p, _ in tok.merges] == reference_bpe(text, 60)


@pytest.mark.parametrize("s", TRICKY)
def test_bpe_round_trip_tricky(bpe, s):
    assert bpe.decode(bpe.encode(s)) == s


def test_bpe_round_trip_random_unicode(bpe):
    rng = random.Random(0)
    for _ in range(200):
        s = random_unicode(rng, rng.randint(0, 40))
        ids = bpe.encode(s)
        assert all(0 <= i < bpe.vocab_size for i in ids)
        assert bpe.decode(ids) == s


def test_bpe_trained_on_unicode_round_trips():
    rng = random.Random(2)
    text = " ".join(random_unicode(rng, 8) for _ in range(300)) + " 大规模语言模型" * 50
    tok = BPETokenizer.train(text, vocab_size=320)
    for s in TRICKY + [text[:500]]:
        assert tok.decode(tok.encode(s)) == s


def test_bpe_decode_bytes_and_partial_characters(bpe):
    ids = bpe.encode("模型")
    assert bpe.decode_bytes(ids) == "模型".encode()
    cut = "模".encode()[:2]  # half of a 3-byte character
    assert bpe.decode(list(cut)) == "\ufffd"
    assert b"".join(bpe.token_bytes(i) for i in ids) == "模型".encode()
    assert bpe.decode(np.array(ids, dtype=np.int32)) == "模型"
    with pytest.raises(ValueError, match="out of range"):
        bpe.decode([bpe.vocab_size])


def test_bpe_save_load_identical(tmp_path, bpe, shakespeare):
    path = tmp_path / "bpe.json"
    bpe.save(path)
    loaded = BPETokenizer.load(path)
    assert loaded.merges == bpe.merges
    sample = shakespeare[:20_000] + "".join(TRICKY)
    assert loaded.encode(sample) == bpe.encode(sample)
    assert json.loads(path.read_text())["kind"] == "BPETokenizer"


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not a valid tokenizer JSON"),
    ('{"kind": "CharTokenizer", "chars": ["a"]}', "does not hold a BPETokenizer"),
    ("[1, 2, 3]", "does not hold a BPETokenizer"),
    ('{"kind": "BPETokenizer", "merges": [[1, 300]]}', "malformed"),
    ('{"kind": "BPETokenizer", "merges": "abc"}', "malformed"),
])
def test_bpe_load_rejects_bad_files(tmp_path, content, problem):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem) as e:
        BPETokenizer.load(path)
    assert "broken.json" in str(e.value)


def test_char_load_rejects_bad_files(tmp_path):
    path = tmp_path / "bpe.json"
    BPETokenizer([]).save(path)
    with pytest.raises(ValueError, match="bpe.json"):
        CharTokenizer.load(path)


def test_bpe_training_is_deterministic(shakespeare):
    text = shakespeare[:30_000]
    a = BPETokenizer.train(text, vocab_size=300)
    b = BPETokenizer.train(text, vocab_size=300)
    assert a.merges == b.merges


def test_bpe_trains_on_100kb_slice(bpe, shakespeare):
    # Speed is measured by benchmarks/tokenizer_speed.py; here only check it finished and works.
    assert bpe.vocab_size == 400
    sample = shakespeare[:100_000]
    assert bpe.decode(bpe.encode(sample)) == sample


def test_compression_improves_with_vocab(shakespeare):
    train, held_out = shakespeare[:100_000], shakespeare[-20_000:]
    ratios = [compression_ratio(BPETokenizer.train(train, vocab_size=v), held_out)
              for v in (256, 300, 512)]
    assert ratios[0] == 1.0
    assert ratios[2] < ratios[1] < 1.0
    with pytest.raises(ValueError):
        compression_ratio(BPETokenizer([]), "")
