#!/usr/bin/python3
"""`speck delta` (extract, compress, apply) against numpy written from the papers.

Models: small f32 GGUFs written here (gguf_io.py): base weights N(0, 0.05²), tuned = base·(1+u),
u ~ U(−0.2, 0.2) (so tuned − base is exact in f32), one vector changed and one unchanged.

  DARE (Yu et al. 2024, "Language Models are Super Mario"): δ̂ = (1 − m) ⊙ δ / (1 − p), m_j ~
      Bernoulli(p). The mask is speck's documented hash (docs/adaptation.md: splitmix64 finaliser
      of seed, FNV-1a of the tensor name and the element index), recomputed here with numpy's
      uint64 arithmetic: the mask must be identical; the kept fraction within 5 binomial
      standard deviations of 1 − p.
  DAREx-q (Deng et al. 2025): the same mask, δ̂ = (1 − m) ⊙ δ / q.
  ComPEFT (Yadav et al. 2023): the k = ceil(density·n) largest |δ_j| (ties: lower index) kept as
      sign(δ_j)·s with s = α·std(δ) (population std), or s = mean of the kept |δ_j| (the L2-optimal
      ternary scale) when no α is given.
  Vectors stay dense: base + δ.

Tolerance: the reference is computed in float64 and rounded once; speck rounds δ·factor and then
base + δ̂ in f32 (values stored f32 here, --values f32), so the two differ by at most ~1 ulp of
each term: |speck − ref| <= 4e-7·(|base| + |δ̂|) (2^-23 = 1.2e-7 per rounding, 3x margin).
Unchanged elements must equal the base bit for bit. The dense delta must restore tuned exactly.

Usage (ctest): delta_ref.py --speck build/speck --workdir DIR
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_io as G  # noqa: E402

FAILS: list[str] = []


def check(ok: bool, msg: str) -> None:
    if not ok:
        FAILS.append(msg)
        print("FAIL:", msg)


MASK64 = (1 << 64) - 1


def mix64(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def fnv1a(s: str) -> int:
    h = 0xCBF29CE484222325
    for c in s.encode():
        h = ((h ^ c) * 0x100000001B3) & MASK64
    return h


def dare_keep(name: str, n: int, p: float, seed: int) -> np.ndarray:
    """True where element j survives: hash(seed, name, j) / 2^64 >= p (docs/adaptation.md)."""
    with np.errstate(over="ignore"):
        key = mix64(np.uint64(seed) ^ mix64(np.uint64(fnv1a(name))))
        j = np.arange(1, n + 1, dtype=np.uint64)
        h = mix64(key + j * np.uint64(0x9E3779B97F4A7C15))
    u = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return u >= np.float64(np.float32(p))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True)


def close(got: np.ndarray, base: np.ndarray, delta_hat: np.ndarray, what: str) -> None:
    ref = base.astype(np.float64) + delta_hat
    tol = 4e-7 * (np.abs(base) + np.abs(delta_hat)) + 1e-30
    err = np.abs(got.astype(np.float64) - ref)
    bad = int(np.sum(err > tol))
    check(bad == 0, f"{what}: {bad} elements off (max err/tol {float(np.max(err / tol)):.2f})")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--speck", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    W = lambda f: os.path.join(a.workdir, f)  # noqa: E731
    rng = np.random.default_rng(5)
    R, C = 96, 160
    base_w = (0.05 * rng.standard_normal((R, C))).astype(np.float32)
    tuned_w = (base_w * (1 + rng.uniform(-0.2, 0.2, (R, C)))).astype(np.float32)
    base_n = (1 + 0.1 * rng.standard_normal(C)).astype(np.float32)
    tuned_n = (base_n + 1e-3 * rng.standard_normal(C)).astype(np.float32)
    ones = np.ones(C, np.float32)
    kv = [("general.architecture", G.GGUF_STRING, "llama")]
    MAT, VEC = "blk.0.ffn_up.weight", "blk.0.ffn_norm.weight"

    def model(path: str, w: np.ndarray, n: np.ndarray) -> None:
        G.write_gguf(path, kv, [(MAT, w, 0), (VEC, n, 0), ("output_norm.weight", ones, 0)])

    model(W("base.gguf"), base_w, base_n)
    model(W("tuned.gguf"), tuned_w, tuned_n)
    delta = tuned_w.astype(np.float64) - base_w.astype(np.float64)
    check(np.array_equal((base_w + (tuned_w - base_w)).astype(np.float32), tuned_w),
          "test models: f32 differences exact")
    S = a.speck
    r = run(S, "delta", "extract", W("base.gguf"), W("tuned.gguf"), "-o", W("d.gguf"))
    check(r.returncode == 0, f"extract: {r.stderr}")

    def applied(delta_file: str) -> dict:
        r = run(S, "delta", "apply", W("base.gguf"), delta_file, "-o", W("out.gguf"))
        check(r.returncode == 0, f"apply {delta_file}: {r.stderr}")
        return G.read_gguf(W("out.gguf")).tensors

    t = applied(W("d.gguf"))
    check(np.array_equal(t[MAT].view(np.uint32), tuned_w.view(np.uint32)), "dense: matrix exact")
    check(np.array_equal(t[VEC], tuned_n), "dense: vector exact")
    check(np.array_equal(t["output_norm.weight"], ones), "dense: untouched vector")

    n = R * C
    for p, seed, q in [(0.5, 1, None), (0.9, 7, None), (0.99, 3, None), (0.99, 3, 0.05)]:
        opts = ["--dare", str(p), "--seed", str(seed), "--values", "f32"]
        if q is not None:
            opts += ["--rescale", f"darex-q={q}"]
        what = f"DARE p={p} seed={seed}" + (f" DAREx-q q={q}" if q else "")
        r = run(S, "delta", "compress", W("d.gguf"), *opts, "-o", W("c.gguf"))
        check(r.returncode == 0, f"{what}: {r.stderr}")
        t = applied(W("c.gguf"))
        keep = dare_keep(MAT, n, p, seed).reshape(R, C)
        kept = int(keep.sum())
        sd = math.sqrt(n * p * (1 - p))
        check(abs(kept - n * (1 - p)) <= 5 * sd,
              f"{what}: kept {kept} of {n}, expected {n * (1 - p):.0f} +- {5 * sd:.0f}")
        factor = 1.0 / q if q else 1.0 / (1.0 - np.float64(np.float32(p)))
        moved = t[MAT] != base_w
        check(np.array_equal(moved, keep & (delta != 0)), f"{what}: mask differs from the hash "
              f"({int(np.sum(moved != (keep & (delta != 0))))} elements)")
        check(np.array_equal(t[MAT][~keep], base_w[~keep]), f"{what}: dropped elements changed")
        close(t[MAT], base_w, np.where(keep, delta * factor, 0.0), what)
        check(np.array_equal(t[VEC], tuned_n), f"{what}: vector not dense")

    for dens, alpha in [(0.1, None), (0.05, None), (0.1, 2.0)]:
        opts = ["--compeft", "--density", str(dens), "--values", "f32"]
        if alpha:
            opts += ["--scale", str(alpha)]
        what = f"ComPEFT density={dens} scale={alpha or 'l2'}"
        r = run(S, "delta", "compress", W("d.gguf"), *opts, "-o", W("c.gguf"))
        check(r.returncode == 0, f"{what}: {r.stderr}")
        t = applied(W("c.gguf"))
        flat = delta.reshape(-1)
        k = math.ceil(np.float64(np.float32(dens)) * n)
        top = np.argsort(-np.abs(flat), kind="stable")[:k]
        s = alpha * np.std(flat) if alpha else np.mean(np.abs(flat[top]))
        s = float(np.float32(s))
        dh = np.zeros(n)
        dh[top] = np.sign(flat[top]) * s
        moved = (t[MAT] != base_w).reshape(-1)
        check(int(moved.sum()) == k and bool(moved[top].all()), f"{what}: kept set differs")
        close(t[MAT], base_w, dh.reshape(R, C), what)

    # Bad input: another shape, another architecture; nothing written.
    G.write_gguf(W("other.gguf"), kv, [(MAT, tuned_w.reshape(C, R), 0), (VEC, tuned_n, 0),
                                       ("output_norm.weight", ones, 0)])
    for other, words in [("other.gguf", [MAT]), ]:
        if os.path.exists(W("bad.gguf")):
            os.remove(W("bad.gguf"))
        r = run(S, "delta", "extract", W("base.gguf"), W(other), "-o", W("bad.gguf"))
        check(r.returncode != 0 and all(w in r.stderr for w in words) and
              not os.path.exists(W("bad.gguf")), f"extract vs {other}: {r.returncode} {r.stderr}")
        r = run(S, "delta", "apply", W(other), W("d.gguf"), "-o", W("bad.gguf"))
        check(r.returncode != 0 and all(w in r.stderr for w in words) and
              not os.path.exists(W("bad.gguf")), f"apply onto {other}: {r.returncode} {r.stderr}")
    print(f"{'FAILED' if FAILS else 'passed'}: {len(FAILS)} failures")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
