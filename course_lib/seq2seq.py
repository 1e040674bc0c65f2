"""An encoder–decoder Transformer (the original 2017 shape), used for translation.

The encoder reads the whole source with bidirectional self-attention. The decoder writes the
target one token at a time: causal self-attention over what it has written, then cross-attention
from each target position to every source position, then an MLP. Pre-LayerNorm throughout.

Token id ``PAD`` (0) marks padding in both source and target: padded source positions are masked
out of attention and padded target positions are left out of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from course_lib.data import is_int
from course_lib.model import (
    Block,
    ModuleList,
    check_ids,
    check_layer_options,
    check_sizes,
    check_tokens,
    layer_norm,
    normal_init,
)

PAD = 0


@dataclass(frozen=True)
class Seq2SeqConfig:
    src_vocab_size: int
    tgt_vocab_size: int
    src_len: int  # longest source sequence
    tgt_len: int  # longest target sequence (BOS included)
    n_layers: int = 2  # layers in the encoder and in the decoder
    n_heads: int = 4
    d_model: int = 128
    dropout: float = 0.0
    # The fields the shared layers (course_lib.model) read, with the GPT's defaults:
    bias: bool = False  # biases in Linear and LayerNorm layers
    ln_eps: float = 1e-5  # LayerNorm epsilon
    mlp_ratio: int = 4  # hidden width of the MLP = mlp_ratio * d_model
    dtype: Any = jnp.float32  # compute dtype

    def __post_init__(self):
        check_sizes(self, ("src_vocab_size", "tgt_vocab_size", "src_len", "tgt_len", "n_layers",
                           "n_heads", "d_model", "mlp_ratio"))
        check_layer_options(self)


class Seq2Seq(nnx.Module):
    """``model(src, tgt_in)`` -> logits (B, T, tgt_vocab) for the next target token.

    The encoder is a stack of ``model.Block(causal=False)``: bidirectional self-attention. The
    decoder is a stack of ``model.Block(causal=True, cross=True)``: causal self-attention, then
    cross-attention to the encoder's output, then the MLP. The same layers as the GPT's.
    """

    def __init__(self, cfg: Seq2SeqConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        init, C = normal_init(0.02), cfg.d_model
        self.src_emb = nnx.Embed(cfg.src_vocab_size, C, embedding_init=init, rngs=rngs)
        self.tgt_emb = nnx.Embed(cfg.tgt_vocab_size, C, embedding_init=init, rngs=rngs)
        self.src_pos = nnx.Embed(cfg.src_len, C, embedding_init=init, rngs=rngs)
        self.tgt_pos = nnx.Embed(cfg.tgt_len, C, embedding_init=init, rngs=rngs)
        self.encoder = ModuleList([Block(cfg, causal=False, rngs=rngs)
                                   for _ in range(cfg.n_layers)])
        self.decoder = ModuleList([Block(cfg, causal=True, cross=True, rngs=rngs)
                                   for _ in range(cfg.n_layers)])
        self.ln_enc = layer_norm(cfg, rngs)
        self.ln_dec = layer_norm(cfg, rngs)

    @staticmethod
    def source_mask(src):
        """(B, S) ids -> boolean (B, 1, 1, S): True where the source is a real token."""
        return (src != PAD)[:, None, None, :]

    def encode(self, src, *, rngs: nnx.Rngs | None = None):
        """src (B, S) -> the encoder's output (B, S, C) and the source mask (B, 1, 1, S)."""
        check_tokens(src, self.cfg.src_vocab_size, self.cfg.src_len, what="source")
        mask = self.source_mask(src)
        x = self.src_emb(src) + self.src_pos(jnp.arange(src.shape[1]))[None]  # (B, S, C)
        for block in self.encoder:
            x = block(x, mask=mask, rngs=rngs)
        return self.ln_enc(x), mask

    def _target_stream(self, tgt_in):
        check_tokens(tgt_in, self.cfg.tgt_vocab_size, self.cfg.tgt_len, what="target")
        return self.tgt_emb(tgt_in) + self.tgt_pos(jnp.arange(tgt_in.shape[1]))[None]  # (B,T,C)

    def decode(self, tgt_in, memory, src_mask, *, rngs: nnx.Rngs | None = None):
        """tgt_in (B, T), memory (B, S, C) -> logits (B, T, V) for the next target token."""
        y = self._target_stream(tgt_in)
        for block in self.decoder:
            y = block(y, memory, context_mask=src_mask, rngs=rngs)
        return self.tgt_emb.attend(self.ln_dec(y)).astype(jnp.float32)  # (B, T, V) tied output

    def __call__(self, src, tgt_in, *, rngs: nnx.Rngs | None = None):
        memory, mask = self.encode(src, rngs=rngs)
        return self.decode(tgt_in, memory, mask, rngs=rngs)

    def cross_attention(self, src, tgt_in):
        """Cross-attention weights of every decoder layer: list of (B, H, T, S), for plots."""
        memory, mask = self.encode(src)
        y = self._target_stream(tgt_in)
        maps = []
        for block in self.decoder:
            y, weights = block(y, memory, context_mask=mask, return_weights=True)
            maps.append(weights)
        return maps


