"""The same model and recipe in PyTorch, to measure the PyTorch baseline on *this* machine.

The course's speed target compares ``train_throughput.py`` against a PyTorch implementation of
nanoGPT's CPU recipe. Timings differ between CPUs, so this script trains the identical model
(4 layers, 4 heads, width 128, context 64, batch 12, no bias, no dropout, tied output layer,
exact GELU, PyTorch's fused causal attention) with the identical recipe (AdamW lr 1e-3, beta2
0.99, weight decay 0.1 on matrices, 100 warmup steps, cosine to 1e-4 at 2000 steps, clip 1.0)
on the same Tiny Shakespeare split, in eager mode as nanoGPT's CPU recipe runs it, and prints the
same JSON fields.

PyTorch is not a dependency of the course; run this in any environment that has it:

    python -m venv /tmp/torch-env && /tmp/torch-env/bin/pip install torch numpy
    /tmp/torch-env/bin/python benchmarks/torch_reference.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d: int, n_heads: int, n_layers: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d, bias=False)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ln2 = nn.LayerNorm(d, bias=False)
        self.fc = nn.Linear(d, 4 * d, bias=False)
        self.mlp_out = nn.Linear(4 * d, d, bias=False)
        for w in (self.attn_out.weight, self.mlp_out.weight):  # GPT-2's scaled residual init
            nn.init.normal_(w, std=0.02 / math.sqrt(2 * n_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        x = x + self.attn_out(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, block: int, n_layers: int, n_heads: int, d: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.wpe = nn.Embedding(block, d)
        self.blocks = nn.ModuleList(Block(d, n_heads, n_layers) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d, bias=False)
        for name, p in self.named_parameters():
            if p.dim() == 2 and "out" not in name:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.wte.weight.T  # tied output layer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-dir", default="../shared/data", help="folder with tinyshakespeare.txt")
    p.add_argument("--iters", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    args = p.parse_args()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = next(Path(args.data_dir).rglob("*shakespeare*.txt"))
    text = path.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n_val = round(len(ids) * 0.1)
    train_ids, val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
    B, T, iters, warmup, lr, min_lr = 12, 64, args.iters, 100, 1e-3, 1e-4

    def batch(data):
        ix = torch.randint(len(data) - T, (B,))
        x = torch.stack([data[i: i + T] for i in ix])
        return x, torch.stack([data[i + 1: i + 1 + T] for i in ix])

    model = GPT(len(chars), T, 4, 4, 128)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99))

    def lr_at(it: int) -> float:  # linear warmup from 0, cosine to min_lr, like optax's schedule
        if it < warmup:
            return lr * it / warmup
        frac = min((it - warmup) / (iters - warmup), 1.0)
        return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * frac))

    times = []
    for it in range(iters):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        x, y = batch(train_ids)
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
        if it % 500 == 0:
            print(f"step {it}: loss {loss.item():.3f}", flush=True)

    model.eval()
    with torch.no_grad():
        def val(n):
            return float(np.mean([F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item()
                                  for x, y in (batch(val_ids) for _ in range(n))]))
        val_20, val_400 = val(20), val(400)
    ms = 1000 * statistics.median(times[10:])
    print(json.dumps({
        "ms_per_iter": round(ms, 2), "tokens_per_s": round(B * T / (ms / 1000)),
        "val_loss": round(val_20, 4), "val_loss_400": round(val_400, 4),
        "train_s": round(sum(times), 1), "threads": torch.get_num_threads(),
        "seed": args.seed, "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
