"""Checks for notebook 02 (data and tokens): a character encoder, BPE pair counts, one BPE merge,
and a batch of (input, target) windows.

Each check runs the learner's function on small hand-made cases, compares with the reference,
and when the answer is wrong runs the typical wrong versions on the same input: the one that
gives the learner's answer names the mistake.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from course_lib.checks._core import _call, _fail, _ok, _short
from course_lib.tokenizers import _merge

__all__ = [
    "check_encode_chars", "check_count_pairs", "check_merge", "check_get_batch",
    "reference_count_pairs", "reference_merge",
]

Pair = tuple[int, int]


def reference_count_pairs(ids: list[int]) -> dict[Pair, int]:
    """How often each pair of neighbours ``(ids[i], ids[i + 1])`` occurs, overlaps included.

    ``[97, 97, 97]`` ("aaa") -> ``{(97, 97): 2}``: the pair starts at positions 0 and 1.
    """
    counts: dict[Pair, int] = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def reference_merge(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """A new list with every occurrence of ``pair`` replaced by ``new_id``, scanning left to
    right and never reusing a token that was just merged: ``merge([a, a, a], (a, a), X)`` is
    ``[X, a]``. The input list is not modified. (The same function BPETokenizer uses.)"""
    return _merge(list(ids), tuple(pair), new_id)


# ------------------------------------------------------------------------------ helpers


def _id_list(name: str, out, what: str = "a list of integer ids") -> list[int]:
    """The learner's output as a list of Python ints, failing with a hint otherwise."""
    if out is None:
        _fail(name, "your function returned None — did you forget the `return` statement?")
    if isinstance(out, (str, bytes)):
        _fail(name, f"your function returned a {type(out).__name__} ({_short(out)}); expected "
              f"{what}.")
    if isinstance(out, dict):
        _fail(name, f"your function returned a dict; expected {what}.")
    try:
        items = list(np.asarray(out).reshape(-1)) if hasattr(out, "shape") else list(out)
    except TypeError:
        _fail(name, f"your function returned a {type(out).__name__}; expected {what}.")
    if any(isinstance(v, str) for v in items):
        _fail(name, f"your list holds characters ({_short(items[:5])}...), not ids; expected "
              f"{what}.")
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items):
        kinds = sorted({type(v).__name__ for v in items})
        _fail(name, f"the items you returned are {', '.join(kinds)}; token ids are integers "
              "(int).")
    return [int(v) for v in items]


# ------------------------------------------------------------------------------ encode_chars


def check_encode_chars(fn: Callable) -> None:
    """Check ``fn(text, vocab) -> list[int]``: the id of a character is its index in ``vocab``
    (a list of distinct characters); a character missing from ``vocab`` raises an error."""
    name = "encode_chars"
    vocab = sorted(set("hello world\nHow are you?"))  # [\n, ' ', '?', 'H', 'a', 'd', ...]
    stoi = {c: i for i, c in enumerate(vocab)}
    cases = ["hello", "How are you?\nhello world\n", "", " ?"]
    for text in cases:
        got = _id_list(name, _call(name, fn, text, list(vocab)))
        want = [stoi[c] for c in text]
        if got == want:
            continue
        where = f"\n  vocab = {''.join(vocab)!r}\n  text = {text!r}\n  expected {want}, got {got}"
        if got == [ord(c) for c in text]:
            hint = ("returned Unicode code points (ord(c)); the id of a character is its "
                    "position in vocab, e.g. stoi = {c: i for i, c in enumerate(vocab)}.")
        elif got == [i + 1 for i in want]:
            hint = "ids start at 1; Python positions start at 0 (vocab[0] has id 0)."
        elif got == want[::-1]:
            hint = "the ids come out in reverse order; keep the order of the text."
        elif len(got) != len(want):
            hint = f"returned {len(got)} ids for {len(text)} characters: one id per character."
        else:
            hint = "wrong ids: character vocab[i] has id i."
        _fail(name, hint + where)

    # A character that is not in the vocabulary must not be dropped or invented silently.
    text = "hello, world"  # ',' is not in vocab
    try:
        out = fn(text, list(vocab))
    except NotImplementedError:
        raise  # not reached: the cases above would have caught a stub
    except Exception:  # noqa: BLE001 - any clear error is the right behaviour
        _ok(name, f"{len(cases)} cases, and an unknown character raises an error")
        return
    got = _id_list(name, out)
    known = [stoi[c] for c in text if c in stoi]
    where = f"\n  vocab = {''.join(vocab)!r}\n  text = {text!r} (',' is not in vocab), got {got}"
    if got == known:
        hint = ("silently dropped the unknown character ','. A tokenizer that loses text without "
                "a word hides bugs: raise an error instead (stoi[c] raises KeyError by itself).")
    else:
        hint = ("gave the unknown character ',' an id (a made-up or 'unknown' id). This "
                "vocabulary cannot encode it, so raise an error instead (stoi[c] raises "
                "KeyError by itself).")
    _fail(name, hint + where)


