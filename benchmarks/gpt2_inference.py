"""GPT-2 124M inference on this machine: load time and tokens/s with and without the KV cache.

The weights are RANDOM, in GPT-2 124M's exact shapes (12 layers, width 768, 12 heads, vocabulary
50,257, context 1,024; 124,439,808 parameters): GPT-2's real files cannot be downloaded here, and
speed does not depend on the values. The script writes such a checkpoint in Hugging Face's layout
(``pretrained.save_gpt2``: config.json + a 498 MB model.safetensors), then times
``pretrained.load_gpt2`` on it (reading, checking and placing every tensor; the first load may
read the disk, later ones the operating system's file cache), then greedy generation of
--new-tokens tokens after a random --prompt-len token prompt, batch 1, with the KV cache and
without it (every step re-reads the whole window). Rates are medians over --repeats timed runs,
after one run that includes compilation. Prints the figures, then one JSON object as its last
line. Never asserts on time.

    python benchmarks/gpt2_inference.py [--prompt-len 64] [--new-tokens 128] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from course_lib import generate, model, pretrained


def timed(fn, repeats: int):
    """(first call's seconds, compilation included; median of the next ``repeats``; output)."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), out


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="gpt2", choices=list(pretrained.GPT2_SIZES))
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--loads", type=int, default=3, help="timed loads of the checkpoint")
    args = p.parse_args()

    cfg = pretrained.config_from_hf(pretrained.gpt2_config(args.size))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / args.size
        t0 = time.perf_counter()
        pretrained.save_gpt2(model.GPT(cfg, rngs=nnx.Rngs(0)), folder)
        make_s = time.perf_counter() - t0
        size_mb = (folder / "model.safetensors").stat().st_size / 1e6
        load_s = []
        for _ in range(args.loads):
            t0 = time.perf_counter()
            net = pretrained.load_gpt2(folder)
            jax.block_until_ready(nnx.state(net))
            load_s.append(time.perf_counter() - t0)
    n_params = model.count_params(net)
    print(f"{jax.default_backend()} | {args.size} shapes, RANDOM weights (not GPT-2's) | "
          f"{n_params:,} parameters | checkpoint {size_mb:.0f} MB written in {make_s:.1f} s")
    print("load_gpt2: " + ", ".join(f"{s:.2f} s" for s in load_s)
          + " (the first may read the disk)")

    prompt = jax.random.randint(jax.random.key(1), (1, args.prompt_len), 0, cfg.vocab_size)
    rates, outputs = {}, {}
    for use_cache in (True, False):
        def run(use_cache=use_cache):
            return generate.generate(net, prompt, args.new_tokens, key=jax.random.key(0),
                                     temperature=0.0, use_cache=use_cache).block_until_ready()

        first, sec, out = timed(run, args.repeats)
        rates[use_cache] = args.new_tokens / sec
        outputs[use_cache] = np.asarray(out)
        label = "KV cache" if use_cache else "no cache"
        print(f"{label}  {rates[use_cache]:8.2f} tokens/s ({sec:.1f} s for {args.new_tokens} "
              f"tokens; first run with compilation {first:.1f} s)")
    same = bool(np.array_equal(outputs[True], outputs[False]))
    speedup = rates[True] / rates[False]
    print(f"speed-up {speedup:.1f}x; greedy outputs identical: {same}")
    print(json.dumps({
        "size": args.size, "random_weights": True, "parameters": n_params,
        "checkpoint_mb": round(size_mb), "load_s": [round(s, 2) for s in load_s],
        "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "batch_size": 1,
        "cached_tokens_per_s": round(rates[True], 2),
        "uncached_tokens_per_s": round(rates[False], 2), "speedup": round(speedup, 2),
        "identical_greedy": same, "jax": jax.__version__,
    }))


if __name__ == "__main__":
    main()
