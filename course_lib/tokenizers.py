"""Tokenizers: text -> list of integer ids -> text.

Two tokenizers, both with ``encode(str) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``
and JSON ``save(path)`` / ``load(path)``:

- ``CharTokenizer``: one id per character seen in the training text. Tiny vocabulary, long
  sequences, and it cannot encode a character it has never seen.
- ``BPETokenizer``: byte-level byte-pair encoding in the spirit of GPT-2. It starts from the 256
  byte values, so it can encode *any* string, and learns merges of frequent neighbouring tokens.

GPT-2's own tokenizer is a ``BPETokenizer`` too: ``BPETokenizer.from_gpt2_files(vocab, merges)``
reads its ``vocab.json`` and ``merges.txt`` (GPT-2's ids, its exact pre-tokenisation pattern
``gpt2_split_pattern()`` and the special ``<|endoftext|>``), and ``to_gpt2_files(folder)`` writes
any BPETokenizer in that format, which Hugging Face's ``tokenizers`` reads.
"""

from __future__ import annotations

import functools
import heapq
import json
import os
import re
import sys
import unicodedata
import warnings
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

Pair = tuple[int, int]

# Pre-split text into chunks; BPE merges never cross a chunk boundary, so " the" can become one
# token but "e t" never does. Alternatives: letters with an optional leading space, digits,
# other symbols (punctuation, emoji, "_"), then whitespace. `\s+(?!\S)` leaves the last space of
# a run to the next word, so "  the" splits as " " + " the" and " the" stays one common chunk.
# Every character matches some alternative, so "".join(chunks) == text always.
SPLIT_PATTERN = re.compile(r" ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")

# GPT-2's pattern, as OpenAI wrote it for the third-party `regex` module (\p{L}: any letter,
# \p{N}: any number). gpt2_split_pattern() compiles the same pattern with the standard library.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"  # GPT-2's one special token: id 50256, between documents

# Unicode's White_Space property, the \s of the `regex` module and of Hugging Face's tokenizers.
# Python's own \s also matches the four separators U+001C..U+001F, so the pattern spells it out.
_WHITE_SPACE = r"\t\n\x0b\x0c\r\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"


def _category_class(prefix: str) -> str:
    """The inside of a [...] class matching every code point whose Unicode category starts with
    ``prefix`` ("L": letters, "N": numbers), as ranges: what \\p{L} and \\p{N} stand for."""
    ranges, start = [], None
    for cp in range(sys.maxunicode + 2):  # one past the end closes the last range
        inside = cp <= sys.maxunicode and unicodedata.category(chr(cp)).startswith(prefix)
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append(f"{re.escape(chr(start))}-{re.escape(chr(cp - 1))}")
            start = None
    return "".join(ranges)


@functools.cache
def gpt2_split_pattern() -> re.Pattern:
    """GPT-2's exact pre-tokenisation pattern (``GPT2_PATTERN``) for Python's ``re``.

    The standard library has no \\p{L} or \\p{N}, so they are spelled out as ranges of code
    points from ``unicodedata`` (the Unicode version of the running Python), and \\s as Unicode's
    White_Space. Built once, on first use (about half a second), then cached. Alternatives, in
    order: the English contractions 's 't 're 've 'm 'll 'd; letters, numbers and other symbols,
    each with an optional leading space; whitespace not followed by a non-space (so the last
    space of a run goes to the next word); any other whitespace.

    Which characters are letters depends on the Unicode version: a character that only a newer
    version assigns (e.g. CJK Extension H, Unicode 15, against Python 3.11's Unicode 14) is
    "other" here but a letter for a tokenizer with newer tables, such as Hugging Face's. Every
    character this Python knows splits exactly as GPT-2's pattern splits it."""
    letters, numbers, space = _category_class("L"), _category_class("N"), _WHITE_SPACE
    return re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{letters}]+| ?[{numbers}]+"
                      rf"| ?[^{space}{letters}{numbers}]+|[{space}]+(?![^{space}])|[{space}]+")


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from the 256 byte values to printable characters, used to write byte
    strings as text in ``vocab.json`` and ``merges.txt``: the printable Latin-1 bytes stand for
    themselves, the others (control codes, space, ...) for the characters from U+0100 on, so
    the space byte is written 'Ġ' and the newline 'Ċ'."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, shift = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def _as_id_list(ids: Iterable[int] | np.ndarray, vocab_size: int) -> list[int]:
    """A 1-D list, numpy array or jax array of ids -> list of Python ints, range-checked."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return []
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"decode expects a 1-D sequence of integer ids, got shape {arr.shape} of {arr.dtype}"
        )
    bad = arr[(arr < 0) | (arr >= vocab_size)]
    if bad.size:
        raise ValueError(
            f"token id {int(bad[0])} is out of range: this tokenizer's ids are 0..{vocab_size - 1}"
        )
    return arr.tolist()


def _check_text(text, where: str) -> None:
    if not isinstance(text, str):
        hint = " (bytes: decode them first, e.g. data.decode('utf-8'))" if isinstance(
            text, (bytes, bytearray)) else ""
        raise TypeError(f"{where} expects a str, got {type(text).__name__}{hint}.")


def _read_json(path: str | os.PathLike, kind: str) -> dict:
    """Read a saved tokenizer file, raising ValueError that names the file if it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{os.fspath(path)!r} is not a valid tokenizer JSON file: {e}") from None
    found = obj.get("kind") if isinstance(obj, dict) else type(obj).__name__
    if found != kind:
        raise ValueError(f"{os.fspath(path)!r} does not hold a {kind} (found kind {found!r})")
    return obj