# ------------------------------------------------------------------------------ count_pairs


def _pair_dict(name: str, out) -> dict[Pair, int]:
    """The learner's output as {(int, int): int}, failing with a hint on the wrong kind."""
    if out is None:
        _fail(name, "your function returned None — did you forget the `return` statement?")
    if isinstance(out, (list, tuple)) and all(isinstance(x, tuple) and len(x) == 2 for x in out):
        _fail(name, "returned a list of (pair, count) items (like Counter.most_common()); "
              "return the dict itself: {(a, b): count, ...}.")
    if not isinstance(out, dict):
        _fail(name, f"your function returned a {type(out).__name__}; expected a dict "
              "{(a, b): count}.")
    result = {}
    for k, v in out.items():
        if not (isinstance(k, tuple) and len(k) == 2):
            _fail(name, f"the keys must be pairs (a, b) of neighbouring ids, but one key is "
                  f"{k!r}. Did you count single tokens instead of pairs?")
        if isinstance(v, (float, np.floating)) and v != int(v):
            _fail(name, f"the values must be counts (whole numbers); got {v!r}. Did you divide "
                  "by the total?")
        if v:
            result[(int(k[0]), int(k[1]))] = int(v)
    return result


def _wrong_count_pairs():
    """The typical wrong versions, with the hint each one earns."""

    def distinct(ids):
        return dict.fromkeys(zip(ids, ids[1:]), 1)

    def missed_last(ids):
        return reference_count_pairs(ids[:-1])

    def wrapped(ids):
        return reference_count_pairs(list(ids) + list(ids[:1])) if len(ids) > 1 else {}

    def reversed_pairs(ids):
        return {(b, a): n for (a, b), n in reference_count_pairs(ids).items()}

    def non_overlapping(ids):
        counts, i = {}, 0
        while i < len(ids) - 1:
            pair = (ids[i], ids[i + 1])
            counts[pair] = counts.get(pair, 0) + 1
            i += 2 if ids[i] == ids[i + 1] else 1  # skips on a repeat: "aaa" counts (a,a) once
        return counts

    def skip_two(ids):
        return _count_at(ids, range(0, len(ids) - 1, 2))

    return [
        (distinct, "counted each distinct pair only once (every count is 1 — a set, or "
         "`counts[pair] = 1`). Add one for EVERY position: counts[pair] = counts.get(pair, 0) + 1."),
        (missed_last, "off by one: the last pair (ids[-2], ids[-1]) is missing. The pairs are "
         "(ids[i], ids[i + 1]) for i in range(len(ids) - 1), or simply zip(ids, ids[1:])."),
        (wrapped, "counted an extra pair that wraps around from the last id to the first "
         "(np.roll or ids[:1] appended). The text does not continue past its end."),
        (reversed_pairs, "the pairs are reversed: the key is (ids[i], ids[i + 1]), left "
         "neighbour first — (a, b) and (b, a) are different pairs."),
        (non_overlapping, "counted overlapping occurrences once: in 'aaa' the pair (a, a) starts "
         "at positions 0 AND 1, so its count is 2. Count every position (only the merge step "
         "skips overlaps)."),
        (skip_two, "stepped two positions at a time, so every other pair was skipped: count the "
         "pair starting at EVERY position i."),
    ]


