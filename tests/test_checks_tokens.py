"""Tests for the checks of notebook 02 (data and tokens): each check passes the reference and
correct learner-style solutions, and fails each typical wrong implementation with a hint that
names the mistake."""

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checkhelp import fails_with

from course_lib import checks, data, tokenizers
from course_lib.tokenizers import BPETokenizer

# ---------------------------------------------------------------- encode_chars


def encode_ref(text, vocab):
    stoi = {c: i for i, c in enumerate(vocab)}
    return [stoi[c] for c in text]


def test_encode_chars_passes_correct_solutions(capsys):
    checks.check_encode_chars(encode_ref)
    checks.check_encode_chars(lambda text, vocab: [vocab.index(c) for c in text])  # ValueError
    checks.check_encode_chars(lambda text, vocab: np.array(encode_ref(text, vocab), np.int32))
    assert capsys.readouterr().out.count("✓ encode_chars: correct") == 3


def test_encode_chars_reference_is_the_library_tokenizer():
    from course_lib.tokenizers import CharTokenizer

    tok = CharTokenizer.from_text("hello world")
    assert encode_ref("hold", tok.chars) == tok.encode("hold")


@pytest.mark.parametrize(
    "wrong, words",
    [
        (lambda text, vocab: [ord(c) for c in text], ["code points", "position"]),
        (lambda text, vocab: [i + 1 for i in encode_ref(text, vocab)], ["start at 1"]),
        (lambda text, vocab: encode_ref(text, vocab)[::-1], ["reverse"]),
        (lambda text, vocab: list(text), ["characters", "not ids"]),
        (lambda text, vocab: [float(i) for i in encode_ref(text, vocab)], ["float", "integers"]),
        (lambda text, vocab: encode_ref(text.strip(), vocab), ["one id per character"]),
        # unknown characters dropped silently, or mapped to a made-up id
        (lambda text, vocab: [vocab.index(c) for c in text if c in vocab], ["dropped"]),
        (lambda text, vocab: [vocab.index(c) if c in vocab else 0 for c in text],
         ["unknown", "raise an error"]),
        (lambda text, vocab: [vocab.index(c) if c in vocab else len(vocab) for c in text],
         ["unknown", "raise an error"]),
    ],
)
def test_encode_chars_diagnoses(wrong, words):
    fails_with(checks.check_encode_chars, wrong, *words)


# ---------------------------------------------------------------- count_pairs


def count_loop(ids):
    counts = {}
    for i in range(len(ids) - 1):
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def test_count_pairs_passes_correct_solutions(capsys):
    checks.check_count_pairs(tokenizers.count_pairs)
    checks.check_count_pairs(count_loop)
    checks.check_count_pairs(lambda ids: Counter(zip(ids, ids[1:])))
    checks.check_count_pairs(lambda ids: Counter(zip(np.array(ids), np.array(ids)[1:])))
    assert capsys.readouterr().out.count("✓ count_pairs: correct") == 4


def test_reference_count_pairs_matches_the_tokenizer_training():
    # The first merge the library learns is the most frequent pair (smallest pair on ties).
    text = "low lower lowest newer newest wider"
    tok = BPETokenizer.train(text, vocab_size=257)
    from course_lib.tokenizers import SPLIT_PATTERN

    counts = Counter()
    for chunk in SPLIT_PATTERN.findall(text):
        counts.update(tokenizers.count_pairs(list(chunk.encode("utf-8"))))
    best = min(counts, key=lambda p: (-counts[p], p))
    assert tok.merges[0] == (best, 256)
    assert tokenizers.count_pairs(list(b"aaa")) == {(97, 97): 2}


def non_overlapping(ids):
    counts, i = {}, 0
    while i < len(ids) - 1:
        pair = (ids[i], ids[i + 1])
        counts[pair] = counts.get(pair, 0) + 1
        i += 2 if ids[i] == ids[i + 1] else 1
    return counts


@pytest.mark.parametrize(
    "wrong, words",
    [
        (lambda ids: {p: 1 for p in zip(ids, ids[1:])}, ["distinct"]),
        (lambda ids: dict.fromkeys(set(zip(ids, ids[1:])), 1), ["distinct"]),
        (lambda ids: count_loop(ids[:-1]), ["off by one", "last pair"]),
        (lambda ids: {p: n for p, n in count_loop(ids).items()
                      if p != (ids[-2], ids[-1]) or n > 1}, ["last pair"]),
        (lambda ids: Counter(zip(ids, ids[1:] + ids[:1])) if len(ids) > 1 else {}, ["wraps"]),
        (lambda ids: Counter(zip(ids[1:], ids)), ["reversed"]),
        (non_overlapping, ["overlapping", "count is 2"]),
        (lambda ids: Counter(zip(ids[::2], ids[1::2])), ["every other pair"]),
        (lambda ids: Counter(ids), ["pairs", "single tokens"]),
        (lambda ids: Counter(zip(ids, ids[1:])).most_common(), ["most_common", "dict"]),
        (lambda ids: {p: n / max(len(ids) - 1, 1) for p, n in count_loop(ids).items()},
         ["counts", "divide"]),
        (lambda ids: {**count_loop(ids), (0, 0): 3}, ["not neighbours"]),
    ],
)
def test_count_pairs_diagnoses(wrong, words):
    fails_with(checks.check_count_pairs, wrong, *words)


