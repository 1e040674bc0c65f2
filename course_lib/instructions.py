"""The instruction and preference data the course makes itself, for notebook 06c, and the chat
template that turns a text completer into something that answers.

- **Tasks** a small character model can learn on a CPU: reverse a word, write it in capitals,
  count its letters, and name the capital of a made-up country from a fact stated in the
  prompt. Each task has several **phrasings**; the last one is held out of training, to test
  whether the model learned the task or the wording.
- **Held-out items**: the words and facts of the test sets never occur in the training set.
- **The chat template**: ``<|user|>prompt<|end|><|assistant|>response<|end|>``, each special
  token one id (``ChatTokenizer``: the pretrained model's characters, then any new characters,
  then the special tokens, so a model grown with ``finetune.grow_vocab`` keeps its old ids).
- **Arrays** for ``train.fit``: each example as token ids with a mask of the tokens that count
  in the loss (``encode_examples``, ``pack_examples``: the response only, or every token);
  preference pairs with the right answer (chosen) and a wrong one (rejected): a model's own
  wrong answer or a typical near miss (``preference_pairs``, ``encode_pairs``).
- **Scoring**: ``exact_match`` (does greedy decoding produce exactly the answer?) and
  ``complete`` (greedy decoding itself, to read the answers).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from course_lib.data import in_batches, is_int
from course_lib.finetune import masked_scores
from course_lib.model import check_ids

USER, ASSISTANT, END = "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = (USER, ASSISTANT, END)

# ---------------------------------------------------------------- tasks and phrasings

# Every task's phrasings; the last one of each is held out of training. ``{w}`` is a word;
# ``{fact}`` a stated fact ("Velor's capital is Quenby.") and ``{x}`` its country.
PHRASINGS = {
    "reverse": ("Reverse the word {w}.", "Spell {w} backwards.", "Write {w} in reverse.",
                "Write the word {w} backwards."),
    "upper": ("Write {w} in capitals.", "Upper-case the word {w}.", "Make {w} upper case.",
              "Put {w} in upper case."),
    "count": ("How many letters are in {w}?", "Count the letters of {w}.",
              "Number of letters in {w}?", "How many letters does {w} have?"),
    "capital": ("{fact} What is {x}'s capital?", "{fact} Name the capital of {x}.",
                "{fact} Capital of {x}?", "{fact} Which is {x}'s capital?"),
}
TASKS = tuple(PHRASINGS)
WORD_TASKS = ("reverse", "upper", "count")


def fact_sentence(country: str, capital: str) -> str:
    """The statement of a made-up fact: 'Velor's capital is Quenby.'"""
    return f"{country}'s capital is {capital}."


def capital_question(country: str) -> str:
    """The question about it: 'What is Velor's capital?'"""
    return f"What is {country}'s capital?"


def answer(task: str, item) -> str:
    """The right answer: item is a word (lower-case letters) or a (country, capital) pair."""
    if task == "reverse":
        return item[::-1]
    if task == "upper":
        return item.upper()
    if task == "count":
        return str(len(item))
    if task == "capital":
        return item[1]
    raise ValueError(f"Unknown task {task!r}; the tasks are {TASKS}.")


def typical_mistake(task: str, item, rng: np.random.Generator) -> str:
    """A typical wrong answer, the rejected half of a preference pair: a near miss of the kind
    a small model makes. The word not reversed; in capitals but for one letter; a count off by
    one; the capital with one letter (not the first) dropped."""
    if task == "reverse":
        return item
    if task == "upper":
        i = int(rng.integers(len(item)))
        return item[:i].upper() + item[i] + item[i + 1:].upper()
    if task == "count":
        n = len(item)
        return str(n + 1 if n <= 1 or rng.random() < 0.5 else n - 1)
    if task == "capital":
        capital = item[1]
        if len(capital) < 2:
            return item[0]  # nothing to drop: the country instead of its capital
        i = int(rng.integers(1, len(capital)))
        return capital[:i] + capital[i + 1:]
    raise ValueError(f"Unknown task {task!r}; the tasks are {TASKS}.")


