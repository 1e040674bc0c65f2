"""The Transformer's layers in Flax NNX, and the decoder-only language model (GPT) built from them.

One set of layers serves every model of the course: ``Attention`` (self- or cross-attention,
causal or not, with a key/value cache for generation), ``MLP`` and the pre-LayerNorm ``Block``.
The GPT stacks causal self-attention blocks; the encoder–decoder (``course_lib.seq2seq``) uses
the same blocks with a bidirectional encoder and cross-attention in the decoder; tensor
parallelism (``course_lib.parallel``) splits these same modules' weights by rules.

Every layer works in the natural layout ``(batch, seq, d_model)``, written ``(B, T, C)``.

The GPT: token + learned position embeddings, ``n_layers`` pre-LayerNorm blocks of causal
multi-head self-attention and a GELU MLP, a final LayerNorm, and an output layer tied to the
token embedding. That is GPT-2's design and the default. The config's options turn the same
layers into a Llama-style model, one choice at a time:

    pos_encoding="rope"   rotary position embeddings on queries and keys, no position table
    norm="rmsnorm"        RMSNorm (scale only, no mean subtraction) instead of LayerNorm
    mlp="swiglu"          a gated MLP: proj(silu(gate(x)) * fc(x))
    n_kv_heads=2          grouped-query attention: fewer key/value heads than query heads
    tie_embeddings=False  a separate output layer
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
    apply_rope,
    attention_weights,
    merge_heads,
    repeat_kv,
    rope_frequencies,
    scaled_dot_product_attention,
    split_heads,
)

# flax 0.12 wants nnx.List for a list of submodules; flax 0.11 (Colab) has no nnx.List and
# accepts a plain list.
ModuleList = getattr(nnx, "List", list)

KVCache = list  # one (k, v) pair per layer, each (B, block_size, n_kv_heads, D)

POS_ENCODINGS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")


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
    # Llama-era options (the defaults are GPT-2's):
    pos_encoding: str = "learned"  # "learned" position table, or "rope" (rotary, in attention)
    norm: str = "layernorm"  # "layernorm" or "rmsnorm"
    mlp: str = "gelu"  # "gelu" MLP or "swiglu" (gated, three matrices)
    n_kv_heads: int | None = None  # key/value heads; None = n_heads (MHA), 1 = multi-query
    rope_theta: float = 10_000.0  # RoPE's base: pair i turns by theta ** (-2i / head_dim)
    mlp_hidden: int | None = None  # MLP width; None = mlp_ratio * d_model (2/3 of it, swiglu)
    tie_embeddings: bool = True  # output layer = token table (GPT-2) or its own (Llama)

    def __post_init__(self):
        check_sizes(self, ("vocab_size", "block_size", "n_layers", "n_heads", "d_model",
                           "mlp_ratio"))
        check_layer_options(self)
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"pos_encoding must be one of {POS_ENCODINGS}, got "
                             f"{self.pos_encoding!r}.")
        if self.pos_encoding == "rope":
            rope_frequencies(self.head_dim, self.rope_theta)  # even head_dim, sensible theta

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads (n_kv_heads, or n_heads when it is None)."""
        return kv_heads(self)

    @property
    def hidden(self) -> int:
        """The MLP's hidden width."""
        return mlp_hidden(self)


def kv_heads(cfg) -> int:
    """Key/value heads of a config: ``n_kv_heads``, or ``n_heads`` when unset (plain MHA)."""
    n = getattr(cfg, "n_kv_heads", None)
    return cfg.n_heads if n is None else n


