"""Many devices: a (data, model) device mesh, tensor-parallel layers annotated with Flax's
partitioning metadata, and where each slice of an array lives.

*Data parallelism* splits the batch over the mesh's ``data`` axis; every device holds all the
weights (``train.fit(..., mesh=mesh)`` does this). *Tensor parallelism* (Megatron-LM style)
splits the weight matrices over the ``model`` axis: the first matrix of each pair by columns
(each device computes some attention heads, some hidden units of the MLP), the second by rows
(each device holds a partial sum; XLA adds them up with an all-reduce). Both are declared, not
programmed: a ``PartitionSpec`` per array, and XLA's SPMD partitioner writes the communication.

    mesh = make_mesh(data=4, model=2)                     # 8 devices in a 4 x 2 grid
    block = ParallelBlock(64, 4, mesh=mesh, rngs=nnx.Rngs(0))
    shard_model(block, mesh)                              # weights placed by their annotations
    layout(block.mlp.fc.kernel[...])                      # {'[:, 0:128]': [0, 2, 4, 6], ...}
"""

from __future__ import annotations

from collections import defaultdict

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from course_lib.attention import scaled_dot_product_attention

DATA, MODEL = "data", "model"  # the mesh's axis names: batch split, weight split


def make_mesh(data: int, model: int = 1, devices=None) -> Mesh:
    """A ``(data, model)`` mesh over the first ``data * model`` devices.

    The axis types are passed explicitly (``Auto``: XLA propagates shardings through the
    computation), because the default differs between JAX releases.
    """
    devices = list(jax.devices() if devices is None else devices)
    if data < 1 or model < 1:
        raise ValueError(f"Mesh axes must have at least one device, got data={data}, "
                         f"model={model}.")
    if data * model > len(devices):
        raise ValueError(
            f"A {data} x {model} mesh needs {data * model} devices, but only {len(devices)} are "
            "available. On a CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=8 before "
            "JAX starts (first cell, then restart the kernel), or use a smaller mesh."
        )
    auto = jax.sharding.AxisType.Auto
    return jax.make_mesh((data, model), (DATA, MODEL), axis_types=(auto, auto),
                         devices=devices[: data * model])


def _kernel_init(spec: tuple, mesh: Mesh | None):
    """GPT-2's N(0, 0.02) initialiser, annotated with a partition spec when a mesh is given.

    The mesh goes into the metadata: recent Flax shards an annotated parameter as soon as it is
    created (and wants to know on which mesh); older Flax only records the annotation."""
    init = nnx.initializers.normal(0.02)
    return init if mesh is None else nnx.with_partitioning(init, spec, mesh=mesh)


def _linear(d_in: int, d_out: int, spec: tuple, mesh: Mesh | None, rngs: nnx.Rngs):
    return nnx.Linear(d_in, d_out, use_bias=False, kernel_init=_kernel_init(spec, mesh),
                      rngs=rngs)


COLUMNS = (None, MODEL)  # kernel (d_in, d_out): output units split over the model axis
ROWS = (MODEL, None)  # kernel (d_in, d_out): input units split over the model axis


