#!/usr/bin/python3
"""`speck prune --alloc ecoflap|tyr`: per-block sparsity ratios, checked against numpy.

  ecoflap  speck_ecoflap_ratios (tests/alloc_dump) on random groups against the rule of
           ECoFLaP's coarse step (Sung et al. 2024, and its authors' allocation): every group
           keeps at least ceil(size * (1 - max_sparsity)) weights, the rest of the global keep
           budget K = N - round(s * N) goes in proportion to the groups' scores, a group that
           would exceed its size keeping everything. The reference finds the proportionality
           constant by bisection (independent of the C water-filling); ratios agree within 1e-9
           (the bisection's resolution, 1e-15 of K, over group sizes of >= 1000), sum to the
           target within 1e-9 of N, lie in [0, max]; all-zero scores give uniform ratios; a
           max below the target or >= 1 is refused.
  tyr      speck_tyr_search on fitnesses whose optimum numpy knows: a separable convex
           sum_i a_i (r_i - c_i)^2 over equal-size groups. Exhaustive dynamic programming over
           the grid the search can reach (the target +- 2 steps per round, coarse to fine, k
           units of step / 2^(rounds - 1), sum of k = 0 so the global count stays fixed) gives
           the optimum; the search, with its default budget, must reach it (fitness equal within
           1e-12). Every result: ratios on the grid, in [0, max], sum_i size_i r_i = s N
           (1e-12), never worse than the uniform start; with a non-separable coupling term and
           with groups of two sizes (moves only between equal sizes) the same invariants; the
           same seed gives the same ratios.
  zo       ECoFLaP's zeroth-order block scores against PyTorch autograd on the float64 reference
           forward (part_zo states the check and its 0.5 % tolerance).
  cli      `speck prune --alloc` on a 4-block random-weight model (make_model's gqa shape):
           the ratios stored in speck.prune.layer_sparsity are ECoFLaP's rule applied to the
           block scores stored beside them (speck.prune.layer_score, f32: 1e-5), every row of
           every block matrix has exactly round(r_l * cols) zeros, so the zeros of all the
           matrices are the target within the rows' rounding (0.5 / cols); Týr's ratios lie on
           its grid with the global count fixed; refusals (unknown --alloc, N:M, --max-layer-
           sparsity below --sparsity or without --alloc, --alloc without --calib, --alloc with
           --method cfsp) name the problem and write nothing.

Usage (ctest): alloc_ref.py --speck build/speck --alloc-dump build/tests/alloc_dump --workdir DIR
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_io as G  # noqa: E402
import make_model as MM  # noqa: E402
from checks import Results  # noqa: E402


def run(cmd, stdin=None):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, input=stdin)


def n_pruned(s, n):
    return int(np.floor(s * n + 0.5))


# ---- references ------------------------------------------------------------------------------

def ecoflap_ref(score, size, s, mx):
    """ECoFLaP's keep shares: floors ceil(n (1 - max)), the rest in proportion to the scores."""
    score = np.asarray(score, float)
    size = np.asarray(size, float)
    N = size.sum()
    K = N - n_pruned(s, int(N))
    if score.sum() <= 0:
        return np.full(len(size), s)
    base = np.minimum(np.ceil(size * (1 - mx)), size)

    def kept(lam):
        return np.minimum(size, base + lam * score).sum()
    lo, hi = 0.0, 1.0
    while kept(hi) < K:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if kept(mid) < K:
            lo = mid
        else:
            hi = mid
    keep = np.minimum(size, base + hi * score)
    return 1 - keep / size


def tyr_optimum(a, c, s, mx, rounds, step):
    """min sum a_i (r_i - c_i)^2 over r_i = s + k_i u in [0, mx], sum k_i = 0."""
    u = step / 2 ** (rounds - 1)
    reach = int(math.ceil(1 / u))
    ks = [k for k in range(-reach, reach + 1) if -1e-12 <= s + k * u <= mx + 1e-12]
    best = {0: 0.0}  # sum of k so far -> least cost
    for ai, ci in zip(a, c):
        nxt = {}
        for tot, f in best.items():
            for k in ks:
                v = f + ai * (s + k * u - ci) ** 2
                if v < nxt.get(tot + k, math.inf):
                    nxt[tot + k] = v
        best = nxt
    return best[0]


