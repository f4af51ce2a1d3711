#!/usr/bin/python3
"""llama.cpp runs speck's quantized files (not a test): greedy continuations of a few prompts by
`llama-simple` and by `speck generate` on each file; where they part, the float64 PyTorch
reference (tests/reference/llama_ref.py, weights dequantized by quant_ref.py) scores the common
prefix and reports the gap between the two tokens chosen there, in logits. Both engines round
the activations differently (speck's batch path keeps them in f32, llama.cpp's rounds them to 8
bits), so where the reference's two best tokens are within a few hundredths of a logit either
choice is an exact engine's; a large gap would mean one engine reads the file wrongly.

Usage: bench/llamacpp_greedy.py FILE.gguf... [--speck build/speck] [--llama DIR] [-n 32]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
PROMPTS = ["def fibonacci(n):", "import os", "class Stack:"]


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--speck", default=os.path.join(ROOT, "build", "speck"))
    ap.add_argument("--llama", default="/tmp/llama.cpp/build/bin")
    ap.add_argument("-n", type=int, default=32)
    args = ap.parse_args()
    import torch  # noqa: E402
    from llama_ref import LlamaRef  # noqa: E402
    same = total = 0
    gaps = []
    for f in args.files:
        ref = None
        row = []
        for p in PROMPTS:
            a = run([os.path.join(args.llama, "llama-simple"), "-m", f, "-n", str(args.n), p])
            b = run([args.speck, "generate", "-m", f, "-p", p, "-n", str(args.n)])
            total += 1
            if a == b:
                same += 1
                row.append("same")
                continue
            # The first differing token: tokenize both texts and find where they part.
            ta = run([args.speck, "tokenize", "-m", f, "--no-bos", a]).split()
            tb = run([args.speck, "tokenize", "-m", f, "--no-bos", b]).split()
            k = 0
            while k < min(len(ta), len(tb)) and ta[k] == tb[k]:
                k += 1
            if k >= min(len(ta), len(tb)) or k == 0:
                row.append("differs (text)")
                continue
            if ref is None:
                ref = LlamaRef.from_file(f)
            with torch.no_grad():
                lg = ref.forward([int(x) for x in ta[:k]])[-1]
            gap = abs(float(lg[int(ta[k])] - lg[int(tb[k])]))
            gaps.append(gap)
            row.append(f"differs at token {k}, reference gap {gap:.3f}")
        print(f"{os.path.basename(f)}: " + "; ".join(row), flush=True)
    print(f"{same} of {total} continuations identical; where they differ the float64 reference's "
          f"logits for the two choices are {min(gaps, default=0):.3f} - {max(gaps, default=0):.3f}"
          f" apart")
    return 0


if __name__ == "__main__":
    sys.exit(main())
