"""Exercises of notebook 02 (data and tokens): a character encoder, BPE pair counts, one BPE
merge, and a batch of (input, target) windows."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from course_lib import data, tokenizers
from course_lib.checks._core import Exercise, Mistake, Property, _fail, as_ids, checker

__all__ = ["check_encode_chars", "check_count_pairs", "check_merge", "check_get_batch"]

# ---------------------------------------------------------------- encode_chars

_VOCAB = sorted(set("hello world\nHow are you?"))  # [\n, ' ', '?', 'H', 'a', 'd', ...]
_UNKNOWN = "hello, world"  # ',' is not in the vocabulary


def _encode(text, vocab):
    return tokenizers.CharTokenizer(vocab).encode(text)


def _unknown_char_facts(probe):
    """What the learner's function does with a character missing from the vocabulary: None when
    it raises an error (right), else the ids it returned."""
    try:
        out = probe.fn(_UNKNOWN, list(_VOCAB))
    except Exception:  # noqa: BLE001 - any clear error is the right behaviour
        return None
    return as_ids(probe.exercise.name, out, probe.exercise.expect)


def _unknown_detail(got) -> str:
    return (f"\n  vocab = {''.join(_VOCAB)!r}\n  text = {_UNKNOWN!r} (',' is not in vocab), "
            f"got {got}")


ENCODE_CHARS = Exercise(
    "encode_chars",
    doc="""Check ``fn(text, vocab) -> list[int]``: the id of a character is its index in ``vocab``
    (a list of distinct characters); a character missing from ``vocab`` raises an error.""",
    reference=_encode,
    cases=lambda: [(text, list(_VOCAB)) for text in
                   ("hello", "How are you?\nhello world\n", "", " ?")],
    output=as_ids, expect="a list of integer ids",
    mistakes=[
        Mistake("returned Unicode code points (ord(c)); the id of a character is its position in "
                "vocab, e.g. stoi = {c: i for i, c in enumerate(vocab)}.",
                lambda text, vocab: [ord(c) for c in text]),
        Mistake("ids start at 1; Python positions start at 0 (vocab[0] has id 0).",
                lambda text, vocab: [i + 1 for i in _encode(text, vocab)]),
        Mistake("the ids come out in reverse order; keep the order of the text.",
                lambda text, vocab: _encode(text, vocab)[::-1]),
        Mistake("one id per character", lambda text, vocab: _encode(text.strip(), vocab),
                when=lambda got, want, case: len(got) != len(want),
                detail=lambda got, want, case: f": you returned {len(got)} ids for "
                f"{len(case.args[0])} characters."),
    ],
    otherwise="wrong ids: character vocab[i] has id i.",
    facts=_unknown_char_facts,
    properties=[
        Property("silently dropped the unknown character ','. A tokenizer that loses text without "
                 "a word hides bugs: raise an error instead (stoi[c] raises KeyError by itself).",
                 lambda got: got == _encode(_UNKNOWN.replace(",", ""), _VOCAB)
                 and _unknown_detail(got),
                 lambda text, vocab: [vocab.index(c) for c in text if c in vocab]),
        Property("gave the unknown character ',' an id (a made-up or 'unknown' id). This "
                 "vocabulary cannot encode it, so raise an error instead (stoi[c] raises KeyError "
                 "by itself).", lambda got: got is not None and _unknown_detail(got),
                 lambda text, vocab: [vocab.index(c) if c in vocab else 0 for c in text]),
    ],
    success="{n} cases, and an unknown character raises an error",
)

# ---------------------------------------------------------------- count_pairs


def _pair_dict(name: str, out, expect: str) -> dict:
    """Output reader: {(int, int): int}, failing with a hint on the wrong kind."""
    if isinstance(out, (list, tuple)) and all(isinstance(x, tuple) and len(x) == 2 for x in out):
        _fail(name, "returned a list of (pair, count) items (like Counter.most_common()); "
              "return the dict itself: {(a, b): count, ...}.")
    if not isinstance(out, dict):
        _fail(name, f"your function returned a {type(out).__name__}; expected {expect}.")
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


def _count_at(ids, positions) -> dict:
    counts = {}
    for i in positions:
        counts[(ids[i], ids[i + 1])] = counts.get((ids[i], ids[i + 1]), 0) + 1
    return counts


def _non_overlapping(ids):
    counts, i = {}, 0
    while i < len(ids) - 1:
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
        i += 2 if ids[i] == ids[i + 1] else 1  # skips on a repeat: "aaa" counts (a, a) once
    return counts


COUNT_PAIRS = Exercise(
    "count_pairs",
    doc="Check ``fn(ids) -> dict`` mapping each neighbouring pair ``(a, b)`` to its count.",
    reference=tokenizers.count_pairs,
    cases=lambda: [(ids,) for ids in (
        [7, 8, 9, 7, 8, 9, 9, 9, 1],  # tells the typical mistakes apart
        [1, 2, 3, 1, 2],  # (1, 2) twice
        list(b"aaab"),  # overlapping repeat: (a, a) twice
        list(b"hello hello"),
        [5, 6],  # a single pair
        [4],  # no pairs at all
        [],
    )],
    output=_pair_dict, expect="a dict {(a, b): count}",
    mistakes=[
        Mistake("counted each distinct pair only once (every count is 1 — a set, or "
                "`counts[pair] = 1`). Add one for EVERY position: "
                "counts[pair] = counts.get(pair, 0) + 1.",
                lambda ids: dict.fromkeys(zip(ids, ids[1:]), 1)),
        Mistake("off by one: the last pair (ids[-2], ids[-1]) is missing. The pairs are "
                "(ids[i], ids[i + 1]) for i in range(len(ids) - 1), or simply zip(ids, ids[1:]).",
                lambda ids: tokenizers.count_pairs(ids[:-1])),
        Mistake("counted an extra pair that wraps around from the last id to the first (np.roll "
                "or ids[:1] appended). The text does not continue past its end.",
                lambda ids: tokenizers.count_pairs(ids + ids[:1]) if len(ids) > 1 else {}),
        Mistake("the pairs are reversed: the key is (ids[i], ids[i + 1]), left neighbour first — "
                "(a, b) and (b, a) are different pairs.",
                lambda ids: tokenizers.count_pairs(ids[::-1])),
        Mistake("counted overlapping occurrences once: in 'aaa' the pair (a, a) starts at "
                "positions 0 AND 1, so its count is 2. Count every position (only the merge step "
                "skips overlaps).", _non_overlapping),
        Mistake("stepped two positions at a time, so every other pair was skipped: count the "
                "pair starting at EVERY position i.",
                lambda ids: _count_at(ids, range(0, len(ids) - 1, 2))),
        Mistake("the right pairs, but some counts are wrong.",
                lambda ids: {p: 2 * n for p, n in tokenizers.count_pairs(ids).items()},
                when=lambda got, want, case: set(got) == set(want)),
        Mistake("counted pairs that are not neighbours in ids",
                lambda ids: {**tokenizers.count_pairs(ids), (0, 0): 3},
                when=lambda got, want, case: bool(set(got) - set(want)),
                detail=lambda got, want, case: f", e.g. {sorted(set(got) - set(want))[:3]}."),
        Mistake("missed some pairs",
                lambda ids: dict(list(tokenizers.count_pairs(ids).items())[1:]),
                when=lambda got, want, case: bool(set(want) - set(got)),
                detail=lambda got, want, case: f", e.g. {sorted(set(want) - set(got))[:3]}."),
    ],
    success="{n} cases, overlaps and tiny inputs included",
)

# ---------------------------------------------------------------- merge


def _merge_scan(ids, pair, new_id, *, step_after_match=2, both_orders=False, stop=0):
    """A left-to-right merge with switches for the usual loop mistakes."""
    out, i = [], 0
    while i < len(ids) - stop:
        here = tuple(ids[i:i + 2])
        if len(here) == 2 and (here == tuple(pair) or both_orders and here == tuple(pair)[::-1]):
            out.append(new_id)
            i += step_after_match
        else:
            out.append(ids[i])
            i += 1
    return out


def _overlapping(ids, pair, new_id):  # "aaa" -> [X, X]: a token used by two merges
    out, i = [], 0
    while i < len(ids):
        if tuple(ids[i:i + 2]) == tuple(pair):
            out.append(new_id)
            i += 2 if tuple(ids[i + 1:i + 3]) != tuple(pair) else 1
        else:
            out.append(ids[i])
            i += 1
    return out


def _first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            return list(ids[:i]) + [new_id] + list(ids[i + 2:])
    return list(ids)


def _no_skip(ids, pair, new_id):  # "ab" -> [X, b]: the second token is kept too
    return [new_id if tuple(ids[i:i + 2]) == tuple(pair) else t for i, t in enumerate(ids)]


MERGE = Exercise(
    "merge",
    doc="""Check ``fn(ids, pair, new_id) -> list``: every occurrence of ``pair`` replaced by
    ``new_id``, left to right, without overlaps; the input list left unchanged.""",
    reference=tokenizers.merge,
    cases=lambda: [
        ([1, 2, 3, 1, 2], (1, 2), 256),
        ([97, 97, 97], (97, 97), 300),  # overlapping: [X, a]
        ([97, 97, 97, 97], (97, 97), 300),  # [X, X]
        ([5, 1, 2, 7], (1, 2), 256),  # the last token is not part of a pair
        ([2, 1, 2, 1, 2, 2], (1, 2), 260),  # (2, 1) must not merge
        (list(b"the cat ate the hat"), (ord("a"), ord("t")), 256),
        ([3, 4, 5], (9, 9), 256),  # nothing to merge
        ([7], (7, 7), 256),
        ([], (1, 2), 256),
    ],
    output=as_ids, expect="a list of integer ids", otherwise="wrong result.",
    mistakes=[
        Mistake("overlapping merges: in [a, a, a] with pair (a, a) the middle a can be used only "
                "once, so the answer is [X, a], not [X, X]. After a match, jump past BOTH tokens "
                "(i += 2) and never look back.", _overlapping),
        Mistake("after replacing a pair you kept its second token as well. On a match append "
                "new_id and move on by TWO positions (i += 2); otherwise append ids[i] and move "
                "by one.", _no_skip),
        Mistake("replaced only the first occurrence; replace every occurrence.", _first_only),
        Mistake("the last token went missing: a loop `while i < len(ids) - 1` stops before the "
                "final token when it is not part of a pair. Loop while i < len(ids) and test "
                "i + 1 < len(ids) before looking at ids[i + 1].",
                lambda ids, pair, new_id: _merge_scan(ids, pair, new_id, stop=1)),
        Mistake("merged from right to left: [a, a, a] must become [X, a], not [a, X]. Scan from "
                "the start.", lambda ids, pair, new_id: tokenizers.merge(
                    ids[::-1], tuple(pair)[::-1], new_id)[::-1]),
        Mistake("merged the pair in both orders: pair (a, b) matches a followed by b only, never "
                "b followed by a.",
                lambda ids, pair, new_id: _merge_scan(ids, pair, new_id, both_orders=True)),
        Mistake("too many merges: each token can belong to only one merged pair. Scan left to "
                "right and jump past both tokens of a match.",
                lambda ids, pair, new_id: [new_id if t in pair else t for t in ids],
                when=lambda got, want, case: got.count(case.args[2]) > want.count(case.args[2])),
    ],
    success="{n} cases, overlapping pairs included",
)

# ---------------------------------------------------------------- get_batch

_OFFSET, _N, _B, _T = 100, 24, 32, 8  # data = 100..123: each value says its own position


def _batch_pair(name: str, out, expect: str):
    """Output reader: the pair (x, y), two integer arrays of shape (batch_size, block_size)."""
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        shape = getattr(out, "shape", None)
        _fail(name, f"return a pair (x, y) of two arrays; got a {type(out).__name__}"
              + (f" of shape {shape}" if shape is not None else "") + ".")
    x, y = (np.asarray(a) for a in out)
    want = (_B, _T)
    for label, arr in (("x", x), ("y", y)):
        if arr.shape == want[::-1]:
            _fail(name, f"{label} has shape {arr.shape}: that is (block_size, batch_size), "
                  "transposed. Rows are examples: the shape must be (batch_size, block_size) "
                  f"= {want}.")
        if arr.shape == (_B, _T + 1):
            _fail(name, f"{label} has shape {arr.shape}: block_size + 1 columns. Cut the window "
                  f"of block_size + 1 tokens into x = window[:-1] and y = window[1:], each "
                  f"{_T} long.")
        if arr.shape != want:
            _fail(name, f"{label} has shape {arr.shape}; expected (batch_size, block_size) = "
                  f"{want}.")
    for label, arr in (("x", x), ("y", y)):
        if arr.dtype.kind not in "iu":
            _fail(name, f"{label} has dtype {arr.dtype}: wrong dtype — token ids are integers. "
                  "Keep the dtype of data (or .astype(jnp.int32)); a float id cannot index an "
                  "embedding table.")
    return x.astype(np.int64), y.astype(np.int64)


def _batch_facts(probe) -> SimpleNamespace:
    """Eight batches from eight keys, and the first key once more."""
    data_ = jnp.arange(_OFFSET, _OFFSET + _N, dtype=jnp.int32)
    batches = [probe(data_, _B, _T, jax.random.key(seed)) for seed in range(8)]
    again = probe(data_, _B, _T, jax.random.key(0))
    starts = np.concatenate([x[:, 0] - _OFFSET for x, _ in batches])
    return SimpleNamespace(batches=batches, again=again, starts=starts)


def _any_batch(bad_rows):
    """A property broken when ``bad_rows(x, y, pos) -> (B,) bool`` flags a row of some batch;
    the details show the first such row."""
    def broken(f):
        for x, y in f.batches:
            bad = np.asarray(bad_rows(x, y, x - _OFFSET))
            if bad.any():
                b = int(np.argmax(bad))
                return (f"\n  data = {_OFFSET}..{_OFFSET + _N - 1}, x[{b}] = {x[b].tolist()}, "
                        f"y[{b}] = {y[b].tolist()}")
        return False
    return broken


def _windows(shift=1, low=0, high=0, same_key=False):
    """get_batch with switches for the usual mistakes: the target shift, the range of the
    starts (0 + low .. len(data) - block_size + high), one key for every row."""
    def get_batch(data_, batch_size, block_size, key):
        n = len(data_) - block_size + high
        starts = (jnp.full((batch_size,), jax.random.randint(key, (), low, n)) if same_key
                  else jax.random.randint(key, (batch_size,), low, n))
        idx = starts[:, None] + jnp.arange(block_size)[None, :]  # (B, T)
        return data_[idx], data_[idx + shift]
    return get_batch


def _global_rng(data_, batch_size, block_size, key):
    starts = np.random.default_rng().integers(0, len(data_) - block_size, batch_size)  # (B,)
    idx = jnp.asarray(starts)[:, None] + jnp.arange(block_size)[None, :]  # (B, T)
    return data_[idx], data_[idx + 1]


GET_BATCH = Exercise(
    "get_batch",
    doc="""Check ``fn(data, batch_size, block_size, key) -> (x, y)``.

    x: (batch_size, block_size) random windows of ``data``; y: the same windows shifted one
    token to the right (the next token at each position). Randomness comes from ``key`` only.""",
    reference=data.get_batch,
    cases=lambda: [],  # random windows: everything is checked by the properties below
    output=_batch_pair, expect="a pair (x, y)",
    crash_hint="if the error is about indices or shapes, a window may run past the end of "
               "data: a start s needs data[s : s + block_size + 1], so s must be at most "
               "len(data) - block_size - 1 (jax.random.randint's maxval is exclusive).",
    facts=_batch_facts,
    properties=[
        Property("the batch holds values that are not in data: index data with the positions of "
                 "the windows (x = data[idx]), and do not return the positions themselves.",
                 _any_batch(lambda x, y, pos: ((pos < 0) | (pos >= _N) | (y < _OFFSET)
                                               | (y >= _OFFSET + _N)).any(1)),
                 lambda d, b, t, k: tuple(a - d[0] for a in _windows()(d, b, t, k))),
        Property("each row of x must be a contiguous window of data (start, start + 1, ..., "
                 "start + block_size - 1).",
                 _any_batch(lambda x, y, pos: ~(np.diff(pos, axis=1) == 1).all(axis=1)),
                 lambda d, b, t, k: (lambda i: (d[i], d[i + 1]))(
                     jax.random.randint(k, (b, t), 0, len(d) - 1))),
        Property("targets not shifted: y == x. The target at each position is the NEXT token: "
                 "y = data[start + 1 : start + block_size + 1].",
                 _any_batch(lambda x, y, pos: (y == x).all(1)), _windows(shift=0)),
        Property("shifted the wrong way: y holds the PREVIOUS token of each position. The target "
                 "is the next token: y = data[start + 1 : start + block_size + 1].",
                 _any_batch(lambda x, y, pos: (y == x - 1).all(1)), _windows(shift=-1, low=1)),
        Property("windows running past the end: a row starts so late that its target window, "
                 "data[start : start + block_size + 1], needs more tokens than data has (JAX "
                 "clamps out-of-range indices silently). Starts must be < len(data) - "
                 "block_size; jax.random.randint's maxval is exclusive.",
                 _any_batch(lambda x, y, pos: pos[:, 0] > _N - _T - 1), _windows(high=1)),
        Property("y must be x shifted by one: y[b, t] = data[start_b + t + 1].",
                 _any_batch(lambda x, y, pos: (y != x + 1).any(1)), _windows(shift=2, high=-1)),
        Property("all the rows are the same window: the same key was reused for every row. Draw "
                 "all the starts at once, jax.random.randint(key, (batch_size,), ...), or split "
                 "the key into one per row.",
                 _any_batch(lambda x, y, pos: np.full(len(x), (x == x[:1]).all())),
                 _windows(same_key=True)),
        Property("two calls with the same key gave different batches: the randomness must come "
                 "from the `key` argument only (not np.random or random), so that a run can be "
                 "repeated exactly.",
                 lambda f: not np.array_equal(f.again[0], f.batches[0][0]), _global_rng),
        Property("different keys gave the same batch: the `key` argument is ignored.",
                 lambda f: all(np.array_equal(x, f.batches[0][0]) for x, _ in f.batches),
                 lambda d, b, t, k: _windows()(d, b, t, jax.random.key(0))),
        Property("off by one: no window ever starts at the last valid position, len(data) - "
                 "block_size - 1, so the final token is never a target. "
                 "jax.random.randint(key, shape, 0, len(data) - block_size) already excludes the "
                 "upper bound (maxval is exclusive).",
                 lambda f: f.starts.max() < _N - _T - 1, _windows(high=-1)),
        Property("no window ever starts at position 0: the first tokens of data are never used. "
                 "Draw starts from 0 (minval=0).", lambda f: f.starts.min() > 0, _windows(low=1)),
    ],
    success=f"{8 * _B} windows checked: shapes, dtype, shift, bounds, keys",
)

check_encode_chars = checker(ENCODE_CHARS)
check_count_pairs = checker(COUNT_PAIRS)
check_merge = checker(MERGE)
check_get_batch = checker(GET_BATCH)
