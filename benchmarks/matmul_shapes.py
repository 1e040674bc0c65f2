"""How fast are the matrix multiplies of one training step, one at a time?

A training step of nanoGPT's CPU recipe (4 layers, width 128, batch 12 x context 64 = 768 tokens)
is mostly these matrix multiplies: for each linear layer the forward product, the gradient of its
input (the weight transposed) and the gradient of its weight (the activations transposed, a sum
over the 768 tokens). This script times each shape alone, jitted, and adds them up for the whole
step, so the step's time can be compared with what its matrix multiplies alone need. If PyTorch
is installed it times the same products there too (its CPU kernels come from oneDNN/MKL).

    python benchmarks/matmul_shapes.py
"""

from __future__ import annotations

import json
import time

import jax

N, C, LAYERS, VOCAB = 768, 128, 4, 65  # tokens per step, width, layers, characters
# (name, input width, output width) of each linear layer in one block, and the output layer.
# (course_lib.model computes q, k and v with three (C, C) layers; PyTorch's reference model
# fuses them into one (C, 3C) layer.)
LAYERS_PER_BLOCK = [("q", C, C), ("k", C, C), ("v", C, C), ("attn out", C, C),
                    ("mlp in", C, 4 * C), ("mlp out", 4 * C, C)]


def products(d_in: int, d_out: int):
    """The three products of a linear layer y = x W with x (N, d_in), W (d_in, d_out):
    (label, a shape, b shape, transpose a, transpose b)."""
    return [
        ("forward  x W", (N, d_in), (d_in, d_out), False, False),
        ("dx = dy Wᵀ", (N, d_out), (d_in, d_out), False, True),
        ("dW = xᵀ dy", (N, d_in), (N, d_out), True, False),
    ]


def best_ms(f, reps: int = 100) -> float:
    f()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def time_jax(a_shape, b_shape, ta, tb) -> float:
    a = jax.random.normal(jax.random.PRNGKey(0), a_shape)
    b = jax.random.normal(jax.random.PRNGKey(1), b_shape)
    f = jax.jit(lambda a, b: (a.T if ta else a) @ (b.T if tb else b))
    return best_ms(lambda: f(a, b).block_until_ready())


def time_torch(a_shape, b_shape, ta, tb) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    a, b = torch.randn(a_shape), torch.randn(b_shape)
    return best_ms(lambda: (a.T if ta else a) @ (b.T if tb else b))


def main() -> None:
    rows = [(name, d_in, d_out, LAYERS) for name, d_in, d_out in LAYERS_PER_BLOCK]
    rows.append(("output (tied)", C, VOCAB, 1))
    total = {"jax": 0.0, "torch": 0.0}
    have_torch = True
    print(f"{'layer':<14}{'product':<14}{'shape (m, k, n)':<18}{'JAX ms':>8}{'GFLOP/s':>9}"
          f"{'torch ms':>10}{'GFLOP/s':>9}")
    for name, d_in, d_out, count in rows:
        for label, a_shape, b_shape, ta, tb in products(d_in, d_out):
            m = a_shape[1] if ta else a_shape[0]
            k = a_shape[0] if ta else a_shape[1]
            n = b_shape[0] if tb else b_shape[1]
            flops = 2 * m * k * n
            t_jax = time_jax(a_shape, b_shape, ta, tb)
            t_torch = time_torch(a_shape, b_shape, ta, tb)
            have_torch = have_torch and t_torch is not None
            total["jax"] += count * t_jax
            line = (f"{name:<14}{label:<14}{str((m, k, n)):<18}{t_jax:8.3f}"
                    f"{flops / t_jax / 1e6:9.0f}")
            if t_torch is not None:
                total["torch"] += count * t_torch
                line += f"{t_torch:10.3f}{flops / t_torch / 1e6:9.0f}"
            print(line)
    print(f"one step's matrix multiplies ({LAYERS} blocks + output layer): JAX "
          f"{total['jax']:.1f} ms" + (f", PyTorch {total['torch']:.1f} ms" if have_torch else ""))
    result = {"step_matmul_ms_jax": round(total["jax"], 2), "jax": jax.__version__,
              "backend": jax.default_backend()}
    if have_torch:
        import torch

        result.update(step_matmul_ms_torch=round(total["torch"], 2), torch=torch.__version__)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