class CharTokenizer:
    """Character-level tokenizer: id i <-> ``chars[i]``, the sorted characters of the text."""

    def __init__(self, chars: list[str]):
        single = all(isinstance(c, str) and len(c) == 1 for c in chars)
        if not single or len(set(chars)) != len(chars):
            raise ValueError("chars must be a list of distinct single characters")
        self.chars = list(chars)
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Build the vocabulary from every distinct character in ``text``."""
        _check_text(text, "CharTokenizer.from_text")
        if not text:
            raise ValueError("CharTokenizer.from_text needs a non-empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """str -> list of ids, one per character."""
        _check_text(text, "CharTokenizer.encode")
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            unknown = sorted(set(text) - self.stoi.keys())
            names = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise ValueError(
                f"CharTokenizer cannot encode {names}{more}: it only knows the "
                f"{self.vocab_size} characters seen in its training text. Build the tokenizer "
                "with CharTokenizer.from_text(...) from a text that includes them."
            ) from None

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """List / numpy / jax array of ids -> str."""
        return "".join(self.chars[i] for i in _as_id_list(ids, self.vocab_size))

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"kind": "CharTokenizer", "version": 1, "chars": self.chars}, f,
                      ensure_ascii=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        obj = _read_json(path, "CharTokenizer")
        try:
            return cls(obj["chars"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{os.fspath(path)!r} holds a malformed CharTokenizer: {e}") from None

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def _merge(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of ``pair`` in ``ids`` (left to right)."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


class BPETokenizer:
    """Byte-level BPE: ids 0..255 are bytes; id 256 + r is the r-th learned merge.

    A tokenizer read from GPT-2's files (``from_gpt2_files``) works the same way with GPT-2's
    numbering (its vocab.json gives each byte and each merged token an id), GPT-2's split
    pattern and special tokens such as ``<|endoftext|>``."""

    _CACHE_LIMIT = 100_000  # distinct chunks remembered by encode

    def __init__(self, merges: list[Pair]):
        self._merges = [tuple(p) for p in merges]
        for r, pair in enumerate(self._merges):
            # Each merge may only join bytes or tokens made by earlier merges.
            ok = len(pair) == 2 and all(isinstance(x, (int, np.integer)) and not isinstance(
                x, bool) and 0 <= x < 256 + r for x in pair)
            if not ok:
                raise ValueError(f"merge {r} is {pair!r}: each merge must be a pair of ids, each "
                                 f"a byte (0..255) or a token of an earlier merge (< {256 + r})")
        merges = [(int(a), int(b)) for a, b in self._merges]
        vocab = [bytes([b]) for b in range(256)]  # id -> the bytes it stands for
        for a, b in merges:
            vocab.append(vocab[a] + vocab[b])
        self._setup(merges, [256 + r for r in range(len(merges))], vocab)

    def _setup(self, merges: list[Pair], merged_ids: list[int], vocab: list[bytes],
               byte_ids: list[int] | None = None, pattern: re.Pattern = SPLIT_PATTERN,
               specials: dict[str, int] | None = None) -> None:
        """The tables encode and decode use. merges[r] = (a, b) becomes token merged_ids[r];
        vocab[i] = the bytes of token i; byte_ids[b] = the id of byte b (None: b itself);
        specials: text -> id of tokens such as <|endoftext|>, never produced by merges."""
        self._merges = merges
        self._ranks = {p: r for r, p in enumerate(merges)}  # pair -> priority, earliest first
        self._merged_ids = list(merged_ids)
        self._merged = dict(zip(merges, merged_ids))  # pair -> the id of the merged token
        self._vocab = vocab
        self._byte_ids = byte_ids
        self._pattern = pattern
        self._specials = dict(specials or {})
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def train(cls, text: str, vocab_size: int, *, verbose: bool = False) -> BPETokenizer:
        """Learn ``vocab_size - 256`` merges from ``text`` (``vocab_size`` counts the 256 bytes).

        Identical chunks are counted once with a multiplicity, and after each merge only the
        chunks that contain the merged pair are updated, so training takes seconds, not hours.
        """
        _check_text(text, "BPETokenizer.train")
        integer = isinstance(vocab_size, (int, np.integer)) and not isinstance(vocab_size, bool)
        if not integer or vocab_size < 256:
            raise ValueError(f"vocab_size must be an integer >= 256 (the 256 byte tokens plus "
                             f"one per merge to learn), got {vocab_size!r}")
        if not text:
            raise ValueError("BPETokenizer.train needs a non-empty text to learn merges from")
        chunk_counts = Counter(SPLIT_PATTERN.findall(text))
        words = [list(chunk.encode("utf-8")) for chunk in chunk_counts]  # each chunk as ids
        freqs = list(chunk_counts.values())
        pair_counts: Counter[Pair] = Counter()  # pair -> occurrences in the whole text
        where: dict[Pair, set[int]] = {}  # pair -> indices of the words that contain it
        for w, (word, freq) in enumerate(zip(words, freqs)):
            for pair in zip(word, word[1:]):
                pair_counts[pair] += freq
                where.setdefault(pair, set()).add(w)
        # Max-heap via negated counts; ties go to the smallest pair, so training is reproducible.
        # Entries go stale when a count changes; we skip those when they surface.
        heap = [(-n, pair) for pair, n in pair_counts.items()]
        heapq.heapify(heap)
        merges: list[Pair] = []
        vocab = [bytes([b]) for b in range(256)]  # only for verbose printing
        n_merges = int(vocab_size) - 256
        while len(merges) < n_merges:
            while heap and -heap[0][0] != pair_counts.get(heap[0][1], 0):
                heapq.heappop(heap)  # stale entry
            if not heap:
                warnings.warn(f"text ran out of pairs after {len(merges)} merges; "
                              f"vocab_size is {256 + len(merges)}, not {vocab_size}", stacklevel=2)
                break
            neg_count, pair = heapq.heappop(heap)
            new_id = 256 + len(merges)
            merges.append(pair)
            vocab.append(vocab[pair[0]] + vocab[pair[1]])
            # Only the words that contain `pair` change: take their old pairs out of the counts
            # and put their new pairs in. Every other word's pairs are untouched.
            changed = set()
            for w in where.pop(pair):
                old, freq = words[w], freqs[w]
                new = words[w] = _merge(old, pair, new_id)
                old_pairs, new_pairs = list(zip(old, old[1:])), list(zip(new, new[1:]))
                for p in old_pairs:
                    pair_counts[p] -= freq
                for p in new_pairs:
                    pair_counts[p] += freq
                    where.setdefault(p, set()).add(w)
                for p in set(old_pairs) - set(new_pairs) - {pair}:
                    where[p].discard(w)
                changed.update(old_pairs, new_pairs)
            del pair_counts[pair]
            for p in changed - {pair}:
                if pair_counts[p] > 0:
                    heapq.heappush(heap, (-pair_counts[p], p))
                else:  # forget pairs that no longer occur anywhere
                    del pair_counts[p]
                    where.pop(p, None)
            if verbose and (len(merges) <= 10 or len(merges) % max(1, n_merges // 10) == 0):
                a, b = pair
                print(f"merge {len(merges)}/{n_merges}: {vocab[a]!r} + {vocab[b]!r} -> "
                      f"{new_id} {vocab[new_id]!r} (seen {-neg_count} times)")
        return cls(merges)

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def merges(self) -> list[tuple[Pair, int]]:
        """The learned merges in order, as ``((a, b), new_id)``."""
        return list(zip(self._merges, self._merged_ids))

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special tokens (text -> id), e.g. ``{"<|endoftext|>": 50256}`` for GPT-2; none for a
        tokenizer the course trains."""
        return dict(self._specials)

    @property
    def pattern(self) -> re.Pattern:
        """The pre-tokenisation pattern: ``SPLIT_PATTERN``, or GPT-2's for its own files."""
        return self._pattern

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (may be part of a multi-byte character)."""
        return self._vocab[_as_id_list([token_id], self.vocab_size)[0]]

    def _encode_chunk(self, chunk: str) -> list[int]:
        data = chunk.encode("utf-8")
        ids = list(data) if self._byte_ids is None else [self._byte_ids[b] for b in data]
        ranks = self._ranks
        while len(ids) >= 2:
            # Apply the earliest-learned merge present, as training did: lowest rank first.
            pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float("inf")))
            if pair not in ranks:
                break
            ids = _merge(ids, pair, self._merged[pair])
        return ids

    def _allowed_specials(self, allowed) -> dict[str, int]:
        """The special tokens ``encode`` may produce: none, "all", one text or a collection."""
        if allowed == "all":
            return self._specials
        allowed = {allowed} if isinstance(allowed, str) else set(allowed or ())
        unknown = sorted(allowed - self._specials.keys())
        if unknown:
            raise ValueError(f"{unknown} not special tokens of this tokenizer; its special tokens "
                             f"are {sorted(self._specials)} (allowed_special='all' allows them "
                             "all).")
        return {t: self._specials[t] for t in allowed}

    def encode(self, text: str, *, allowed_special=()) -> list[int]:
        """str -> list of ids. Repeated chunks (common words) are looked up in a cache.

        allowed_special: special tokens to recognise in the text, each as its one id: "all",
        one token ("<|endoftext|>") or a collection of them. By default none: the text
        "<|endoftext|>" is then ordinary text, so a document cannot fake a special token."""
        _check_text(text, "BPETokenizer.encode")
        specials = self._allowed_specials(allowed_special)
        if not specials:
            return self._encode_ordinary(text)
        longest_first = sorted(specials, key=len, reverse=True)
        out: list[int] = []
        start = 0
        for m in re.finditer("|".join(map(re.escape, longest_first)), text):
            out.extend(self._encode_ordinary(text[start:m.start()]))
            out.append(specials[m.group()])
            start = m.end()
        out.extend(self._encode_ordinary(text[start:]))
        return out

    def _encode_ordinary(self, text: str) -> list[int]:
        out: list[int] = []
        for chunk in self._pattern.findall(text):
            ids = self._cache.get(chunk)
            if ids is None:
                if len(self._cache) >= self._CACHE_LIMIT:
                    self._cache.clear()
                ids = self._cache[chunk] = self._encode_chunk(chunk)
            out.extend(ids)
        return out

    def decode_bytes(self, ids: Iterable[int] | np.ndarray) -> bytes:
        """List / numpy / jax array of ids -> the raw bytes they stand for."""
        return b"".join(self._vocab[i] for i in _as_id_list(ids, self.vocab_size))

    def decode(self, ids: Iterable[int] | np.ndarray) -> str:
        """ids -> str. A cut-off multi-byte character becomes U+FFFD instead of crashing."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def save(self, path: str | os.PathLike) -> None:
        """Save as JSON; the merges alone determine the vocabulary."""
        if self._byte_ids is not None or self._specials or self._pattern is not SPLIT_PATTERN:
            raise ValueError("This tokenizer was read from GPT-2's files (its own ids, split "
                             "pattern and special tokens), which the course's JSON format does "
                             "not hold: save it with to_gpt2_files(folder).")
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"kind": "BPETokenizer", "version": 1,
                       "merges": [list(p) for p in self._merges]}, f)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        obj = _read_json(path, "BPETokenizer")
        merges = obj.get("merges")
        # Each merge may only refer to bytes or to tokens made by earlier merges.
        ok = isinstance(merges, list) and all(
            isinstance(m, list) and len(m) == 2
            and all(type(x) is int and 0 <= x < 256 + r for x in m)
            for r, m in enumerate(merges)
        )
        if not ok:
            raise ValueError(f"{os.fspath(path)!r} holds a malformed BPETokenizer: 'merges' must "
                             "be a list of [a, b] id pairs, each made of earlier ids")
        return cls([tuple(m) for m in merges])

    # --- GPT-2's file format: vocab.json (token text -> id) and merges.txt (one merge a line) ---
    @classmethod
    def from_gpt2_files(cls, vocab_path: str | os.PathLike, merges_path: str | os.PathLike, *,
                        special_tokens: Iterable[str] = (ENDOFTEXT,)) -> BPETokenizer:
        """GPT-2's tokenizer from its ``vocab.json`` and ``merges.txt`` (or any byte-level BPE
        saved in that format, e.g. by ``to_gpt2_files``).

        Tokens are written with GPT-2's byte alphabet (``bytes_to_unicode``: a space is 'Ġ').
        ``merges.txt`` lists the merges, earliest first, as two token texts a line, after a
        "#version" line. The tokenizer splits text with GPT-2's own pattern
        (``gpt2_split_pattern``), and the vocabulary's entries named in ``special_tokens`` become
        special tokens (``encode(text, allowed_special="all")``)."""
        vocab = _read_gpt2_vocab(vocab_path)
        special_tokens = _token_names(special_tokens)
        decoder = {c: b for b, c in bytes_to_unicode().items()}
        id_bytes: list[bytes] = [b""] * len(vocab)
        specials = {}
        for token, i in vocab.items():
            if token in special_tokens:
                specials[token] = i
                id_bytes[i] = token.encode("utf-8")
                continue
            bad = [c for c in token if c not in decoder]
            if bad:
                raise ValueError(
                    f"{os.fspath(vocab_path)!r}: token {token!r} (id {i}) holds {bad[0]!r}, not one "
                    "of GPT-2's 256 byte characters: this is not a byte-level BPE vocabulary, or "
                    f"the token is a special one (name it in special_tokens=...).")
            id_bytes[i] = bytes(decoder[c] for c in token)
        encoder = bytes_to_unicode()
        missing = [b for b in range(256) if encoder[b] not in vocab]
        if missing:
            raise ValueError(f"{os.fspath(vocab_path)!r} lacks the tokens of {len(missing)} byte "
                             f"value(s), e.g. byte {missing[0]} ({encoder[missing[0]]!r}): a "
                             "byte-level BPE vocabulary holds all 256, so any text can be encoded.")
        byte_ids = [vocab[encoder[b]] for b in range(256)]
        merges, merged_ids = [], []
        for line_no, a, b in _read_gpt2_merges(merges_path):
            for token in (a, b, a + b):
                if token not in vocab or token in specials:
                    raise ValueError(
                        f"{os.fspath(merges_path)!r} line {line_no}: {token!r} is not a token of "
                        f"{os.fspath(vocab_path)!r}. The two files must come from the same "
                        "tokenizer.")
            merges.append((vocab[a], vocab[b]))
            merged_ids.append(vocab[a + b])
        tok = cls.__new__(cls)
        tok._setup(merges, merged_ids, id_bytes, byte_ids, gpt2_split_pattern(), specials)
        return tok

    def to_gpt2_files(self, folder: str | os.PathLike, *,
                      special_tokens: Iterable[str] = (ENDOFTEXT,)) -> tuple[Path, Path]:
        """Write ``vocab.json`` and ``merges.txt`` in GPT-2's format into ``folder`` (created if
        needed); returns their paths. Ids are kept; each name in ``special_tokens`` that is not
        already a special token gets the next free id. Hugging Face's ``tokenizers`` and
        ``from_gpt2_files`` read the files (both then split text with GPT-2's pattern)."""
        encoder = bytes_to_unicode()
        special_ids = {i: t for t, i in self._specials.items()}

        def text_of(i: int) -> str:
            return special_ids.get(i) or "".join(encoder[b] for b in self._vocab[i])

        vocab: dict[str, int] = {}
        for i in range(self.vocab_size):
            token = text_of(i)
            if token in vocab:
                raise ValueError(
                    f"Tokens {vocab[token]} and {i} both stand for {self._vocab[i]!r}: GPT-2's "
                    "vocab.json names each token by its bytes, so it cannot hold both (two merge "
                    "orders built the same bytes). This tokenizer cannot be saved in GPT-2's "
                    "format; train it with another vocab_size.")
            vocab[token] = i
        for token in _token_names(special_tokens):
            if token not in self._specials:
                if token in vocab:
                    raise ValueError(f"The special token {token!r} is also an ordinary token "
                                     f"(id {vocab[token]}) of this tokenizer: pass other "
                                     "special_tokens.")
                vocab[token] = len(vocab)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
        with open(vocab_path, "w", encoding="utf-8") as f:
            json.dump(vocab, f, ensure_ascii=False)
        with open(merges_path, "w", encoding="utf-8", newline="\n") as f:
            f.write("#version: 0.2\n")
            f.writelines(f"{text_of(a)} {text_of(b)}\n" for a, b in self._merges)
        return vocab_path, merges_path

    def __repr__(self) -> str:
        specials = f", special_tokens={sorted(self._specials)}" if self._specials else ""
        return f"BPETokenizer(vocab_size={self.vocab_size}{specials})"


