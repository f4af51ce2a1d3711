#!/usr/bin/python3
"""PyTorch (CPU) LoRA peer for bench_lora's fine-tuning figure: bench_train_torch.py's Llama model
(the same shapes as the default model by default) with every q, k, v, o, gate, up, down
projection frozen and wrapped in a rank-r LoRA (y = x Wᵀ + (alpha/r) (x Aᵀ) Bᵀ, A and B trained),
embeddings, norms and head frozen; AdamW on A and B only; fp32; plain PyTorch as a user would
write it (what PEFT does on CPU).

usage: bench_lora_torch.py THREADS [rank 16] [n_layer n_embd n_head n_head_kv n_ff n_vocab T B]
       [steps]
Last line: RESULT torch_lora tokens_per_s=...
"""
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train_torch import Block  # noqa: E402


class LoRALinear(torch.nn.Module):
    def __init__(self, base: torch.nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.a = torch.nn.Parameter(torch.empty(r, base.in_features).uniform_(
            -base.in_features ** -0.5, base.in_features ** -0.5))
        self.b = torch.nn.Parameter(torch.zeros(base.out_features, r))
        self.s = alpha / r

    def forward(self, x):
        return self.base(x) + self.s * ((x @ self.a.T) @ self.b.T)


def main():
    a = sys.argv[1:]
    threads = int(a[0]) if a else 1
    r = int(a[1]) if len(a) > 1 else 16
    L, C, H, Hkv, Fh, V, T, B = 4, 256, 8, 4, 768, 4096, 256, 8
    if len(a) >= 10:
        L, C, H, Hkv, Fh, V, T, B = map(int, a[2:10])
    steps = int(a[10]) if len(a) >= 11 else 6
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    emb = torch.nn.Embedding(V, C)
    blocks = torch.nn.ModuleList([Block(C, H, Hkv, Fh) for _ in range(L)])
    for p in list(emb.parameters()) + list(blocks.parameters()):
        p.requires_grad_(False)
    for blk in blocks:
        for name in ("wq", "wk", "wv", "wo", "wg", "wu", "wd"):
            setattr(blk, name, LoRALinear(getattr(blk, name), r, float(r)))
    nf = torch.ones(C)
    head = torch.nn.Linear(C, V, bias=False)
    head.weight.requires_grad_(False)
    params = [p for p in blocks.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    hd = C // H
    inv = 10000.0 ** (-torch.arange(0, hd // 2, dtype=torch.float32) * 2 / hd)
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = ang.cos(), ang.sin()
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    x_in = torch.randint(0, V, (B, T))
    y = torch.randint(0, V, (B, T))
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        x = emb(x_in)
        for blk in blocks:
            x = blk(x, cos, sin, mask)
        logits = head(Block.norm(x, nf))
        loss = F.cross_entropy(logits.view(-1, V), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if i >= 1:
            times.append(time.perf_counter() - t)
    times.sort()
    med = times[len(times) // 2]
    print(f"torch {torch.__version__} LoRA r={r}: {B * T / med:.0f} tokens/s (median of {steps} "
          f"steps), {sum(p.numel() for p in params) / 1e6:.3f}M trainable; {threads} threads")
    print(f"RESULT torch_lora tokens_per_s={B * T / med:.1f}")


if __name__ == "__main__":
    main()
