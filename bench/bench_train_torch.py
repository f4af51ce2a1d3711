#!/usr/bin/python3
"""PyTorch (CPU) baseline for bench_train: the same Llama model (RMSNorm, RoPE, GQA causal
attention, SwiGLU, untied head), batch, sequence length and threads; full AdamW steps in fp32.

usage: bench_train_torch.py THREADS [n_layer n_embd n_head n_head_kv n_ff n_vocab T B] [steps]
Last line: RESULT torch tokens_per_s=...
"""
import math
import sys
import time

import torch
import torch.nn.functional as F


class Block(torch.nn.Module):
    def __init__(s, C, H, Hkv, Fh):
        super().__init__()
        s.H, s.Hkv, s.hd = H, Hkv, C // H
        s.n1, s.n2 = torch.nn.Parameter(torch.ones(C)), torch.nn.Parameter(torch.ones(C))
        s.wq = torch.nn.Linear(C, C, bias=False)
        s.wk = torch.nn.Linear(C, Hkv * s.hd, bias=False)
        s.wv = torch.nn.Linear(C, Hkv * s.hd, bias=False)
        s.wo = torch.nn.Linear(C, C, bias=False)
        s.wg = torch.nn.Linear(C, Fh, bias=False)
        s.wu = torch.nn.Linear(C, Fh, bias=False)
        s.wd = torch.nn.Linear(Fh, C, bias=False)

    @staticmethod
    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    def forward(s, x, cos, sin, mask):
        B, T, C = x.shape
        h = s.norm(x, s.n1)
        q = s.wq(h).view(B, T, s.H, s.hd).transpose(1, 2)
        k = s.wk(h).view(B, T, s.Hkv, s.hd).transpose(1, 2)
        v = s.wv(h).view(B, T, s.Hkv, s.hd).transpose(1, 2)

        def rope(t):  # adjacent pairs (llama.cpp NORMAL)
            a, b = t[..., 0::2], t[..., 1::2]
            return torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)

        q, k = rope(q), rope(k)
        g = s.H // s.Hkv
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(s.hd)
        att = att.masked_fill(mask, float("-inf")).softmax(-1)
        o = (att @ v).transpose(1, 2).reshape(B, T, C)
        x = x + s.wo(o)
        h = s.norm(x, s.n2)
        return x + s.wd(F.silu(s.wg(h)) * s.wu(h))


def main():
    a = sys.argv[1:]
    threads = int(a[0]) if a else 2
    L, C, H, Hkv, Fh, V, T, B = 4, 256, 8, 4, 768, 4096, 128, 8
    if len(a) >= 9:
        L, C, H, Hkv, Fh, V, T, B = map(int, a[1:9])
    steps = int(a[9]) if len(a) >= 10 else 10
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    emb = torch.nn.Embedding(V, C)
    blocks = torch.nn.ModuleList([Block(C, H, Hkv, Fh) for _ in range(L)])
    nf = torch.nn.Parameter(torch.ones(C))
    head = torch.nn.Linear(C, V, bias=False)
    params = list(emb.parameters()) + list(blocks.parameters()) + [nf] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    hd = C // H
    inv = 10000.0 ** (-torch.arange(0, hd // 2, dtype=torch.float32) * 2 / hd)
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None]
    cos, sin = ang.cos(), ang.sin()
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    x_in = torch.randint(0, V, (B, T))
    y = torch.randint(0, V, (B, T))
    times = []
    for i in range(steps + 2):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        x = emb(x_in)
        for b in blocks:
            x = b(x, cos, sin, mask)
        logits = head(Block.norm(x, nf))
        loss = F.cross_entropy(logits.view(-1, V), y.view(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    tps = B * T * steps / sum(times)
    print(f"torch {torch.__version__}: {tps:.0f} tokens/s (mean of {steps} steps), "
          f"{B * T / min(times):.0f} best; {threads} threads")
    print(f"RESULT torch tokens_per_s={tps:.1f}")


if __name__ == "__main__":
    main()
