"""GPT-2's tokenizer files in the course's BPETokenizer: the byte alphabet, GPT-2's split pattern,
<|endoftext|>, writing and reading vocab.json / merges.txt, and clear errors for bad files.
(Parity with Hugging Face's tokenizers: tests_reference/test_gpt2_tokenizer_parity.py.)"""

import json
import random
import sys
import unicodedata

import pytest

from course_lib import data
from course_lib.tokenizers import (
    ENDOFTEXT,
    SPLIT_PATTERN,
    BPETokenizer,
    bytes_to_unicode,
    gpt2_split_pattern,
)


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return data.load_text("tinyshakespeare")


@pytest.fixture(scope="module")
def bpe(shakespeare) -> BPETokenizer:
    return BPETokenizer.train(shakespeare[:50_000] + " 大规模语言模型" * 20, vocab_size=400)


@pytest.fixture(scope="module")
def files(tmp_path_factory, bpe):
    return bpe.to_gpt2_files(tmp_path_factory.mktemp("gpt2tok"))


@pytest.fixture(scope="module")
def gpt2_tok(files) -> BPETokenizer:
    return BPETokenizer.from_gpt2_files(*files)


def assigned_unicode(rng: random.Random, n: int) -> str:
    """Random text from the characters this Python's Unicode tables assign, with extra spaces,
    tabs, newlines, apostrophes and contraction letters so that every branch of the pattern
    fires."""
    pick = " \t\n\r\x0b\x0c\x1c\x85\xa0\u3000'sdtmlrve  "
    out = []
    while len(out) < n:
        if rng.random() < 0.4:
            out.append(rng.choice(pick))
        else:
            c = chr(rng.randint(0, sys.maxunicode))
            if unicodedata.category(c) not in ("Cn", "Cs"):
                out.append(c)
    return "".join(out)


def test_byte_alphabet_is_gpt2s():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256  # one character per byte
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"
    assert all(c.isprintable() and not c.isspace() for c in table.values())


def test_gpt2_pattern_splits_like_gpt2():
    pattern = gpt2_split_pattern()
    assert pattern.findall("I'll call'd thee 4½ times:  ok") == [
        "I", "'ll", " call", "'d", " thee", " 4½", " times", ":", " ", " ok"]
    # \s is Unicode's White_Space: U+001C is a symbol (Python's own \s would call it space).
    # Only an ASCII space joins the next word; other spaces stand alone.
    assert pattern.findall("a \x1c b\u3000\u3000c") == ["a", " \x1c", " b", "\u3000", "\u3000",
                                                           "c"]
    assert pattern.findall("x  \n") == ["x", "  \n"]  # trailing whitespace stays together
    rng = random.Random(0)
    for _ in range(200):
        s = assigned_unicode(rng, rng.randint(0, 40))
        assert "".join(pattern.findall(s)) == s  # every character lands in exactly one chunk


def test_gpt2_pattern_differs_from_the_courses_only_where_it_should(shakespeare):
    text = shakespeare[:20_000]
    gpt2_chunks, course_chunks = gpt2_split_pattern().findall(text), SPLIT_PATTERN.findall(text)
    assert "".join(gpt2_chunks) == text
    assert "'d" in gpt2_chunks and "'d" not in course_chunks  # contractions kept whole
    without_apostrophes = text.replace("'", "")
    assert (gpt2_split_pattern().findall(without_apostrophes)
            == SPLIT_PATTERN.findall(without_apostrophes))


def test_files_round_trip_keeps_ids(bpe, gpt2_tok, shakespeare):
    assert gpt2_tok.vocab_size == bpe.vocab_size + 1  # + <|endoftext|>
    assert gpt2_tok.special_tokens == {ENDOFTEXT: bpe.vocab_size}
    assert gpt2_tok.merges == bpe.merges
    assert gpt2_tok.pattern is gpt2_split_pattern()
    # Where both patterns split alike (no apostrophes), the ids are the course tokenizer's.
    text = shakespeare[50_000:60_000].replace("'", "")
    assert gpt2_tok.encode(text) == bpe.encode(text)
    assert gpt2_tok.decode(gpt2_tok.encode(shakespeare[:5000])) == shakespeare[:5000]


def test_round_trip_any_unicode(gpt2_tok):
    rng = random.Random(1)
    for _ in range(200):
        s = assigned_unicode(rng, rng.randint(0, 40))
        assert gpt2_tok.decode(gpt2_tok.encode(s)) == s


def test_files_look_like_gpt2s(files, bpe):
    vocab_path, merges_path = files
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    assert vocab["Ġ"] == ord(" ") and vocab[ENDOFTEXT] == bpe.vocab_size
    lines = merges_path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2" and len(lines) == 1 + len(bpe.merges)
    (a, b), new_id = bpe.merges[0]
    enc = bytes_to_unicode()
    first = lines[1].split(" ")
    assert first == ["".join(enc[x] for x in bpe.token_bytes(t)) for t in (a, b)]
    assert vocab[first[0] + first[1]] == new_id


