"""A small EN→ZH translation task the course makes itself: English number words and dates into
Chinese, for the encoder–decoder of ``course_lib.seq2seq``.

    "four thousand and twenty-one"  ->  "四千零二十一"
    "March 5, 2024"                 ->  "2024年3月5日"

English numbers are written in the British style, with "and" before the last two digits
("one hundred and five", "two thousand and ten"). Chinese numbers follow the usual written rules:
a run of zeros inside a number is read as one 零 (1005 一千零五, 1050 一千零五十), trailing zeros
are silent, 10–19 at the start of a number drop the 一 (10 十, 15 十五, 100000 十万) but keep it
inside one (110 一百一十). Convention here: the digit 2 is always 二 (二百, 二千, 二万), as written
in arithmetic; speech often says 两千 / 两万, and a real translator should accept both.

Every pair comes from a seeded generator, so the data needs no download and no licence. The test
set is drawn first and the training set never contains one of its source strings.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property, partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from course_lib.seq2seq import PAD, Seq2Seq, beam_search, greedy_decode, masked_loss
from course_lib.train import TrainConfig
from course_lib.train import make_optimizer as train_optimizer

MAX_NUMBER = 999_999  # the converters cover 0 .. MAX_NUMBER

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
ZH_DIGITS = "零一二三四五六七八九"
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]


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


def kind_of(source: str) -> str:
    """'date' or 'number', read from an English source string."""
    return "date" if source.split(" ", 1)[0] in MONTHS else "number"


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


def split_pairs(n_train: int, n_test: int, seed: int = 0, *, max_digits: int = 6
                ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """A training set and a held-out test set whose source strings never occur in training.

    The test set is drawn first (unique sources), the training set after it without those
    sources (its pairs may repeat). Numbers below 100 are the building blocks every other
    number is made of, like the words of a dictionary: they stay in training, never in test."""
    blocks = {english_number(k) for k in range(100)}
    test = make_pairs(n_test, seed + 1, exclude=blocks, unique=True, max_digits=max_digits)
    test_sources = {s for s, _ in test}
    train = make_pairs(n_train, seed + 2, exclude=test_sources, max_digits=max_digits)
    assert not test_sources & {s for s, _ in train}, "train and test overlap"
    return train, test


# ---------------------------------------------------------------- vocabularies and arrays

BOS, EOS = 1, 2  # PAD = 0 comes from seq2seq


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


@dataclass
class TranslationData:
    """Everything the notebook trains and tests on, as numpy arrays."""

    train_pairs: list[tuple[str, str]]
    test_pairs: list[tuple[str, str]]
    src_vocab: CharVocab
    tgt_vocab: CharVocab
    src_len: int
    tgt_len: int  # BOS + characters + EOS
    src: np.ndarray  # (N, src_len) training sources
    tgt_in: np.ndarray  # (N, tgt_len - 1)
    tgt_out: np.ndarray  # (N, tgt_len - 1)


def build_data(n_train: int, n_test: int, seed: int = 0, *, max_digits: int = 6
               ) -> TranslationData:
    """Pairs, vocabularies (over every character the generator can produce) and arrays."""
    train, test = split_pairs(n_train, n_test, seed, max_digits=max_digits)
    # Vocabularies from the generator's whole alphabet, so any number or date can be encoded.
    src_vocab = CharVocab.from_texts(_ONES + _TENS + MONTHS + ["hundred thousand and", "-, 0123456789"])
    tgt_vocab = CharVocab.from_texts([ZH_DIGITS + "十百千万年月日0123456789"])
    widest = [int("7" * max_digits), int("2" + "1" * (max_digits - 1))]  # longest in words
    src_len = max(len("September 30, 2000"), *(len(english_number(n)) for n in widest))
    tgt_len = max(len("2000年12月30日"), *(len(chinese_number(n)) for n in widest)) + 2
    src = encode_sources(src_vocab, [s for s, _ in train], src_len)
    tgt_in, tgt_out = encode_targets(tgt_vocab, [t for _, t in train], tgt_len)
    return TranslationData(train, test, src_vocab, tgt_vocab, src_len, tgt_len, src, tgt_in,
                           tgt_out)


# ---------------------------------------------------------------- training


def make_optimizer(steps: int, lr: float = 2e-3, warmup: int = 100,
                   weight_decay: float = 0.01) -> optax.GradientTransformation:
    """The course's optimiser (``train.make_optimizer``: clipping at 1.0, then AdamW with linear
    warmup and a cosine decay to lr / 10, no decay on biases and norms), with beta2 0.98 as is
    usual for translation Transformers."""
    cfg = TrainConfig(steps=steps, lr=lr, min_lr=lr / 10, warmup_steps=warmup,
                      weight_decay=weight_decay, beta2=0.98, grad_clip=1.0)
    return train_optimizer(cfg)


@partial(jax.jit, static_argnames=("graphdef", "tx", "n_steps", "batch_size"))
def _train_chunk(graphdef, params, rest, opt_state, src, tgt_in, tgt_out, step0, key, *, tx,
                 n_steps, batch_size):
    """``n_steps`` AdamW steps in one compiled lax.scan; batches are sampled on the device."""

    def loss_of(params, s, ti, to):
        return masked_loss(nnx.merge(graphdef, params, rest)(s, ti), to)

    def one_step(carry, i):
        params, opt_state = carry
        idx = jax.random.randint(jax.random.fold_in(key, step0 + i), (batch_size,), 0,
                                 src.shape[0])  # (B,) random training pairs
        loss, grads = jax.value_and_grad(loss_of)(params, src[idx], tgt_in[idx], tgt_out[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    (params, opt_state), losses = jax.lax.scan(one_step, (params, opt_state),
                                               jnp.arange(n_steps))
    return params, opt_state, losses


def fit_translator(model: Seq2Seq, data: TranslationData, *, steps: int, batch_size: int = 64,
                   lr: float = 2e-3, warmup: int = 100, seed: int = 0, steps_per_call: int = 100,
                   callback: Callable[[int, list[float]], None] | None = None) -> list[float]:
    """Train ``model`` in place on ``data``'s training pairs; returns the loss of every step.

    The model, its weights and the optimiser state are split into plain pytrees
    (``nnx.split``) so one jitted function runs ``steps_per_call`` steps at a time; this works
    the same on flax 0.11 and 0.12. callback(step, losses) runs after each call."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}.")
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(steps, lr, warmup)
    opt_state = tx.init(params)
    arrays = [jnp.asarray(a) for a in (data.src, data.tgt_in, data.tgt_out)]
    key, losses, step = jax.random.PRNGKey(seed), [], 0
    while step < steps:
        n = min(steps_per_call, steps - step)
        params, opt_state, chunk = _train_chunk(graphdef, params, rest, opt_state, *arrays,
                                                jnp.int32(step), key, tx=tx, n_steps=n,
                                                batch_size=batch_size)
        losses.extend(np.asarray(chunk).tolist())
        step += n
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"The loss became {losses[-1]} at step {step}; try a lower "
                                     f"learning rate (now {lr}).")
        if callback is not None:
            callback(step, losses)
    nnx.update(model, params)
    model.eval()
    return losses


