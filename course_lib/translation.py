"""The EN→ZH translation task of notebook 06a, for the encoder–decoder of ``course_lib.seq2seq``:
character vocabularies, the arrays the model trains on, its batches and loss for ``train.fit``,
and translating and scoring held-out sources.

The pairs themselves (English number words and dates with their Chinese) come from
``course_lib.numberwords``. Training goes through the course's one loop:

    data = translation.build_data(n_train=30_000, n_val=500, n_test=600)
    state = train.fit(model, data.train, data.val, cfg,
                      sample_batch=translation.random_batch, loss=translation.loss)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from course_lib.data import is_int
from course_lib.numberwords import EN_ALPHABET, ZH_ALPHABET, kind_of, longest, split_pairs
from course_lib.seq2seq import PAD, Seq2Seq, beam_search, greedy_decode, masked_loss

BOS, EOS = 1, 2  # PAD = 0 comes from seq2seq

# ---------------------------------------------------------------- vocabularies and arrays


@dataclass(frozen=True)
class CharVocab:
    """Characters <-> ids, with PAD = 0, BOS = 1, EOS = 2 reserved."""

    chars: tuple[str, ...]

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharVocab:
        return cls(tuple(sorted(set("".join(texts)))))

    @property
    def size(self) -> int:
        return len(self.chars) + 3

    @cached_property
    def _index(self) -> dict[str, int]:
        return {c: i + 3 for i, c in enumerate(self.chars)}

    def encode(self, text: str) -> list[int]:
        index = self._index
        unknown = sorted(set(text) - index.keys())
        if unknown:
            raise ValueError(f"Characters {unknown} are not in the vocabulary; build it from "
                             "texts that contain them (CharVocab.from_texts).")
        return [index[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; stops at the first EOS, skips PAD and BOS."""
        out = []
        for i in map(int, ids):
            if i == EOS:
                break
            if i >= 3:
                out.append(self.chars[i - 3])
        return "".join(out)


def encode_sources(vocab: CharVocab, texts: Sequence[str], length: int) -> np.ndarray:
    """Texts -> (N, length) int32 ids, padded with PAD at the end."""
    out = np.full((len(texts), length), PAD, np.int32)
    for i, t in enumerate(texts):
        ids = vocab.encode(t)
        if len(ids) > length:
            raise ValueError(f"{t!r} has {len(ids)} characters, more than length={length}.")
        out[i, : len(ids)] = ids
    return out


def encode_targets(vocab: CharVocab, texts: Sequence[str], length: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Texts -> decoder inputs and outputs, each (N, length - 1) int32:
    BOS t1 .. tn   (what the decoder reads)
    t1 .. tn EOS   (what it must predict), padded with PAD. ``length`` counts BOS and EOS."""
    full = np.full((len(texts), length), PAD, np.int32)
    for i, t in enumerate(texts):
        ids = [BOS, *vocab.encode(t), EOS]
        if len(ids) > length:
            raise ValueError(f"{t!r} needs {len(ids)} slots with BOS and EOS, more than "
                             f"length={length}.")
        full[i, : len(ids)] = ids
    return full[:, :-1], full[:, 1:]


class Arrays(NamedTuple):
    """One set of pairs as arrays (a pytree, so ``train.fit`` can take it as data)."""

    src: np.ndarray  # (N, src_len) source ids
    tgt_in: np.ndarray  # (N, tgt_len - 1) what the decoder reads: BOS, the target, PAD
    tgt_out: np.ndarray  # (N, tgt_len - 1) what it must predict: the target, EOS, PAD


@dataclass
class TranslationData:
    """Everything the notebook trains, validates and tests on: the pairs, the vocabularies, the
    array lengths, and (computed when first used) the arrays of the training and validation
    pairs, ``train`` and ``val``."""

    train_pairs: list[tuple[str, str]]
    val_pairs: list[tuple[str, str]]
    test_pairs: list[tuple[str, str]]
    src_vocab: CharVocab
    tgt_vocab: CharVocab
    src_len: int
    tgt_len: int  # BOS + characters + EOS

    def arrays(self, pairs: Sequence[tuple[str, str]]) -> Arrays:
        """(english, chinese) pairs -> Arrays, with this data's vocabularies and lengths."""
        tgt_in, tgt_out = encode_targets(self.tgt_vocab, [t for _, t in pairs], self.tgt_len)
        return Arrays(encode_sources(self.src_vocab, [s for s, _ in pairs], self.src_len),
                      tgt_in, tgt_out)

    @cached_property
    def train(self) -> Arrays:
        return self.arrays(self.train_pairs)

    @cached_property
    def val(self) -> Arrays:
        return self.arrays(self.val_pairs)


def build_data(n_train: int, n_val: int, n_test: int, seed: int = 0, *, max_digits: int = 6
               ) -> TranslationData:
    """Pairs (``numberwords.split_pairs``: no source in two sets) and vocabularies over every
    character the generator can produce, so any number or date can be encoded."""
    for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)):
        if not is_int(n) or n < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {n!r}.")
    train, val, test = split_pairs(n_train, n_val, n_test, seed, max_digits=max_digits)
    src_len, tgt_chars = longest(max_digits)
    return TranslationData(train, val, test, CharVocab.from_texts([EN_ALPHABET]),
                           CharVocab.from_texts([ZH_ALPHABET]), src_len, tgt_chars + 2)


