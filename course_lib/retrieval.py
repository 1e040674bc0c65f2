"""Using a trained language model's features: sentence embeddings, search and scoring
(notebook 06b; its made-up facts and documents come from ``course_lib.facts``).

- ``pad_batch``, ``mean_pool``, ``embed``: a fixed-size vector for each text, the mean of the
  model's final hidden states over the text's real (non-padding) positions;
- ``bag_of_chars``: the baseline, each text as a vector of character counts;
- ``cosine_top_k``, ``recall_at_k``: nearest neighbours by cosine similarity and how often the
  right passage is among the first k;
- ``mean_logprob``: how likely the model finds a text, per character (a score for classifiers).

Texts are lists of token ids (e.g. ``CharTokenizer.encode``), so this works for any tokenizer.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from course_lib.data import in_batches
from course_lib.model import check_ids

# ---------------------------------------------------------------- embeddings


def pad_batch(seqs: Sequence[Sequence[int]], length: int | None = None,
              pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad token-id sequences to one length.

    seqs: N sequences of ids (lengths may differ, none empty). length: the padded length
    (default: the longest sequence). Returns ids (N, L) int32 and mask (N, L) bool, True at the
    real positions. With a causal model right-padding is harmless: no real position can attend
    to the padding after it, so only the pooling must skip it (the mask).
    """
    lengths = [len(s) for s in seqs]
    if not lengths:
        raise ValueError("pad_batch: no sequences given.")
    if min(lengths) == 0:
        raise ValueError(f"pad_batch: sequence {lengths.index(0)} is empty; drop empty texts.")
    L = max(lengths) if length is None else length
    if max(lengths) > L:
        raise ValueError(f"pad_batch: a sequence has {max(lengths)} tokens, more than length={L}; "
                         "cut the texts to the model's block_size first.")
    ids = np.full((len(seqs), L), pad_id, dtype=np.int32)
    mask = np.zeros((len(seqs), L), dtype=bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = True
    return ids, mask


def mean_pool(h: jax.Array, mask: jax.Array) -> jax.Array:
    """Average of the hidden states over the real positions of each sequence.

    h: (B, T, C) hidden states. mask: (B, T), True (or 1) at real positions, False at padding.
    Returns (B, C). A row without any real position gives zeros (not NaN).
    """
    if h.ndim != 3 or mask.shape != h.shape[:2]:
        raise ValueError(f"mean_pool: need h (B, T, C) and mask (B, T); got {h.shape} and "
                         f"{mask.shape}.")
    m = mask.astype(h.dtype)[..., None]  # (B, T, 1)
    total = (h * m).sum(axis=1)  # (B, C): padding contributes nothing
    count = m.sum(axis=1)  # (B, 1): real positions per sequence
    return total / jnp.maximum(count, 1.0)


def _padded_to_context(model, seqs, name: str) -> tuple[np.ndarray, np.ndarray]:
    """pad_batch to the model's block_size, with errors that name the caller."""
    block = model.cfg.block_size
    if len(seqs) == 0:
        raise ValueError(f"{name}: no texts given.")
    longest = max(len(s) for s in seqs)
    if longest > block:
        raise ValueError(f"{name}: a text of {longest} tokens exceeds the model's block_size "
                         f"{block}; cut the texts into chunks first.")
    ids, mask = pad_batch(seqs, block)
    check_ids(ids, model.cfg.vocab_size, f"texts given to {name}")  # the jitted model cannot
    return ids, mask


@nnx.jit
def _pooled_states(model, ids, mask):
    return mean_pool(model.hidden_states(ids), mask)  # (B, C)


def embed(model: nnx.Module, seqs: Sequence[Sequence[int]], *,
          batch_size: int = 256) -> np.ndarray:
    """Sentence embeddings: the mean of the model's final hidden states over each text.

    model: a ``GPT`` (anything with ``hidden_states(ids) -> (B, T, C)`` and ``cfg.block_size``).
    seqs: N token-id sequences, each at most ``block_size`` long. Returns (N, C) float32.
    Every batch is padded to (batch_size, block_size), so the model is compiled once for any
    texts. The model is put in eval mode.
    """
    ids, mask = _padded_to_context(model, seqs, "embed")
    model.eval()
    return in_batches(lambda t, m: _pooled_states(model, t, m), (ids, mask), batch_size)


@nnx.jit
def _token_logprobs(model, ids):
    logp = jax.nn.log_softmax(model(ids[:, :-1]), axis=-1)  # (B, T-1, V)
    return jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]  # (B, T-1)