# ---------------------------------------------------------------- merge


def merge_loop(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i < len(ids) - 1 and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def test_merge_passes_correct_solutions(capsys):
    checks.check_merge(tokenizers.merge)
    checks.check_merge(merge_loop)
    checks.check_merge(lambda ids, pair, new_id: tuple(merge_loop(ids, pair, new_id)))
    assert capsys.readouterr().out.count("✓ merge: correct") == 3


def test_reference_merge_examples():
    assert tokenizers.merge([97, 97, 97], (97, 97), 256) == [256, 97]
    ids = [1, 2, 1, 2]
    assert tokenizers.merge(ids, (1, 2), 9) == [9, 9] and ids == [1, 2, 1, 2]


def merge_no_skip(ids, pair, new_id):
    out = []
    for i in range(len(ids)):
        if i < len(ids) - 1 and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
        else:
            out.append(ids[i])
    return out


def merge_overlapping(ids, pair, new_id):
    """Marks every token that belongs to some occurrence, then collapses each occurrence:
    "aaa" -> [X, X]."""
    out, i = [], 0
    while i < len(ids):
        if i < len(ids) - 1 and (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 1 if i + 2 < len(ids) and (ids[i + 1], ids[i + 2]) == pair else 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_drops_last(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_first_only(ids, pair, new_id):
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == pair:
            return ids[:i] + [new_id] + ids[i + 2:]
    return list(ids)


def merge_in_place(ids, pair, new_id):
    i = 0
    while i < len(ids) - 1:
        if (ids[i], ids[i + 1]) == pair:
            ids[i : i + 2] = [new_id]
        i += 1
    return ids


def merge_right_to_left(ids, pair, new_id):
    rev = merge_loop(ids[::-1], pair[::-1], new_id)
    return rev[::-1]


def merge_both_orders(ids, pair, new_id):
    out, i = [], 0
    while i < len(ids):
        if i < len(ids) - 1 and (ids[i], ids[i + 1]) in (pair, pair[::-1]):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def merge_via_string(ids, pair, new_id):
    """Replace on a string of ids joined by commas — merges across number boundaries."""
    s = "," + ",".join(map(str, ids)) + ","
    s = s.replace(f",{pair[0]},{pair[1]},", f",{new_id},")
    return [int(t) for t in s.strip(",").split(",") if t]


@pytest.mark.parametrize(
    "wrong, words",
    [
        (merge_overlapping, ["overlapping", "[x, a]"]),
        (merge_no_skip, ["second token", "two positions"]),
        (merge_drops_last, ["last token"]),
        (merge_first_only, ["only the first"]),
        (merge_in_place, ["changed the list", "new list"]),
        (merge_right_to_left, ["right to left"]),
        (merge_both_orders, ["both orders"]),
        (lambda ids, pair, new_id: [float(t) for t in merge_loop(ids, pair, new_id)],
         ["integers"]),
        (lambda ids, pair, new_id: None, ["return"]),
        (merge_via_string, ["only the first"]),  # str.replace skips the overlapping ",a,a,"
        (lambda ids, pair, new_id: list(ids), ["wrong result"]),
    ],
)
def test_merge_diagnoses(wrong, words):
    fails_with(checks.check_merge, wrong, *words)


# ---------------------------------------------------------------- get_batch


def batch_loop(data, batch_size, block_size, key):
    """Correct, written the way a learner might: split keys, a Python loop, stack."""
    keys = jax.random.split(key, batch_size)
    xs, ys = [], []
    for k in keys:
        s = int(jax.random.randint(k, (), 0, len(data) - block_size))
        xs.append(data[s : s + block_size])
        ys.append(data[s + 1 : s + block_size + 1])
    return jnp.stack(xs), jnp.stack(ys)


def batch_numpy(data, batch_size, block_size, key):
    """Correct with NumPy indexing; the starts still come from the JAX key."""
    arr = np.asarray(data)
    starts = np.asarray(jax.random.randint(key, (batch_size,), 0, len(arr) - block_size))
    idx = starts[:, None] + np.arange(block_size)[None, :]
    return arr[idx], arr[idx + 1]


def test_get_batch_passes_correct_solutions(capsys):
    checks.check_get_batch(data.get_batch)
    checks.check_get_batch(batch_loop)
    checks.check_get_batch(batch_numpy)
    assert capsys.readouterr().out.count("✓ get_batch: correct") == 3


def _windows(data, starts, block_size, shift=1):
    idx = starts[:, None] + jnp.arange(block_size)[None, :]
    return data[idx], data[idx + shift]


def batch_not_shifted(data, batch_size, block_size, key):
    starts = jax.random.randint(key, (batch_size,), 0, len(data) - block_size)
    return _windows(data, starts, block_size, shift=0)


def batch_wrong_way(data, batch_size, block_size, key):
    starts = jax.random.randint(key, (batch_size,), 1, len(data) - block_size)
    return _windows(data, starts, block_size, shift=-1)


def batch_past_end(data, batch_size, block_size, key):
    # maxval off by one: a start of len - block_size needs one token more than data has
    starts = jax.random.randint(key, (batch_size,), 0, len(data) - block_size + 1)
    return _windows(data, starts, block_size)


def batch_past_end_slicing(data, batch_size, block_size, key):
    starts = np.asarray(jax.random.randint(key, (batch_size,), 0, len(data) - block_size + 1))
    xs = [data[s : s + block_size] for s in starts]
    ys = [data[s + 1 : s + block_size + 1] for s in starts]
    return jnp.stack(xs), jnp.stack(ys)


def batch_too_cautious(data, batch_size, block_size, key):
    starts = jax.random.randint(key, (batch_size,), 0, len(data) - block_size - 1)
    return _windows(data, starts, block_size)


def batch_same_key_per_row(data, batch_size, block_size, key):
    xs, ys = [], []
    for _ in range(batch_size):
        s = int(jax.random.randint(key, (), 0, len(data) - block_size))
        xs.append(data[s : s + block_size])
        ys.append(data[s + 1 : s + block_size + 1])
    return jnp.stack(xs), jnp.stack(ys)


def batch_global_rng(data, batch_size, block_size, key):
    starts = jnp.asarray(np.random.default_rng().integers(0, len(data) - block_size, batch_size))
    return _windows(data, starts, block_size)


def batch_ignores_key(data, batch_size, block_size, key):
    return batch_loop(data, batch_size, block_size, jax.random.key(0))


def batch_float(data, batch_size, block_size, key):
    x, y = batch_loop(data, batch_size, block_size, key)
    return x.astype(jnp.float32), y.astype(jnp.float32)


def batch_transposed(data, batch_size, block_size, key):
    x, y = batch_loop(data, batch_size, block_size, key)
    return x.T, y.T


def batch_long_window(data, batch_size, block_size, key):
    starts = jax.random.randint(key, (batch_size,), 0, len(data) - block_size)
    return _windows(data, starts, block_size + 1)


def batch_positions(data, batch_size, block_size, key):
    starts = jax.random.randint(key, (batch_size,), 0, len(data) - block_size)
    idx = starts[:, None] + jnp.arange(block_size)[None, :]
    return idx, idx + 1


def batch_scattered(data, batch_size, block_size, key):
    idx = jax.random.randint(key, (batch_size, block_size), 0, len(data) - 1)
    return data[idx], data[idx + 1]


def batch_one_array(data, batch_size, block_size, key):
    starts = jax.random.randint(key, (batch_size,), 0, len(data) - block_size)
    return data[starts[:, None] + jnp.arange(block_size + 1)[None, :]]


def batch_never_first(data, batch_size, block_size, key):
    starts = jax.random.randint(key, (batch_size,), 1, len(data) - block_size)
    return _windows(data, starts, block_size)


@pytest.mark.parametrize(
    "wrong, words",
    [
        (batch_not_shifted, ["not shifted", "y == x"]),
        (batch_wrong_way, ["wrong way", "previous"]),
        (batch_past_end, ["past the end", "exclusive"]),
        (batch_past_end_slicing, ["past the end", "len(data) - block_size - 1"]),
        (batch_too_cautious, ["off by one", "last valid position"]),
        (batch_same_key_per_row, ["same window", "same key"]),
        (batch_global_rng, ["same key", "np.random"]),
        (batch_ignores_key, ["key", "ignored"]),
        (batch_float, ["wrong dtype", "integers"]),
        (batch_transposed, ["transposed", "(batch_size, block_size)"]),
        (batch_long_window, ["block_size + 1"]),
        (batch_positions, ["not in data", "positions"]),
        (batch_scattered, ["contiguous window"]),
        (batch_one_array, ["pair (x, y)"]),
        (batch_never_first, ["position 0"]),
    ],
)
def test_get_batch_diagnoses(wrong, words):
    fails_with(checks.check_get_batch, wrong, *words)