def _count_at(ids, positions) -> dict[Pair, int]:
    counts: dict[Pair, int] = {}
    for i in positions:
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def check_count_pairs(fn: Callable) -> None:
    """Check ``fn(ids) -> dict`` mapping each neighbouring pair ``(a, b)`` to its count."""
    name = "count_pairs"
    cases = [
        [7, 8, 9, 7, 8, 9, 9, 9, 1],  # tells the typical mistakes apart: see _wrong_count_pairs
        [1, 2, 3, 1, 2],  # (1, 2) twice
        list(b"aaab"),  # overlapping repeat: (a, a) twice
        list(b"hello hello"),
        [5, 6],  # a single pair
        [4],  # no pairs at all
        [],
    ]
    for ids in cases:
        got = _pair_dict(name, _call(name, fn, list(ids)))
        want = reference_count_pairs(ids)
        if got == want:
            continue
        where = f"\n  ids = {ids}\n  expected {_short(want, 200)}\n  got      {_short(got, 200)}"
        hint = next((h for wrong, h in _wrong_count_pairs() if wrong(ids) == got), None)
        if hint is None and set(got) == set(want):
            hint = "the right pairs, but some counts are wrong."
        elif hint is None and set(got) - set(want):
            extra = sorted(set(got) - set(want))[:3]
            hint = f"counted pairs that are not neighbours in ids, e.g. {extra}."
        elif hint is None:
            missing = sorted(set(want) - set(got))[:3]
            hint = f"missed some pairs, e.g. {missing}."
        _fail(name, hint + where)
    _ok(name, f"{len(cases)} cases, overlaps and tiny inputs included")


# ------------------------------------------------------------------------------ merge


def _wrong_merges():
    """The typical wrong versions of merge, with the hint each one earns."""

    def no_skip(ids, pair, new_id):  # "ab" -> [X, b]: the second token is kept too
        out = []
        for i, t in enumerate(ids):
            out.append(new_id if tuple(ids[i:i + 2]) == pair else t)
        return out

    def overlapping(ids, pair, new_id):  # "aaa" -> [X, X]: a token used by two merges
        out, i = [], 0
        while i < len(ids):
            if tuple(ids[i:i + 2]) == pair:
                out.append(new_id)
                i += 2 if tuple(ids[i + 1:i + 3]) != pair else 1
            else:
                out.append(ids[i])
                i += 1
        return out

    def first_only(ids, pair, new_id):
        for i in range(len(ids) - 1):
            if (ids[i], ids[i + 1]) == pair:
                return list(ids[:i]) + [new_id] + list(ids[i + 2:])
        return list(ids)

    def drops_last(ids, pair, new_id):  # loops while i < len(ids) - 1
        out, i = [], 0
        while i < len(ids) - 1:
            if (ids[i], ids[i + 1]) == pair:
                out.append(new_id)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        return out

    def right_to_left(ids, pair, new_id):
        rev = _merge(list(ids[::-1]), (pair[1], pair[0]), new_id)
        return rev[::-1]

    def either_order(ids, pair, new_id):
        out, i = [], 0
        while i < len(ids):
            if i + 1 < len(ids) and (ids[i], ids[i + 1]) in (pair, pair[::-1]):
                out.append(new_id)
                i += 2
            else:
                out.append(ids[i])
                i += 1
        return out

    return [
        (overlapping, "overlapping merges: in [a, a, a] with pair (a, a) the middle a can be "
         "used only once, so the answer is [X, a], not [X, X]. After a match, jump past BOTH "
         "tokens (i += 2) and never look back."),
        (no_skip, "after replacing a pair you kept its second token as well. On a match append "
         "new_id and move on by TWO positions (i += 2); otherwise append ids[i] and move by one."),
        (first_only, "replaced only the first occurrence; replace every occurrence."),
        (drops_last, "the last token went missing: a loop `while i < len(ids) - 1` stops before "
         "the final token when it is not part of a pair. Loop while i < len(ids) and test "
         "i + 1 < len(ids) before looking at ids[i + 1]."),
        (right_to_left, "merged from right to left: [a, a, a] must become [X, a], not [a, X]. "
         "Scan from the start."),
        (either_order, "merged the pair in both orders: pair (a, b) matches a followed by b "
         "only, never b followed by a."),
    ]


