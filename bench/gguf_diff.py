#!/usr/bin/python3
"""Compare two GGUF files tensor by tensor (not a test): type of each tensor in both and whether
the bytes are identical; general.file_type of each. Used to check `speck quantize` against
llama-quantize (docs/convert.md).

Usage: bench/gguf_diff.py A.gguf B.gguf [-v]
Prints one line per tensor that differs (all with -v) and a summary; exits 1 if any differ.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "reference"))
import gguf_io  # noqa: E402

# ggml type id -> (values per block, bytes per block), for every type either program writes.
BLOCK = {0: (1, 4), 1: (1, 2), 30: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24),
         8: (32, 34), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
         14: (256, 210), 20: (32, 18), 23: (256, 136)}
NAMES = {0: "f32", 1: "f16", 30: "bf16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0",
         10: "q2_k", 11: "q3_k", 12: "q4_k", 13: "q5_k", 14: "q6_k", 20: "iq4_nl", 23: "iq4_xs"}


def tensors(path):
    g = gguf_io.read_gguf(path, dequant=False)
    with open(path, "rb") as f:
        data = f.read()
    out = {}
    # offsets are not kept by gguf_io: recompute them in file order from the sizes
    infos = []
    r = gguf_io._Reader(data)
    r.take(4), r.scalar(gguf_io.GGUF_U32)
    nt, nkv = r.scalar(gguf_io.GGUF_U64), r.scalar(gguf_io.GGUF_U64)
    for _ in range(nkv):
        r.string()
        r.value(r.scalar(gguf_io.GGUF_U32))
    for _ in range(nt):
        name = r.string()
        nd = r.scalar(gguf_io.GGUF_U32)
        ne = [r.scalar(gguf_io.GGUF_U64) for _ in range(nd)]
        t = r.scalar(gguf_io.GGUF_U32)
        off = r.scalar(gguf_io.GGUF_U64)
        infos.append((name, ne, t, off))
    for name, ne, t, off in infos:
        n = 1
        for d in ne:
            n *= d
        bl, by = BLOCK[t]
        size = n // bl * by
        start = g.data_offset + off
        out[name] = (t, data[start:start + size])
    return g.kv.get("general.file_type"), out


def main() -> int:
    a, b = sys.argv[1], sys.argv[2]
    verbose = "-v" in sys.argv
    fa, ta = tensors(a)
    fb, tb = tensors(b)
    print(f"general.file_type: {fa} vs {fb}")
    diff = 0
    for name in sorted(set(ta) | set(tb), key=lambda s: (s.count("."), s)):
        if name not in ta or name not in tb:
            print(f"{name}: only in {'A' if name in ta else 'B'}")
            diff += 1
            continue
        (t1, d1), (t2, d2) = ta[name], tb[name]
        same = t1 == t2 and d1 == d2
        diff += not same
        if verbose or not same:
            print(f"{name:36s} {NAMES.get(t1, t1):7s} {NAMES.get(t2, t2):7s} "
                  f"{'identical' if same else 'DIFFERENT bytes' if t1 == t2 else 'DIFFERENT type'}")
    print(f"{len(ta)} tensors, {diff} differ")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