# ---- parts -----------------------------------------------------------------------------------

def dump_ecoflap(args, score, size, s, mx):
    inp = "".join(f"{n} {x!r}\n" for n, x in zip(size, score))
    p = run([args.alloc_dump, "ecoflap", str(len(size)), repr(s), repr(mx)], inp)
    return p, (np.array([float(v) for v in p.stdout.split()]) if p.returncode == 0 else None)


def part_ecoflap(args, res):
    rng = np.random.default_rng(7)
    worst = 0.0
    for case in range(40):
        n = int(rng.integers(2, 33))
        size = (rng.integers(1, 4, n) * 1000 * (1 + (case % 2) * rng.integers(0, 50, n))).tolist()
        score = (10.0 ** rng.uniform(-3, 1, n)).tolist()
        s = float(rng.choice([0.5, 0.6, 0.7]))
        mx = float(rng.choice([max(0.8, s + 0.1), 0.95, s + 0.05]))
        p, r = dump_ecoflap(args, score, size, s, mx)
        if not res.check(p.returncode == 0 and len(r) == n, f"ecoflap case {case} ran {p.stderr}"):
            continue
        ref = ecoflap_ref(score, size, s, mx)
        worst = max(worst, float(np.max(np.abs(r - ref))))
        kept = float(np.sum(np.array(size) * (1 - r)))
        N = sum(size)
        ok = (abs(kept - (N - n_pruned(s, N))) <= 1e-9 * N and np.all(r >= 0)
              and np.all(r <= mx + 1e-15))
        res.check(ok, f"ecoflap case {case}: n={n} s={s} max={mx:.3f}: budget kept exactly, "
                      f"ratios in [0, max]")
    res.check(worst <= 1e-9, f"ecoflap: 40 random cases equal the bisection reference "
                             f"(worst {worst:.2e})")
    p, r = dump_ecoflap(args, [0, 0, 0], [100, 200, 300], 0.6, 0.8)
    res.check(p.returncode == 0 and np.allclose(r, 0.6, atol=0, rtol=0),
              "ecoflap: all-zero scores give the uniform ratio")
    # One group far more important: it keeps everything, the others share the rest.
    p, r = dump_ecoflap(args, [1e6, 1, 1], [1000, 1000, 1000], 0.5, 0.9)
    res.check(p.returncode == 0 and r[0] == 0 and np.allclose(r[1:], 0.75),
              f"ecoflap: a dominant group is kept dense ({r})")
    for mx, why in ((0.5, "below"), (1.0, "below 1")):
        p, _ = dump_ecoflap(args, [1, 2], [10, 10], 0.6, mx)
        res.check(p.returncode == 1 and "largest block sparsity" in p.stderr,
                  f"ecoflap: max {mx} refused ({p.stderr.strip()})")


def dump_tyr(args, size, a, c, s, mx, coupling=0.0, rounds=3, step=0.1, pop=0, gens=0, seed=1):
    inp = "".join(f"{n} {x!r} {y!r}\n" for n, x, y in zip(size, a, c)) + f"{coupling!r}\n"
    p = run([args.alloc_dump, "tyr", str(len(size)), repr(s), repr(mx), str(rounds), repr(step),
             str(pop), str(gens), str(seed)], inp)
    if p.returncode:
        return p, None, None, None
    v = p.stdout.split()
    n = len(size)
    return p, np.array([float(x) for x in v[:n]]), float(v[n]), int(v[n + 1])


