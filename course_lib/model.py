"""The Transformer's layers in Flax NNX, and the decoder-only language model (GPT) built from them.

One set of layers serves every model of the course: ``Attention`` (self- or cross-attention,
causal or not, with a key/value cache for generation), ``MLP`` and the pre-LayerNorm ``Block``.
The GPT stacks causal self-attention blocks; the encoder–decoder (``course_lib.seq2seq``) uses
the same blocks with a bidirectional encoder and cross-attention in the decoder; tensor
parallelism (``course_lib.parallel``) splits these same modules' weights by rules.

Every layer works in the natural layout ``(batch, seq, d_model)``, written ``(B, T, C)``.

The GPT: token + learned position embeddings, ``n_layers`` pre-LayerNorm blocks of causal
multi-head self-attention and a GELU MLP, a final LayerNorm, and an output layer tied to the
token embedding.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from course_lib.attention import (
    attention_weights,
    merge_heads,
    scaled_dot_product_attention,
    split_heads,
)

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


class Linear(nnx.Linear):
    """``nnx.Linear`` for inputs with any number of leading axes, e.g. ``(B, T, C)``.

    Speed note: the leading axes are merged into one before the matrix multiply and split
    again after it (both reshapes are free). XLA:CPU then sees a plain 2-D matrix multiply in the
    forward and backward pass instead of a contraction over (B, T), which it compiles to extra
    transposes; training runs markedly faster on a CPU. This is the only place the course
    flattens the residual stream.
    """

    def __call__(self, x: jax.Array) -> jax.Array:
        *lead, c = x.shape
        y = super().__call__(x.reshape(-1, c))  # (B*T, C_out)
        return y.reshape(*lead, y.shape[-1])  # (B, T, C_out)


@functools.cache
def normal_init(std: float):
    """N(0, std) initializer, one function object per std. Flax 0.11 keeps each layer's
    initializer in the model's structure, so two models of one config share compiled code only
    if their layers hold the very same function."""
    return nnx.initializers.normal(std)


def _linear(d_in: int, d_out: int, cfg, rngs: nnx.Rngs, std: float = 0.02) -> Linear:
    return Linear(d_in, d_out, use_bias=cfg.bias, dtype=cfg.dtype, rngs=rngs,
                  kernel_init=normal_init(std))


def _residual_std(cfg) -> float:
    """GPT-2's init for the projections that write into the residual stream: 0.02 / sqrt(2L),
    so that the sum over 2L sublayers keeps the stream's scale."""
    return 0.02 / math.sqrt(2 * cfg.n_layers)


def layer_norm(cfg, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """The LayerNorm every block uses: epsilon and bias from the config."""
    return nnx.LayerNorm(cfg.d_model, epsilon=cfg.ln_eps, use_bias=cfg.bias, dtype=cfg.dtype,
                         rngs=rngs)


class Attention(nnx.Module):
    """Multi-head attention with its own query, key, value and output projections.

    ``attn(x)`` is self-attention over ``x`` (B, T, C); ``attn(x, context)`` is cross-attention:
    queries from ``x``, keys and values from ``context`` (B, S, C), e.g. the encoder's output.
    ``causal=True`` lets position t attend to positions <= t only (a decoder); ``mask``
    (boolean, broadcastable to (B, H, T, S), True = may attend) hides more, e.g. padding.
    """

    def __init__(self, cfg, *, causal: bool, rngs: nnx.Rngs):
        C = cfg.d_model
        self.n_heads, self.causal = cfg.n_heads, causal
        self.q = _linear(C, C, cfg, rngs)
        self.k = _linear(C, C, cfg, rngs)
        self.v = _linear(C, C, cfg, rngs)
        self.proj = _linear(C, C, cfg, rngs, _residual_std(cfg))
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def heads(self, x: jax.Array, context: jax.Array | None = None):
        """Queries (B, T, H, D) from x; keys and values (B, S, H, D) from context (default x)."""
        context = x if context is None else context
        H = self.n_heads
        return (split_heads(self.q(x), H), split_heads(self.k(context), H),
                split_heads(self.v(context), H))

    def __call__(self, x: jax.Array, context: jax.Array | None = None, *, mask=None,
                 rngs: nnx.Rngs | None = None, return_weights: bool = False):
        """x (B, T, C), context (B, S, C) or None -> (B, T, C).

        return_weights=True also returns the attention weights (B, H, T, S), e.g. for plots;
        they are then computed explicitly instead of by the fused attention function."""
        q, k, v = self.heads(x, context)
        if return_weights:
            weights = attention_weights(q, k, mask=mask, causal=self.causal)  # (B, H, T, S)
            y = jnp.einsum("bhts,bshd->bthd", weights, v.astype(weights.dtype)).astype(q.dtype)
        else:
            y = scaled_dot_product_attention(q, k, v, mask=mask, causal=self.causal)  # (B,T,H,D)
        out = self.dropout(self.proj(merge_heads(y)), rngs=rngs)
        return (out, weights) if return_weights else out

    def decode(self, x: jax.Array, cache, pos: jax.Array):
        """Self-attention from T new tokens at positions pos..pos+T-1 to everything cached.

        x: (B, T, C); cache: (k, v) each (B, S, H, D) with S = block_size. Returns the output
        (B, T, C) and the cache with the new keys and values written at ``pos``.
        """
        q, k, v = self.heads(x)
        k_cache, v_cache = cache
        k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, pos, 0, 0))
        v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, pos, 0, 0))
        T, S = x.shape[1], k_cache.shape[1]
        # New token t (absolute position pos + t) may see cached slots 0 .. pos + t.
        mask = jnp.arange(S)[None, :] <= pos + jnp.arange(T)[:, None]  # (T, S)
        y = scaled_dot_product_attention(q, k_cache, v_cache, mask=mask[None, None])
        return self.proj(merge_heads(y)), (k_cache, v_cache)


