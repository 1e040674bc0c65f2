"""Checks for notebook 04 (build the Transformer): the MLP, the pre-LN block, the parameter count."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from course_lib.checks._core import (  # noqa: F401
    _as_array,
    _as_scalar,
    _call,
    _close,
    _diagnose,
    _fail,
    _ok,
    _short,
)
from course_lib.model import GPTConfig, n_params_formula

__all__ = [
    "check_mlp_forward", "check_block_forward", "check_gpt_param_count",
    "reference_mlp_forward", "reference_block_forward", "reference_gpt_param_count",
]


# ---------------------------------------------------------------- the MLP


def reference_mlp_forward(x, w_fc, b_fc, w_proj, b_proj) -> jax.Array:
    """The Transformer's position-wise MLP: widen, GELU, project back.

    x: (N, C); w_fc: (C, 4C); b_fc: (4C,); w_proj: (4C, C); b_proj: (C,) -> (N, C).
    GELU in its tanh form (``jax.nn.gelu``'s default), as in GPT-2 and ``course_lib.model.MLP``.
    """
    h = jax.nn.gelu(x @ w_fc + b_fc[None, :])  # (N, 4C)
    return h @ w_proj + b_proj[None, :]  # (N, C)


def check_mlp_forward(fn: Callable) -> None:
    """Check ``fn(x, w_fc, b_fc, w_proj, b_proj) -> (N, C)`` against ``reference_mlp_forward``.

    Either form of GELU passes (tanh approximation or exact erf). Diagnoses ReLU or no
    activation, missing biases, an activation on the output, the residual added inside.
    """
    name = "mlp_forward"
    rng = np.random.default_rng(4)
    N, C = 5, 3
    H = 4 * C
    cases = []
    for scale in (1.0, 2.5):  # larger inputs: more negative pre-activations, GELU != ReLU there
        cases.append((
            rng.normal(size=(N, C)) * scale,
            rng.normal(size=(C, H)) / np.sqrt(C), rng.normal(size=H) * 0.5,
            rng.normal(size=(H, C)) / np.sqrt(H), rng.normal(size=C) * 0.5,
        ))
    for x, w1, b1, w2, b2 in cases:
        args = [jnp.asarray(a, jnp.float32) for a in (x, w1, b1, w2, b2)]
        got = _as_array(name, _call(name, fn, *args), what="an output of the same shape as x")
        where = (f"\n  x has shape {x.shape}, w_fc {w1.shape}, w_proj {w2.shape}"
                 f"\n  x = {_short(x)}")
        if got.shape == (N, H):
            _fail(name, "returned the hidden layer (N, 4C): after the activation, project back "
                  "to the model width with w_proj (and add b_proj)." + where)
        if got.shape != (N, C):
            _fail(name, f"returned shape {got.shape}; expected {(N, C)}, the same shape as x."
                  + where)
        x_, w1_, b1_, w2_, b2_ = (np.asarray(a, np.float64) for a in (x, w1, b1, w2, b2))
        pre = x_ @ w1_ + b1_  # (N, H)
        tanh_gelu = np.asarray(jax.nn.gelu(jnp.asarray(pre), approximate=True), np.float64)
        erf_gelu = np.asarray(jax.nn.gelu(jnp.asarray(pre), approximate=False), np.float64)
        want = tanh_gelu @ w2_ + b2_
        if _close(got, want, rtol=1e-3, atol=1e-4) or _close(got, erf_gelu @ w2_ + b2_,
                                                               rtol=1e-3, atol=1e-4):
            continue

        def gelu(z):
            return np.asarray(jax.nn.gelu(jnp.asarray(z)), np.float64)

        candidates = [
            (np.maximum(pre, 0) @ w2_ + b2_, "used ReLU; this MLP uses GELU (jax.nn.gelu), a "
             "smooth curve that lets small negative values through instead of cutting them to 0."),
            (pre @ w2_ + b2_, "forgot the activation: two linear layers in a row are just one "
             "linear layer. Apply jax.nn.gelu to the hidden layer."),
            (gelu(x_ @ w1_) @ w2_ + b2_, "forgot the first bias b_fc (add it before the GELU)."),
            (tanh_gelu @ w2_, "forgot the second bias b_proj (add it after the last matmul)."),
            (gelu(x_ @ w1_) @ w2_, "forgot both biases b_fc and b_proj."),
            ((gelu(x_ @ w1_) + b1_) @ w2_ + b2_, "added b_fc after the GELU; the bias belongs "
             "inside: gelu(x @ w_fc + b_fc)."),
            (gelu(want), "applied GELU to the output as well; the activation is only between the "
             "two linear layers, the output stays linear."),
            (x_ + want, "added the residual x inside the MLP; the block adds it "
             "(x + mlp(ln(x))), the MLP itself returns only its output."),
            (np.tanh(pre) @ w2_ + b2_, "used tanh as the activation; use GELU (jax.nn.gelu)."),
        ]
        hint = _diagnose(got, candidates, rtol=1e-3, atol=1e-4)
        _fail(name, (hint or "wrong values.") + where
              + f"\n  expected {_short(want)}\n  got      {_short(got)}")
    _ok(name, f"{len(cases)} cases")


# ---------------------------------------------------------------- the pre-LN block


def reference_block_forward(x, attn, mlp, ln1, ln2):
    """One pre-LayerNorm Transformer block, given its four sublayers as callables.

    x: (T, C) the residual stream. Each sublayer reads a *normalised copy* of the stream and its
    output is *added* to the stream:  x = x + attn(ln1(x));  x = x + mlp(ln2(x)).
    """
    x = x + attn(ln1(x))  # (T, C) attention: tokens exchange information
    return x + mlp(ln2(x))  # (T, C) MLP: each position on its own


def _block_parts(seed: int, T: int, C: int):
    """Four distinct, deterministic sublayers (all rank-2 arrays, strict broadcasting safe)."""
    rng = np.random.default_rng(seed)
    A = jnp.asarray(rng.normal(size=(C, C)) / np.sqrt(C), jnp.float32)
    W1 = jnp.asarray(rng.normal(size=(C, 2 * C)) / np.sqrt(C), jnp.float32)
    W2 = jnp.asarray(rng.normal(size=(2 * C, C)) / np.sqrt(2 * C), jnp.float32)
    mix = np.tril(np.ones((T, T)))
    mix = jnp.asarray(mix / mix.sum(1, keepdims=True), jnp.float32)  # causal averaging

    def attn(h):  # mixes positions: each one averages the earlier ones
        return mix @ (h @ A)

    def mlp(h):  # position-wise and nonlinear
        return jnp.tanh(h @ W1) @ W2

    def layer_norm(gain, bias):
        g = jnp.asarray(gain, jnp.float32).reshape(1, C)
        b = jnp.asarray(bias, jnp.float32).reshape(1, C)

        def ln(h):
            mu = h.mean(axis=-1, keepdims=True)
            var = ((h - mu) ** 2).mean(axis=-1, keepdims=True)
            return (h - mu) / jnp.sqrt(var + 1e-5) * g + b

        return ln

    ln1 = layer_norm(rng.uniform(0.5, 1.5, C), rng.normal(size=C) * 0.1)
    ln2 = layer_norm(rng.uniform(1.5, 2.5, C), rng.normal(size=C) * 0.1)
    return attn, mlp, ln1, ln2


def _pre(x, attn, mlp, ln1, ln2):
    return reference_block_forward(x, attn, mlp, ln1, ln2)


def _post_ln(x, attn, mlp, ln1, ln2):
    h = ln1(x + attn(x))
    return ln2(h + mlp(h))


def _no_first_residual(x, attn, mlp, ln1, ln2):
    h = attn(ln1(x))
    return h + mlp(ln2(h))


def _normed_stream(x, attn, mlp, ln1, ln2):
    h = ln1(x)
    h = h + attn(h)
    h = ln2(h)
    return h + mlp(h)


def _no_ln(x, attn, mlp, ln1, ln2):
    h = x + attn(x)
    return h + mlp(h)


def _mlp_first(x, attn, mlp, ln1, ln2):
    h = x + mlp(ln2(x))
    return h + attn(ln1(h))


def _ln_on_output(x, attn, mlp, ln1, ln2):
    h = x + ln1(attn(x))
    return h + ln2(mlp(h))


# Wrong wirings of the block (same signature as the exercise) and the hint each one earns.
_BLOCK_MISTAKES = [
    (_post_ln, "this is the post-LN block of the 2017 paper (x = ln(x + f(x))). Here the block is "
     "pre-LN: normalise a copy of x going INTO each sublayer and add the sublayer's output to the "
     "un-normalised x: x = x + attn(ln1(x))."),
    (lambda x, a, m, l1, l2: m(l2(a(l1(x)))), "forgot the residual connections: the block must "
     "ADD each sublayer's output to its input (x = x + attn(ln1(x)), then x = x + mlp(ln2(x)))."),
    (_no_first_residual, "forgot the first residual: x = x + attn(ln1(x)), not "
     "x = attn(ln1(x))."),
    (lambda x, a, m, l1, l2: m(l2(x + a(l1(x)))), "forgot the second residual: return "
     "x + mlp(ln2(x)), not mlp(ln2(x))."),
    (_normed_stream, "replaced the stream by its normalised version (x = ln1(x)); LayerNorm only "
     "prepares the sublayer's input, the residual stream itself is never normalised inside the "
     "block: x = x + attn(ln1(x))."),
    (_no_ln, "forgot the LayerNorms: feed ln1(x) to attn and ln2(x) to mlp."),
    (lambda x, a, m, l1, l2: _pre(x, a, m, l2, l1), "swapped ln1 and ln2: ln1 goes with "
     "attention, ln2 with the MLP."),
    (lambda x, a, m, l1, l2: _pre(x, a, m, l1, l1), "used ln1 twice; the MLP has its own "
     "LayerNorm, ln2."),
    (lambda x, a, m, l1, l2: x + a(l1(x)) + m(l2(x)), "fed both sublayers the block's input (a "
     "'parallel' block, as in GPT-J): here the MLP reads the stream AFTER attention has been added "
     "to it."),
    (_mlp_first, "applied the MLP before attention; the order is attention first, then the MLP."),
    (_ln_on_output, "normalised the sublayer's output instead of its input: x + attn(ln1(x)), not "
     "x + ln1(attn(x))."),
    (lambda x, a, m, l1, l2: l2(_pre(x, a, m, l1, l2)), "normalised the block's output; in a "
     "pre-LN model only the whole stack ends with one final LayerNorm (ln_f in the GPT), not each "
     "block."),
]


def check_block_forward(fn: Callable) -> None:
    """Check ``fn(x, attn, mlp, ln1, ln2) -> (T, C)`` against ``reference_block_forward``.

    The sublayers are simple stand-ins (a causal average, a tanh MLP, two LayerNorms with
    different gains), so every wiring mistake gives a different number and can be named.
    """
    name = "block_forward"
    T, C = 6, 8
    for seed, scale in ((0, 1.0), (1, 3.0)):
        attn, mlp, ln1, ln2 = _block_parts(seed, T, C)
        x = jnp.asarray(np.random.default_rng(10 + seed).normal(size=(T, C)) * scale, jnp.float32)
        got = _as_array(name, _call(name, fn, x, attn, mlp, ln1, ln2), (T, C),
                        what="the new residual stream, the same shape as x")
        want = np.asarray(reference_block_forward(x, attn, mlp, ln1, ln2), np.float64)
        if _close(got, want, rtol=1e-3, atol=1e-4):
            continue
        candidates = [(np.asarray(wrong(x, attn, mlp, ln1, ln2), np.float64), hint)
                      for wrong, hint in _BLOCK_MISTAKES]
        hint = _diagnose(got, candidates, rtol=1e-3, atol=1e-4)
        _fail(name, (hint or "wrong values.")
              + f"\n  x = {_short(x)}\n  expected {_short(want)}\n  got      {_short(got)}")
    _ok(name, "2 cases with stand-in sublayers")


# ---------------------------------------------------------------- the parameter count


def reference_gpt_param_count(vocab_size: int, block_size: int, n_layers: int,
                              d_model: int) -> int:
    """Trainable parameters of ``course_lib.model.GPT`` (no biases, tied output, 4x MLP).

    token table V*C + position table T*C
    + per block: 2 LayerNorm scales (2C) + q,k,v (3C^2) + attention output (C^2) + MLP (8C^2)
    + final LayerNorm scale (C); the output layer reuses the token table: nothing extra.
    """
    V, T, L, C = vocab_size, block_size, n_layers, d_model
    return V * C + T * C + L * (2 * C + 4 * C * C + 8 * C * C) + C


def check_gpt_param_count(fn: Callable) -> None:
    """Check ``fn(vocab_size, block_size, n_layers, d_model) -> int`` against the library's
    ``n_params_formula``; names the usual counting mistakes."""
    name = "gpt_param_count"
    cases = [(65, 64, 4, 64), (50257, 1024, 12, 768), (100, 40, 3, 20), (1000, 256, 6, 96)]
    for V, T, L, C in cases:
        got = _as_scalar(name, _call(name, fn, V, T, L, C),
                         "Add everything up into one integer.")
        want = n_params_formula(GPTConfig(vocab_size=V, block_size=T, n_layers=L, n_heads=1,
                                          d_model=C))
        if got == want:
            continue
        with_bias = n_params_formula(GPTConfig(vocab_size=V, block_size=T, n_layers=L,
                                               n_heads=1, d_model=C, bias=True))
        candidates = [
            (want + V * C, "counted the output layer separately: it is TIED to the token "
             "embedding (logits = h @ wte.T), so its V*C weights are already counted."),
            (want - T * C, "forgot the position embeddings: a (block_size, d_model) table."),
            (want - V * C, "forgot the token embedding table (vocab_size * d_model)."),
            (want - (2 * L + 1) * C, "forgot the LayerNorm parameters: each block has two "
             "LayerNorms and the model one final LayerNorm, each with a scale of d_model values."),
            (want - C, "forgot the final LayerNorm (ln_f): d_model more scale values."),
            (want - 2 * L * C, "forgot the two LayerNorms inside each block (2 * d_model per "
             "block); the final one is there."),
            (want - L * C, "counted one LayerNorm per block; there are two (before attention "
             "and before the MLP)."),
            (want + (2 * L + 1) * C, "gave each LayerNorm a bias as well; this model's "
             "LayerNorms have a scale only (bias=False), d_model values each."),
            (want - 6 * L * C * C, "forgot the 4x MLP width: the hidden layer has 4 * d_model "
             "units, so the MLP has d_model*4d_model + 4d_model*d_model = 8 d_model^2 weights."),
            (want - 4 * L * C * C, "counted the MLP as 4 * d_model^2; it has two matrices, "
             "(C, 4C) and (4C, C): 8 * d_model^2."),
            (want - L * C * C, "forgot the attention output projection (d_model x d_model per "
             "block) after the heads are concatenated."),
            (want - 2 * L * C * C, "counted q, k, v as one d_model x d_model matrix; there are "
             "three (3 * d_model^2 per block)."),
            (with_bias, "counted biases in the Linear layers (and LayerNorms); this model has "
             "none (bias=False, the nanoGPT CPU recipe)."),
            (want + L * 9 * C, "counted biases in the Linear layers; this model has none."),
            (V * C + T * C + (want - V * C - T * C - C) // L + C,
             "counted one block only; multiply the per-block count by n_layers."),
        ]
        hint = _diagnose(got, candidates, rtol=0, atol=0.5)
        _fail(name, (hint or "wrong count.")
              + f"\n  vocab_size={V}, block_size={T}, n_layers={L}, d_model={C}"
              + f"\n  expected {want:,}, got {got:,.0f} (difference {got - want:+,.0f})")
    _ok(name, f"{len(cases)} configurations, GPT-2 small's shape included")
