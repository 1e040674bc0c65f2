"""A decoder-only Transformer language model (GPT) in Flax NNX.

Token + learned position embeddings, ``n_layers`` pre-LayerNorm blocks of causal multi-head
self-attention and a GELU MLP, a final LayerNorm, and an output layer tied to the token embedding.

Speed note: inside the model the residual stream is kept flat, shape ``(B*T, C)``, and reshaped to
``(B, T, H, D)`` only around attention. XLA on CPU then emits plain matrix multiplies for every
linear layer and far fewer transposes in the backward pass (about 1.7x faster training here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from course_lib.attention import scaled_dot_product_attention

# flax 0.12 wants nnx.List for a list of submodules; flax 0.11 (Colab) has no nnx.List and
# accepts a plain list.
ModuleList = getattr(nnx, "List", list)

KVCache = list  # one (k, v) pair per layer, each (B, block_size, H, D)


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int  # number of distinct tokens
    block_size: int  # context length: the longest sequence the model reads
    n_layers: int  # number of Transformer blocks
    n_heads: int  # attention heads per block
    d_model: int  # width of the residual stream (embedding size)
    dropout: float = 0.0  # dropout rate in training mode
    bias: bool = False  # biases in Linear and LayerNorm layers (nanoGPT's CPU recipe: none)
    ln_eps: float = 1e-5  # LayerNorm epsilon (PyTorch's default; nnx's is 1e-6)
    mlp_ratio: int = 4  # hidden width of the MLP = mlp_ratio * d_model
    dtype: Any = jnp.float32  # compute dtype (parameters stay float32); bfloat16 for mixed precision

    def __post_init__(self):
        check_sizes(self, ("vocab_size", "block_size", "n_layers", "n_heads", "d_model",
                           "mlp_ratio"))
        if not (self.ln_eps > 0 and math.isfinite(self.ln_eps)):  # eps <= 0 can divide by 0
            raise ValueError(f"ln_eps must be a small positive number such as 1e-5, got "
                             f"{self.ln_eps}.")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def check_sizes(cfg, names: tuple[str, ...]) -> None:
    """The checks every Transformer config shares: the named fields are positive integers,
    ``n_heads`` divides ``d_model`` and ``dropout`` lies in [0, 1)."""
    for name in names:
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{type(cfg).__name__}.{name} must be a positive integer, got "
                             f"{value!r}.")
    if cfg.d_model % cfg.n_heads:
        raise ValueError(
            f"d_model={cfg.d_model} must be divisible by n_heads={cfg.n_heads} "
            "(each head gets d_model // n_heads dimensions)."
        )
    if not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {cfg.dropout}.")


def _linear(d_in: int, d_out: int, cfg: GPTConfig, rngs: nnx.Rngs, std: float = 0.02):
    return nnx.Linear(
        d_in, d_out, use_bias=cfg.bias, dtype=cfg.dtype, rngs=rngs,
        kernel_init=nnx.initializers.normal(std),
    )


class CausalSelfAttention(nnx.Module):
    def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
        self.n_heads = cfg.n_heads
        self.qkv = _linear(cfg.d_model, 3 * cfg.d_model, cfg, rngs)  # q, k, v in one matmul
        # Residual projections start smaller so the sum over layers keeps unit scale (GPT-2).
        self.proj = _linear(cfg.d_model, cfg.d_model, cfg, rngs, 0.02 / math.sqrt(2 * cfg.n_layers))
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def qkv_heads(self, x: jax.Array, B: int, T: int):
        """x: (B*T, C) -> q, k, v each (B, T, H, D)."""
        C = x.shape[-1]
        qkv = self.qkv(x).reshape(B, T, 3, self.n_heads, C // self.n_heads)  # (B, T, 3, H, D)
        return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]

    def __call__(self, x: jax.Array, B: int, T: int, rngs: nnx.Rngs | None = None) -> jax.Array:
        q, k, v = self.qkv_heads(x, B, T)  # (B, T, H, D) each
        y = scaled_dot_product_attention(q, k, v, causal=True)  # (B, T, H, D)
        return self.dropout(self.proj(y.reshape(B * T, -1)), rngs=rngs)  # (B*T, C)

    def decode(self, x: jax.Array, B: int, T: int, cache, pos: jax.Array):
        """Attend from T new tokens at positions pos..pos+T-1 to everything cached so far.

        x: (B*T, C); cache: (k, v) each (B, S, H, D) with S = block_size. Returns the output
        (B*T, C) and the cache with the new keys and values written at ``pos``.
        """
        q, k, v = self.qkv_heads(x, B, T)
        k_cache, v_cache = cache
        k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, pos, 0, 0))
        v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, pos, 0, 0))
        S = k_cache.shape[1]
        # New token t (absolute position pos + t) may see cached slots 0 .. pos + t.
        mask = jnp.arange(S)[None, :] <= pos + jnp.arange(T)[:, None]  # (T, S)
        mask = mask[None, None]  # (1, 1, T, S)
        y = scaled_dot_product_attention(q, k_cache, v_cache, mask=mask)  # (B, T, H, D)
        return self.proj(y.reshape(B * T, -1)), (k_cache, v_cache)


class MLP(nnx.Module):
    def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
        hidden = cfg.mlp_ratio * cfg.d_model
        self.fc = _linear(cfg.d_model, hidden, cfg, rngs)
        self.proj = _linear(hidden, cfg.d_model, cfg, rngs, 0.02 / math.sqrt(2 * cfg.n_layers))
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        return self.dropout(self.proj(jax.nn.gelu(self.fc(x))), rngs=rngs)  # (B*T, C)


class Block(nnx.Module):
    """Pre-LayerNorm block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
        ln = dict(epsilon=cfg.ln_eps, use_bias=cfg.bias, dtype=cfg.dtype, rngs=rngs)
        self.ln1 = nnx.LayerNorm(cfg.d_model, **ln)
        self.attn = CausalSelfAttention(cfg, rngs=rngs)
        self.ln2 = nnx.LayerNorm(cfg.d_model, **ln)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, B: int, T: int, rngs: nnx.Rngs | None = None) -> jax.Array:
        x = x + self.attn(self.ln1(x), B, T, rngs)
        return x + self.mlp(self.ln2(x), rngs)

    def decode(self, x, B, T, cache, pos):
        a, cache = self.attn.decode(self.ln1(x), B, T, cache, pos)
        x = x + a
        return x + self.mlp(self.ln2(x)), cache