def masked_loss(logits, targets):
    """Mean cross-entropy over non-padding target positions. (B, T, V), (B, T) -> scalar."""
    check_ids(targets, logits.shape[-1], "targets",
              "Targets must index the logits' last axis: use the target vocabulary's ids.")
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # (B, T)
    keep = (targets != PAD).astype(losses.dtype)
    return (losses * keep).sum() / jnp.maximum(keep.sum(), 1.0)


def _check_decoding(model: Seq2Seq, src, *, max_len: int | None, **special: int) -> None:
    """Clear errors for the arguments of the decoders, before anything is compiled: source ids
    outside the source vocabulary, BOS / EOS ids outside the target vocabulary, a max_len the
    decoder cannot hold."""
    cfg = model.cfg
    check_tokens(src, cfg.src_vocab_size, cfg.src_len, what="source")
    for name, tok in special.items():
        if not is_int(tok) or not 0 <= tok < cfg.tgt_vocab_size:
            raise ValueError(f"{name} must be a target token id in 0..{cfg.tgt_vocab_size - 1}, "
                             f"got {tok!r}: pass the target vocabulary's {name.upper()} id.")
    if max_len is not None and (not is_int(max_len) or not 1 <= max_len <= cfg.tgt_len):
        raise ValueError(f"max_len must be an integer between 1 and the model's tgt_len "
                         f"{cfg.tgt_len} (BOS included), got {max_len!r}.")


def greedy_decode(model: Seq2Seq, src, *, bos: int, max_len: int):
    """Translate a batch: src (B, S) -> (B, max_len) target ids, BOS first, greedy choice.
    Everything after an end token is whatever the model chose; cut at EOS when reading it."""
    _check_decoding(model, src, bos=bos, max_len=max_len)
    return _greedy_decode(model, src, bos=bos, max_len=max_len)


@nnx.jit(static_argnames=("max_len", "bos"))
def _greedy_decode(model: Seq2Seq, src, *, bos: int, max_len: int):
    memory, mask = model.encode(src)
    B = src.shape[0]
    out = jnp.full((B, max_len), PAD, jnp.int32).at[:, 0].set(bos)

    def step(out, t):
        logits = model.decode(out, memory, mask)  # (B, max_len, V), causal: later slots unused
        nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t, 1, keepdims=False), -1)
        return jax.lax.dynamic_update_slice(out, nxt[:, None].astype(jnp.int32), (0, t + 1)), None

    out, _ = jax.lax.scan(step, out, jnp.arange(max_len - 1))
    return out