class ParallelAttention(nnx.Module):
    """Causal multi-head self-attention with its heads split over the ``model`` axis.

    The query, key and value kernels (C, H*D) are split by columns, i.e. by heads, so each
    device computes whole heads on its own; the output kernel (H*D, C) is split by rows.
    """

    def __init__(self, d_model: int, n_heads: int, *, mesh: Mesh | None = None,
                 rngs: nnx.Rngs):
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}.")
        self.n_heads = n_heads
        self.q = _linear(d_model, d_model, COLUMNS, mesh, rngs)
        self.k = _linear(d_model, d_model, COLUMNS, mesh, rngs)
        self.v = _linear(d_model, d_model, COLUMNS, mesh, rngs)
        self.proj = _linear(d_model, d_model, ROWS, mesh, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (B, T, C) -> (B, T, C)."""
        B, T, C = x.shape
        H = self.n_heads
        q, k, v = (f(x).reshape(B, T, H, C // H) for f in (self.q, self.k, self.v))  # (B,T,H,D)
        y = scaled_dot_product_attention(q, k, v, causal=True)  # (B, T, H, D)
        return self.proj(y.reshape(B, T, C))


class ParallelMLP(nnx.Module):
    """GELU MLP: the first kernel (C, 4C) split by columns, the second (4C, C) by rows."""

    def __init__(self, d_model: int, mlp_ratio: int = 4, *, mesh: Mesh | None = None,
                 rngs: nnx.Rngs):
        hidden = mlp_ratio * d_model
        self.fc = _linear(d_model, hidden, COLUMNS, mesh, rngs)
        self.proj = _linear(hidden, d_model, ROWS, mesh, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (B, T, C) -> (B, T, C)."""
        return self.proj(jax.nn.gelu(self.fc(x)))


class ParallelBlock(nnx.Module):
    """A pre-LayerNorm Transformer block whose attention and MLP are tensor-parallel.

    With ``mesh=None`` it is an ordinary block (no annotations): the single-device reference.
    The LayerNorm scales carry no annotation, so they are replicated on every device.
    """

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int = 4, *,
                 mesh: Mesh | None = None, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(d_model, use_bias=False, rngs=rngs)
        self.attn = ParallelAttention(d_model, n_heads, mesh=mesh, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d_model, use_bias=False, rngs=rngs)
        self.mlp = ParallelMLP(d_model, mlp_ratio, mesh=mesh, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: (B, T, C) -> (B, T, C)."""
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


def _is_spec(x) -> bool:
    return isinstance(x, PartitionSpec)


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Place every parameter of ``model`` on ``mesh`` as its annotation says (unannotated ones
    are replicated), in place; returns the model.

    ``nnx.get_partition_spec`` reads the annotations into a tree of ``PartitionSpec``s;
    ``jax.device_put`` with a ``NamedSharding`` per array moves each slice to its device.
    """
    state = nnx.state(model)
    specs = nnx.get_partition_spec(state)  # same tree, a PartitionSpec per array
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=_is_spec)
    nnx.update(model, jax.device_put(state, shardings))
    return model


def _fmt_slice(s: slice, size: int) -> str:
    start, stop, _ = s.indices(size)
    return ":" if (start, stop) == (0, size) else f"{start}:{stop}"


def layout(x: jax.Array) -> dict[str, list[int]]:
    """Which devices hold which slice of ``x``: ``{'[0:4, :]': [0, 1], ...}``.

    Keys are the slices in NumPy notation (``:`` = the whole axis), in the order of the array;
    values are the ids of the devices holding that slice (more than one = replicated).
    """
    where = defaultdict(list)
    for device, index in x.sharding.devices_indices_map(x.shape).items():
        key = tuple(index[i].indices(x.shape[i])[:2] for i in range(x.ndim))
        where[key].append(device.id)
    out = {}
    for key in sorted(where):
        text = ", ".join(_fmt_slice(slice(*k), n) for k, n in zip(key, x.shape))
        out[f"[{text}]"] = sorted(where[key])
    return out


def parameter_layouts(model: nnx.Module) -> list[tuple[str, tuple, PartitionSpec, dict]]:
    """For every parameter: (name, shape, partition spec, ``layout``), e.g.
    ``('mlp.fc.kernel', (64, 256), PartitionSpec(None, 'model'), {'[:, 0:128]': [0, 2], ...})``.
    The spec is read from where the array actually lives (``PartitionSpec()`` = replicated or
    on one device)."""
    rows = []
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        value = var[...]
        spec = getattr(value.sharding, "spec", PartitionSpec())
        rows.append((".".join(map(str, path)), tuple(value.shape), spec, layout(value)))
    return rows


def bytes_per_device(tree) -> dict[int, int]:
    """Bytes of the arrays in ``tree`` stored on each device: {device id: bytes}."""
    total = defaultdict(int)
    for leaf in jax.tree.leaves(tree):
        for shard in leaf.addressable_shards:
            total[shard.device.id] += shard.data.nbytes
    return dict(sorted(total.items()))


def count_collectives(compiled) -> dict[str, int]:
    """How many all-reduce / all-gather / reduce-scatter / all-to-all operations XLA inserted
    into a compiled function: ``jax.jit(f).lower(*args).compile()``."""
    hlo = compiled.as_text()
    names = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all")
    return {n: hlo.count(f" {n}(") + hlo.count(f" {n}-start(") for n in names}


def max_abs_diff(a, b) -> float:
    """Largest absolute difference between two trees of arrays with the same leaves
    (their metadata, e.g. which mesh a parameter belongs to, may differ)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    if len(la) != len(lb):
        raise ValueError(f"The trees have {len(la)} and {len(lb)} arrays; compare like with like.")
    # via NumPy: the arrays may live on different devices, which jax.numpy refuses to mix
    return max(float(np.max(np.abs(np.asarray(x, np.float32) - np.asarray(y, np.float32))))
               for x, y in zip(la, lb))