def _where(index) -> str:
    """Describe one position of an id array: 'position 7' (1-D), 'row 0, position 7' (2-D)."""
    index = tuple(int(i) for i in index)
    if len(index) == 1:
        return f"position {index[0]}"
    if len(index) == 2:
        return f"row {index[0]}, position {index[1]}"
    return f"index {index}"


def check_ids(ids, vocab_size: int, what: str = "input", fix: str | None = None) -> None:
    """ValueError if a concrete id lies outside 0..vocab_size-1, naming the ids, where they
    sit, the vocabulary size and the likely fix. An id equal to vocab_size would give NaN, and
    a negative one silently reads the last embedding row, so neither may pass.

    Inside ``jit`` or ``scan`` the ids are tracers with no values yet: the check is skipped
    there, so compiled code pays nothing for it.
    """
    if isinstance(ids, jax.core.Tracer):
        return
    arr = np.asarray(ids)
    bad = (arr < 0) | (arr >= vocab_size)
    if not bad.any():
        return
    where = np.argwhere(bad)
    shown = "; ".join(f"{arr[tuple(i)]} at {_where(i)}" for i in where[:3])
    more = f"; and {len(where) - 3} more" if len(where) > 3 else ""
    fix = fix or (
        "Such ids come from another tokenizer or vocabulary than the model's: encode with the "
        "tokenizer the model was built for, whose vocab_size must equal the model's."
    )
    raise ValueError(
        f"Found {len(where)} id(s) outside the vocabulary 0..{vocab_size - 1} "
        f"(vocab_size={vocab_size}) in the {what}: {shown}{more}. {fix}"
    )


def check_tokens(idx, vocab_size: int, block_size: int | None, what: str = "input") -> None:
    """Clear errors for token arrays of the wrong rank, dtype or length (checked while tracing)
    and, when the ids are concrete values, for ids outside the vocabulary (``check_ids``)."""
    if idx.ndim != 2:
        raise ValueError(
            f"The {what} must be token ids of shape (batch, seq), got shape {tuple(idx.shape)}. "
            "For one sequence use ids[None, :]."
        )
    if not jnp.issubdtype(idx.dtype, jnp.integer):
        raise TypeError(f"The {what} must hold integer token ids, got dtype {idx.dtype}.")
    if block_size is not None and idx.shape[1] > block_size:
        raise ValueError(
            f"The {what} has {idx.shape[1]} tokens but the model's context (block_size) is "
            f"{block_size}. Crop it to the last {block_size} tokens, e.g. ids[:, -{block_size}:]."
        )
    check_ids(idx, vocab_size, what)