def test_gpt2_numbering_is_not_the_courses(tmp_path):
    """GPT-2's vocab.json numbers the bytes in its own order ('!' is id 0): ids follow the
    file, not the byte values."""
    enc = bytes_to_unicode()
    order = sorted(range(256), key=lambda b: ord(enc[b]))  # '!' .. then the shifted ones
    vocab = {enc[b]: i for i, b in enumerate(order)}
    vocab["hĠ"] = 256  # not a merge result: decodable, never produced by encode
    vocab["Ġt"], vocab["Ġth"], vocab[ENDOFTEXT] = 257, 258, 259
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\nĠt h\n", encoding="utf-8")
    tok = BPETokenizer.from_gpt2_files(tmp_path / "vocab.json", tmp_path / "merges.txt")
    assert tok.encode("!") == [0]
    assert tok.encode(" the") == [258, vocab["e"]]
    assert tok.decode([256, 258]) == "h  th"
    assert tok.encode("a<|endoftext|>b", allowed_special="all") == [vocab["a"], 259, vocab["b"]]
    assert tok.merges == [((vocab["Ġ"], vocab["t"]), 257), ((257, vocab["h"]), 258)]


def test_endoftext(gpt2_tok):
    eot = gpt2_tok.special_tokens[ENDOFTEXT]
    text = "First doc.<|endoftext|>Second doc."
    ids = gpt2_tok.encode(text, allowed_special="all")
    assert ids.count(eot) == 1 and gpt2_tok.decode(ids) == text
    assert gpt2_tok.encode(text, allowed_special=ENDOFTEXT) == ids
    assert gpt2_tok.encode(text, allowed_special={ENDOFTEXT}) == ids
    plain = gpt2_tok.encode(text)  # by default the marker is ordinary text
    assert eot not in plain and gpt2_tok.decode(plain) == text
    assert gpt2_tok.encode("<|endoftext|><|endoftext|>", allowed_special="all") == [eot, eot]
    with pytest.raises(ValueError, match="not special tokens.*<\\|endoftext\\|>"):
        gpt2_tok.encode(text, allowed_special={"<|im_start|>"})


def test_course_tokenizer_has_no_specials(bpe):
    assert bpe.special_tokens == {} and bpe.pattern is SPLIT_PATTERN
    assert bpe.encode("a<|endoftext|>", allowed_special="all") == bpe.encode("a<|endoftext|>")
    with pytest.raises(ValueError, match="not special tokens"):
        bpe.encode("a", allowed_special=ENDOFTEXT)


def test_gpt2_mode_cannot_be_saved_as_course_json(gpt2_tok, tmp_path):
    with pytest.raises(ValueError, match="to_gpt2_files"):
        gpt2_tok.save(tmp_path / "tok.json")
    vocab_path, merges_path = gpt2_tok.to_gpt2_files(tmp_path / "again")  # its own format works
    again = BPETokenizer.from_gpt2_files(vocab_path, merges_path)
    assert again.merges == gpt2_tok.merges and again.special_tokens == gpt2_tok.special_tokens
    assert again.vocab_size == gpt2_tok.vocab_size


def test_same_bytes_twice_cannot_be_written(tmp_path):
    # "abc" built as ab + c and as a + bc: vocab.json names tokens by their bytes.
    a, b, c = ord("a"), ord("b"), ord("c")
    tok = BPETokenizer([(a, b), (b, c), (256, c), (a, 257)])
    with pytest.raises(ValueError, match="Tokens 258 and 259 both stand for b'abc'"):
        tok.to_gpt2_files(tmp_path)


def _write(tmp_path, vocab, merges: str):
    (tmp_path / "vocab.json").write_text(
        vocab if isinstance(vocab, str) else json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text(merges, encoding="utf-8")
    return tmp_path / "vocab.json", tmp_path / "merges.txt"


def _byte_vocab() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


@pytest.mark.parametrize("vocab, merges, problem", [
    ("{not json", "", "not a valid vocab.json"),
    ({"a": 0, "b": 2}, "", "ids 0, 1, ..., n-1"),
    ({**_byte_vocab(), "Ġthe": 256}, "#version: 0.2\nĠ t h e\n", "line 2 .* two tokens"),
    ({**_byte_vocab(), "Ġt": 256}, "#version: 0.2\nĠ t\nĠt x2\n", "line 3: 'x2' is not a token"),
    ({"a": 0}, "", "lacks the tokens of 255 byte"),
    ({**_byte_vocab(), "中": 256}, "", "'中' .* not one of GPT-2's 256 byte characters"),
])
def test_bad_files_are_named(tmp_path, vocab, merges, problem):
    with pytest.raises(ValueError, match=problem):
        BPETokenizer.from_gpt2_files(*_write(tmp_path, vocab, merges))


def test_declared_special_token_outside_the_byte_alphabet(tmp_path):
    vocab_path, merges_path = _write(tmp_path, {**_byte_vocab(), "<pad>": 256}, "")
    tok = BPETokenizer.from_gpt2_files(vocab_path, merges_path, special_tokens=["<pad>"])
    assert tok.encode("x<pad>", allowed_special="all") == [ord("x"), 256]