def _token_names(tokens: str | Iterable[str]) -> list[str]:
    """One special token's text, or several, as a list (a lone str is one token, not letters)."""
    return [tokens] if isinstance(tokens, str) else list(dict.fromkeys(tokens))


def _read_gpt2_vocab(path: str | os.PathLike) -> dict[str, int]:
    """vocab.json -> {token text: id}, checked: ids are exactly 0..n-1."""
    try:
        with open(path, encoding="utf-8") as f:
            vocab = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{os.fspath(path)!r} is not a valid vocab.json (JSON): {e}") from None
    ok = isinstance(vocab, dict) and all(type(i) is int for i in vocab.values())
    if not ok or sorted(vocab.values()) != list(range(len(vocab))):
        raise ValueError(f"{os.fspath(path)!r} is not a GPT-2 vocab.json: it must map each token "
                         "text to its id, with the ids 0, 1, ..., n-1 each used once.")
    return vocab


def _read_gpt2_merges(path: str | os.PathLike) -> list[tuple[int, str, str]]:
    """merges.txt -> [(line number, a, b)], skipping the "#version" line and empty lines."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line or (line_no == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"{os.fspath(path)!r} line {line_no} is {line!r}: each line of "
                                 "merges.txt must hold two tokens separated by one space.")
            out.append((line_no, parts[0], parts[1]))
    return out


def compression_ratio(tokenizer: CharTokenizer | BPETokenizer, text: str) -> float:
    """Tokens per UTF-8 byte of ``text``: 1.0 for raw bytes, lower means better compression."""
    n_bytes = len(text.encode("utf-8"))
    if n_bytes == 0:
        raise ValueError("compression_ratio needs a non-empty text")
    return len(tokenizer.encode(text)) / n_bytes


# ---------------------------------------------------------------- the two steps of BPE training
# The reference solutions of notebook 02's BPE exercises (checked by checks.check_count_pairs and
# checks.check_merge); BPETokenizer.train does the same work incrementally.


def count_pairs(ids: list[int]) -> dict[Pair, int]:
    """How often each pair of neighbours ``(ids[i], ids[i + 1])`` occurs, overlaps included.

    ``[97, 97, 97]`` ("aaa") -> ``{(97, 97): 2}``: the pair starts at positions 0 and 1.
    """
    counts: dict[Pair, int] = {}
    for pair in zip(ids, ids[1:]):  # (ids[i], ids[i + 1]) for i in 0 .. len(ids) - 2
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """A new list with every occurrence of ``pair`` replaced by ``new_id``, scanning left to
    right and never reusing a token that was just merged: ``merge([a, a, a], (a, a), X)`` is
    ``[X, a]``. The input list is not modified. (The function BPETokenizer uses.)"""
    return _merge(list(ids), tuple(pair), new_id)