@dataclass(frozen=True)
class Example:
    """One instruction: the task, the user's prompt, the right response, and the word or
    (country, capital) pair it was made from."""

    task: str
    prompt: str
    response: str
    item: str | tuple[str, str] = ""


def make_example(task: str, item, phrasing: int) -> Example:
    """The example of ``task`` for one word (or (country, capital) pair) in one phrasing."""
    if task not in PHRASINGS:
        raise ValueError(f"Unknown task {task!r}; the tasks are {TASKS}.")
    template = PHRASINGS[task][phrasing]
    if task == "capital":
        country, capital = item
        prompt = template.format(fact=fact_sentence(country, capital), x=country)
    else:
        prompt = template.format(w=item)
    return Example(task, prompt, answer(task, item), item if task != "capital" else tuple(item))


def words_from_text(text: str, min_len: int = 3, max_len: int = 7) -> list[str]:
    """The distinct lower-case words of ``text`` with min_len..max_len letters, sorted."""
    if not (is_int(min_len) and is_int(max_len) and 1 <= min_len <= max_len):
        raise ValueError(f"need 1 <= min_len <= max_len, got {min_len} and {max_len}.")
    found = set(re.findall(r"(?<![A-Za-z'])[a-z]+(?![A-Za-z'])", text))
    return sorted(w for w in found if min_len <= len(w) <= max_len)


def build_splits(words: Sequence[str], facts: Sequence[tuple[str, str]], *, n_test: int,
                 seed: int = 0, tasks: Sequence[str] = TASKS) -> dict[str, list[Example]]:
    """Training and test instructions, with nothing shared between them but the tasks.

    words and facts are shuffled (seeded); ``n_test`` of each are held out and the rest train.
    Returns three lists of examples:
    - ``"train"``: every training word in each word task and every training fact in the
      capital task, each in a random phrasing other than the held-out last one, shuffled;
    - ``"held-out words"``: n_test unseen words (and facts) per task, in the training phrasings;
    - ``"held-out phrasings"``: the same unseen words and facts, in each task's held-out
      phrasing.
    """
    unknown = [t for t in tasks if t not in PHRASINGS]
    if unknown:
        raise ValueError(f"Unknown tasks {unknown}; the tasks are {TASKS}.")
    if not is_int(n_test) or n_test < 1:
        raise ValueError(f"n_test must be a positive integer, got {n_test!r}.")
    rng = np.random.default_rng(seed)
    words = [words[i] for i in rng.permutation(len(words))]
    facts = [tuple(facts[i]) for i in rng.permutation(len(facts))]
    pools = {t: (facts if t == "capital" else words) for t in tasks}
    for t, pool in pools.items():
        if len(pool) < 2 * n_test:
            raise ValueError(f"{len(pool)} {'facts' if t == 'capital' else 'words'} are too "
                             f"few to hold out n_test={n_test} and train on the rest.")
    splits = {"train": [], "held-out words": [], "held-out phrasings": []}
    for t in tasks:
        pool, last = pools[t], len(PHRASINGS[t]) - 1
        for item in pool[n_test:]:
            splits["train"].append(make_example(t, item, int(rng.integers(last))))
        for item in pool[:n_test]:
            splits["held-out words"].append(make_example(t, item, int(rng.integers(last))))
            splits["held-out phrasings"].append(make_example(t, item, last))
    order = rng.permutation(len(splits["train"]))
    splits["train"] = [splits["train"][i] for i in order]
    return splits


# ---------------------------------------------------------------- the chat template


def chat_text(prompt: str, response: str | None = None) -> str:
    """The template: '<|user|>prompt<|end|><|assistant|>' and, given the response, the
    response and a closing '<|end|>' (the token that tells the model to stop)."""
    text = f"{USER}{prompt}{END}{ASSISTANT}"
    return text if response is None else f"{text}{response}{END}"


