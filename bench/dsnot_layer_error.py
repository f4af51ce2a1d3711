#!/usr/bin/python3
"""Why DSnoT does or does not help on a model (not a test): per matrix, the output error of the
Wanda mask and of Wanda+DSnoT (tests/reference/sparse_ref.py's dsnot_ref, equal to speck's) on
the calibration tokens the statistics came from and on held-out tokens.

The inputs of the chosen matrices are recorded by the float64 reference forward
(tests/reference/llama_ref.py) over windows of 256 tokens of prune_quality.py's calibration and
held-out texts (run that first: it writes them to WORK). For each sparsity and mask: the mean
squared output error E[((W - Q) x)^2] and its bias part (mean over rows of E[(W - Q) x]^2, what
DSnoT's expected error eps targets), on both token sets.

Usage: bench/dsnot_layer_error.py [--work /tmp/speck-prune-bench] [--model models/default.gguf]
         [--matrices blk.1.attn_q.weight,...] [--windows 16]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import gguf_io as G  # noqa: E402
import sparse_ref as S  # noqa: E402
from llama_ref import LlamaRef  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/speck-prune-bench")
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "default.gguf"))
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--matrices", default="blk.1.attn_q.weight,blk.1.attn_output.weight,"
                                          "blk.2.ffn_down.weight,blk.3.ffn_up.weight")
    ap.add_argument("--windows", type=int, default=16)
    args = ap.parse_args()
    g = G.read_gguf(args.model)
    keep = args.matrices.split(",")

    def tokens(path, nbytes):
        text = open(path, errors="replace").read()[:nbytes]
        p = subprocess.run([os.path.join(args.build, "speck"), "tokenize", "-m", args.model,
                            "--no-bos", text], capture_output=True, text=True, check=True)
        return [int(t) for t in p.stdout.split()]

    class Rec(LlamaRef):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            self.xs = {}

        def linear(self, x, name):
            if name + ".weight" in keep:
                self.xs.setdefault(name + ".weight", []).append(x.numpy().copy())
            return super().linear(x, name)

    def record(tk, n_win, ctx=256):
        r = Rec(g.kv, g.tensors, dtype=torch.float32)
        with torch.no_grad():
            for w in range(min(n_win, len(tk) // ctx)):
                r.forward(tk[w * ctx:(w + 1) * ctx])
        return {k: np.concatenate(v).astype(np.float64) for k, v in r.xs.items()}

    cal = record(tokens(os.path.join(args.work, "calib.txt"), 16000 * args.windows // 4),
                 args.windows)
    held = record(tokens(os.path.join(args.work, "heldout.txt"), 8000 * args.windows // 4),
                  args.windows // 2)
    print("| matrix | sparsity | mask | MSE cal | bias² cal | MSE held-out | bias² held-out |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for k in keep:
        W = g.tensors[k].astype(np.float32)
        X = cal[k]
        mu = X.mean(0)
        x2 = (X * X).mean(0)
        var = np.maximum(x2 - mu * mu, 0)
        for sp in ("50%", "70%", "2:4"):
            s, nm = S.parse_sparsity(sp)
            for name, thr in (("wanda", None), ("+dsnot 0.1", 0.1), ("+dsnot 5e-5", 5e-5)):
                if thr is None:
                    Q = S.wanda_ref(W, x2.astype(np.float32), s, nm)
                else:
                    Q = S.dsnot_ref(W, x2.astype(np.float32), mu.astype(np.float32),
                                    var.astype(np.float32), s, nm, "wanda", 50, thr)[0]
                D = W.astype(np.float64) - Q
                cells = []
                for XX in (X, held[k]):
                    E = XX @ D.T
                    cells += [f"{np.mean(E * E):.4g}", f"{np.mean(E.mean(0) ** 2):.3g}"]
                print(f"| {k} | {sp} | {name} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