# ---------------------------------------------------------------- translating and scoring


def translate(model: Seq2Seq, data: TranslationData, sources: Sequence[str], *,
              beam_size: int | None = None, batch_size: int = 500) -> list[str]:
    """English sources -> Chinese strings, by greedy decoding (``beam_size=None``) or beam
    search. Sources go through in batches of one fixed size, so decoding compiles once."""
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


# ---------------------------------------------------------------- fonts for the figures


# Pinyin (with tone marks) of every Chinese character of the task: plot labels that any
# Latin font can draw, for machines without a Chinese font.
PINYIN = {"零": "líng", "一": "yī", "二": "èr", "三": "sān", "四": "sì", "五": "wǔ",
          "六": "liù", "七": "qī", "八": "bā", "九": "jiǔ", "十": "shí", "百": "bǎi",
          "千": "qiān", "万": "wàn", "年": "nián", "月": "yuè", "日": "rì"}


def cjk_font(text: str = ZH_DIGITS + "十百千万年月日") -> str | None:
    """The name of a font matplotlib can find that draws every character of ``text``, or None
    (then label plots with ``PINYIN`` instead of Chinese characters, never with tofu boxes)."""
    from fontTools.ttLib import TTFont
    from matplotlib import font_manager

    needed = {ord(c) for c in text}
    preferred = ("Noto Sans CJK", "Noto Sans SC", "Source Han Sans", "WenQuanYi", "SimHei",
                 "Microsoft YaHei", "PingFang", "Heiti", "Arial Unicode")
    fonts = sorted(font_manager.fontManager.ttflist,
                   key=lambda f: not any(f.name.startswith(p) for p in preferred))
    for font in fonts:
        if font.name.startswith("Last Resort"):  # draws every character as a box: no use
            continue
        try:
            with TTFont(font.fname, fontNumber=0, lazy=True) as tt:
                if needed <= set(tt.getBestCmap() or ()):
                    return font.name
        except Exception:  # noqa: BLE001 - an unreadable font file is simply skipped
            continue
    return None