def beam_search(model: Seq2Seq, src, *, bos: int, eos: int, max_len: int, beam_size: int = 4):
    """Translate a batch by beam search: keep the ``beam_size`` most probable prefixes at every
    step instead of greedy's single one.

    src (B, S) -> (ids (B, max_len): the best sequence, BOS first, PAD after its EOS;
    logprob (B,): its log-probability, summed over the tokens after BOS up to and including EOS).
    A finished prefix (one that ended with EOS) stays in the beam with its score and competes
    with the unfinished ones. With ``beam_size=1`` this is greedy decoding. A wider beam
    usually finds a more probable sequence than greedy, but no beam of fixed width is
    guaranteed to: the prefix that greedy keeps can drop out of the beam.
    """
    _check_decoding(model, src, bos=bos, eos=eos, max_len=max_len)
    V = model.cfg.tgt_vocab_size
    if not is_int(beam_size) or not 1 <= beam_size <= V:
        raise ValueError(f"beam_size must be an integer between 1 and the vocabulary size {V}, "
                         f"got {beam_size!r}.")
    return _beam_search(model, src, bos=bos, eos=eos, max_len=max_len, beam_size=beam_size)


@nnx.jit(static_argnames=("max_len", "bos", "eos", "beam_size"))
def _beam_search(model: Seq2Seq, src, *, bos: int, eos: int, max_len: int, beam_size: int):
    B, K, L = src.shape[0], beam_size, max_len
    V = model.cfg.tgt_vocab_size
    memory, mask = model.encode(src)  # (B, S, C), (B, 1, 1, S)
    memory, mask = jnp.repeat(memory, K, axis=0), jnp.repeat(mask, K, axis=0)  # B*K rows
    seqs = jnp.full((B, K, L), PAD, jnp.int32).at[:, :, 0].set(bos)
    scores = jnp.full((B, K), -jnp.inf).at[:, 0].set(0.0)  # one live beam at the start
    done = jnp.zeros((B, K), bool)
    pad_only = jnp.full((1, 1, V), -jnp.inf).at[..., PAD].set(0.0)  # a finished beam's options

    def step(carry, t):
        seqs, scores, done = carry
        logits = model.decode(seqs.reshape(B * K, L), memory, mask)  # (B*K, L, V), causal
        logp = jax.nn.log_softmax(jax.lax.dynamic_index_in_dim(logits, t, 1, keepdims=False))
        logp = jnp.where(done[..., None], pad_only, logp.reshape(B, K, V))  # (B, K, V)
        scores, flat = jax.lax.top_k((scores[..., None] + logp).reshape(B, K * V), K)  # (B, K)
        beam, tok = flat // V, (flat % V).astype(jnp.int32)  # which prefix, which next token
        seqs = jnp.take_along_axis(seqs, beam[..., None], axis=1).at[:, :, t + 1].set(tok)
        done = jnp.take_along_axis(done, beam, axis=1) | (tok == eos)
        return (seqs, scores, done), None

    (seqs, scores, _), _ = jax.lax.scan(step, (seqs, scores, done), jnp.arange(L - 1))
    return seqs[:, 0], scores[:, 0]  # top_k sorts best first


def sequence_logprob(model: Seq2Seq, src, ids, *, eos: int):
    """Log-probability of decoded sequences ids (B, L) (BOS first) given src (B, S): the sum
    over the tokens after BOS up to and including the first EOS. -> (B,)"""
    _check_decoding(model, src, eos=eos, max_len=None)
    check_tokens(ids, model.cfg.tgt_vocab_size, None, what="target")
    return _sequence_logprob(model, src, ids, eos=eos)


@nnx.jit(static_argnames=("eos",))
def _sequence_logprob(model: Seq2Seq, src, ids, *, eos: int):
    logp = jax.nn.log_softmax(model(src, ids[:, :-1]), axis=-1)  # (B, L-1, V)
    nxt = ids[:, 1:]  # (B, L-1) the tokens being scored
    picked = jnp.take_along_axis(logp, nxt[..., None], axis=-1)[..., 0]  # (B, L-1)
    is_eos = (nxt == eos).astype(jnp.int32)
    keep = (jnp.cumsum(is_eos, axis=1) - is_eos) == 0  # up to and including the first EOS
    return jnp.where(keep, picked, 0.0).sum(axis=1)
