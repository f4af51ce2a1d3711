#!/usr/bin/python3
"""`speck prune --method cfsp` (structured FFN-channel pruning) against numpy and PyTorch.

  score    CFSP's fine-grained channel score (Wang et al. 2024, exponents a = b = c = 1), written
           here from the paper's formula: a_j = ||x_j|| (root mean square of ffn_down's input
           over the calibration tokens, recorded by the float64 reference forward, llama_ref.py,
           over the same windows of the same tokens), and
             S_j = a_j / E * sum_i (|D_ij| a_j / sum_k |D_ik| a_k + |U_ji| / sum_k |U_ki|
                                    + |G_ji| / sum_k |G_ki|).
           The kept channels of every layer (read back from the output: which source rows of
           ffn_up it holds) must be the reference's top-K. speck's activations are f32 (within
           ~1e-5 relative of float64: test_forward.py), so a channel whose reference score is
           within 1e-4 relative of the K-th score may trade places with one on the other side;
           any other difference fails. gate and up rows and down columns are the source's
           exactly (f32 model), feed_forward_length is the new width.
  forward  speck's logits on the pruned model (forward_dump, one prefill) equal the float64
           reference's on the pruned shapes within 1e-4 x max(1, max|logit|) (test_forward.py's
           f32 bound and its reasons).
  heads    --heads 50% on a model with 8 query / 4 KV heads and q/k/v biases: the KV groups kept
           (each with its 2 query heads) are the top groups of the same score applied to the
           attention (q in up's place, attn_output in down's, no gate; a group's score the sum
           over its query channels), on attn_output's input mean squares from the reference;
           q/k/v rows, biases and attn_output columns are the source's; head counts and
           key_length written; the forward equals the reference on the pruned shapes (1e-4).
  q8_0     a q8_0 model prunes to q8_0 tensors of the new width (down requantized), and
           speck runs it.
  bad      ratio 0, 1, 1.5, 2:4, one that removes every channel (0.99 at --align 32), one that
           removes none after rounding, too little calibration text, no --calib, --sparsity with
           cfsp, --ratio without cfsp, an MoE model: non-zero exit, a message naming the
           problem, nothing written.

Usage (ctest): cfsp_ref.py --speck build/speck --dump build/tests/forward_dump --workdir DIR
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_io as G  # noqa: E402
import make_model as MM  # noqa: E402
from checks import Results  # noqa: E402
from llama_ref import LlamaRef  # noqa: E402


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def cfsp_scores(Wg, Wu, Wd, x2):
    """S (F,) from gate, up (F, E), down (E, F) and down's input mean squares x2 (F,)."""
    a = np.sqrt(np.maximum(x2.astype(np.float64), 0))
    E = Wd.shape[0]
    D = np.abs(Wd.astype(np.float64)) * a[None, :]
    s = (D / D.sum(1, keepdims=True)).sum(0)  # each down row's share per channel
    for W in (Wu, Wg):
        if W is not None:
            A = np.abs(W.astype(np.float64))
            s += (A / A.sum(0, keepdims=True)).sum(1)  # each input column's share per channel
    return a * s / E


