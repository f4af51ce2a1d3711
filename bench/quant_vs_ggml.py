#!/usr/bin/python3
"""Cross-check (not a test): speck's quantizers and dequantizers against llama.cpp's ggml.

Loads a built libggml-base.so with ctypes and, for every type speck writes, quantizes the same
random rows with ggml_quantize_chunk (what llama-quantize calls) and with speck (quant_dump),
with and without importance weights, and compares the bytes; then dequantizes random blocks
with both and compares the floats bit for bit (NaN = NaN). Prints one line per type and check.

Usage: bench/quant_vs_ggml.py --dump build/tests/quant_dump --ggml /tmp/llama.cpp/build/bin/libggml-base.so
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "reference"))
import quant_ref as Q  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", required=True)
    ap.add_argument("--ggml", required=True)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--n", type=int, default=4096)
    args = ap.parse_args()
    lib = ctypes.CDLL(args.ggml)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p]
    rng = np.random.default_rng(7)
    work = tempfile.mkdtemp(prefix="quant-vs-ggml-")
    bad = 0
    for name, (tid, bs, nbytes) in Q.TYPES.items():
        n, rows = args.n, args.rows
        x = rng.standard_normal((rows, n)).astype(np.float32)
        x[1] *= np.float32(1e-4)
        x[2, ::37] *= np.float32(50.0)
        x[3] = 0.25
        x[4] = 0.0
        x[5, : n // 2] = 0.0
        xin = os.path.join(work, "x.f32")
        x.tofile(xin)
        imp = (rng.random(n) ** 2 + 0.01).astype(np.float32)
        ipath = os.path.join(work, "imp.f32")
        imp.tofile(ipath)
        for tag, w in (("plain", None), ("imatrix", imp)):
            out = np.zeros(rows * n // bs * nbytes, dtype=np.uint8)
            lib.ggml_quantize_chunk(tid, x.ctypes.data, out.ctypes.data, 0, rows, n,
                                    w.ctypes.data if w is not None else None)
            qpath = os.path.join(work, "q.bin")
            cmd = [args.dump, "quantize", name, xin, qpath, str(n)] + ([ipath] if w is not None else [])
            subprocess.run(cmd, check=True)
            mine = np.fromfile(qpath, dtype=np.uint8)
            diff = np.nonzero(mine != out)[0]
            ok = diff.size == 0
            bad += not ok
            where = "" if ok else f" first difference at byte {diff[0]} (row {diff[0] // (n // bs * nbytes)})"
            print(f"{'SAME' if ok else 'DIFF'} quantize {name} {tag}: {out.size} bytes{where}")
        raw = Q.random_blocks(name, 2000, rng)
        blk = np.frombuffer(raw, dtype=np.uint8)
        ref = np.zeros(2000 * bs, dtype=np.float32)
        fn = getattr(lib, f"dequantize_row_{name.replace('_k', '_K')}")
        fn(ctypes.c_void_p(blk.ctypes.data), ctypes.c_void_p(ref.ctypes.data), ctypes.c_int64(ref.size))
        bpath, fpath = os.path.join(work, "b.bin"), os.path.join(work, "b.f32")
        open(bpath, "wb").write(raw)
        subprocess.run([args.dump, "dequant", name, bpath, fpath], check=True)
        got = np.fromfile(fpath, dtype="<f4")
        ok, i = Q.same_bits(got, ref)
        bad += not ok
        print(f"{'SAME' if ok else 'DIFF'} dequantize {name}: {ref.size} values"
              + ("" if ok else f" first at {i}: {got[i]} vs ggml {ref[i]}"))
    print("all identical" if not bad else f"{bad} differences")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
