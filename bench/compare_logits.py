#!/usr/bin/python3
"""Cross-check (not a test): speck's and llama.cpp's logits against the float64 PyTorch reference.

For each GGUF file: the same tokens run through speck (tests' forward_dump), llama.cpp
(bench/llamacpp_logits.c, built by hand against a llama.cpp build) and tests/reference's
LlamaRef on the file's dequantized weights, one prefill and token by token. Prints each
implementation's max and RMS error against the reference (relative to max |reference logit|)
and how often the two engines' argmax agree with each other and with the reference.

Usage: bench/compare_logits.py --dump build/tests/forward_dump --llama /tmp/llamacpp_logits \\
           --text FILE [--n 128] MODEL.gguf ...
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "reference"))
import gguf_io as G  # noqa: E402
import llama_ref as L  # noqa: E402


def run(cmd, out, rows, vocab):
    subprocess.run(cmd, check=True, capture_output=True)
    return np.fromfile(out, dtype="<f4").reshape(rows, vocab).astype(np.float64)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", required=True)
    ap.add_argument("--llama", required=True)
    ap.add_argument("--speck", default=None, help="speck CLI (to tokenize --text)")
    ap.add_argument("--text", required=True)
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("models", nargs="+")
    args = ap.parse_args()
    speck = args.speck or os.path.join(os.path.dirname(args.dump), "..", "speck")
    work = tempfile.mkdtemp(prefix="cmp-logits-")
    text = open(args.text).read()
    print(f"{'file':28s} {'mode':8s} {'speck max/rms':>16s} {'llama.cpp max/rms':>18s} "
          f"{'argmax s=l':>10s} {'s=ref':>6s} {'l=ref':>6s}")
    for path in args.models:
        ids = subprocess.run([speck, "tokenize", "-m", path, "--no-bos", text], check=True,
                             capture_output=True, text=True).stdout.split()[: args.n]
        toks = ",".join(ids)
        g = G.read_gguf(path)
        ref_model = L.LlamaRef(g.kv, g.tensors)
        V = ref_model.hp.n_vocab
        with torch.no_grad():
            ref = ref_model.forward([int(t) for t in ids]).numpy()
        scale = max(1.0, float(np.abs(ref).max()))
        for mode in ("prefill", "decode"):
            s = run([args.dump, path, mode, os.path.join(work, "s.f32"), toks],
                    os.path.join(work, "s.f32"), len(ids), V)
            lc = run([args.llama, path, mode, os.path.join(work, "l.f32"), toks],
                     os.path.join(work, "l.f32"), len(ids), V)

            def err(x):
                e = np.abs(x - ref)
                return f"{e.max() / scale:.4f}/{np.sqrt((e ** 2).mean()) / scale:.4f}"

            am_s, am_l, am_r = s.argmax(1), lc.argmax(1), ref.argmax(1)
            print(f"{os.path.basename(path):28s} {mode:8s} {err(s):>16s} {err(lc):>18s} "
                  f"{(am_s == am_l).mean():10.3f} {(am_s == am_r).mean():6.3f} "
                  f"{(am_l == am_r).mean():6.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
