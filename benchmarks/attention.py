"""Attention speed and memory.

1. Time: course_lib's scaled_dot_product_attention vs jax.nn.dot_product_attention (both jitted,
   causal, forward pass) at T = 256, 1024, 4096; median of repeated calls.
2. Memory: flash_attention vs the naive version at T = 16384 (one head), as XLA plans it
   (compiled temp memory) and as measured (peak resident memory of a fresh process).
Prints a table, then one JSON object as its last line. It never asserts on time.

    python benchmarks/attention.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp

from course_lib.attention import flash_attention, scaled_dot_product_attention


def inputs(B, T, H, D, seed=0):
    ks = jax.random.split(jax.random.PRNGKey(seed), 3)
    return [jax.random.normal(k, (B, T, H, D), jnp.float32) for k in ks]


def median_seconds(f, args, repeats):
    jax.block_until_ready(f(*args))  # compile
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def speed(Ts, B, H, D):
    ours = jax.jit(lambda q, k, v: scaled_dot_product_attention(q, k, v, causal=True))
    ref = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))
    rows = []
    for T in Ts:
        args = inputs(B, T, H, D)
        repeats = max(5, min(50, int(2e9 / (B * H * T * T * D))))
        # Interleave the two so that machine noise hits both alike.
        a, b = [], []
        for _ in range(3):
            a.append(median_seconds(ours, args, repeats))
            b.append(median_seconds(ref, args, repeats))
        t_ours, t_ref = min(a), min(b)
        rows.append({"T": T, "ours_ms": round(1e3 * t_ours, 3), "jax_ms": round(1e3 * t_ref, 3),
                     "ratio": round(t_ours / t_ref, 3)})
        print(f"T={T:5d}  ours {1e3 * t_ours:9.3f} ms   jax.nn {1e3 * t_ref:9.3f} ms   "
              f"ratio {t_ours / t_ref:.3f}")
    return rows


def planned_bytes(fn, args):
    m = jax.jit(fn).lower(*args).compile().memory_analysis()
    return None if m is None else int(m.temp_size_in_bytes + m.output_size_in_bytes)


def measured_peak(kind: str, T: int, block: int) -> int:
    """Peak resident memory added by one forward pass, measured in a fresh process."""
    fn = (f"jax.jit(lambda q, k, v: flash_attention(q, k, v, block_size={block}))"
          if kind == "flash" else "jax.jit(scaled_dot_product_attention)")
    code = f"""
import os, threading, time, jax, jax.numpy as jnp
from course_lib.attention import flash_attention, scaled_dot_product_attention

def rss():  # current resident memory in bytes
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

ks = jax.random.split(jax.random.PRNGKey(0), 3)
q, k, v = [jax.random.normal(kk, (1, {T}, 1, 64), jnp.float32) for kk in ks]
f = {fn}
c = f.lower(q, k, v).compile()
jax.block_until_ready((q, k, v))
base, peak, done = rss(), [0], []

def watch():  # sample the resident memory every millisecond while the call runs
    while not done:
        peak[0] = max(peak[0], rss())
        time.sleep(0.001)

t = threading.Thread(target=watch)
t.start()
jax.block_until_ready(c(q, k, v))
done.append(1)
t.join()
print(max(peak[0], rss()) - base)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = p.parse_args()
    Ts = [256, 1024] if args.quick else [256, 1024, 4096]
    B, H, D = (2, 4, 64) if args.quick else (4, 8, 64)
    print(f"backend {jax.default_backend()}, batch {B}, heads {H}, head_dim {D}, causal, float32")
    rows = speed(Ts, B, H, D)

    T_mem, block = (4096 if args.quick else 16384), 512
    q, k, v = inputs(1, T_mem, 1, 64)
    naive_plan = planned_bytes(scaled_dot_product_attention, (q, k, v))
    flash_plan = planned_bytes(lambda q, k, v: flash_attention(q, k, v, block_size=block), (q, k, v))
    naive_rss = measured_peak("naive", T_mem, block)
    flash_rss = measured_peak("flash", T_mem, block)
    print(f"memory at T={T_mem}: planned naive {naive_plan / 2**20:.1f} MiB, flash "
          f"{flash_plan / 2**20:.1f} MiB ({flash_plan / naive_plan:.1%}); measured peak naive "
          f"{naive_rss / 2**20:.1f} MiB, flash {flash_rss / 2**20:.1f} MiB "
          f"({flash_rss / max(naive_rss, 1):.1%})")
    print(json.dumps({
        "speed": rows,
        "max_ratio": max(r["ratio"] for r in rows),
        "memory_T": T_mem,
        "naive_planned_mib": round(naive_plan / 2**20, 1),
        "flash_planned_mib": round(flash_plan / 2**20, 1),
        "flash_over_naive_planned": round(flash_plan / naive_plan, 4),
        "naive_peak_mib": round(naive_rss / 2**20, 1),
        "flash_peak_mib": round(flash_rss / 2**20, 1),
        "flash_over_naive_peak": round(flash_rss / max(naive_rss, 1), 4),
        "jax": jax.__version__,
    }))


if __name__ == "__main__":
    main()