class GPT(nnx.Module):
    """GPT language model. ``model(idx)`` maps token ids (B, T) to next-token logits (B, T, V)."""

    def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        emb_init = nnx.initializers.normal(0.02)
        self.wte = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, rngs=rngs,
                             embedding_init=emb_init)
        self.wpe = nnx.Embed(cfg.block_size, cfg.d_model, dtype=cfg.dtype, rngs=rngs,
                             embedding_init=emb_init)
        self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.blocks = ModuleList([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.ln_f = nnx.LayerNorm(cfg.d_model, epsilon=cfg.ln_eps, use_bias=cfg.bias,
                                  dtype=cfg.dtype, rngs=rngs)

    def embed(self, idx: jax.Array, pos: jax.Array | int = 0) -> jax.Array:
        """Token + position embeddings for idx (B, T) at positions pos..pos+T-1 -> (B*T, C)."""
        B, T = idx.shape
        positions = pos + jnp.arange(T)  # (T,)
        x = self.wte(idx) + self.wpe(positions)[None]  # (B, T, C)
        return x.reshape(B * T, -1)

    def hidden_states(self, idx: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """idx: (B, T) token ids -> the final (LayerNormed) hidden states (B, T, C): the
        features the output layer reads, e.g. for sentence embeddings or a classifier head."""
        check_tokens(idx, self.cfg.vocab_size, self.cfg.block_size)
        B, T = idx.shape
        x = self.drop(self.embed(idx), rngs=rngs)  # (B*T, C)
        for block in self.blocks:
            x = block(x, B, T, rngs)
        return self.ln_f(x).reshape(B, T, -1)

    def __call__(self, idx: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """idx: (B, T) token ids -> logits (B, T, V). rngs: keys for the dropout masks in
        training mode (defaults to the streams given at construction)."""
        h = self.hidden_states(idx, rngs=rngs)  # (B, T, C)
        logits = self.wte.attend(h)  # (B, T, V): weights tied to the embedding
        return logits.astype(jnp.float32)

    # --- incremental decoding with a key/value cache (used by course_lib.generate) ---------
    def init_cache(self, batch_size: int, dtype=jnp.float32) -> KVCache:
        """Empty cache: for each layer, keys and values of shape (B, block_size, H, D)."""
        cfg = self.cfg
        shape = (batch_size, cfg.block_size, cfg.n_heads, cfg.head_dim)
        return [(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(cfg.n_layers)]

    def decode(self, idx: jax.Array, cache: KVCache, pos: jax.Array):
        """Logits for new tokens idx (B, T) at positions pos..pos+T-1, reusing cached keys and
        values of the earlier positions. Returns logits (B, T, V) and the updated cache.
        The caller keeps pos + T <= block_size."""
        check_tokens(idx, self.cfg.vocab_size, self.cfg.block_size)
        B, T = idx.shape
        x = self.embed(idx, pos)
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block.decode(x, B, T, layer_cache, pos)
            new_cache.append(layer_cache)
        logits = self.wte.attend(self.ln_f(x))
        return logits.reshape(B, T, -1).astype(jnp.float32), new_cache


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def n_params_formula(cfg: GPTConfig) -> int:
    """Parameter count from the config alone (must equal ``count_params`` of a fresh model)."""
    C, L, V = cfg.d_model, cfg.n_layers, cfg.vocab_size
    ln = C * (2 if cfg.bias else 1)  # scale (+ bias)
    attn = C * 3 * C + C * C + (3 * C + C if cfg.bias else 0)
    hidden = cfg.mlp_ratio * C
    mlp = C * hidden + hidden * C + (hidden + C if cfg.bias else 0)
    per_block = 2 * ln + attn + mlp
    return V * C + cfg.block_size * C + L * per_block + ln  # output layer is tied: no extra


def flops_per_token(cfg: GPTConfig, training: bool = True) -> float:
    """Approximate FLOPs per token: 2N forward (6N with backward) for the weights, plus the
    attention scores and weighted sum, 2 * 2 * L * T * C forward (x3 with backward)."""
    n = n_params_formula(cfg) - cfg.block_size * cfg.d_model  # position table is a look-up
    attn = 4 * cfg.n_layers * cfg.block_size * cfg.d_model
    return (6 * n + 3 * attn) if training else (2 * n + attn)