def mlp_hidden(cfg) -> int:
    """The MLP's hidden width: ``mlp_hidden`` if set; else ``mlp_ratio * d_model`` for GELU and
    two thirds of it for SwiGLU (rounded up to a multiple of 8), so that SwiGLU's three matrices
    hold about as many weights as GELU's two, as in Llama."""
    if getattr(cfg, "mlp_hidden", None) is not None:
        return cfg.mlp_hidden
    width = cfg.mlp_ratio * cfg.d_model
    if getattr(cfg, "mlp", "gelu") == "swiglu":
        return -(-2 * width // 3 // 8) * 8 if width >= 12 else max(1, 2 * width // 3)
    return width


def check_layer_options(cfg) -> None:
    """Clear errors for the layer options a config may carry (norm, mlp, n_kv_heads,
    mlp_hidden, ln_eps), before any layer is built."""
    if not (cfg.ln_eps > 0 and math.isfinite(cfg.ln_eps)):  # eps <= 0 can divide by 0
        raise ValueError(f"ln_eps must be a small positive number such as 1e-5, got "
                         f"{cfg.ln_eps}.")
    name = type(cfg).__name__
    for field, allowed in (("norm", NORMS), ("mlp", MLPS)):
        value = getattr(cfg, field, allowed[0])
        if value not in allowed:
            raise ValueError(f"{name}.{field} must be one of {allowed}, got {value!r}.")
    n_kv = getattr(cfg, "n_kv_heads", None)
    if n_kv is not None:
        if not isinstance(n_kv, int) or isinstance(n_kv, bool) or n_kv < 1:
            raise ValueError(f"{name}.n_kv_heads must be None (= n_heads) or a positive integer, "
                             f"got {n_kv!r}.")
        if cfg.n_heads % n_kv:
            divisors = [d for d in range(1, cfg.n_heads + 1) if cfg.n_heads % d == 0]
            raise ValueError(
                f"n_kv_heads={n_kv} must divide n_heads={cfg.n_heads}: each key/value head "
                f"serves an equal group of query heads. Choose one of {divisors} (1 = "
                "multi-query attention, n_heads = plain multi-head attention).")
    hidden = getattr(cfg, "mlp_hidden", None)
    if hidden is not None and (not isinstance(hidden, int) or isinstance(hidden, bool)
                               or hidden < 1):
        raise ValueError(f"{name}.mlp_hidden must be None or a positive integer, got "
                         f"{hidden!r}.")


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


def layer_norm(cfg, rngs: nnx.Rngs) -> nnx.LayerNorm | nnx.RMSNorm:
    """The normalisation every block uses: LayerNorm (epsilon and bias from the config) or,
    with ``norm="rmsnorm"``, RMSNorm: x / sqrt(mean(x^2) + eps) * scale, no mean and no bias."""
    if getattr(cfg, "norm", "layernorm") == "rmsnorm":
        return nnx.RMSNorm(cfg.d_model, epsilon=cfg.ln_eps, dtype=cfg.dtype, rngs=rngs)
    return nnx.LayerNorm(cfg.d_model, epsilon=cfg.ln_eps, use_bias=cfg.bias, dtype=cfg.dtype,
                         rngs=rngs)


def _rope_theta(cfg) -> float | None:
    """RoPE's base when the config asks for rotary positions, else None."""
    return cfg.rope_theta if getattr(cfg, "pos_encoding", "learned") == "rope" else None


class Attention(nnx.Module):
    """Multi-head attention with its own query, key, value and output projections.

    ``attn(x)`` is self-attention over ``x`` (B, T, C); ``attn(x, context)`` is cross-attention:
    queries from ``x``, keys and values from ``context`` (B, S, C), e.g. the encoder's output.
    ``causal=True`` lets position t attend to positions <= t only (a decoder); ``mask``
    (boolean, broadcastable to (B, H, T, S), True = may attend) hides more, e.g. padding.

    Grouped-query attention: with ``n_kv_heads`` below ``n_heads`` the key and value
    projections are narrower (n_kv_heads * D outputs), and each key/value head serves
    n_heads // n_kv_heads query heads. ``rope_theta``: rotate queries and keys by their
    positions (RoPE) before comparing them; None = no rotation (self-attention only).
    """

    def __init__(self, cfg, *, causal: bool, rngs: nnx.Rngs, rope_theta: float | None = None):
        C = cfg.d_model
        self.n_heads, self.n_kv_heads, self.causal = cfg.n_heads, kv_heads(cfg), causal
        self.rope_theta = rope_theta
        kv_width = self.n_kv_heads * (C // cfg.n_heads)
        self.q = _linear(C, C, cfg, rngs)
        self.k = _linear(C, kv_width, cfg, rngs)
        self.v = _linear(C, kv_width, cfg, rngs)
        self.proj = _linear(C, C, cfg, rngs, _residual_std(cfg))
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def heads(self, x: jax.Array, context: jax.Array | None = None, pos: jax.Array | int = 0):
        """Queries (B, T, H, D) from x; keys and values (B, S, Hkv, D) from context (default x).
        With RoPE, queries and keys are rotated to positions pos, pos + 1, ..."""
        context = x if context is None else context
        q = split_heads(self.q(x), self.n_heads)
        k = split_heads(self.k(context), self.n_kv_heads)
        v = split_heads(self.v(context), self.n_kv_heads)
        if self.rope_theta is not None:
            if context is not x:
                raise ValueError("RoPE rotates by positions within one sequence: use it for "
                                 "self-attention, not cross-attention.")
            positions = pos + jnp.arange(x.shape[1])  # (T,)
            q = apply_rope(q, positions, self.rope_theta)
            k = apply_rope(k, positions, self.rope_theta)
        return q, k, v

    def _repeat(self, k, v):
        """Key/value heads repeated to one per query head (a no-op for plain MHA)."""
        n_rep = self.n_heads // self.n_kv_heads
        return repeat_kv(k, n_rep), repeat_kv(v, n_rep)

    def __call__(self, x: jax.Array, context: jax.Array | None = None, *, mask=None,
                 rngs: nnx.Rngs | None = None, return_weights: bool = False):
        """x (B, T, C), context (B, S, C) or None -> (B, T, C).

        return_weights=True also returns the attention weights (B, H, T, S), e.g. for plots;
        they are then computed explicitly instead of by the fused attention function."""
        q, k, v = self.heads(x, context)
        k, v = self._repeat(k, v)  # (B, S, H, D)
        if return_weights:
            weights = attention_weights(q, k, mask=mask, causal=self.causal)  # (B, H, T, S)
            y = jnp.einsum("bhts,bshd->bthd", weights, v.astype(weights.dtype)).astype(q.dtype)
        else:
            y = scaled_dot_product_attention(q, k, v, mask=mask, causal=self.causal)  # (B,T,H,D)
        out = self.dropout(self.proj(merge_heads(y)), rngs=rngs)
        return (out, weights) if return_weights else out

    def decode(self, x: jax.Array, cache, pos: jax.Array):
        """Self-attention from T new tokens at positions pos..pos+T-1 to everything cached.

        x: (B, T, C); cache: (k, v) each (B, S, Hkv, D) with S = block_size. Returns the output
        (B, T, C) and the cache with the new keys and values written at ``pos``. The cache
        holds only the n_kv_heads key/value heads: that is what grouped-query attention saves.
        """
        q, k, v = self.heads(x, pos=pos)
        k_cache, v_cache = cache
        k_cache = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, pos, 0, 0))
        v_cache = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, pos, 0, 0))
        T, S = x.shape[1], k_cache.shape[1]
        # New token t (absolute position pos + t) may see cached slots 0 .. pos + t.
        mask = jnp.arange(S)[None, :] <= pos + jnp.arange(T)[:, None]  # (T, S)
        k_all, v_all = self._repeat(k_cache, v_cache)  # (B, S, H, D)
        y = scaled_dot_product_attention(q, k_all, v_all, mask=mask[None, None])
        return self.proj(merge_heads(y)), (k_cache, v_cache)