# ---------------------------------------------------------------- batches and loss for train.fit


def random_batch(data: Arrays, batch_size: int, key: jax.Array):
    """``batch_size`` random pairs of ``data`` (drawn with replacement, on the device) as
    ``train.fit`` wants a batch: x = (src, tgt_in), the model's inputs, and y = tgt_out."""
    idx = jax.random.randint(key, (batch_size,), 0, data.src.shape[0])  # (B,)
    return (data.src[idx], data.tgt_in[idx]), data.tgt_out[idx]


def loss(model: Seq2Seq, x, y, rngs: nnx.Rngs | None = None) -> jax.Array:
    """Teacher forcing: the decoder reads BOS and the true target so far and predicts the next
    character; mean cross-entropy over the real (non-PAD) target positions."""
    src, tgt_in = x
    return masked_loss(model(src, tgt_in, rngs=rngs), y)


# ---------------------------------------------------------------- translating and scoring


def translate(model: Seq2Seq, data: TranslationData, sources: Sequence[str], *,
              beam_size: int | None = None, batch_size: int = 500) -> list[str]:
    """English sources -> Chinese strings, by greedy decoding (``beam_size=None``) or beam
    search. Sources go through in batches of one fixed size, so decoding compiles once.
    The model is put in eval mode."""
    model.eval()
    bs, out = min(batch_size, len(sources)), []
    for i in range(0, len(sources), bs):
        chunk = list(sources[i: i + bs])
        chunk += chunk[-1:] * (bs - len(chunk))  # pad the last batch to the same shape
        src = jnp.asarray(encode_sources(data.src_vocab, chunk, data.src_len))
        if beam_size is None:
            ids = greedy_decode(model, src, bos=BOS, max_len=data.tgt_len)
        else:
            ids, _ = beam_search(model, src, bos=BOS, eos=EOS, max_len=data.tgt_len,
                                 beam_size=beam_size)
        out += [data.tgt_vocab.decode(row[1:]) for row in np.asarray(ids)]
    return out[: len(sources)]


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of predictions equal to their reference, character for character."""
    if len(predictions) != len(references) or not references:
        raise ValueError(f"Need as many predictions as references (got {len(predictions)} and "
                         f"{len(references)}), and at least one.")
    return sum(p == r for p, r in zip(predictions, references)) / len(references)


def error_category(source: str, reference: str) -> str:
    """A coarse category for a failure table: dates, numbers with a 零, and the rest."""
    if kind_of(source) == "date":
        return "date"
    if "零" in reference:
        return "number with 零"
    return "number, no 零"
