"""Training throughput and quality on Tiny Shakespeare characters.

Defaults are nanoGPT's CPU recipe (4 layers, 4 heads, width 128, context 64, batch 12, 2000 steps,
AdamW lr 1e-3, beta2 0.99, weight decay 0.1, 100 warmup steps, cosine to 1e-4, clip 1.0, no
dropout). Prints progress, then as its last line one JSON object with ms_per_iter (median over the
compiled calls), tokens_per_s, val_loss (20 batches, as nanoGPT), val_loss_400 (400 batches),
compile_s and mfu (model FLOP/s divided by a float32 matmul rate measured in the same run). It
never asserts on time.

    python benchmarks/train_throughput.py              # the recipe, 2000 steps
    python benchmarks/train_throughput.py --preset cpu # the course's CPU preset (05_train)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from course_lib import data, model, tokenizers, train


def matmul_gflops(n: int = 1024, repeats: int = 10) -> float:
    """Best float32 matmul rate of this machine, as the ceiling for MFU."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=["recipe", "cpu"], default="recipe")
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=12)
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--beta2", type=float, default=0.99)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--steps-per-call", type=int, default=50)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    text = data.load_text("tinyshakespeare")
    tok = tokenizers.CharTokenizer.from_text(text)
    ids = np.asarray(tok.encode(text), np.int32)
    train_ids, val_ids = data.train_val_split(ids, 0.1)

    if args.preset == "cpu":
        mcfg, tcfg = train.cpu_preset(tok.vocab_size)
    else:
        mcfg = model.GPTConfig(
            vocab_size=tok.vocab_size, block_size=args.block_size, n_layers=args.n_layers,
            n_heads=args.n_heads, d_model=args.d_model, dropout=args.dropout,
        )
        tcfg = train.TrainConfig(
            steps=args.iters, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr,
            warmup_steps=args.warmup, beta2=args.beta2, weight_decay=args.weight_decay,
            grad_clip=args.grad_clip, eval_every=args.iters, eval_batches=args.eval_batches,
            steps_per_call=args.steps_per_call, seed=args.seed,
        )
    net = model.GPT(mcfg, rngs=nnx.Rngs(args.seed))
    print(f"{jax.default_backend()} | {platform.processor() or platform.machine()} | "
          f"{model.count_params(net):,} parameters | {mcfg}")

    t0 = time.perf_counter()
    state = train.fit(net, train_ids, val_ids, tcfg, progress=False)
    wall = time.perf_counter() - t0

    # fit records the wall time of every compiled call; the first call of each length runs
    # code that was only just loaded, so it is left out.
    seen, per_step = set(), []
    for n, dt in zip(state.history.call_steps, state.history.call_seconds):
        if n in seen:
            per_step.append(dt / n)
        seen.add(n)
    ms = 1000 * statistics.median(per_step)
    tokens_per_s = tcfg.batch_size * mcfg.block_size / (ms / 1000)
    gflops = matmul_gflops()
    model_gflops = model.flops_per_token(mcfg) * tokens_per_s / 1e9
    h = state.history
    # The 20-batch estimate is nanoGPT's (and noisy: about +-0.01); 400 batches of the same size
    # cover ~3x the validation split, a low-noise figure to compare seeds and runs with.
    val_400 = train.evaluate(state.model, val_ids, dataclasses.replace(tcfg, eval_batches=400))
    result = {
        "ms_per_iter": round(ms, 2),
        "tokens_per_s": round(tokens_per_s),
        "val_loss": round(h.val_loss[-1], 4),
        "val_loss_400": round(val_400, 4),
        "seed": tcfg.seed,
        "compile_s": round(h.compile_seconds, 2),
        "train_s": round(h.train_seconds[-1], 1),
        "wall_s": round(wall, 1),
        "calls_timed": len(per_step),
        "model_gflops": round(model_gflops, 1),
        "matmul_gflops": round(gflops, 1),
        "mfu": round(model_gflops / gflops, 3),
        "steps": tcfg.steps,
        "params": model.count_params(net),
        "jax": jax.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