def keep_width(F, ratio, align):
    k = F - int(np.floor(ratio * F + 0.5))
    return (k + align // 2) // align * align


class Recorder(LlamaRef):
    """The reference forward, summing the squares of every matrix input."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.s2, self.n = {}, {}

    def linear(self, x, name):
        key = name + ".weight"
        x64 = x.to(torch.float64)
        self.s2[key] = self.s2.get(key, 0) + (x64 ** 2).sum(0).numpy()
        self.n[key] = self.n.get(key, 0) + x.shape[0]
        return super().linear(x, name)


def heads_part(args, res, txt, ctx, n_win, text, rng):
    """--heads: KV groups (with their query heads) chosen by the group score, on a model with 4
    KV heads of 2 query heads each and q/k/v biases; the forward on the pruned shapes."""
    c = MM.config("gqa")
    c.update(n_head=8, n_head_kv=4, head_dim=8, qkv_bias=True)
    kv, tensors = MM.build(c, "f32", 6)
    path = f"{args.workdir}/h8.gguf"
    G.write_gguf(path, kv, tensors)
    src = G.read_gguf(path)
    rec = Recorder(src.kv, src.tensors)
    with torch.no_grad():
        for k in range(n_win):
            rec.forward(list(text[k * ctx:(k + 1) * ctx]))
    out = f"{args.workdir}/h8_cfsp.gguf"
    p = run([args.speck, "prune", path, out, "--method", "cfsp", "--ratio", "25%", "--align",
             "16", "--heads", "50%", "--calib", txt, "--calib-ctx", str(ctx)])
    if not res.check(p.returncode == 0, f"--heads 50% ran ({p.stderr.strip()[-300:]})"):
        return
    f = G.read_gguf(out)
    a = "llama."
    res.check((int(f.kv[a + "attention.head_count"]), int(f.kv[a + "attention.head_count_kv"]),
               int(f.kv[a + "attention.key_length"])) == (4, 2, 8),
              "heads 8 / 4 KV -> 4 / 2, key_length 8 written")
    hd, G_ = 8, 2
    ok = True
    margin = 0.0
    for l in range(c["n_layer"]):
        b = f"blk.{l}."
        Wq, Wk, Wv, Wo = (src.tensors[b + n + ".weight"] for n in ("attn_q", "attn_k", "attn_v",
                                                                   "attn_output"))
        key = b + "attn_output.weight"
        S = cfsp_scores(None, Wq, Wo, rec.s2[key] / rec.n[key])
        gs = S.reshape(4, G_ * hd).sum(1)
        order = sorted(range(4), key=lambda g: (-gs[g], g))
        ref = sorted(order[:2])
        margin = max(margin, abs(gs[order[1]] - gs[order[2]]) / abs(gs[order[1]]))
        qrows = np.concatenate([np.arange(g * G_ * hd, (g + 1) * G_ * hd) for g in ref])
        kvrows = np.concatenate([np.arange(g * hd, (g + 1) * hd) for g in ref])
        ok &= np.array_equal(f.tensors[b + "attn_q.weight"], Wq[qrows])
        ok &= np.array_equal(f.tensors[b + "attn_q.bias"], src.tensors[b + "attn_q.bias"][qrows])
        for n in ("attn_k", "attn_v"):
            ok &= np.array_equal(f.tensors[b + n + ".weight"], src.tensors[b + n + ".weight"][kvrows])
            ok &= np.array_equal(f.tensors[b + n + ".bias"], src.tensors[b + n + ".bias"][kvrows])
        ok &= np.array_equal(f.tensors[b + "attn_output.weight"], Wo[:, qrows])
    # The kept/removed boundary must not be a near-tie, or f32 vs float64 could decide it.
    res.check(ok, f"kept KV groups (q rows, k/v rows, biases, attn_output columns) equal the "
                  f"numpy group score's (boundary gap {margin:.1e} relative)")
    toks = [int(t) for t in rng.integers(0, 256, size=24)]
    o = f"{args.workdir}/hlogits.f32"
    q = subprocess.run([args.dump, out, "prefill", o, ",".join(map(str, toks))],
                       capture_output=True, text=True, timeout=120)
    if res.check(q.returncode == 0, f"forward_dump ran on the head-pruned model "
                                    f"({q.stderr.strip()[-200:]})"):
        with torch.no_grad():
            ref = LlamaRef(f.kv, f.tensors).forward(toks).numpy()
        got = np.fromfile(o, dtype="<f4").reshape(ref.shape).astype(np.float64)
        scale = max(1.0, float(np.abs(ref).max()))
        err = float(np.abs(got - ref).max())
        res.check(err <= 1e-4 * scale,
                  f"head-pruned forward == reference: max err {err:.2e} <= {1e-4 * scale:.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--speck", required=True)
    ap.add_argument("--dump", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    wd = args.workdir
    shutil.rmtree(wd, ignore_errors=True)
    os.makedirs(wd)
    res = Results()

    ctx, n_win = 32, 6
    rng = np.random.default_rng(5)
    text = bytes(rng.integers(32, 127, size=ctx * n_win + 5, dtype=np.uint8))
    txt = f"{wd}/calib.txt"
    open(txt, "wb").write(text)
    open(f"{wd}/short.txt", "w").write("def f(x): return x")
    f32 = MM.make_model("gqa", f"{wd}/f32.gguf", "f32", seed=4)
    q8 = MM.make_model("gqa", f"{wd}/q8.gguf", "q8_0", seed=4)
    src = G.read_gguf(f32)
    arch = src.kv["general.architecture"]
    F = int(src.kv[f"{arch}.feed_forward_length"])
    n_layer = int(src.kv[f"{arch}.block_count"])
    ratio, align = 0.25, 16
    K = keep_width(F, ratio, align)

    rec = Recorder(src.kv, src.tensors)
    with torch.no_grad():
        for k in range(n_win):  # whole windows, each from an empty cache (as speck's)
            rec.forward(list(text[k * ctx:(k + 1) * ctx]))

    out = f"{wd}/cfsp.gguf"
    p = run([args.speck, "prune", f32, out, "--method", "cfsp", "--ratio", "25%", "--align",
             str(align), "--calib", txt, "--calib-ctx", str(ctx)])
    if res.check(p.returncode == 0 and os.path.exists(out),
                 f"cfsp 25% on f32 ran ({p.stderr.strip()[-300:]})"):
        f = G.read_gguf(out)
        res.check(int(f.kv[f"{arch}.feed_forward_length"]) == K and K < F,
                  f"feed_forward_length {F} -> {f.kv[f'{arch}.feed_forward_length']} (want {K})")
        res.check(f.kv.get("speck.prune.method") == "cfsp", "metadata records the method")
        exact = True
        worst_margin = 0.0
        n_diff = 0
        for l in range(n_layer):
            b = f"blk.{l}."
            Wg, Wu, Wd = (src.tensors[b + n + ".weight"] for n in ("ffn_gate", "ffn_up",
                                                                   "ffn_down"))
            key = b + "ffn_down.weight"
            x2 = rec.s2[key] / rec.n[key]
            S = cfsp_scores(Wg, Wu, Wd, x2)
            order = sorted(range(F), key=lambda j: (-S[j], j))
            ref = sorted(order[:K])
            up = f.tensors[b + "ffn_up.weight"]
            # Which source channel each output row is (random weights: rows are distinct).
            got = []
            for r in up:
                m = np.where((Wu == r).all(1))[0]
                got.append(int(m[0]) if m.size == 1 else -1)
            exact &= got == sorted(got) and -1 not in got
            exact &= np.array_equal(f.tensors[b + "ffn_gate.weight"], Wg[got])
            exact &= np.array_equal(f.tensors[b + "ffn_down.weight"], Wd[:, got])
            diff = set(got) ^ set(ref)
            n_diff += len(diff)
            thr = S[order[K - 1]]
            for j in diff:
                worst_margin = max(worst_margin, abs(S[j] - thr) / abs(thr))
        res.check(exact, "gate / up rows and down columns are the source's, in order")
        res.check(worst_margin <= 1e-4,
                  f"kept channels equal the numpy CFSP reference ({n_diff} differ, all within "
                  f"{worst_margin:.1e} <= 1e-4 relative of the boundary score)")
        # And a different score would choose differently: Wanda-style |W|·||x|| of down alone
        # and the activation norm alone must not give the same sets (so the check has teeth).
        other = 0
        for l in range(n_layer):
            key = f"blk.{l}.ffn_down.weight"
            a = np.sqrt(rec.s2[key] / rec.n[key])
            alt = sorted(sorted(range(F), key=lambda j: (-a[j], j))[:K])
            up = f.tensors[f"blk.{l}.ffn_up.weight"]
            got = [int(np.where((src.tensors[f"blk.{l}.ffn_up.weight"] == r).all(1))[0][0])
                   for r in up]
            other += len(set(alt) ^ set(got))
        res.check(other > 0, f"the activation norm alone would keep other channels ({other})")
        # Forward on the pruned shapes against the reference.
        toks = [int(t) for t in rng.integers(0, 256, size=24)]
        o = f"{wd}/logits.f32"
        q = subprocess.run([args.dump, out, "prefill", o, ",".join(map(str, toks))],
                           capture_output=True, text=True, timeout=120)
        if res.check(q.returncode == 0 and os.path.exists(o),
                     f"forward_dump ran on the pruned model ({q.stderr.strip()[-200:]})"):
            with torch.no_grad():
                ref = LlamaRef(f.kv, f.tensors).forward(toks).numpy()
            got = np.fromfile(o, dtype="<f4").reshape(ref.shape).astype(np.float64)
            scale = max(1.0, float(np.abs(ref).max()))
            err = float(np.abs(got - ref).max())
            res.check(err <= 1e-4 * scale,
                      f"pruned forward == reference: max err {err:.2e} <= {1e-4 * scale:.2e}")

    # q8_0: down requantized, still q8_0, and speck runs the result.
    oq = f"{wd}/cfsp_q8.gguf"
    p = run([args.speck, "prune", q8, oq, "--method", "cfsp", "--ratio", "0.4", "--calib", txt,
             "--calib-ctx", str(ctx), "--quiet"])
    if res.check(p.returncode == 0, f"cfsp 0.4 on q8_0 ran ({p.stderr.strip()[-200:]})"):
        f = G.read_gguf(oq, dequant=False)
        K8 = keep_width(F, 0.4, 32)
        ok = all(f.tensor_types[f"blk.{l}.ffn_{n}.weight"] == G.TYPE_FROM_NAME["q8_0"]
                 for l in range(n_layer) for n in ("gate", "up", "down"))
        res.check(ok and int(f.kv[f"{arch}.feed_forward_length"]) == K8,
                  f"q8_0 stays q8_0 at width {K8}")
        q = subprocess.run([args.dump, oq, "prefill", f"{wd}/l8.f32", "1,2,3,4"],
                           capture_output=True, text=True, timeout=120)
        res.check(q.returncode == 0, "speck runs the pruned q8_0 model")

    heads_part(args, res, txt, ctx, n_win, text, rng)

    # Bad input: a clear message, nothing written.
    moe = MM.make_model("mixtral", f"{wd}/moe.gguf", "f32", seed=1)
    bad = f"{wd}/bad.gguf"
    base = ["--method", "cfsp", "--calib", txt, "--calib-ctx", str(ctx)]
    cases = [
        ([f32, bad, *base, "--ratio", "0"], ["(0, 1)"]),
        ([f32, bad, *base, "--ratio", "1"], ["(0, 1)"]),
        ([f32, bad, *base, "--ratio", "1.5"], ["(0, 1)"]),
        ([f32, bad, *base, "--ratio", "2:4"], ["(0, 1)"]),
        ([f32, bad, *base, "--ratio", "0.99"], ["removes every FFN channel"]),
        ([f32, bad, *base, "--ratio", "0.01"], ["removes no FFN channel"]),
        ([f32, bad, "--method", "cfsp", "--ratio", "25%", "--calib", f"{wd}/short.txt"],
         ["at least one window"]),
        ([f32, bad, "--method", "cfsp", "--ratio", "25%"], ["--calib TEXT"]),
        ([f32, bad, *base, "--sparsity", "50%"], ["not --sparsity"]),
        ([f32, bad, "--method", "wanda", "--ratio", "25%", "--calib", txt], ["need --method cfsp"]),
        ([moe, bad, *base, "--ratio", "25%", "--align", "16"], ["no dense FFN"]),
        ([f32, bad, *base, "--ratio", "25%", "--align", "16", "--heads", "1"], ["(0, 1)"]),
        ([f32, bad, *base, "--ratio", "25%", "--align", "16", "--heads", "0.1"],
         ["keeps 2 of 2 KV heads"]),
    ]
    for argv, needles in cases:
        if os.path.exists(bad):
            os.remove(bad)
        p = run([args.speck, "prune", *argv])
        res.check(p.returncode != 0 and all(s in p.stderr for s in needles)
                  and not os.path.exists(bad)
                  and not any(x.startswith("bad.gguf") for x in os.listdir(wd)),
                  f"refused, nothing written: {' '.join(argv[2:])} ({p.stderr.strip()[:160]})")
    print(f"{res.passed} passed, {res.failed} failed")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