class MLP(nnx.Module):
    """Position-wise feed-forward layer: widen to mlp_ratio * C, GELU, project back."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        hidden = cfg.mlp_ratio * cfg.d_model
        self.fc = _linear(cfg.d_model, hidden, cfg, rngs)
        self.proj = _linear(hidden, cfg.d_model, cfg, rngs, _residual_std(cfg))
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        return self.dropout(self.proj(jax.nn.gelu(self.fc(x))), rngs=rngs)  # (B, T, C)


class Block(nnx.Module):
    """Pre-LayerNorm Transformer block: every sublayer reads a normalised copy of the stream and
    adds its output to it.

        x = x + attn(ln1(x))                   self-attention (causal in a decoder)
        x = x + cross_attn(ln_cross(x), ctx)   only with cross=True: attend to the encoder
        x = x + mlp(ln2(x))

    causal: self-attention sees only earlier positions (GPT, decoder) or all (encoder).
    """

    def __init__(self, cfg, *, causal: bool = True, cross: bool = False, rngs: nnx.Rngs):
        self.ln1 = layer_norm(cfg, rngs)
        self.attn = Attention(cfg, causal=causal, rngs=rngs)
        if cross:
            self.ln_cross = layer_norm(cfg, rngs)
            self.cross_attn = Attention(cfg, causal=False, rngs=rngs)
        self.cross = cross
        self.ln2 = layer_norm(cfg, rngs)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, context: jax.Array | None = None, *, mask=None,
                 context_mask=None, rngs: nnx.Rngs | None = None, return_weights: bool = False):
        """x (B, T, C) -> (B, T, C). mask: for self-attention (e.g. the encoder's padding);
        context (B, S, C) and context_mask: for cross-attention (decoder blocks only).

        return_weights=True also returns the attention weights (B, H, T, S) of the block's last
        attention: cross-attention in a decoder block, self-attention otherwise."""
        a = self.attn(self.ln1(x), mask=mask, rngs=rngs, return_weights=return_weights)
        a, weights = a if return_weights else (a, None)
        x = x + a
        if self.cross:
            if context is None:
                raise ValueError("This block has cross-attention: pass the encoder's output as "
                                 "context, block(x, context, context_mask=...).")
            a = self.cross_attn(self.ln_cross(x), context, mask=context_mask, rngs=rngs,
                                return_weights=return_weights)
            a, weights = a if return_weights else (a, None)
            x = x + a
        x = x + self.mlp(self.ln2(x), rngs)
        return (x, weights) if return_weights else x

    def decode(self, x: jax.Array, cache, pos: jax.Array):
        """Like ``__call__`` for new tokens at positions pos.., with a key/value cache."""
        a, cache = self.attn.decode(self.ln1(x), cache, pos)
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
        emb_init = normal_init(0.02)
        self.wte = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, rngs=rngs,
                             embedding_init=emb_init)
        self.wpe = nnx.Embed(cfg.block_size, cfg.d_model, dtype=cfg.dtype, rngs=rngs,
                             embedding_init=emb_init)
        self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.blocks = ModuleList([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.ln_f = layer_norm(cfg, rngs)

    def embed(self, idx: jax.Array, pos: jax.Array | int = 0) -> jax.Array:
        """Token + position embeddings for idx (B, T) at positions pos..pos+T-1 -> (B, T, C)."""
        positions = pos + jnp.arange(idx.shape[1])  # (T,)
        return self.wte(idx) + self.wpe(positions)[None]  # (B, T, C)

    def hidden_states(self, idx: jax.Array, *, rngs: nnx.Rngs | None = None) -> jax.Array:
        """idx: (B, T) token ids -> the final (LayerNormed) hidden states (B, T, C): the
        features the output layer reads, e.g. for sentence embeddings or a classifier head."""
        check_tokens(idx, self.cfg.vocab_size, self.cfg.block_size)
        x = self.drop(self.embed(idx), rngs=rngs)  # (B, T, C)
        for block in self.blocks:
            x = block(x, rngs=rngs)
        return self.ln_f(x)

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
        x = self.embed(idx, pos)  # (B, T, C)
        new_cache = []
        for block, layer_cache in zip(self.blocks, cache):
            x, layer_cache = block.decode(x, layer_cache, pos)
            new_cache.append(layer_cache)
        return self.wte.attend(self.ln_f(x)).astype(jnp.float32), new_cache


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


# --- the same computations as plain functions (the references of notebook 04's exercises) ---


def mlp_forward(x, w_fc, b_fc, w_proj, b_proj) -> jax.Array:
    """The Transformer's position-wise MLP: widen, GELU, project back.

    x: (N, C); w_fc: (C, 4C); b_fc: (4C,); w_proj: (4C, C); b_proj: (C,) -> (N, C).
    GELU in its tanh form (``jax.nn.gelu``'s default), as in GPT-2 and ``course_lib.model.MLP``.
    """
    h = jax.nn.gelu(x @ w_fc + b_fc[None, :])  # (N, 4C)
    return h @ w_proj + b_proj[None, :]  # (N, C)


def block_forward(x, attn, mlp, ln1, ln2):
    """One pre-LayerNorm Transformer block, given its four sublayers as callables.

    x: (T, C) the residual stream. Each sublayer reads a *normalised copy* of the stream and its
    output is *added* to the stream:  x = x + attn(ln1(x));  x = x + mlp(ln2(x)).
    """
    x = x + attn(ln1(x))  # (T, C) attention: tokens exchange information
    return x + mlp(ln2(x))  # (T, C) MLP: each position on its own


def gpt_param_count(vocab_size: int, block_size: int, n_layers: int, d_model: int) -> int:
    """Trainable parameters of ``course_lib.model.GPT`` (no biases, tied output, 4x MLP):
    ``n_params_formula`` for these sizes.

    token table V*C + position table T*C
    + per block: 2 LayerNorm scales (2C) + q,k,v (3C^2) + attention output (C^2) + MLP (8C^2)
    + final LayerNorm scale (C); the output layer reuses the token table: nothing extra.
    """
    return n_params_formula(GPTConfig(vocab_size=vocab_size, block_size=block_size,
                                      n_layers=n_layers, n_heads=1, d_model=d_model))


def training_days(n_params: float, n_tokens: float, n_gpus: int, flops_per_gpu: float,
                  utilization: float) -> float:
    """Days to train a model of ``n_params`` parameters on ``n_tokens`` tokens.

    Training compute C = 6 N D floating-point operations: 2 N per token for the forward pass
    (a multiply and an add per weight) and 4 N for the backward pass. The cluster delivers
    n_gpus * flops_per_gpu * utilization FLOP/s (utilization: the fraction of the peak rate
    reached in practice, typically 0.3-0.5).
    """
    flops = 6.0 * n_params * n_tokens
    seconds = flops / (n_gpus * flops_per_gpu * utilization)
    return seconds / 86_400.0
