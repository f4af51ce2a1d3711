#!/usr/bin/env python3
"""Code-completion prompts from the held-out modules of the default code model's corpus.

speck train puts a file in the validation split when an FNV-1a hash of its path relative to
--data falls below --val-fraction (src/train/data.c, is_val); this script applies the same rule,
so the prompts come from modules the model never saw. Each prompt is a window of whole lines that
ends just after a `def` line, the natural place to ask for a completion.

usage: bench/make_code_prompts.py [--data /usr/lib/python3.11] [--val-fraction 0.05] [-n 40] > p.jsonl
"""
import argparse
import fnmatch
import json
import os

M64 = (1 << 64) - 1


def is_val(rel, frac):
    h = 0xCBF29CE484222325
    for b in rel.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    h ^= h >> 29
    return (h % 1000000) < frac * 1e6


def files(root, glob):
    out = []
    for d, dirs, fs in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        for f in fs:
            if f.startswith(".") or not fnmatch.fnmatch(f, glob):
                continue
            out.append(os.path.relpath(os.path.join(d, f), root))
    return sorted(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/usr/lib/python3.11")
    ap.add_argument("--glob", default="*.py")
    ap.add_argument("--val-fraction", type=float, default=0.05)
    ap.add_argument("-n", type=int, default=40)
    ap.add_argument("--context-lines", type=int, default=12)
    a = ap.parse_args()
    prompts = []
    for rel in files(a.data, a.glob):
        if not is_val(rel, a.val_fraction):
            continue
        with open(os.path.join(a.data, rel), encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
        defs = [i for i, l in enumerate(lines) if l.lstrip().startswith("def ")]
        for i in defs[1:3]:  # a couple per module, spread over modules
            lo = max(0, i - a.context_lines)
            prompts.append("\n".join(lines[lo:i + 1]) + "\n")
        if len(prompts) >= a.n:
            break
    for p in prompts[: a.n]:
        print(json.dumps(p))


if __name__ == "__main__":
    main()
