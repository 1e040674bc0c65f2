"""Scaled dot-product attention, the causal mask, and blockwise (flash) attention.

Layout everywhere: ``(batch, seq, heads, head_dim)``, written ``B, T, H, D`` for queries and
``B, S, H, D`` for keys and values (``S`` may differ from ``T``: cross-attention, KV cache). This is
the layout of ``jax.nn.dot_product_attention``, so the two can be swapped and compared.

Masks are boolean, True = "may attend", and broadcast to ``(B, H, T, S)``.

    Attention(Q, K, V) = softmax(Q Kᵀ / √d_k) V

Also here: rotary position embeddings (``apply_rope``), which rotate queries and keys by their
positions, and ``repeat_kv``, which lets fewer key/value heads serve many query heads
(grouped-query attention).
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np


def causal_mask(T: int, S: int | None = None) -> jax.Array:
    """Boolean ``(T, S)`` mask: query ``i`` may attend to key ``j`` when ``j <= i + S - T``.

    With ``S == T`` this is the lower triangle. With ``S > T`` (queries are the *last* ``T``
    positions of a longer sequence, as with a KV cache) the triangle is aligned bottom-right.
    """
    S = T if S is None else S
    return jnp.asarray(np.tril(np.ones((T, S), dtype=bool), k=S - T))


def _neg_large(dtype) -> float:
    # A finite "minus infinity": exp(x - max) underflows to exactly 0, yet a fully masked row
    # stays finite (uniform weights) instead of turning into NaN as -inf would.
    return float(jnp.finfo(dtype).min) * 0.7


def _check_qkv(q, k, v) -> None:
    layout = "(batch, seq, heads, head_dim)"
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{name} must have 4 axes {layout}, got shape {tuple(x.shape)}.")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(
            f"Batch sizes differ: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; "
            f"all three use the layout {layout}."
        )
    if k.shape[1] != v.shape[1]:
        raise ValueError(
            f"k and v must have the same sequence length: k {tuple(k.shape)}, v {tuple(v.shape)}."
        )
    if not (q.shape[2] == k.shape[2] == v.shape[2]):
        raise ValueError(
            f"Number of heads differs: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}. "
            f"Did you pass {layout} arrays with the axes in another order?"
        )
    if q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q and k must have the same head_dim to be compared: q {tuple(q.shape)}, "
            f"k {tuple(k.shape)}."
        )


def _check_mask(mask, B: int, H: int, T: int, S: int) -> jax.Array:
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(
            f"mask must be boolean (True = may attend), got dtype {mask.dtype}. For an additive "
            "mask of 0 / -inf use `mask = additive == 0`."
        )
    try:
        jnp.broadcast_shapes(mask.shape, (B, H, T, S))
        if mask.ndim > 4:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to (batch, heads, q_len, kv_len)"
            f" = {(B, H, T, S)}."
        ) from None
    return mask.reshape((1,) * (4 - mask.ndim) + mask.shape)  # explicit rank 4


def attention_weights(q, k, *, mask=None, causal: bool = False, scale: float | None = None):
    """The attention probabilities ``softmax(q kᵀ * scale)``, shape ``(B, H, T, S)``, float32.

    q: (B, T, H, D), k: (B, S, H, D). Used by ``scaled_dot_product_attention`` and for plots.
    """
    B, T, H, D = q.shape
    S = k.shape[1]
    if mask is not None:
        mask = _check_mask(mask, B, H, T, S)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    # Heads first: both matmuls batch over (B, H) with keys and values as (B, H, S, D). On XLA's
    # CPU backend this is 2-4x faster than contracting in the (B, T, H, D) layout, which makes
    # XLA transpose the keys to (B, H, D, S) first (benchmarks/RESULTS.md).
    qh, kh = q.swapaxes(1, 2), k.swapaxes(1, 2)  # (B, H, T, D), (B, H, S, D)
    # Scores in float32 whatever the input dtype: bfloat16 has too few bits for a softmax.
    logits = jnp.einsum("BHTD,BHSD->BHTS", qh, kh, preferred_element_type=jnp.float32) * scale
    if causal and mask is None:
        # A constant additive bias (0 or a large negative) is cheaper for XLA than a select.
        bias = np.where(np.tril(np.ones((T, S), bool), k=S - T), 0.0, _neg_large(jnp.float32))
        logits = logits + bias.astype(np.float32)[None, None]  # (1, 1, T, S)
    else:
        if causal:
            mask = jnp.logical_and(mask, causal_mask(T, S)[None, None])
        if mask is not None:
            logits = jnp.where(mask, logits, _neg_large(jnp.float32))
    return jax.nn.softmax(logits, axis=-1)  # (B, H, T, S)


def scaled_dot_product_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    mask: jax.Array | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> jax.Array:
    """softmax(q kᵀ / √D) v, the reference attention.

    q: (B, T, H, D); k: (B, S, H, D); v: (B, S, H, Dv) -> (B, T, H, Dv), in v's dtype.
    mask: boolean, broadcastable to (B, H, T, S), True = may attend. causal: add the causal
    mask (aligned bottom-right when S > T). A row with nothing to attend to gets uniform weights
    (a finite output), exactly as ``jax.nn.dot_product_attention`` does.
    """
    _check_qkv(q, k, v)
    probs = attention_weights(q, k, mask=mask, causal=causal, scale=scale)  # (B, H, T, S)
    out = jnp.einsum("BHTS,BHSD->BHTD", probs.astype(v.dtype), v.swapaxes(1, 2))  # (B, H, T, Dv)
    return out.swapaxes(1, 2)  # (B, T, H, Dv)


@partial(jax.jit, static_argnames=("causal", "block_size"))
def flash_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = False, block_size: int = 512
) -> jax.Array:
    """Blockwise attention with an online softmax: the idea behind FlashAttention.

    Same inputs and result as ``scaled_dot_product_attention`` (no mask argument), but keys and
    values are visited ``block_size`` at a time with ``lax.scan``. Each query keeps a running
    maximum ``m``, a running normaliser ``l`` and a running weighted sum ``acc``; when a new block
    raises the maximum, the old sums are rescaled by ``exp(m_old - m_new)``. Peak memory holds a
    ``(T, block_size)`` slice of scores, never the ``(T, S)`` matrix. Any ``S`` works: the last
    block is padded and the padding masked out. The block step is rematerialised in the backward
    pass, so gradients do not store the full matrix either.
    """
    _check_qkv(q, k, v)
    B, T, H, D = q.shape
    S, Dv = k.shape[1], v.shape[3]
    block = min(block_size, S)
    n_blocks = -(-S // block)
    pad = n_blocks * block - S
    if pad:
        k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
        v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
    k_blocks = k.reshape(B, n_blocks, block, H, D).swapaxes(0, 1)  # (N, B, blk, H, D)
    v_blocks = v.reshape(B, n_blocks, block, H, Dv).swapaxes(0, 1)  # (N, B, blk, H, Dv)
    q32 = q.astype(jnp.float32) * (1.0 / math.sqrt(D))
    q_pos = jnp.arange(T)[:, None] + (S - T)  # (T, 1) absolute position of each query
    neg = _neg_large(jnp.float32)

    @jax.checkpoint
    def step(carry, xs):
        m, l, acc = carry  # (B, H, T), (B, H, T), (B, H, T, Dv)
        kb, vb, start = xs  # (B, blk, H, D), (B, blk, H, Dv), ()
        s = jnp.einsum("BTHD,BSHD->BHTS", q32, kb.astype(jnp.float32))  # (B, H, T, blk)
        k_pos = start + jnp.arange(block)[None, :]  # (1, blk)
        if causal:
            s = jnp.where((k_pos <= q_pos)[None, None], s, neg)  # finite, like the reference
        s = jnp.where((k_pos < S)[None, None], s, -jnp.inf)  # padding keys: exactly zero weight
        m_new = jax.lax.stop_gradient(jnp.maximum(m, s.max(axis=-1)))  # result is invariant to m
        alpha = jnp.exp(m - m_new)  # rescales what was accumulated so far
        p = jnp.exp(s - m_new[..., None])  # (B, H, T, blk)
        l = alpha * l + p.sum(axis=-1)
        acc = alpha[..., None] * acc + jnp.einsum("BHTS,BSHD->BHTD", p, vb.astype(jnp.float32))
        return (m_new, l, acc), None

    init = (
        jnp.full((B, H, T), -jnp.inf, jnp.float32),
        jnp.zeros((B, H, T), jnp.float32),
        jnp.zeros((B, H, T, Dv), jnp.float32),
    )
    starts = jnp.arange(n_blocks) * block
    (_, l, acc), _ = jax.lax.scan(step, init, (k_blocks, v_blocks, starts))
    out = acc / l[..., None]  # (B, H, T, Dv)
    return out.transpose(0, 2, 1, 3).astype(v.dtype)  # (B, T, H, Dv)


# ---------------------------------------------------------------- heads: split and merge
# The reference solutions of notebook 03's head exercises (checked by checks.check_split_heads
# and checks.check_merge_heads).


def split_heads(x: jax.Array, n_heads: int) -> jax.Array:
    """Cut the channels into heads: ``(B, T, C) -> (B, T, H, D)`` with ``H = n_heads`` and
    ``D = C // H``; head ``h`` gets channels ``h*D .. (h+1)*D - 1``. A reshape only: the last
    axis is cut into H contiguous blocks, in the layout of ``scaled_dot_product_attention``."""
    B, T, C = x.shape
    if C % n_heads:
        raise ValueError(f"C = {C} channels do not split into {n_heads} heads of equal width.")
    return x.reshape(B, T, n_heads, C // n_heads)  # (B, T, H, D)


def merge_heads(x: jax.Array) -> jax.Array:
    """Put the heads side by side again: ``(B, T, H, D) -> (B, T, H*D)``, the inverse of
    ``split_heads``."""
    B, T, H, D = x.shape
    return x.reshape(B, T, H * D)  # (B, T, C)


# ---------------------------------------------------------------- rotary position embeddings
# The reference solution of notebook 03's RoPE exercise (checked by checks.check_apply_rope).


def rope_frequencies(head_dim: int, theta: float = 10_000.0) -> np.ndarray:
    """The D/2 rotation speeds of RoPE, ``theta ** (-2i / D)`` for i = 0 .. D/2 - 1 (radians per
    position): pair 0 turns by one radian per position, the last pair almost not at all."""
    if head_dim % 2 or head_dim < 2:
        raise ValueError(f"RoPE rotates pairs of dimensions, so head_dim must be even, got "
                         f"{head_dim}. Choose d_model and n_heads so that d_model // n_heads is "
                         "even.")
    if not (theta > 1 and math.isfinite(theta)):
        raise ValueError(f"rope_theta must be a finite number > 1 such as 10000.0, got {theta}.")
    return theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (D/2,)


def apply_rope(x: jax.Array, positions, theta: float = 10_000.0) -> jax.Array:
    """Rotary position embedding: rotate each pair of dimensions of ``x`` by an angle
    proportional to its position.

    x: (B, T, H, D) queries or keys; positions: (T,) or (B, T), the position of each token.
    Dimension i is paired with dimension i + D/2 (the "rotate half" layout of GPT-NeoX and the
    Hugging Face Llama), and pair i turns by ``position * theta ** (-2i / D)``:

        (x_i, x_{i+D/2}) -> (x_i cos a - x_{i+D/2} sin a,  x_i sin a + x_{i+D/2} cos a)

    Rotations keep lengths, and the dot product of a query rotated to position m with a key
    rotated to position n depends on m - n only: attention scores see relative positions.
    Returns an array of x's shape and dtype (the rotation is computed in float32).
    """
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"apply_rope expects queries or keys of shape (batch, seq, heads, "
                         f"head_dim), got shape {tuple(x.shape)}.")
    B, T, H, D = x.shape
    positions = jnp.asarray(positions)
    if positions.shape not in ((T,), (B, T)):
        raise ValueError(f"positions must have shape (seq,) = ({T},) or (batch, seq) = "
                         f"({B}, {T}) for x of shape {tuple(x.shape)}, got "
                         f"{tuple(positions.shape)}.")
    if positions.dtype == jnp.bool_ or not jnp.issubdtype(positions.dtype, jnp.number):
        raise TypeError(f"positions must be numbers (token positions 0, 1, 2, ...), got dtype "
                        f"{positions.dtype}.")
    freqs = jnp.asarray(rope_frequencies(D, theta), jnp.float32)  # (D/2,)
    freqs = freqs.reshape((1,) * positions.ndim + freqs.shape)  # (1, D/2) or (1, 1, D/2)
    angles = positions.astype(jnp.float32)[..., None] * freqs  # (T, D/2) or (B, T, D/2)
    angles = angles.reshape((-1, T, 1, D // 2))  # (1 or B, T, 1, D/2): the same for every head
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # (B, T, H, D/2) each
    out = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    return out.astype(x.dtype)  # (B, T, H, D)


def repeat_kv(x: jax.Array, n_rep: int) -> jax.Array:
    """Grouped-query attention: let each of the Hkv key (or value) heads serve ``n_rep`` query
    heads. ``(B, S, Hkv, D) -> (B, S, Hkv * n_rep, D)``; query head h reads key head
    ``h // n_rep``. ``n_rep == 1`` is plain multi-head attention (returned unchanged)."""
    if n_rep == 1:
        return x
    return jnp.repeat(x, n_rep, axis=2)  # heads 0,0,..,1,1,..: each kv head n_rep times in a row
