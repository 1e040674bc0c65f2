"""Many devices: a (data, model) device mesh, tensor parallelism as partitioning rules on the
course's own Transformer layers, and where each slice of an array lives.

*Data parallelism* splits the batch over the mesh's ``data`` axis; every device holds all the
weights (``train.fit(..., mesh=mesh)`` does this). *Tensor parallelism* (Megatron-LM style)
splits the weight matrices over the ``model`` axis: the first matrix of each pair by columns
(each device computes some attention heads, some hidden units of the MLP), the second by rows
(each device holds a partial sum; XLA adds them up with an all-reduce). Both are declared, not
programmed: a ``PartitionSpec`` per array, and XLA's SPMD partitioner writes the communication.

The split is not built into the layers: ``TENSOR_PARALLEL`` is a table of rules, a pattern on a
parameter's name and the ``PartitionSpec`` for it, applied to any model made of
``course_lib.model``'s layers (a ``Block``, a ``GPT``, an encoder–decoder):

    mesh = make_mesh(data=4, model=2)                     # 8 devices in a 4 x 2 grid
    block = model.Block(cfg, rngs=nnx.Rngs(0))            # the GPT's own block
    shard_model(block, mesh)                              # weights placed by the rules
    layout(block.mlp.fc.kernel[...])                      # {'[:, 0:128]': [0, 2, 4, 6], ...}
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

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


COLUMNS = PartitionSpec(None, MODEL)  # kernel (d_in, d_out): output units split over "model"
ROWS = PartitionSpec(MODEL, None)  # kernel (d_in, d_out): input units split over "model"

# Megatron-LM's tensor parallelism for the layers of course_lib.model, as (pattern, spec) rules.
# A parameter takes the spec of the first pattern that matches the end of its dotted name;
# parameters no rule matches (embeddings, LayerNorm scales) are replicated on every device.
TENSOR_PARALLEL = (
    (r"attn\.(q|k|v)\.kernel", COLUMNS),  # query, key, value: by columns = by heads
    (r"attn\.(q|k|v)\.bias", PartitionSpec(MODEL)),
    (r"attn\.proj\.kernel", ROWS),  # output projection: by rows (partial sums)
    (r"mlp\.(fc|gate)\.kernel", COLUMNS),  # MLP: hidden units by columns (SwiGLU: both)...
    (r"mlp\.(fc|gate)\.bias", PartitionSpec(MODEL)),
    (r"mlp\.proj\.kernel", ROWS),  # ...and back by rows
)


def _name(path) -> str:
    """'blocks.0.attn.q.kernel' from a path into ``nnx.state`` (the Variable's own ``.value``
    step at the end of the path is left out)."""
    return ".".join(str(k.key if hasattr(k, "key") else k.idx) for k in path
                    if hasattr(k, "key") or hasattr(k, "idx"))


def partition_specs(model: nnx.Module, rules=TENSOR_PARALLEL):
    """The ``PartitionSpec`` the rules give every parameter of ``model``: a tree shaped like
    ``nnx.state(model)``. Unmatched parameters (and non-parameters) get ``PartitionSpec()``."""

    def spec(path, _):
        name = _name(path)
        return next((s for pattern, s in rules if re.search(rf"(^|\.){pattern}$", name)),
                    PartitionSpec())

    return jax.tree_util.tree_map_with_path(spec, nnx.state(model))


def shard_model(model: nnx.Module, mesh: Mesh, rules=TENSOR_PARALLEL) -> nnx.Module:
    """Place every parameter of ``model`` on ``mesh`` as ``rules`` say (unmatched ones are
    replicated), in place; returns the model.

    ``partition_specs`` gives a tree of ``PartitionSpec``s; ``jax.device_put`` with a
    ``NamedSharding`` per array moves each slice to its device.
    """
    for pattern, spec in rules:
        for axis in spec:
            for name in (axis if isinstance(axis, tuple) else (axis,)):
                if name is not None and name not in mesh.shape:
                    raise ValueError(f"The rule for {pattern!r} splits over mesh axis {name!r}, "
                                     f"but the mesh has axes {tuple(mesh.shape)}.")
    state = nnx.state(model)
    specs = partition_specs(model, rules)
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                             is_leaf=lambda x: isinstance(x, PartitionSpec))
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


# --- shapes and number formats (the references of notebook 08's exercises) ---


def _axes(entry) -> tuple[str, ...]:
    """The mesh axes one PartitionSpec entry names: None -> (), 'data' -> ('data',)."""
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def shard_shape(global_shape: Sequence[int], mesh_shape: dict[str, int],
                spec: Sequence) -> tuple[int, ...]:
    """The shape of the block of an array that one device holds.

    global_shape: the whole array's shape, e.g. (16, 64). mesh_shape: devices per mesh axis,
    e.g. {'data': 4, 'model': 2}. spec: one entry per array axis, as in a ``PartitionSpec``:
    None (the axis is not split), a mesh axis name (split over that axis), or a tuple of names
    (split over their product). A spec shorter than the array leaves the last axes whole.
    (16, 64), {'data': 4, 'model': 2}, ('data', None) -> (4, 64).
    """
    spec = tuple(spec) + (None,) * (len(global_shape) - len(spec))
    out = []
    for size, entry in zip(global_shape, spec):
        n = math.prod(mesh_shape[a] for a in _axes(entry))  # devices this axis is split over
        if size % n:
            raise ValueError(f"An axis of size {size} cannot be split evenly over {n} devices.")
        out.append(size // n)
    return tuple(out)


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 (ties to even); float32 array, same shape.

    bfloat16 is the top 16 bits of a float32: the sign, all 8 exponent bits and the first 7 of
    the 23 mantissa bits. Rounding adds just under half of the dropped part (0x7FFF), plus 1
    when the kept part is odd, so exact ties go to the even neighbour; then the low 16 bits are
    cleared. (Finite inputs; NaN and overflow to infinity are not handled here.)
    """
    bits = np.asarray(x, dtype=np.float32).view(np.uint32)
    odd = (bits >> 16) & 1
    rounded = (bits + np.uint32(0x7FFF) + odd) & np.uint32(0xFFFF0000)
    return rounded.astype(np.uint32).view(np.float32)