def check_merge(fn: Callable) -> None:
    """Check ``fn(ids, pair, new_id) -> list``: every occurrence of ``pair`` replaced by
    ``new_id``, left to right, without overlaps; the input list left unchanged."""
    name = "merge"
    a = 97
    cases = [
        ([1, 2, 3, 1, 2], (1, 2), 256),
        ([a, a, a], (a, a), 300),  # overlapping: [X, a]
        ([a, a, a, a], (a, a), 300),  # [X, X]
        ([5, 1, 2, 7], (1, 2), 256),  # the last token is not part of a pair
        ([2, 1, 2, 1, 2, 2], (1, 2), 260),  # (2, 1) must not merge
        (list(b"the cat ate the hat"), (ord("a"), ord("t")), 256),
        ([3, 4, 5], (9, 9), 256),  # nothing to merge
        ([7], (7, 7), 256),
        ([], (1, 2), 256),
    ]
    for ids, pair, new_id in cases:
        arg = list(ids)
        got = _id_list(name, _call(name, fn, arg, pair, new_id))
        want = reference_merge(ids, pair, new_id)
        if arg != ids:
            _fail(name, "your function changed the list it was given (e.g. with del, pop or "
                  "item assignment). Build and return a NEW list; the caller may still need the "
                  f"old one.\n  ids before = {ids}, after = {arg}")
        if got == want:
            continue
        where = (f"\n  ids = {ids}, pair = {pair}, new_id = {new_id}\n  expected {want}\n"
                 f"  got      {got}")
        hint = next((h for wrong, h in _wrong_merges() if wrong(ids, pair, new_id) == got), None)
        if hint is None and got.count(new_id) > want.count(new_id):
            hint = ("too many merges: each token can belong to only one merged pair. Scan left "
                    "to right and jump past both tokens of a match.")
        _fail(name, (hint or "wrong result.") + where)
    _ok(name, f"{len(cases)} cases, overlapping pairs included")


# ------------------------------------------------------------------------------ get_batch


def _call_batch(name: str, fn: Callable, data, batch_size: int, block_size: int, key):
    """Call the learner's get_batch; a crash gets the hint about windows past the end."""
    try:
        return _call(name, fn, data, batch_size, block_size, key)
    except AssertionError as err:
        if "raised" not in str(err):
            raise
        raise AssertionError(
            f"{err}\n  Hint: if the error is about indices or shapes, a window may run past the "
            f"end of data: a start s needs data[s : s + block_size + 1], so s must be at most "
            f"len(data) - block_size - 1 (jax.random.randint's maxval is exclusive)."
        ) from None


def _batch_arrays(name: str, out, batch_size: int, block_size: int):
    """The learner's (x, y) as two NumPy arrays of the right shape and an integer dtype."""
    if out is None:
        _fail(name, "your function returned None — did you forget the `return` statement?")
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        shape = getattr(out, "shape", None)
        _fail(name, f"return a pair (x, y) of two arrays; got a {type(out).__name__}"
              + (f" of shape {shape}" if shape is not None else "") + ".")
    x, y = (np.asarray(a) for a in out)
    want = (batch_size, block_size)
    for label, arr in (("x", x), ("y", y)):
        if arr.shape == want:
            continue
        if arr.shape == want[::-1]:
            _fail(name, f"{label} has shape {arr.shape}: that is (block_size, batch_size), "
                  f"transposed. Rows are examples: the shape must be (batch_size, block_size) "
                  f"= {want}.")
        if arr.shape == (batch_size, block_size + 1):
            _fail(name, f"{label} has shape {arr.shape}: block_size + 1 columns. Cut the window "
                  f"of block_size + 1 tokens into x = window[:-1] and y = window[1:], each "
                  f"{block_size} long.")
        _fail(name, f"{label} has shape {arr.shape}; expected (batch_size, block_size) = {want}.")
    for label, arr in (("x", x), ("y", y)):
        if arr.dtype.kind not in "iu":
            _fail(name, f"{label} has dtype {arr.dtype}: wrong dtype — token ids are integers. "
                  "Keep the dtype of data (or .astype(jnp.int32)); a float id cannot index an "
                  "embedding table.")
    return x.astype(np.int64), y.astype(np.int64)


