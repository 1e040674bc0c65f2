"""Exercises of notebook 04 written as ``nnx.Module`` classes: causal self-attention, the pre-LN
block and the GPT.

The learner's "function" is a class ``cls(cfg, *, rngs)``. To check it, the runner builds it,
copies the weights of the library's module (``model.Attention``, ``model.Block``, ``model.GPT``)
into it by parameter name and compares the outputs on a random input. Each typical mistake is a
wrong module: the library's class with a forward pass that makes that mistake (a wrong scale, a
missing or misplaced mask, heads split along the wrong axis, a missing residual connection, ...).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from course_lib.checks._core import Case, Exercise, Mistake, _call, _fail, checker
from course_lib.model import GPT, Attention, Block, GPTConfig

__all__ = ["check_causal_self_attention", "check_block_module", "check_gpt_module"]


# ---------------------------------------------------------------- building and comparing modules


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
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        parts = [f"{what} {', '.join(names[:6])}{' ...' if len(names) > 6 else ''}"
                 for what, names in (("missing", missing), ("unexpected", extra)) if names]
        _fail(name, f"your module's parameters do not have the expected names ({'; '.join(parts)})."
              f" {advice}\n  expected: {', '.join(sorted(want))}")
    for key, var in want.items():
        if got[key][...].shape != var[...].shape:
            _fail(name, f"parameter {key} has shape {got[key][...].shape}; expected "
                  f"{var[...].shape}. {advice}")
        got[key][...] = var[...]


def _module_call(name: str, library_cls, advice: str, before=None):
    """``Exercise.call`` for a module exercise: build ``cls(cfg)``, give it the weights of the
    library's module (redrawn at a larger scale), and run it on the case's input."""

    def call(cls, case: Case):
        cfg, x = case.args
        module = cls(cfg, rngs=nnx.Rngs(0))  # the runner calls the learner's class safely
        reference = library_cls(cfg, rngs=nnx.Rngs(1))
        _spread_out(reference, seed=10)
        if before is not None:
            before(module)
        _copy_weights(name, reference, module, advice)
        return _call(name, module, x)

    return call


def _largest_difference(case: Case, got, want) -> str:
    """The line under a hint: how far the learner's output is from the library module's."""
    if np.shape(got) != np.shape(want):
        return ""
    return f"\n  largest difference {np.abs(got - want).max():.3g} on {case.note}"


def _wrong(library_cls, forward):
    """A wrong module: the library's class whose forward pass is ``forward(module, x)``."""
    return type("Wrong" + library_cls.__name__, (library_cls,),
                {"__call__": lambda self, x: forward(self, x)})


# ---------------------------------------------------------------- causal self-attention


def _attention(x, wq, wk, wv, wo, H, *, scale="sqrt", mask="causal", split="heads_last",
               project=True, softmax_axis=-1):
    """Multi-head self-attention with switches for the usual mistakes."""
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


def _attention_of(layer: Attention, x, **mistake):
    return _attention(x, layer.q.kernel[...], layer.k.kernel[...], layer.v.kernel[...],
                      layer.proj.kernel[...], layer.n_heads, **mistake)


class _CausalAttention(Attention):
    """``model.Attention(cfg, causal=True)`` with the learner's constructor signature."""

    def __init__(self, cfg, *, rngs):
        super().__init__(cfg, causal=True, rngs=rngs)


def _wrong_attention(**mistake):
    return _wrong(_CausalAttention, lambda self, x: _attention_of(self, x, **mistake))


def _attention_cases():
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layers=1, n_heads=2, d_model=8)
    x = jax.random.normal(jax.random.key(2), (2, 5, cfg.d_model))  # (B, T, C)
    return [Case((cfg, x), note="x of shape (2, 5, 8), n_heads = 2")]


CAUSAL_SELF_ATTENTION = Exercise(
    "causal_self_attention",
    doc="""Check a class ``cls(cfg, *, rngs)`` whose instances map x (B, T, C) -> (B, T, C) like
    the library's ``model.Attention(cfg, causal=True)``, after copying its weights by name.""",
    reference=_CausalAttention,
    cases=_attention_cases,
    call=_module_call("causal_self_attention", _CausalAttention,
                      "In __init__ create nnx.Linear(C, C, use_bias=False, rngs=rngs) layers "
                      "named q, k, v and proj."),
    expect="an output of the same shape as x, (B, T, C)", rtol=1e-4, atol=1e-5,
    show=_largest_difference,
    otherwise="the output differs from model.Attention with the same weights.",
    success="same output as model.Attention with the same weights",
    mistakes=[Mistake(hint, _wrong_attention(**kw)) for kw, hint in (
        (dict(scale="none"), "forgot the scale: divide the scores q·k by sqrt(D), D = C // "
         "n_heads the head width, before the softmax."),
        (dict(scale="d"), "divided the scores by D; the scale is 1/sqrt(D) (D = head width)."),
        (dict(scale="c"), "scaled by 1/sqrt(C), the model width; each head's scores need "
         "1/sqrt(D) with D = C // n_heads, the head width."),
        (dict(mask="none"), "no causal mask: position t must not see positions after t. Set the "
         "scores above the diagonal to -inf before the softmax (jnp.tril gives the allowed "
         "part)."),
        (dict(mask="upper"), "the mask is the wrong way round: query t may see keys 0..t, the "
         "lower triangle (jnp.tril), not the upper one."),
        (dict(mask="after_softmax"), "masked after the softmax: the weights of each row then no "
         "longer sum to 1 (and the future leaked into the normaliser). Mask the scores before "
         "the softmax."),
        (dict(split="heads_first"), "transposed heads: reshaping (B, T, C) straight to "
         "(B, H, T, D) mixes time steps into heads. Reshape to (B, T, H, D) and let einsum pick "
         "the axes."),
        (dict(project=False), "forgot the output projection: after merging the heads back to "
         "(B, T, C), apply self.proj."),
        (dict(softmax_axis=-2), "softmax over the wrong axis: normalise over the keys (the last "
         "axis of the (B, H, T, S) scores), so each query's weights sum to 1."),
    )],
)


