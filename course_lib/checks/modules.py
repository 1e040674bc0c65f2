"""Checks for notebook 04's module exercises: the learner's causal self-attention layer and GPT,
written as ``nnx.Module`` classes.

Each check builds the learner's module and the library's, copies the library's weights into the
learner's by parameter name, and compares the outputs on a random batch. A wrong output is
compared with the outputs of the usual mistakes, computed from the same weights (a wrong scale, a
missing or misplaced mask, heads split along the wrong axis, a missing residual connection, ...),
and the message names the one that matches.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from course_lib.checks._core import _as_array, _call, _diagnose, _fail, _ok
from course_lib.model import GPT, Attention, Block, GPTConfig

__all__ = ["check_causal_self_attention", "check_block_module", "check_gpt_module"]


def _params(module: nnx.Module) -> dict[str, nnx.Param]:
    """Every parameter of a module by its dotted name, e.g. 'blocks.0.attn.q.kernel'."""
    return {".".join(map(str, path)): node for path, node in nnx.iter_graph(module)
            if isinstance(node, nnx.Param)}


def _spread_out(module: nnx.Module, seed: int) -> None:
    """Redraw every matrix at std 1/sqrt(fan-in): with GPT-2's small 0.02 the attention weights
    are nearly uniform, and a wrong scale or mask would hardly change the output."""
    for i, var in enumerate(_params(module).values()):
        w = var[...]
        if w.ndim == 2:
            var[...] = jax.random.normal(jax.random.key(seed + i), w.shape) / math.sqrt(w.shape[0])


def _copy_weights(name: str, source: nnx.Module, target: nnx.Module, advice: str) -> None:
    """Copy every parameter of ``source`` into the parameter of the same name in ``target``;
    fail with the names that are missing, extra or of another shape."""
    want, got = _params(source), _params(target)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else ""))
        if extra:
            parts.append("unexpected " + ", ".join(extra[:6]) + (" ..." if len(extra) > 6 else ""))
        _fail(name, f"your module's parameters do not have the expected names ({'; '.join(parts)})."
              f" {advice}\n  expected: {', '.join(sorted(want))}")
    for key, var in want.items():
        if got[key][...].shape != var[...].shape:
            _fail(name, f"parameter {key} has shape {got[key][...].shape}; expected "
                  f"{var[...].shape}. {advice}")
        got[key][...] = var[...]


# ---------------------------------------------------------------- causal self-attention


def _attention(x, wq, wk, wv, wo, H, *, scale="sqrt", mask="causal", split="heads_last",
               project=True, softmax_axis=-1):
    """Multi-head self-attention in NumPy-like JAX with switches for the usual mistakes."""
    B, T, C = x.shape
    D = C // H
    if split == "heads_last":  # the right way: (B, T, C) -> (B, T, H, D)
        q, k, v = ((x @ w).reshape(B, T, H, D) for w in (wq, wk, wv))
    else:  # reshaped straight to (B, H, T, D): mixes time steps into heads
        q, k, v = ((x @ w).reshape(B, H, T, D).transpose(0, 2, 1, 3) for w in (wq, wk, wv))
    s = jnp.einsum("bthd,bshd->bhts", q, k)
    s = s / {"sqrt": math.sqrt(D), "none": 1.0, "d": D, "c": math.sqrt(C)}[scale]
    tril = jnp.tril(jnp.ones((T, T), dtype=bool))
    if mask == "causal":
        s = jnp.where(tril, s, -jnp.inf)
    elif mask == "upper":
        s = jnp.where(tril.T, s, -jnp.inf)
    w = jax.nn.softmax(s, axis=softmax_axis)
    if mask == "after_softmax":
        w = jnp.where(tril, w, 0.0)
    y = jnp.einsum("bhts,bshd->bthd", w, v).reshape(B, T, C)
    return y @ wo if project else y


_ATTENTION_MISTAKES = (
    (dict(scale="none"), "forgot the scale: divide the scores q·k by sqrt(D), D = C // n_heads "
     "the head width, before the softmax."),
    (dict(scale="d"), "divided the scores by D; the scale is 1/sqrt(D) (D = head width)."),
    (dict(scale="c"), "scaled by 1/sqrt(C), the model width; each head's scores need "
     "1/sqrt(D) with D = C // n_heads, the head width."),
    (dict(mask="none"), "no causal mask: position t must not see positions after t. Set the "
     "scores above the diagonal to -inf before the softmax (jnp.tril gives the allowed part)."),
    (dict(mask="upper"), "the mask is the wrong way round: query t may see keys 0..t, the lower "
     "triangle (jnp.tril), not the upper one."),
    (dict(mask="after_softmax"), "masked after the softmax: the weights of each row then no longer "
     "sum to 1 (and the future leaked into the normaliser). Mask the scores before the softmax."),
    (dict(split="heads_first"), "transposed heads: reshaping (B, T, C) straight to (B, H, T, D) "
     "mixes time steps into heads. Reshape to (B, T, H, D) and let einsum pick the axes."),
    (dict(project=False), "forgot the output projection: after merging the heads back to "
     "(B, T, C), apply self.proj."),
    (dict(softmax_axis=-2), "softmax over the wrong axis: normalise over the keys (the last axis "
     "of the (B, H, T, S) scores), so each query's weights sum to 1."),
)

_ATTENTION_NAMES = ("In __init__ create nnx.Linear(C, C, use_bias=False, rngs=rngs) layers named "
                    "q, k, v and proj.")


def check_causal_self_attention(cls) -> None:
    """Check a class ``cls(cfg, *, rngs)`` whose instances map x (B, T, C) -> (B, T, C) like the
    library's ``model.Attention(cfg, causal=True)``, after copying its weights by name."""
    name = "CausalSelfAttention"
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layers=1, n_heads=2, d_model=8)
    layer = _call(name, cls, cfg, rngs=nnx.Rngs(0))
    reference = Attention(cfg, causal=True, rngs=nnx.Rngs(1))
    _spread_out(reference, seed=10)
    _copy_weights(name, reference, layer, _ATTENTION_NAMES)
    x = jax.random.normal(jax.random.key(2), (2, 5, cfg.d_model))  # (B, T, C)
    got = _as_array(name, _call(name, layer, x), (2, 5, cfg.d_model),
                    "an output of the same shape as x, (B, T, C)")
    want = np.asarray(reference(x), np.float64)
    if np.allclose(got, want, rtol=1e-4, atol=1e-5):
        _ok(name, "same output as model.Attention with the same weights")
        return
    weights = [reference.q.kernel[...], reference.k.kernel[...], reference.v.kernel[...],
               reference.proj.kernel[...]]
    if np.isnan(got).any():
        _fail(name, "the output contains NaN: a row of scores that is all -inf gives NaN "
              "weights. Use the lower triangle (query t sees keys 0..t), so every row keeps at "
              "least one key.")
    candidates = [(np.asarray(_attention(x, *weights, cfg.n_heads, **kw), np.float64), hint)
                  for kw, hint in _ATTENTION_MISTAKES]
    hint = _diagnose(got, candidates, rtol=1e-4, atol=1e-5)
    _fail(name, (hint or "the output differs from model.Attention with the same weights.")
          + f"\n  largest difference {np.abs(got - want).max():.3g} on x of shape (2, 5, 8), "
          "n_heads = 2")