def check_get_batch(fn: Callable) -> None:
    """Check ``fn(data, batch_size, block_size, key) -> (x, y)``.

    x: (batch_size, block_size) random windows of ``data``; y: the same windows shifted one
    token to the right (the next token at each position). Randomness comes from ``key`` only.
    """
    name = "get_batch"
    offset, n, B, T = 100, 24, 32, 8  # data = 100..123: each value says its own position
    data = jnp.arange(offset, offset + n, dtype=jnp.int32)
    n_starts = n - T  # valid starts: 0 .. n - T - 1

    batches, first = [], None
    for seed in range(8):
        x, y = _batch_arrays(name, _call_batch(name, fn, data, B, T, jax.random.key(seed)), B, T)
        pos = x - offset  # positions in data
        if (pos < 0).any() or (pos >= n).any() or (y < offset).any() or (y >= offset + n).any():
            _fail(name, "the batch holds values that are not in data: index data with the "
                  "positions of the windows (x = data[idx]), and do not return the positions "
                  f"themselves.\n  data = {offset}..{offset + n - 1}, x[0] = {x[0].tolist()}")
        if not (np.diff(pos, axis=1) == 1).all():
            bad = int(np.argmax(~(np.diff(pos, axis=1) == 1).all(axis=1)))
            _fail(name, "each row of x must be a contiguous window of data (start, start + 1, "
                  f"..., start + block_size - 1).\n  data = {offset}..{offset + n - 1}, "
                  f"x[{bad}] = {x[bad].tolist()}")
        if np.array_equal(y, x):
            _fail(name, "targets not shifted: y == x. The target at each position is the NEXT "
                  "token: y = data[start + 1 : start + block_size + 1].")
        if np.array_equal(y, x - 1):
            _fail(name, "shifted the wrong way: y holds the PREVIOUS token of each position. The "
                  "target is the next token: y = data[start + 1 : start + block_size + 1].")
        past = pos[:, 0] > n - T - 1
        if past.any():
            b = int(np.argmax(past))
            _fail(name, f"windows running past the end: a row starts at position {pos[b, 0]}, "
                  f"but its target window needs data[{pos[b, 0]} : {pos[b, 0] + T + 1}] and data "
                  f"has only {n} tokens (JAX clamps out-of-range indices silently). Starts must "
                  f"be < len(data) - block_size = {n - T}; jax.random.randint's maxval is "
                  f"exclusive.\n  x[{b}] = {x[b].tolist()}, y[{b}] = {y[b].tolist()}")
        if not np.array_equal(y, x + 1):
            b = int(np.argmax((y != x + 1).any(axis=1)))
            _fail(name, "y must be x shifted by one: y[b, t] = data[start_b + t + 1]."
                  f"\n  x[{b}] = {x[b].tolist()}\n  y[{b}] = {y[b].tolist()}")
        if (x == x[:1]).all():
            _fail(name, f"all {B} rows are the same window: the same key was reused for every "
                  "row. Draw all the starts at once, jax.random.randint(key, (batch_size,), "
                  "...), or split the key into one per row.")
        batches.append(pos[:, 0])
        first = x if first is None else first

    again = _batch_arrays(name, _call_batch(name, fn, data, B, T, jax.random.key(0)), B, T)[0]
    if not np.array_equal(again, first):
        _fail(name, "two calls with the same key gave different batches: the randomness must "
              "come from the `key` argument only (not np.random or random), so that a run can "
              "be repeated exactly.")
    if all(np.array_equal(s, batches[0]) for s in batches):
        _fail(name, "different keys gave the same batch: the `key` argument is ignored.")
    starts = np.concatenate(batches)
    if starts.max() < n_starts - 1:
        _fail(name, f"off by one: no window ever starts at the last valid position "
              f"{n_starts - 1} = len(data) - block_size - 1, so the final token is never a "
              f"target. jax.random.randint(key, shape, 0, len(data) - block_size) already "
              f"excludes the upper bound (maxval is exclusive).")
    if starts.min() > 0:
        _fail(name, "no window ever starts at position 0: the first tokens of data are never "
              "used. Draw starts from 0 (minval=0).")
    _ok(name, f"{len(batches) * B} windows checked: shapes, dtype, shift, bounds, keys")
