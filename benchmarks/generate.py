"""Generation speed: KV cache vs recomputing the prefix, at 512 new tokens; then multi-head vs
grouped-query vs multi-query attention, all with the cache.

Both paths are one jitted lax.scan (course_lib.generate). Without the cache, every step re-reads a
window of min(block_size, prompt + new tokens) positions; with it, every step feeds one token.
Part 2 builds the same model with n_kv_heads = n_heads (MHA), n_heads / 2 (GQA) and 1 (MQA) and
generates a batch of --kv-batch-size sequences with the cache: it prints each cache's size and the
rate. Prints the figures, then one JSON object as its last line. Never asserts on time.

    python benchmarks/generate.py [--new-tokens 512] [--batch-size 1] [--kv-batch-size 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time

import jax
import numpy as np
from flax import nnx

from course_lib import generate, model


def rate(net, prompt, n_new, use_cache, repeats):
    key = jax.random.PRNGKey(0)
    run = lambda: generate.generate(net, prompt, n_new, key=key, temperature=0.0,  # noqa: E731
                                    use_cache=use_cache).block_until_ready()
    t0 = time.perf_counter()
    out = run()  # includes compilation
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times)
    return prompt.shape[0] * n_new / sec, compile_s, np.asarray(out)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--prompt-len", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--kv-batch-size", type=int, default=16,
                   help="batch for the MHA / GQA / MQA comparison (0 = skip it)")
    args = p.parse_args()
    block = args.prompt_len + args.new_tokens
    cfg = model.GPTConfig(vocab_size=65, block_size=block, n_layers=args.n_layers,
                          n_heads=args.n_heads, d_model=args.d_model)
    net = model.GPT(cfg, rngs=nnx.Rngs(0))
    prompt = jax.random.randint(jax.random.PRNGKey(1), (args.batch_size, args.prompt_len), 0, 65)
    print(f"{jax.default_backend()} | {model.count_params(net):,} parameters | context {block} | "
          f"prompt {args.prompt_len} + {args.new_tokens} new tokens, batch {args.batch_size}")
    cached, c_compile, out_c = rate(net, prompt, args.new_tokens, True, args.repeats)
    uncached, u_compile, out_u = rate(net, prompt, args.new_tokens, False, args.repeats)
    same = bool((out_c == out_u).all())
    print(f"KV cache   {cached:10.1f} tokens/s (compile {c_compile:.1f} s)")
    print(f"no cache   {uncached:10.1f} tokens/s (compile {u_compile:.1f} s)")
    print(f"speed-up   {cached / uncached:.1f}x; greedy outputs identical: {same}")
    kv = kv_heads_comparison(cfg, args) if args.kv_batch_size else []
    print(json.dumps({
        "new_tokens": args.new_tokens, "batch_size": args.batch_size, "context": block,
        "cached_tokens_per_s": round(cached, 1), "uncached_tokens_per_s": round(uncached, 1),
        "speedup": round(cached / uncached, 2), "identical_greedy": same, "kv_heads": kv,
        "jax": jax.__version__,
    }))


def kv_heads_comparison(cfg, args):
    """Tokens/s with the cache for MHA, GQA (n_heads / 2 key/value heads) and MQA (one)."""
    B, rows = args.kv_batch_size, []
    prompt = jax.random.randint(jax.random.PRNGKey(2), (B, args.prompt_len), 0, cfg.vocab_size)
    print(f"\nbatch {B}, cache of {cfg.block_size} positions per sequence:")
    for label, n_kv in (("MHA", cfg.n_heads), ("GQA", max(1, cfg.n_heads // 2)), ("MQA", 1)):
        net = model.GPT(dataclasses.replace(cfg, n_kv_heads=n_kv), rngs=nnx.Rngs(0))
        cache_mib = sum(a.nbytes for a in jax.tree.leaves(net.init_cache(B))) / 2**20
        tok_s, compile_s, _ = rate(net, prompt, args.new_tokens, True, args.repeats)
        print(f"{label} ({n_kv} key/value heads)  cache {cache_mib:7.1f} MiB  "
              f"{tok_s:10.1f} tokens/s (compile {compile_s:.1f} s)")
        rows.append({"attention": label, "n_kv_heads": n_kv, "cache_mib": round(cache_mib, 2),
                     "tokens_per_s": round(tok_s, 1), "parameters": model.count_params(net)})
    return rows


if __name__ == "__main__":
    main()
