"""course_lib.parallel: meshes, the tensor-parallel rules applied to the course's own layers
(equal to one device), and the report of where each slice of an array lives."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from course_lib import model, parallel

CFG = model.GPTConfig(vocab_size=10, block_size=8, n_layers=1, n_heads=4, d_model=32)


def test_an_unsharded_block_lives_on_one_device():
    block = model.Block(CFG, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 8, 32))
    y = block(x)
    assert y.shape == (2, 8, 32) and bool(jnp.all(jnp.isfinite(y)))
    # causal: changing the last position leaves the earlier outputs unchanged
    y2 = block(x.at[:, -1].set(0.0))
    np.testing.assert_allclose(y[:, :-1], y2[:, :-1], atol=1e-6)
    kernel = block.mlp.fc.kernel[...]
    assert kernel.shape == (32, 128)
    assert parallel.layout(kernel) == {"[:, :]": [jax.devices()[0].id]}
    n_bytes = sum(p.nbytes for p in jax.tree.leaves(nnx.state(block, nnx.Param)))
    assert parallel.bytes_per_device(nnx.state(block, nnx.Param)) == {jax.devices()[0].id: n_bytes}


def test_parameter_layouts_lists_every_parameter():
    cfg = model.GPTConfig(vocab_size=10, block_size=8, n_layers=1, n_heads=2, d_model=16)
    block = model.Block(cfg, rngs=nnx.Rngs(0))
    rows = parallel.parameter_layouts(block)
    names = [r[0] for r in rows]
    assert {"attn.q.kernel", "attn.proj.kernel", "mlp.fc.kernel", "mlp.proj.kernel",
            "ln1.scale"} <= set(names)
    shapes = dict((r[0], r[1]) for r in rows)
    assert shapes["mlp.fc.kernel"] == (16, 64) and shapes["ln1.scale"] == (16,)
    assert all(r[2] == P() for r in rows)  # nothing is split on one device


def test_clear_errors():
    with pytest.raises(ValueError, match="needs 1000 devices"):
        parallel.make_mesh(500, 2)
    with pytest.raises(ValueError, match="at least one device"):
        parallel.make_mesh(0)
    with pytest.raises(ValueError, match="mesh axis 'heads'"):
        parallel.shard_model(model.Block(CFG, rngs=nnx.Rngs(0)), parallel.make_mesh(1),
                             rules=((r"attn\.q\.kernel", P(None, "heads")),))
    with pytest.raises(ValueError, match="compare like with like"):
        parallel.max_abs_diff([jnp.ones(2)], [jnp.ones(2), jnp.ones(2)])
    mesh = parallel.make_mesh(1)
    assert mesh.axis_names == ("data", "model") and mesh.devices.shape == (1, 1)


def test_tensor_and_data_parallel_block_on_8_simulated_devices_equals_one_device():
    """Runs in a subprocess: the device count must be set before JAX starts."""
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from flax import nnx
        from jax.sharding import NamedSharding, PartitionSpec as P
        from course_lib import model, parallel
        assert jax.device_count() == 8, jax.devices()
        mesh = parallel.make_mesh(4, 2)
        cfg = model.GPTConfig(vocab_size=10, block_size=16, n_layers=1, n_heads=4, d_model=32)
        ref = model.Block(cfg, rngs=nnx.Rngs(0))
        blk = parallel.shard_model(model.Block(cfg, rngs=nnx.Rngs(0)), mesh)
        assert parallel.max_abs_diff(nnx.state(ref, nnx.Param),
                                     nnx.state(blk, nnx.Param)) == 0.0  # same weights
        assert parallel.layout(blk.mlp.fc.kernel[...]) == {
            "[:, 0:64]": [0, 2, 4, 6], "[:, 64:128]": [1, 3, 5, 7]}
        assert parallel.layout(blk.attn.proj.kernel[...]) == {
            "[0:16, :]": [0, 2, 4, 6], "[16:32, :]": [1, 3, 5, 7]}
        assert parallel.layout(blk.ln1.scale[...]) == {"[:]": list(range(8))}
        rows = {r[0]: r[2] for r in parallel.parameter_layouts(blk)}
        assert rows["attn.q.kernel"] == P(None, "model") and rows["ln2.scale"] == P()
        per_dev = parallel.bytes_per_device(nnx.state(blk, nnx.Param))
        total = sum(p.nbytes for p in jax.tree.leaves(nnx.state(ref, nnx.Param)))
        assert len(per_dev) == 8 and all(b < 0.55 * total for b in per_dev.values()), per_dev

        x = jax.random.normal(jax.random.key(1), (8, 16, 32))
        xs = jax.device_put(x, NamedSharding(mesh, P("data")))
        assert parallel.layout(xs)["[0:2, :, :]"] == [0, 1]

        def loss(params, rest, graphdef, x):
            return jnp.mean(nnx.merge(graphdef, params, rest)(x) ** 2)

        f = jax.jit(jax.value_and_grad(loss), static_argnums=2)

        def same_as_one_device(ref, blk):
            # loss and gradients of the sharded block equal the unsharded one's
            g_ref, p_ref, r_ref = nnx.split(ref, nnx.Param, ...)
            g_blk, p_blk, r_blk = nnx.split(blk, nnx.Param, ...)
            l1, d1 = f(p_ref, r_ref, g_ref, x)
            l8, d8 = f(p_blk, r_blk, g_blk, xs)
            assert abs(float(l1) - float(l8)) < 1e-5 * abs(float(l1)), (float(l1), float(l8))
            assert parallel.max_abs_diff(d1, d8) < 1e-6
            return (g_ref, p_ref, r_ref), (g_blk, p_blk, r_blk), d8

        (g_ref, p_ref, r_ref), (g_blk, p_blk, r_blk), d8 = same_as_one_device(ref, blk)
        assert d8["mlp"]["fc"]["kernel"][...].sharding.spec == P(None, "model")
        one = parallel.count_collectives(f.lower(p_ref, r_ref, g_ref, x).compile())
        many = parallel.count_collectives(f.lower(p_blk, r_blk, g_blk, xs).compile())
        assert one["all-reduce"] == 0 and many["all-reduce"] >= 2, (one, many)

        # The same rules split a Llama-style block: SwiGLU's gate with fc, two key/value heads.
        llama = model.GPTConfig(vocab_size=10, block_size=16, n_layers=1, n_heads=4, d_model=32,
                                pos_encoding="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=2)
        ref = model.Block(llama, rngs=nnx.Rngs(0))
        blk = parallel.shard_model(model.Block(llama, rngs=nnx.Rngs(0)), mesh)
        assert parallel.layout(blk.mlp.gate.kernel[...]) == parallel.layout(blk.mlp.fc.kernel[...])
        assert parallel.layout(blk.attn.k.kernel[...]) == {
            "[:, 0:8]": [0, 2, 4, 6], "[:, 8:16]": [1, 3, 5, 7]}  # one key head per device
        same_as_one_device(ref, blk)
        print("PARALLEL-OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=600)
    assert "PARALLEL-OK" in out.stdout, out.stderr[-3000:]