def part_tyr(args, res):
    rng = np.random.default_rng(11)
    reached = 0
    cases = 12
    for case in range(cases):
        n = int(rng.integers(3, 9))
        s = float(rng.choice([0.5, 0.6, 0.7]))
        mx = max(0.8, s + 0.1)
        a = rng.uniform(0.5, 5, n)
        c = s + rng.uniform(-0.12, 0.12, n)
        size = [4096] * n
        p, r, f, calls = dump_tyr(args, size, a.tolist(), c.tolist(), s, mx)
        if not res.check(p.returncode == 0, f"tyr case {case} ran {p.stderr}"):
            continue
        opt = tyr_optimum(a, c, s, mx, 3, 0.1)
        u = 0.1 / 4
        k = (r - s) / u
        uniform = float(np.sum(a * (s - c) ** 2))
        ok = (np.allclose(k, np.round(k), atol=1e-9) and abs(np.sum(r) - n * s) <= 1e-12 * n
              and np.all(r >= 0) and np.all(r <= mx + 1e-12) and f <= uniform + 1e-15
              and calls <= 3 * 8 * 7 + 8 * n * n * (n - 1))
        res.check(ok, f"tyr case {case}: n={n}: ratios on the grid, global count fixed, in "
                      f"[0, max], no worse than uniform ({f:.3e} <= {uniform:.3e}), {calls} calls")
        reached += abs(f - opt) <= 1e-12
        if abs(f - opt) > 1e-12:
            print(f"  case {case}: search {f:.6e}, optimum {opt:.6e}, ratios {r}")
    res.check(reached == cases, f"tyr: the search reaches the exhaustive optimum in {reached} of "
                                f"{cases} separable cases")
    # Coupled, and two group sizes: invariants only.
    size = [1000, 1000, 3000, 3000, 3000, 1000]
    a = [1, 2, 3, 1, 2, 1]
    c = [0.4, 0.7, 0.55, 0.65, 0.5, 0.6]
    p, r, f, _ = dump_tyr(args, size, a, c, 0.6, 0.8, coupling=4.0)
    p2, r2, _, _ = dump_tyr(args, size, a, c, 0.6, 0.8, coupling=4.0)
    if res.check(p.returncode == 0 and p2.returncode == 0, "tyr coupled / two sizes ran"):
        N = sum(size)
        res.check(abs(np.dot(size, r) - 0.6 * N) <= 1e-9 * N and np.all(r >= 0)
                  and np.all(r <= 0.8 + 1e-12), f"tyr two sizes: global count fixed ({r})")
        res.check(np.array_equal(r, r2), "tyr: the same seed gives the same ratios")
    p, *_ = dump_tyr(args, [10, 10], [1, 1], [0.5, 0.5], 0.6, 0.5)
    res.check(p.returncode == 1 and "largest block sparsity" in p.stderr,
              f"tyr: max below the target refused ({p.stderr.strip()})")


M64 = (1 << 64) - 1


