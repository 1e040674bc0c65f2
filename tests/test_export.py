"""GPU and TPU without a device: ``jax.export`` lowers the library's kernels for ``cuda`` and
``tpu`` on a CPU-only jaxlib, which is the check that the code runs there (no CPU-only custom
call, no host callback, no primitive lacking a lowering rule for those platforms).

Exported here: naive attention (causal), flash attention (causal, padded last block), one
compiled training chunk (``Trainer.chunk``, the n-step ``lax.scan`` that ``fit`` runs) and
cached generation (the jitted loop of ``generate.generate``), the last two for the GPT-2-style
model and for the Llama-style one (RoPE, RMSNorm, SwiGLU, multi-query attention). Each export is also checked to be
the right function: exported once more with ``cpu`` among its platforms, it runs here and gives
the library's result.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export

from course_lib import attention as A
from course_lib import generate as G
from course_lib import model as M
from course_lib import train as T

PLATFORMS = ("cuda", "tpu")

MCFG = M.GPTConfig(vocab_size=12, block_size=16, n_layers=2, n_heads=2, d_model=32, dropout=0.1)
# The same model with every Llama-era option: RoPE, RMSNorm, SwiGLU, multi-query attention.
LLAMA_CFG = M.GPTConfig(vocab_size=12, block_size=16, n_layers=2, n_heads=2, d_model=32,
                        dropout=0.1, pos_encoding="rope", norm="rmsnorm", mlp="swiglu",
                        n_kv_heads=1, tie_embeddings=False)
CONFIGS = pytest.mark.parametrize("mcfg", [MCFG, LLAMA_CFG], ids=["gpt2", "llama"])


def specs(args):
    """Shapes and dtypes only: exporting needs no concrete values (nor a device)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), args)


def export_checked(fn, args):
    """Export ``jax.jit(fn)`` for cuda and tpu, check the result, and return the output of the
    same function exported with cpu among its platforms and run here."""
    exp = export.export(jax.jit(fn), platforms=PLATFORMS)(*specs(args))
    assert exp.platforms == PLATFORMS
    assert exp.nr_devices == 1
    assert "func.func public @main" in exp.mlir_module()
    assert exp.in_avals == tuple(jax.core.ShapedArray(s.shape, s.dtype)
                                 for s in jax.tree.leaves(specs(args)))
    assert len(exp.mlir_module_serialized) > 0  # the StableHLO bytecode a GPU/TPU would run

    here = export.export(jax.jit(fn), platforms=PLATFORMS + ("cpu",))(*specs(args))
    assert here.out_avals == exp.out_avals
    return exp, here.call(*args)


def avals(exp):
    return [(a.shape, a.dtype) for a in exp.out_avals]


def qkv(B=2, T=40, H=4, D=16, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return tuple(jax.random.normal(k, (B, T, H, D), jnp.float32) for k in keys)


def test_naive_attention_exports():
    q, k, v = qkv()
    fn = functools.partial(A.scaled_dot_product_attention, causal=True)
    exp, out = export_checked(fn, (q, k, v))
    assert avals(exp) == [((2, 40, 4, 16), jnp.float32)]
    ref = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_flash_attention_exports():
    q, k, v = qkv()
    fn = functools.partial(A.flash_attention, causal=True, block_size=16)  # 3 blocks, 8 padded
    exp, out = export_checked(fn, (q, k, v))
    assert avals(exp) == [((2, 40, 4, 16), jnp.float32)]
    assert "stablehlo.while" in exp.mlir_module()  # the blockwise loop stays a loop
    ref = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    np.testing.assert_allclose(out, ref, atol=1e-5)


@CONFIGS
def test_one_training_chunk_exports(mcfg):
    """The n-step function ``fit`` compiles: ``Trainer.chunk``, pure, exported as it is."""
    n = 5
    tcfg = T.TrainConfig(steps=n, batch_size=4, lr=3e-3, warmup_steps=2, eval_every=n,
                         eval_batches=2, steps_per_call=n)
    ids = (np.arange(600) % 12).astype(np.int32)
    model = M.GPT(mcfg, rngs=nnx.Rngs(0))
    trainer = T.Trainer.for_model(model, tcfg)
    params, rest = trainer.split(model)
    args = (params, trainer.tx.init(params), rest, jnp.asarray(ids[:500]), jnp.int32(0))
    exp, (new_params, new_opt, (losses, grad_norms, lrs)) = export_checked(
        functools.partial(trainer.chunk, n_steps=n), args)

    # Outputs: the parameters and optimiser state, as they came in, and n values of each statistic.
    state_avals = [(s.shape, s.dtype) for s in jax.tree.leaves(specs(args[:2]))]
    assert avals(exp) == state_avals + [((n,), jnp.float32)] * 3
    # The exported chunk is the one fit runs: the same losses at the same steps.
    fitted = T.fit(M.GPT(mcfg, rngs=nnx.Rngs(0)), ids[:500], ids[500:], tcfg, progress=False)
    np.testing.assert_allclose(losses, fitted.history.train_loss, rtol=1e-5)
    np.testing.assert_allclose(lrs, fitted.history.lr, rtol=1e-6)
    assert all(np.isfinite(grad_norms))


@CONFIGS
@pytest.mark.parametrize("n_new", [8, 20])  # 20: the cache fills up and is refilled (lax.cond)
def test_cached_generation_exports(n_new, mcfg):
    model = M.GPT(mcfg, rngs=nnx.Rngs(0))
    model.eval()
    graphdef, state = nnx.split(model)
    prompt = jnp.asarray([[1, 2, 3, 4], [5, 6, 7, 8]], jnp.int32)
    key = jax.random.PRNGKey(1)

    def sample(state, prompt, key):
        return G.generate(nnx.merge(graphdef, state), prompt, n_new, key=key, temperature=0.8,
                          top_k=5, use_cache=True)

    exp, out = export_checked(sample, (state, prompt, key))
    assert avals(exp) == [((2, 4 + n_new), jnp.int32)]
    ref = G.generate(model, prompt, n_new, key=key, temperature=0.8, top_k=5, use_cache=True)
    np.testing.assert_array_equal(out, ref)