def mean_logprob(model: nnx.Module, seqs: Sequence[Sequence[int]], *,
                 skip: int | Sequence[int] = 0, batch_size: int = 256) -> np.ndarray:
    """Mean log-probability per token that the model gives each text (nats; higher = more
    typical), counting the tokens at positions ``max(1, skip)`` onwards, each predicted from
    everything before it. skip: tokens to read as context without scoring them (a prompt):
    one number for all texts, or one per text.

    seqs: N token-id sequences of at most ``block_size`` tokens, each longer than ``skip``.
    Returns (N,) float64. Batches are padded to (batch_size, block_size): one compilation for
    any texts. The model is put in eval mode.
    """
    ids, mask = _padded_to_context(model, seqs, "mean_logprob")
    skip = np.broadcast_to(np.asarray(skip, dtype=np.int64), (len(ids),))  # (N,)
    first = np.maximum(skip, 1)  # the first scored token (token 0 has nothing before it)
    scored = mask[:, 1:] & (np.arange(1, ids.shape[1])[None, :] >= first[:, None])  # (N, T-1)
    if not scored.any(axis=1).all():
        bad = int(np.argmin(scored.any(axis=1)))
        raise ValueError(f"mean_logprob: text {bad} has no token to score: every text needs "
                         "at least 2 tokens and more tokens than its skip.")
    model.eval()
    lp = in_batches(lambda t: _token_logprobs(model, t), (ids,), batch_size)  # (N, T-1)
    return (lp * scored).sum(axis=1) / scored.sum(axis=1)


def bag_of_chars(seqs: Sequence[Sequence[int]], vocab_size: int) -> np.ndarray:
    """The baseline text vector: how often each token occurs. Returns (N, vocab_size) float32.
    Word order is invisible to it: any rearrangement of a text gets the same vector."""
    out = np.zeros((len(seqs), vocab_size), dtype=np.float32)
    for i, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64)
        if s.size and (s.min() < 0 or s.max() >= vocab_size):
            raise ValueError(f"bag_of_chars: text {i} has ids outside [0, {vocab_size}).")
        out[i] = np.bincount(s, minlength=vocab_size)
    return out


# ---------------------------------------------------------------- search


def normalize(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Each row scaled to unit length: x (N, C) -> (N, C)."""
    x = jnp.asarray(x, dtype=jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def cosine_top_k(queries, keys, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k keys most similar to each query by cosine similarity, best first.

    queries: (Q, C); keys: (N, C); 1 <= k <= N. Returns (indices (Q, k) int, similarities
    (Q, k)), each row sorted from the most to the least similar.
    """
    queries, keys = jnp.asarray(queries), jnp.asarray(keys)
    if queries.ndim != 2 or keys.ndim != 2 or queries.shape[1] != keys.shape[1]:
        raise ValueError(f"cosine_top_k: need queries (Q, C) and keys (N, C) of the same width; "
                         f"got {queries.shape} and {keys.shape}.")
    if not 1 <= k <= keys.shape[0]:
        raise ValueError(f"cosine_top_k: k={k} must be between 1 and the number of keys, "
                         f"{keys.shape[0]}.")
    sims = normalize(queries) @ normalize(keys).T  # (Q, N): cosine of every pair
    top_sims, top_idx = jax.lax.top_k(sims, k)  # (Q, k) each, descending
    return np.asarray(top_idx), np.asarray(top_sims)


def recall_at_k(ranked, targets, k: int) -> float:
    """Fraction of queries whose target is among their first k results.

    ranked: (Q, K) result indices, best first, K >= k. targets: (Q,) the right index per query.
    """
    ranked, targets = np.asarray(ranked), np.asarray(targets)
    if ranked.ndim != 2 or targets.shape != ranked.shape[:1]:
        raise ValueError(f"recall_at_k: need ranked (Q, K) and targets (Q,); got {ranked.shape} "
                         f"and {targets.shape}.")
    if not 1 <= k <= ranked.shape[1]:
        raise ValueError(f"recall_at_k: k={k} needs 1 <= k <= {ranked.shape[1]} results per "
                         "query; retrieve more results.")
    hits = (ranked[:, :k] == targets[:, None]).any(axis=1)  # (Q,)
    return float(hits.mean())