# ---------------------------------------------------------------- the block and the GPT


def _block(blk: Block, x, *, residual=True, pre_ln=True, causal=True, norm=True):
    """The library Block's forward pass with switches for the usual mistakes."""
    attn = blk.attn if causal else (lambda h: _attention_of(blk.attn, h, mask="none"))
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
        x = _block(blk, x, **block_mistake)
    return net.wte.attend(net.ln_f(x) if final_ln else x)


_CFG = GPTConfig(vocab_size=13, block_size=8, n_layers=2, n_heads=2, d_model=16)

_BLOCK_MISTAKES = (
    (dict(residual=False), "missing residual connections: each sublayer's output is ADDED to the "
     "stream, x = x + attn(ln1(x)), then x = x + mlp(ln2(x)); yours replaces the stream."),
    (dict(pre_ln=False), "post-LN wiring (x = ln(x + f(x))): this GPT normalises a copy BEFORE "
     "each sublayer, x = x + attn(ln1(x)), and leaves the stream itself alone."),
    (dict(norm=False), "forgot the LayerNorms: each sublayer reads a normalised copy of the "
     "stream, attn(ln1(x)) and mlp(ln2(x))."),
)

BLOCK_MODULE = Exercise(
    "block_module",
    doc="""Check a class ``cls(cfg, *, rngs)`` whose instances map x (B, T, C) -> (B, T, C) like
    the library's ``model.Block(cfg)``, after copying its weights by name.""",
    reference=Block,
    cases=lambda: [Case((_CFG, jax.random.normal(jax.random.key(2), (2, 6, _CFG.d_model))),
                        note="x of shape (2, 6, 16)")],
    call=_module_call("block_module", Block, "Name the sublayers ln1, attn, ln2 and mlp, as in the "
                      "library's model.Block."),
    expect="an output of the same shape as x, (B, T, C)", rtol=1e-4, atol=1e-4,
    show=_largest_difference,
    otherwise="the output differs from model.Block with the same weights.",
    success="same output as model.Block with the same weights",
    mistakes=[Mistake(hint, _wrong(Block, lambda self, x, kw=kw: _block(self, x, **kw)))
              for kw, hint in _BLOCK_MISTAKES],
)


def _no_output_layer(module: nnx.Module) -> None:
    """An untied output layer: name the fix before the weight copy reports unexpected names."""
    if any(n.startswith(("lm_head", "head", "out")) for n in _params(module)):
        _fail("gpt_module", "your GPT has its own output layer; tie it to the token table instead: the "
              "logits are self.wte.attend(h) (h @ wte's table transposed), which saves a V x C "
              "matrix.")


GPT_MODULE = Exercise(
    "gpt_module",
    doc="""Check a class ``cls(cfg, *, rngs)`` whose instances map token ids (B, T) to logits
    (B, T, V) like the library's ``model.GPT(cfg)``, after copying its weights by name.""",
    reference=GPT,
    cases=lambda: [Case((_CFG, jax.random.randint(jax.random.key(2), (2, _CFG.block_size), 0,
                                                  _CFG.vocab_size)), note="ids of shape (2, 8)")],
    call=_module_call("gpt_module", GPT, "Use the names of the library's GPT: wte, wpe (nnx.Embed), "
                      "blocks (a list of blocks with ln1, attn, ln2, mlp), ln_f; no separate "
                      "output layer — the logits are self.wte.attend(h), tied to the token "
                      "table.", before=_no_output_layer),
    expect="logits (B, T, vocab_size)", rtol=1e-4, atol=1e-4,
    show=_largest_difference,
    otherwise="the logits differ from model.GPT with the same weights.",
    success="same logits as model.GPT with the same weights",
    mistakes=[
        Mistake("returned the hidden states (B, T, C); finish with the output layer: "
                "logits = self.wte.attend(self.ln_f(x)), shape (B, T, vocab_size).",
                _wrong(GPT, lambda self, idx: self.hidden_states(idx)), when="shape"),
        *[Mistake(hint, _wrong(GPT, lambda self, idx, kw=kw: _gpt(self, idx, **kw)))
          for kw, hint in _BLOCK_MISTAKES + (
              (dict(positions=False), "forgot the position embeddings: add "
               "self.wpe(jnp.arange(T)) to the token embeddings, or the model cannot tell word "
               "order."),
              (dict(final_ln=False), "forgot the final LayerNorm: apply self.ln_f to the stream "
               "after the last block, before the output layer."),
              (dict(causal=False), "the attention is not causal: position t must not see later "
               "tokens."),
          )],
    ],
)

check_causal_self_attention = checker(CAUSAL_SELF_ATTENTION)
check_block_module = checker(BLOCK_MODULE)
check_gpt_module = checker(GPT_MODULE)