# ---------------------------------------------------------------- the GPT


def _block(blk, x, n_heads, *, residual=True, pre_ln=True, causal=True, norm=True):
    """The library Block's forward pass with switches for the usual mistakes."""
    if causal:
        attn = blk.attn
    else:
        a = blk.attn
        attn = lambda h: _attention(h, a.q.kernel[...], a.k.kernel[...], a.v.kernel[...],  # noqa: E731
                                    a.proj.kernel[...], n_heads, mask="none")
    ln1, ln2 = (blk.ln1, blk.ln2) if norm else (lambda h: h, lambda h: h)
    if not pre_ln:  # the 2017 post-LN wiring
        x = ln1(x + attn(x))
        return ln2(x + blk.mlp(x))
    if not residual:
        return blk.mlp(ln2(attn(ln1(x))))
    x = x + attn(ln1(x))
    return x + blk.mlp(ln2(x))


def _gpt(net: GPT, idx, *, positions=True, final_ln=True, **block_mistake):
    """The library GPT's forward pass with switches for the usual mistakes."""
    x = net.wte(idx) + (net.wpe(jnp.arange(idx.shape[1]))[None] if positions else 0.0)
    for blk in net.blocks:
        x = _block(blk, x, net.cfg.n_heads, **block_mistake)
    return net.wte.attend(net.ln_f(x) if final_ln else x)


_BLOCK_MISTAKES = (
    (dict(residual=False), "missing residual connections: each sublayer's output is ADDED to the "
     "stream, x = x + attn(ln1(x)), then x = x + mlp(ln2(x)); yours replaces the stream."),
    (dict(pre_ln=False), "post-LN wiring (x = ln(x + f(x))): this GPT normalises a copy BEFORE "
     "each sublayer, x = x + attn(ln1(x)), and leaves the stream itself alone."),
    (dict(norm=False), "forgot the LayerNorms: each sublayer reads a normalised copy of the "
     "stream, attn(ln1(x)) and mlp(ln2(x))."),
)