class ChatTokenizer:
    """Characters plus special tokens: ids 0..len(chars)-1 are the characters (the pretrained
    tokenizer's first, in its order, then the new ones), the special tokens come last, one id
    each. ``encode`` reads a special token's text ('<|end|>') as its single id."""

    def __init__(self, chars: Sequence[str], specials: Sequence[str] = SPECIAL_TOKENS):
        chars = list(chars)
        if not all(isinstance(c, str) and len(c) == 1 for c in chars) or len(set(chars)) != len(
                chars):
            raise ValueError("chars must be distinct single characters.")
        if not specials or len(set(specials)) != len(specials) or any(
                len(s) < 2 for s in specials):
            raise ValueError("specials must be distinct strings of two or more characters.")
        self.chars, self.specials = chars, tuple(specials)
        self.stoi = {c: i for i, c in enumerate(chars)}
        self.special_ids = {s: len(chars) + i for i, s in enumerate(self.specials)}
        self._split = re.compile("(" + "|".join(map(re.escape, self.specials)) + ")")

    @classmethod
    def extend(cls, base, texts: Iterable[str] = (),
               specials: Sequence[str] = SPECIAL_TOKENS) -> ChatTokenizer:
        """The characters of ``base`` (a ``CharTokenizer``, same ids), then every other
        character of ``texts`` (sorted), then the special tokens."""
        split = re.compile("|".join(map(re.escape, specials)))
        seen = set("".join(split.sub("", t) for t in texts))
        return cls(list(base.chars) + sorted(seen - set(base.chars)), specials)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + len(self.specials)

    @property
    def end_id(self) -> int:
        return self.special_ids[END]

    def encode(self, text: str) -> list[int]:
        ids = []
        for part in self._split.split(text):
            if part in self.special_ids:
                ids.append(self.special_ids[part])
                continue
            unknown = sorted(set(part) - self.stoi.keys())
            if unknown:
                raise ValueError(f"ChatTokenizer cannot encode {unknown}: build it with "
                                 "ChatTokenizer.extend(base, texts) from texts that contain "
                                 "these characters.")
            ids.extend(self.stoi[c] for c in part)
        return ids

    def decode(self, ids) -> str:
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        check_ids(np.asarray(ids, np.int64), self.vocab_size, "ids to decode")
        n = len(self.chars)
        return "".join(self.chars[i] if i < n else self.specials[i - n] for i in ids)

    def __repr__(self) -> str:
        return (f"ChatTokenizer({len(self.chars)} characters + {len(self.specials)} special "
                f"tokens = {self.vocab_size})")


# ---------------------------------------------------------------- arrays for train.fit

LOSS_ON = ("response", "all")


class SFTArrays(NamedTuple):
    """Examples as arrays (a pytree, so ``train.fit`` can take it as data)."""

    tokens: np.ndarray  # (N, length + 1) int32: prompt, response, end token, padding
    mask: np.ndarray  # (N, length + 1) bool: True at the tokens that count in the loss


def encode_chat(tok: ChatTokenizer, prompt: str, response: str) -> tuple[list[int], list[bool]]:
    """One example as ids and its response mask (True at the response and its end token)."""
    head = tok.encode(chat_text(prompt))
    tail = tok.encode(response + END)
    return head + tail, [False] * len(head) + [True] * len(tail)


def encode_examples(tok: ChatTokenizer, examples: Sequence[Example], length: int, *,
                    loss_on: str = "response") -> SFTArrays:
    """Examples -> ``SFTArrays`` of width ``length + 1`` (a model with block_size = length
    reads the first ``length`` tokens), padded with the end token outside the mask.

    loss_on: ``"response"`` masks the prompt out of the loss (the usual way); ``"all"`` counts
    every real token, the prompt's too (plain language modelling on the chat text).
    """
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}.")
    if not examples:
        raise ValueError("encode_examples: no examples given.")
    tokens = np.full((len(examples), length + 1), tok.end_id, np.int32)
    mask = np.zeros((len(examples), length + 1), bool)
    for i, ex in enumerate(examples):
        ids, resp = encode_chat(tok, ex.prompt, ex.response)
        if len(ids) > length + 1:
            raise ValueError(f"Example {i} ({ex.task}) has {len(ids)} tokens, more than "
                             f"length + 1 = {length + 1}: use a longer length (a model with a "
                             "larger block_size) or shorter prompts.")
        tokens[i, :len(ids)] = ids
        mask[i, :len(ids)] = resp if loss_on == "response" else True
    return SFTArrays(tokens, mask)


