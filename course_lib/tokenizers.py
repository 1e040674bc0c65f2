"""Tokenizers: text -> list of integer ids -> text.

Two tokenizers, both with ``encode(str) -> list[int]``, ``decode(ids) -> str``, ``vocab_size``
and JSON ``save(path)`` / ``load(path)``:

- ``CharTokenizer``: one id per character seen in the training text. Tiny vocabulary, long
  sequences, and it cannot encode a character it has never seen.
- ``BPETokenizer``: byte-level byte-pair encoding in the spirit of GPT-2. It starts from the 256
  byte values, so it can encode *any* string, and learns merges of frequent neighbouring tokens.
"""

from __future__ import annotations

import heapq
import json
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable

import numpy as np

Pair = tuple[int, int]

# Pre-split text into chunks; BPE merges never cross a chunk boundary, so " the" can become one
# token but "e t" never does. Alternatives: letters with an optional leading space, digits,
# other symbols (punctuation, emoji, "_"), then whitespace. `\s+(?!\S)` leaves the last space of
# a run to the next word, so "  the" splits as " " + " the" and " the" stays one common chunk.
# Every character matches some alternative, so "".join(chunks) == text always.
SPLIT_PATTERN = re.compile(r" ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+")


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
    """Byte-level BPE: ids 0..255 are bytes; id 256 + r is the r-th learned merge."""

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
        self._merges = [(int(a), int(b)) for a, b in self._merges]
        self._ranks = {p: 256 + r for r, p in enumerate(self._merges)}  # pair -> new id
        self._vocab = [bytes([b]) for b in range(256)]  # id -> the bytes it stands for
        for a, b in self._merges:
            self._vocab.append(self._vocab[a] + self._vocab[b])
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
        return [(p, 256 + r) for r, p in enumerate(self._merges)]

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (may be part of a multi-byte character)."""
        return self._vocab[_as_id_list([token_id], self.vocab_size)[0]]

    def _encode_chunk(self, chunk: str) -> list[int]:
        ids = list(chunk.encode("utf-8"))
        while len(ids) >= 2:
            # Apply the earliest-learned merge present, as training did: lowest rank first.
            pair = min(zip(ids, ids[1:]), key=lambda p: self._ranks.get(p, float("inf")))
            if pair not in self._ranks:
                break
            ids = _merge(ids, pair, self._ranks[pair])
        return ids

    def encode(self, text: str) -> list[int]:
        """str -> list of ids. Repeated chunks (common words) are looked up in a cache."""
        _check_text(text, "BPETokenizer.encode")
        out: list[int] = []
        for chunk in SPLIT_PATTERN.findall(text):
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

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


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