class MLP(nnx.Module):
    """Position-wise feed-forward layer: widen to the hidden width, GELU, project back.

    With ``mlp="swiglu"`` (Llama): a second widening matrix ``gate`` decides, unit by unit, how
    much of ``fc(x)`` passes: ``proj(silu(gate(x)) * fc(x))``.
    """

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        hidden = mlp_hidden(cfg)
        self.gated = getattr(cfg, "mlp", "gelu") == "swiglu"
        if self.gated:
            self.gate = _linear(cfg.d_model, hidden, cfg, rngs)
        self.fc = _linear(cfg.d_model, hidden, cfg, rngs)
        self.proj = _linear(hidden, cfg.d_model, cfg, rngs, _residual_std(cfg))
        self.dropout = nnx.Dropout(cfg.dropout, rngs=rngs)

    def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
        if self.gated:
            h = jax.nn.silu(self.gate(x)) * self.fc(x)  # (B, T, hidden)
        else:
            h = jax.nn.gelu(self.fc(x))  # (B, T, hidden)
        return self.dropout(self.proj(h), rngs=rngs)  # (B, T, C)


class Block(nnx.Module):
    """Pre-LayerNorm Transformer block: every sublayer reads a normalised copy of the stream and
    adds its output to it.

        x = x + attn(ln1(x))                   self-attention (causal in a decoder)
        x = x + cross_attn(ln_cross(x), ctx)   only with cross=True: attend to the encoder
        x = x + mlp(ln2(x))

    causal: self-attention sees only earlier positions (GPT, decoder) or all (encoder).
    The config chooses the norm (LayerNorm or RMSNorm), the MLP (GELU or SwiGLU), the number of
    key/value heads and whether self-attention rotates by position (RoPE): a Llama block is
    this block with norm="rmsnorm", mlp="swiglu", pos_encoding="rope" and n_kv_heads < n_heads.
    """

    def __init__(self, cfg, *, causal: bool = True, cross: bool = False, rngs: nnx.Rngs):
        self.ln1 = layer_norm(cfg, rngs)
        self.attn = Attention(cfg, causal=causal, rngs=rngs, rope_theta=_rope_theta(cfg))
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
    """GPT language model. ``model(idx)`` maps token ids (B, T) to next-token logits (B, T, V).

    With ``pos_encoding="rope"`` there is no position table (``wpe``): the blocks rotate queries
    and keys instead. With ``tie_embeddings=False`` the output layer is its own ``lm_head``."""

    def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        emb_init = normal_init(0.02)
        self.wte = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.dtype, rngs=rngs,
                             embedding_init=emb_init)
        if cfg.pos_encoding == "learned":
            self.wpe = nnx.Embed(cfg.block_size, cfg.d_model, dtype=cfg.dtype, rngs=rngs,
                                 embedding_init=emb_init)
        self.drop = nnx.Dropout(cfg.dropout, rngs=rngs)
        self.blocks = ModuleList([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.ln_f = layer_norm(cfg, rngs)
        if not cfg.tie_embeddings:
            self.lm_head = Linear(cfg.d_model, cfg.vocab_size, use_bias=False, dtype=cfg.dtype,
                                  kernel_init=emb_init, rngs=rngs)

    def embed(self, idx: jax.Array, pos: jax.Array | int = 0) -> jax.Array:
        """Token + position embeddings for idx (B, T) at positions pos..pos+T-1 -> (B, T, C).
        With RoPE only the token embeddings: positions enter inside attention."""
        if self.cfg.pos_encoding == "rope":
            return self.wte(idx)  # (B, T, C)
        positions = pos + jnp.arange(idx.shape[1])  # (T,)
        return self.wte(idx) + self.wpe(positions)[None]  # (B, T, C)

    def logits(self, h: jax.Array) -> jax.Array:
        """Final hidden states (B, T, C) -> logits (B, T, V), float32: the token table read
        backwards (tied) or the model's own output layer."""
        out = self.wte.attend(h) if self.cfg.tie_embeddings else self.lm_head(h)
        return out.astype(jnp.float32)

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
        return self.logits(h)  # (B, T, V)

    # --- incremental decoding with a key/value cache (used by course_lib.generate) ---------
    def init_cache(self, batch_size: int, dtype=jnp.float32) -> KVCache:
        """Empty cache: for each layer, keys and values of shape (B, block_size, Hkv, D), with
        Hkv = n_kv_heads (grouped-query attention keeps fewer heads, hence a smaller cache)."""
        cfg = self.cfg
        shape = (batch_size, cfg.block_size, cfg.kv_heads, cfg.head_dim)
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
        return self.logits(self.ln_f(x)), new_cache


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


def n_params_formula(cfg: GPTConfig) -> int:
    """Parameter count from the config alone (must equal ``count_params`` of a fresh model).

    Per block: two norms, attention (q and the output projection C x C; k and v C x Hkv*D
    each) and the MLP (two matrices, three with SwiGLU). Plus the token table, the position
    table (learned positions only), the final norm and, when untied, the output layer."""
    C, L, V = cfg.d_model, cfg.n_layers, cfg.vocab_size
    rms = cfg.norm == "rmsnorm"
    norm = C * (2 if cfg.bias and not rms else 1)  # scale (+ bias; RMSNorm has none)
    kv = cfg.kv_heads * cfg.head_dim  # width of the key and of the value projection
    attn = 2 * C * C + 2 * C * kv + (2 * C + 2 * kv if cfg.bias else 0)
    hidden, n_in = cfg.hidden, (2 if cfg.mlp == "swiglu" else 1)  # widening matrices
    mlp = n_in * C * hidden + hidden * C + (n_in * hidden + C if cfg.bias else 0)
    per_block = 2 * norm + attn + mlp
    positions = cfg.block_size * C if cfg.pos_encoding == "learned" else 0
    output = 0 if cfg.tie_embeddings else C * V
    return V * C + positions + L * per_block + norm + output


def flops_per_token(cfg: GPTConfig, training: bool = True) -> float:
    """Approximate FLOPs per token: 2N forward (6N with backward) for the weights, plus the
    attention scores and weighted sum, 2 * 2 * L * T * C forward (x3 with backward)."""
    lookups = cfg.block_size * cfg.d_model if cfg.pos_encoding == "learned" else 0
    if not cfg.tie_embeddings:
        lookups += cfg.vocab_size * cfg.d_model  # untied: the input table is only read
    n = n_params_formula(cfg) - lookups  # tables that are looked up, not multiplied
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
