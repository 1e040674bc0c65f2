"""Exercises of notebook 04 (build the Transformer): the MLP, the pre-LN block, the parameter count.

The layers appear only as plain functions and stand-in callables, so these checks do not depend
on how ``course_lib.model`` builds its modules.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from course_lib.checks._core import Exercise, Mistake, _short, as_number, checker
from course_lib.model import (
    GPTConfig,
    block_forward,
    gpt_param_count,
    mlp_forward,
    n_params_formula,
)

__all__ = ["check_mlp_forward", "check_block_forward", "check_gpt_param_count"]

# ---------------------------------------------------------------- the MLP


def _mlp_cases():
    rng = np.random.default_rng(4)
    N, C = 5, 3
    H = 4 * C
    return [tuple(jnp.asarray(a, jnp.float32) for a in (
        rng.normal(size=(N, C)) * scale,
        rng.normal(size=(C, H)) / np.sqrt(C), rng.normal(size=H) * 0.5,
        rng.normal(size=(H, C)) / np.sqrt(H), rng.normal(size=C) * 0.5,
    )) for scale in (1.0, 2.5)]  # larger inputs: more negative pre-activations, GELU != ReLU


def _mlp(x, w1, b1, w2, b2, *, act=jax.nn.gelu, bias1=True, bias2=True, bias1_after=False):
    """The MLP with switches for the usual mistakes (the activation, the biases)."""
    h = x @ w1 + (b1[None, :] if bias1 and not bias1_after else 0.0)  # (N, 4C)
    h = act(h) + (b1[None, :] if bias1_after else 0.0)
    return h @ w2 + (b2[None, :] if bias2 else 0.0)  # (N, C)


MLP_FORWARD = Exercise(
    "mlp_forward",
    doc="""Check ``fn(x, w_fc, b_fc, w_proj, b_proj) -> (N, C)`` against the reference MLP.

    Either form of GELU passes (tanh approximation or exact erf). Diagnoses ReLU or no
    activation, missing biases, an activation on the output, the residual added inside.""",
    reference=mlp_forward,
    accept=[lambda *a: _mlp(*a, act=lambda z: jax.nn.gelu(z, approximate=False))],
    cases=_mlp_cases,
    expect="an output of the same shape as x", rtol=1e-3, atol=1e-4,
    mistakes=[
        Mistake("returned the hidden layer (N, 4C): after the activation, project back to the "
                "model width with w_proj (and add b_proj).",
                lambda x, w1, b1, w2, b2: jax.nn.gelu(x @ w1 + b1[None, :]), when="shape"),
        Mistake("used ReLU; this MLP uses GELU (jax.nn.gelu), a smooth curve that lets small "
                "negative values through instead of cutting them to 0.",
                lambda *a: _mlp(*a, act=jax.nn.relu)),
        Mistake("forgot the activation: two linear layers in a row are just one linear layer. "
                "Apply jax.nn.gelu to the hidden layer.", lambda *a: _mlp(*a, act=lambda z: z)),
        Mistake("forgot the first bias b_fc (add it before the GELU).",
                lambda *a: _mlp(*a, bias1=False)),
        Mistake("forgot the second bias b_proj (add it after the last matmul).",
                lambda *a: _mlp(*a, bias2=False)),
        Mistake("forgot both biases b_fc and b_proj.",
                lambda *a: _mlp(*a, bias1=False, bias2=False)),
        Mistake("added b_fc after the GELU; the bias belongs inside: gelu(x @ w_fc + b_fc).",
                lambda *a: _mlp(*a, bias1_after=True)),
        Mistake("applied GELU to the output as well; the activation is only between the two "
                "linear layers, the output stays linear.", lambda *a: jax.nn.gelu(_mlp(*a))),
        Mistake("added the residual x inside the MLP; the block adds it (x + mlp(ln(x))), the "
                "MLP itself returns only its output.", lambda *a: a[0] + _mlp(*a)),
        Mistake("used tanh as the activation; use GELU (jax.nn.gelu).",
                lambda *a: _mlp(*a, act=jnp.tanh)),
    ],
)

# ---------------------------------------------------------------- the pre-LN block


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


def _block_cases():
    T, C = 6, 8
    return [(jnp.asarray(np.random.default_rng(10 + seed).normal(size=(T, C)) * scale,
                         jnp.float32), *_block_parts(seed, T, C))
            for seed, scale in ((0, 1.0), (1, 3.0))]


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


def _mlp_first(x, attn, mlp, ln1, ln2):
    h = x + mlp(ln2(x))
    return h + attn(ln1(h))


def _ln_on_output(x, attn, mlp, ln1, ln2):
    h = x + ln1(attn(x))
    return h + ln2(mlp(h))


BLOCK_FORWARD = Exercise(
    "block_forward",
    doc="""Check ``fn(x, attn, mlp, ln1, ln2) -> (T, C)`` against the reference pre-LN block.

    The sublayers are simple stand-ins (a causal average, a tanh MLP, two LayerNorms with
    different gains), so every wiring mistake gives a different number and can be named.""",
    reference=block_forward,
    cases=_block_cases,
    expect="the new residual stream, the same shape as x", rtol=1e-3, atol=1e-4,
    show=lambda case, got, want: (f"\n  x = {_short(case.args[0])}\n  expected {_short(want)}"
                                  f"\n  got      {_short(got)}"),
    mistakes=[
        Mistake("this is the post-LN block of the 2017 paper (x = ln(x + f(x))). Here the block "
                "is pre-LN: normalise a copy of x going INTO each sublayer and add the sublayer's "
                "output to the un-normalised x: x = x + attn(ln1(x)).", _post_ln),
        Mistake("forgot the residual connections: the block must ADD each sublayer's output to "
                "its input (x = x + attn(ln1(x)), then x = x + mlp(ln2(x))).",
                lambda x, a, m, l1, l2: m(l2(a(l1(x))))),
        Mistake("forgot the first residual: x = x + attn(ln1(x)), not x = attn(ln1(x)).",
                _no_first_residual),
        Mistake("forgot the second residual: return x + mlp(ln2(x)), not mlp(ln2(x)).",
                lambda x, a, m, l1, l2: m(l2(x + a(l1(x))))),
        Mistake("replaced the stream by its normalised version (x = ln1(x)); LayerNorm only "
                "prepares the sublayer's input, the residual stream itself is never normalised "
                "inside the block: x = x + attn(ln1(x)).", _normed_stream),
        Mistake("forgot the LayerNorms: feed ln1(x) to attn and ln2(x) to mlp.",
                lambda x, a, m, l1, l2: block_forward(x, a, m, lambda h: h, lambda h: h)),
        Mistake("swapped ln1 and ln2: ln1 goes with attention, ln2 with the MLP.",
                lambda x, a, m, l1, l2: block_forward(x, a, m, l2, l1)),
        Mistake("used ln1 twice; the MLP has its own LayerNorm, ln2.",
                lambda x, a, m, l1, l2: block_forward(x, a, m, l1, l1)),
        Mistake("fed both sublayers the block's input (a 'parallel' block, as in GPT-J): here the "
                "MLP reads the stream AFTER attention has been added to it.",
                lambda x, a, m, l1, l2: x + a(l1(x)) + m(l2(x))),
        Mistake("applied the MLP before attention; the order is attention first, then the MLP.",
                _mlp_first),
        Mistake("normalised the sublayer's output instead of its input: x + attn(ln1(x)), not "
                "x + ln1(attn(x)).", _ln_on_output),
        Mistake("normalised the block's output; in a pre-LN model only the whole stack ends with "
                "one final LayerNorm (ln_f in the GPT), not each block.",
                lambda x, a, m, l1, l2: l2(block_forward(x, a, m, l1, l2))),
    ],
    success="{n} cases with stand-in sublayers",
)

# ---------------------------------------------------------------- the parameter count


def _count(extra):
    """A wrong count: the right one plus ``extra(V, T, L, C)``."""
    return lambda V, T, L, C: gpt_param_count(V, T, L, C) + extra(V, T, L, C)


GPT_PARAM_COUNT = Exercise(
    "gpt_param_count",
    doc="""Check ``fn(vocab_size, block_size, n_layers, d_model) -> int`` against the library's
    ``n_params_formula``; names the usual counting mistakes.""",
    reference=gpt_param_count,
    cases=lambda: [(65, 64, 4, 64), (50257, 1024, 12, 768), (100, 40, 3, 20), (1000, 256, 6, 96)],
    output=as_number, expect="a single number", shape_hint="Add everything up into one integer.",
    rtol=0, atol=0.5, otherwise="wrong count.",
    show=lambda case, got, want: (
        "\n  vocab_size={}, block_size={}, n_layers={}, d_model={}".format(*case.args)
        + (f"\n  expected {float(want):,.0f}, got {float(got):,.0f} (difference "
           f"{float(got - want):+,.0f})" if got.shape == () else "")),
    mistakes=[
        Mistake("counted the output layer separately: it is TIED to the token embedding "
                "(logits = h @ wte.T), so its V*C weights are already counted.",
                _count(lambda V, T, L, C: V * C)),
        Mistake("forgot the position embeddings: a (block_size, d_model) table.",
                _count(lambda V, T, L, C: -T * C)),
        Mistake("forgot the token embedding table (vocab_size * d_model).",
                _count(lambda V, T, L, C: -V * C)),
        Mistake("forgot the LayerNorm parameters: each block has two LayerNorms and the model one "
                "final LayerNorm, each with a scale of d_model values.",
                _count(lambda V, T, L, C: -(2 * L + 1) * C)),
        Mistake("forgot the final LayerNorm (ln_f): d_model more scale values.",
                _count(lambda V, T, L, C: -C)),
        Mistake("forgot the two LayerNorms inside each block (2 * d_model per block); the final "
                "one is there.", _count(lambda V, T, L, C: -2 * L * C)),
        Mistake("counted one LayerNorm per block; there are two (before attention and before the "
                "MLP).", _count(lambda V, T, L, C: -L * C)),
        Mistake("gave each LayerNorm a bias as well; this model's LayerNorms have a scale only "
                "(bias=False), d_model values each.", _count(lambda V, T, L, C: (2 * L + 1) * C)),
        Mistake("forgot the 4x MLP width: the hidden layer has 4 * d_model units, so the MLP has "
                "d_model*4d_model + 4d_model*d_model = 8 d_model^2 weights.",
                _count(lambda V, T, L, C: -6 * L * C * C)),
        Mistake("counted the MLP as 4 * d_model^2; it has two matrices, (C, 4C) and (4C, C): "
                "8 * d_model^2.", _count(lambda V, T, L, C: -4 * L * C * C)),
        Mistake("forgot the attention output projection (d_model x d_model per block) after the "
                "heads are concatenated.", _count(lambda V, T, L, C: -L * C * C)),
        Mistake("counted q, k, v as one d_model x d_model matrix; there are three (3 * d_model^2 "
                "per block).", _count(lambda V, T, L, C: -2 * L * C * C)),
        Mistake("counted biases in the Linear layers (and LayerNorms); this model has none "
                "(bias=False, the nanoGPT CPU recipe).",
                lambda V, T, L, C: n_params_formula(GPTConfig(
                    vocab_size=V, block_size=T, n_layers=L, n_heads=1, d_model=C, bias=True))),
        Mistake("counted biases in the Linear layers; this model has none.",
                _count(lambda V, T, L, C: L * 9 * C)),
        Mistake("counted one block only; multiply the per-block count by n_layers.",
                lambda V, T, L, C: V * C + T * C + (gpt_param_count(V, T, L, C) - V * C - T * C
                                                    - C) // L + C),
    ],
    success="{n} configurations, GPT-2 small's shape included",
)

check_mlp_forward = checker(MLP_FORWARD)
check_block_forward = checker(BLOCK_FORWARD)
check_gpt_param_count = checker(GPT_PARAM_COUNT)