def mix64(z):
    """splitmix64's finaliser (alloc_gguf.c's generator), on Python ints."""
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def mix64_np(z):
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def gauss(seed, n):
    """The N(0, 1) draws z_0..z_{n-1} of one perturbation: Box-Muller on pairs of a counter-based
    splitmix64 stream (alloc_gguf.c states the construction; this is its definition)."""
    with np.errstate(over="ignore"):
        i = np.arange(n, dtype=np.uint64)
        a = mix64_np(np.uint64(seed) ^ mix64_np(i >> np.uint64(1)))
        b = mix64_np(a)
    u1 = ((a >> np.uint64(11)).astype(np.float64) + 1) * 2.0 ** -53
    u2 = (b >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    r = np.sqrt(-2 * np.log(u1))
    return np.where(i & np.uint64(1), r * np.sin(2 * np.pi * u2), r * np.cos(2 * np.pi * u2))


def part_zo(args, res, model, src):
    """ECoFLaP's block scores against autograd: per matrix and window, the finite difference
    (L(W + eps z) - L(W - eps z)) / 2 eps equals the directional derivative g . z, which the
    float64 reference forward (llama_ref.py) gives exactly by backpropagation; the stored score of
    block l must equal sum_t G_t^2 sum(W_t^2) / n_l with G_t = mean over windows |g . z|.
    Tolerance 0.5 % (0.04 % seen): speck's f32 loss differences over 2 eps = 2e-3 (its f32
    logits are within ~1e-5 of float64) and eps^2 curvature terms; a wrong sign, window, seed or
    scale is off by
    far more (a different z gives an independent half-normal draw)."""
    import torch
    from llama_ref import LlamaRef

    wd = args.workdir
    ctx, n_win = 32, 2
    rng = np.random.default_rng(5)
    text = bytes(rng.integers(32, 127, size=ctx * n_win + 5, dtype=np.uint8))
    txt = f"{wd}/zo.txt"
    open(txt, "wb").write(text)
    out = f"{wd}/zo.gguf"
    p = run([args.speck, "prune", model, out, "--method", "magnitude", "--sparsity", "0.5",
             "--alloc", "ecoflap", "--calib", txt, "--calib-ctx", str(ctx), "--alloc-windows",
             str(n_win), "-q", "-t", "1"])
    if not res.check(p.returncode == 0, f"zo: prune --alloc ecoflap ran ({p.stderr.strip()})"):
        return
    got = np.array(G.read_gguf(out).kv["speck.prune.layer_score"], float)
    ref = LlamaRef(src.kv, src.tensors)
    names = list(src.tensors)
    mats = [n for n in names if n.startswith("blk.") and src.tensors[n].ndim == 2]
    for n in mats:
        ref.w[n].requires_grad_(True)
    G_t = {n: 0.0 for n in mats}
    for b in range(n_win):
        tok = list(text[b * ctx:(b + 1) * ctx])
        logits = ref.forward(tok)
        lp = torch.log_softmax(logits, -1)
        loss = -lp[torch.arange(ctx - 1), torch.tensor(tok[1:])].mean()
        grads = torch.autograd.grad(loss, [ref.w[n] for n in mats])
        for n, g in zip(mats, grads):
            seed = mix64(((names.index(n) << 20) ^ b) & M64)
            z = gauss(seed, g.numel())
            G_t[n] += abs(float(np.dot(g.detach().numpy().reshape(-1), z))) / n_win
    score = np.zeros(len(got))
    size = np.zeros(len(got))
    for n in mats:
        l = int(n.split(".")[1])
        W = np.asarray(src.tensors[n], np.float64)
        score[l] += G_t[n] ** 2 * float(np.sum(W * W))
        size[l] += W.size
    score /= size
    err = np.max(np.abs(got / score - 1))
    res.check(err <= 0.005, f"zo: block scores equal autograd's (worst {100 * err:.3f} %: "
                           f"{got} vs {score})")


def part_cli(args, res):
    wd = args.workdir
    text = f"{wd}/calib.txt"
    rng = np.random.default_rng(3)
    words = ["def", "return", "for", "in", "range", "if", "else", "print", "x", "y", "(", ")",
             ":", "=", "+", "1", "0", "\n", "    ", "self", "class", "import", "numpy"]
    with open(text, "w") as fh:
        fh.write(" ".join(rng.choice(words, 2500)))
    c = MM.config("gqa")
    c["n_layer"] = 4
    kv, tensors = MM.build(c, "f32", 5)
    model = f"{wd}/m.gguf"
    G.write_gguf(model, kv, tensors)

    part_zo(args, res, model, G.read_gguf(model))

    def prune(out, *opts):
        if os.path.exists(out):
            os.remove(out)
        return run([args.speck, "prune", model, out, "--calib", text, "--calib-ctx", "128",
                    "--quiet", "-t", "1", *opts])

    def block_mats(f):
        return {n: int(n.split(".")[1]) for n in f.tensors
                if n.startswith("blk.") and f.tensors[n].ndim == 2}

    for alloc, sp in (("ecoflap", 0.6), ("tyr", 0.5)):
        out = f"{wd}/{alloc}.gguf"
        p = prune(out, "--method", "wanda", "--sparsity", str(sp), "--alloc", alloc,
                  "--alloc-windows", "2")
        if not res.check(p.returncode == 0, f"prune --alloc {alloc} ran ({p.stderr.strip()})"):
            continue
        f = G.read_gguf(out)
        r = np.array(f.kv.get("speck.prune.layer_sparsity", []), float)
        res.check(len(r) == 4 and f.kv.get("speck.prune.alloc") == alloc,
                  f"{alloc}: four block ratios in the metadata {r}")
        if len(r) != 4:
            continue
        mats = block_mats(f)
        size = np.zeros(4)
        zeros = total = 0
        rows_ok = True
        for n, l in mats.items():
            W = f.tensors[n]
            size[l] += W.size
            z = (W == 0).sum(1)
            rows_ok &= bool(np.all(z == n_pruned(float(r[l]), W.shape[1])))
            zeros += int(z.sum())
            total += W.size
        res.check(rows_ok, f"{alloc}: every row has round(r_l * cols) zeros")
        cols = min(W.shape[1] for W in (f.tensors[n] for n in mats))
        res.check(abs(zeros / total - sp) <= 0.5 / cols + 1e-6,
                  f"{alloc}: {100 * zeros / total:.3f} % zeros for a {100 * sp:.0f} % target")
        res.check(np.all(r >= 0) and np.all(r < 1), f"{alloc}: ratios in [0, 1)")
        if alloc == "ecoflap":
            sc = np.array(f.kv.get("speck.prune.layer_score", []), float)
            ref = ecoflap_ref(sc, size, sp, 0.8)
            res.check(len(sc) == 4 and np.all(sc > 0) and np.max(np.abs(ref - r)) <= 1e-5,
                      f"ecoflap: ratios = the rule on the stored scores ({r} vs {ref})")
        else:
            k = (r - sp) / 0.025
            res.check(np.allclose(k, np.round(k), atol=1e-4) and abs(np.dot(size, r) - sp *
                                                                      size.sum()) < 1e-4 * size.sum(),
                      f"tyr: ratios on the grid, global count fixed ({r})")
    bad = [
        (["--alloc", "greedy", "--sparsity", "50%"], "not uniform, ecoflap or tyr"),
        (["--alloc", "ecoflap", "--sparsity", "2:4"], "N:M"),
        (["--alloc", "tyr", "--sparsity", "60%", "--max-layer-sparsity", "0.5"], "below"),
        (["--sparsity", "60%", "--max-layer-sparsity", "0.9"], "need --alloc"),
        (["--alloc", "ecoflap", "--sparsity", "60%", "--max-layer-sparsity", "1.2"],
         "max-layer-sparsity"),
        (["--alloc", "tyr", "--method", "cfsp", "--ratio", "25%"], "not with --method cfsp"),
    ]
    for opts, why in bad:
        out = f"{wd}/bad.gguf"
        p = prune(out, *opts)
        res.check(p.returncode != 0 and why in p.stderr and not os.path.exists(out),
                  f"refused: {' '.join(opts)} ({p.stderr.strip()})")
    out = f"{wd}/bad.gguf"
    p = run([args.speck, "prune", model, out, "--method", "magnitude", "--sparsity", "60%",
             "--alloc", "ecoflap", "-q", "-t", "1"])
    res.check(p.returncode != 0 and "--calib" in p.stderr and not os.path.exists(out),
              f"refused: --alloc without --calib ({p.stderr.strip()})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--speck", required=True)
    ap.add_argument("--alloc-dump", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    res = Results(verbose=False)
    part_ecoflap(args, res)
    part_tyr(args, res)
    part_cli(args, res)
    print(f"{res.passed} passed, {res.failed} failed")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