def pack_examples(tok: ChatTokenizer, examples: Sequence[Example], length: int, *,
                  loss_on: str = "response") -> SFTArrays:
    """Like ``encode_examples``, but with as many examples in each row as fit, one after the
    other (**packing**): short examples no longer leave most of a row as padding, so a batch
    of the same size holds more examples for the same compute. An example never sees the one
    before it in training as anything but earlier text; the first of each row is exactly
    what the model sees at test time."""
    if loss_on not in LOSS_ON:
        raise ValueError(f"loss_on must be one of {LOSS_ON}, got {loss_on!r}.")
    rows, row, row_mask = [], [], []
    for i, ex in enumerate(examples):
        ids, resp = encode_chat(tok, ex.prompt, ex.response)
        resp = resp if loss_on == "response" else [True] * len(ids)
        if len(ids) > length + 1:
            raise ValueError(f"Example {i} ({ex.task}) has {len(ids)} tokens, more than "
                             f"length + 1 = {length + 1}.")
        if len(row) + len(ids) > length + 1:
            rows.append((row, row_mask))
            row, row_mask = [], []
        row, row_mask = row + ids, row_mask + resp
    rows.append((row, row_mask))
    tokens = np.full((len(rows), length + 1), tok.end_id, np.int32)
    mask = np.zeros((len(rows), length + 1), bool)
    for r, (ids, m) in enumerate(rows):
        tokens[r, :len(ids)], mask[r, :len(m)] = ids, m
    return SFTArrays(tokens, mask)


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with a preferred (chosen) and a dispreferred (rejected) response."""

    task: str
    prompt: str
    chosen: str
    rejected: str


def preference_pairs(examples: Sequence[Example], answers: Sequence[str] | None = None,
                     seed: int = 0) -> list[PreferencePair]:
    """Preference pairs with the right answer as the chosen one.

    answers: what a model answered to each example (e.g. ``complete``): each wrong answer
    becomes the rejected one, and the examples it got right are skipped (**on-policy** pairs,
    the way preference data is collected: the model's own outputs, judged). Without answers,
    the rejected one is a typical near miss (``typical_mistake``), skipping the examples where
    it happens to be right (a palindrome to reverse).
    """
    if answers is not None and len(answers) != len(examples):
        raise ValueError(f"answers must hold one answer per example: got {len(answers)} for "
                         f"{len(examples)} examples.")
    rng = np.random.default_rng(seed)
    pairs = []
    for i, ex in enumerate(examples):
        wrong = typical_mistake(ex.task, ex.item, rng) if answers is None else answers[i]
        if wrong != ex.response:
            pairs.append(PreferencePair(ex.task, ex.prompt, ex.response, wrong))
    return pairs


class PreferenceArrays(NamedTuple):
    """Preference pairs as arrays: each answer after its prompt, with its response mask."""

    chosen: np.ndarray  # (N, length + 1) int32
    chosen_mask: np.ndarray  # (N, length + 1) bool
    rejected: np.ndarray  # (N, length + 1) int32
    rejected_mask: np.ndarray  # (N, length + 1) bool


def encode_pairs(tok: ChatTokenizer, pairs: Sequence[PreferencePair],
                 length: int) -> PreferenceArrays:
    """Pairs -> ``PreferenceArrays`` (each half encoded as by ``encode_examples``)."""
    good = encode_examples(tok, [Example(p.task, p.prompt, p.chosen) for p in pairs], length)
    bad = encode_examples(tok, [Example(p.task, p.prompt, p.rejected) for p in pairs], length)
    return PreferenceArrays(good.tokens, good.mask, bad.tokens, bad.mask)


# ---------------------------------------------------------------- scoring


def _width(needed: int, block_size: int) -> int:
    """The input width for sequences of up to ``needed`` tokens: rounded up to a multiple of
    16 (few widths, few compilations), at most the model's context."""
    if needed > block_size:
        raise ValueError(f"A sequence of {needed} tokens does not fit in the model's context "
                         f"of {block_size}: use shorter prompts or a model with a larger "
                         "block_size.")
    return min(-(-needed // 16) * 16, block_size)


def exact_match(model: nnx.Module, tok: ChatTokenizer, examples: Sequence[Example], *,
                batch_size: int = 256) -> np.ndarray:
    """(N,) bool: whether greedy decoding of each prompt gives exactly its response and then
    the end token.

    Computed in one pass per batch, without generating: greedy decoding produces the answer
    a_1..a_n, END exactly when, fed the prompt and a_1..a_{i-1}, the model's most likely next
    token is a_i for every i (and END after a_n). So the model reads prompt + answer once and
    every response position is checked (``complete`` generates, and agrees).
    """
    longest = max(len(encode_chat(tok, ex.prompt, ex.response)[0]) for ex in examples)
    arrays = encode_examples(tok, examples, _width(longest - 1, model.cfg.block_size))
    model.eval()
    return in_batches(lambda t, m: masked_scores(model, t, m)[1], (arrays.tokens, arrays.mask),
                      batch_size)


@nnx.jit(static_argnames=("n_new", "end_id"))
def _greedy(model, buf, lengths, *, n_new, end_id):
    """Greedy decoding of right-padded prompts (B, L) of given lengths, recomputing the whole
    buffer at each step (no cache: the prompts end at different positions)."""
    rows = jnp.arange(buf.shape[0])

    def step(carry, _):
        buf, lengths, done = carry
        logits = model(buf)  # (B, L, V)
        nxt = jnp.argmax(logits[rows, lengths - 1], axis=-1).astype(buf.dtype)  # (B,)
        nxt = jnp.where(done, end_id, nxt)
        buf = buf.at[rows, jnp.minimum(lengths, buf.shape[1] - 1)].set(nxt)
        return (buf, lengths + 1, done | (nxt == end_id)), nxt

    done = jnp.zeros(buf.shape[0], bool)
    _, new = jax.lax.scan(step, (buf, lengths, done), None, length=n_new)
    return new.T  # (B, n_new)


def complete(model: nnx.Module, tok: ChatTokenizer, prompts: Sequence[str], *,
             max_new_tokens: int = 12, batch_size: int = 64) -> list[str]:
    """The model's greedy answer to each prompt (a user message), read up to its end token.

    Each prompt is put in the chat template; answers longer than ``max_new_tokens``, or than
    the room left in the context after the longest prompt, are cut.
    """
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}.")
    encoded = [tok.encode(chat_text(p)) for p in prompts]
    longest = max(range(len(encoded)), key=lambda i: len(encoded[i]))
    block = model.cfg.block_size
    if len(encoded[longest]) >= block:
        raise ValueError(f"Prompt {longest} has {len(encoded[longest])} tokens in the chat "
                         f"template: no room left for an answer in the model's context of "
                         f"{block}. Use shorter prompts.")
    L = _width(min(len(encoded[longest]) + max_new_tokens, block), block)
    n_new = min(max_new_tokens, L - len(encoded[longest]))  # what fits after every prompt
    model.eval()
    out = []
    for a in range(0, len(encoded), batch_size):
        chunk = encoded[a:a + batch_size]
        buf = np.full((batch_size, L), tok.end_id, np.int32)
        lengths = np.ones(batch_size, np.int32)
        for i, e in enumerate(chunk):
            buf[i, :len(e)], lengths[i] = e, len(e)
        new = np.asarray(_greedy(model, buf, lengths, n_new=n_new, end_id=tok.end_id))
        for row in new[:len(chunk)]:
            ids = list(row)
            ids = ids[:ids.index(tok.end_id)] if tok.end_id in ids else ids
            out.append(tok.decode(ids))
    return out