_BLOCK_NAMES = "Name the sublayers ln1, attn, ln2 and mlp, as in the library's model.Block."


def check_block_module(cls) -> None:
    """Check a class ``cls(cfg, *, rngs)`` whose instances map x (B, T, C) -> (B, T, C) like the
    library's ``model.Block(cfg)``, after copying its weights by name."""
    name = "Block"
    cfg = GPTConfig(vocab_size=13, block_size=8, n_layers=2, n_heads=2, d_model=16)
    block = _call(name, cls, cfg, rngs=nnx.Rngs(0))
    reference = Block(cfg, rngs=nnx.Rngs(1))
    _spread_out(reference, seed=10)
    _copy_weights(name, reference, block, _BLOCK_NAMES)
    x = jax.random.normal(jax.random.key(2), (2, 6, cfg.d_model))
    got = _as_array(name, _call(name, block, x), (2, 6, cfg.d_model),
                    "an output of the same shape as x, (B, T, C)")
    want = np.asarray(reference(x), np.float64)
    if np.allclose(got, want, rtol=1e-4, atol=1e-4):
        _ok(name, "same output as model.Block with the same weights")
        return
    candidates = [(np.asarray(_block(reference, x, cfg.n_heads, **kw), np.float64), hint)
                  for kw, hint in _BLOCK_MISTAKES]
    hint = _diagnose(got, candidates, rtol=1e-4, atol=1e-4)
    _fail(name, (hint or "the output differs from model.Block with the same weights.")
          + f"\n  largest difference {np.abs(got - want).max():.3g} on x of shape (2, 6, 16)")


_GPT_MISTAKES = _BLOCK_MISTAKES + (
    (dict(positions=False), "forgot the position embeddings: add self.wpe(jnp.arange(T)) to the "
     "token embeddings, or the model cannot tell word order."),
    (dict(final_ln=False), "forgot the final LayerNorm: apply self.ln_f to the stream after the "
     "last block, before the output layer."),
    (dict(causal=False), "the attention is not causal: position t must not see later tokens."),
)

_GPT_NAMES = ("Use the names of the library's GPT: wte, wpe (nnx.Embed), blocks (a list of "
              "blocks with ln1, attn, ln2, mlp), ln_f; no separate output layer — the logits are "
              "self.wte.attend(h), tied to the token table.")


def check_gpt_module(cls) -> None:
    """Check a class ``cls(cfg, *, rngs)`` whose instances map token ids (B, T) to logits
    (B, T, V) like the library's ``model.GPT(cfg)``, after copying its weights by name."""
    name = "GPT"
    cfg = GPTConfig(vocab_size=13, block_size=8, n_layers=2, n_heads=2, d_model=16)
    net = _call(name, cls, cfg, rngs=nnx.Rngs(0))
    reference = GPT(cfg, rngs=nnx.Rngs(1))
    _spread_out(reference, seed=10)
    names = set(_params(net))
    if any(n.startswith(("lm_head", "head", "out")) for n in names):
        _fail(name, "your GPT has its own output layer; tie it to the token table instead: the "
              "logits are self.wte.attend(h) (h @ wte's table transposed), which saves a V x C "
              "matrix.")
    _copy_weights(name, reference, net, _GPT_NAMES)
    idx = jax.random.randint(jax.random.key(2), (2, cfg.block_size), 0, cfg.vocab_size)
    out = _call(name, net, idx)
    if getattr(out, "shape", None) == (2, cfg.block_size, cfg.d_model):
        _fail(name, "returned the hidden states (B, T, C); finish with the output layer: "
              "logits = self.wte.attend(self.ln_f(x)), shape (B, T, vocab_size).")
    got = _as_array(name, out, (2, cfg.block_size, cfg.vocab_size), "logits (B, T, vocab_size)")
    want = np.asarray(reference(idx), np.float64)
    if np.allclose(got, want, rtol=1e-4, atol=1e-4):
        _ok(name, "same logits as model.GPT with the same weights")
        return
    candidates = [(np.asarray(_gpt(reference, idx, **kw), np.float64), hint)
                  for kw, hint in _GPT_MISTAKES]
    hint = _diagnose(got, candidates, rtol=1e-4, atol=1e-4)
    _fail(name, (hint or "the logits differ from model.GPT with the same weights.")
          + f"\n  largest difference {np.abs(got - want).max():.3g} on ids of shape (2, 8)")
