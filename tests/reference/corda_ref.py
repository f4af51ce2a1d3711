#!/usr/bin/python3
"""Check speck's CorDA initialisation (src/adapt/corda.c) against numpy, from the paper.

CorDA (Yang et al. 2024, "CorDA: Context-Oriented Decomposition Adaptation"): for each adapted
W (n_out, n_in), C = sum over calibration tokens of x x^T for the matrix's input x, run through
the model in windows of CTX tokens (each from an empty cache). Here the inputs come from the
reference model (llama_ref.py, written from the model definition), not from speck. Damping as
documented: Cd = C + 0.01 * mean(diag C) * I (doubled while Cd is not positive definite); the SVD
W Cd = U S V^T; a component c is s_c u_c (v_c^T Cd^-1); KPM keeps the RANK smallest, IPM the RANK
largest (in descending order); factors b_c = g u_c, a_c = g x_c / |x_c| with x_c = Cd^-1 v_c,
g = sqrt(s_c |x_c| / scale), scale = alpha / rank (speck's documented equal-norm split).

Checks, for f32 and Q8_0 bases (the latter dequantized, and each matmul input rounded through
Q8_0 as speck's forward does on such a base, llama_ref.py's q8_inputs):
  factors:  each speck component (b_c, a_c) equals the reference's up to one shared sign:
            ||(b, a)_speck - sign (b, a)_ref|| / ||(b, a)_ref|| <= 2e-3 (f32 factors and an f32
            covariance against float64: observed <= 3.5e-5, KPM and IPM, f32 and Q8_0 bases; a
            component swapped with its neighbour, a missing C^-1 or scale gives O(1))
  residual: residual.gguf's W' + scale B A == W within 4 * 2^-24 * (max|W| + max|scale B A|)
            (two f32 roundings: W' = fl(W - fl(scale B A)) and the check's own sum) and every
            tensor the adapter does not touch identical to the base's

Usage: /usr/bin/python3 tests/reference/corda_ref.py --dump build/tests/corda_dump --workdir DIR
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_io as G  # noqa: E402
import llama_ref as L  # noqa: E402
import make_model as M  # noqa: E402

TOL_FACTOR = 2e-3
RANK, ALPHA, CTX, WINDOWS = 4, 8.0, 64, 4
GG = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]


def covariances(ref: L.LlamaRef, tok: np.ndarray) -> dict:
    """C[name] = sum of x x^T over the inputs of weight `name`, window by window."""
    cov = {}
    plain = ref.linear

    def hooked(x, name):
        xs = x.detach().reshape(-1, x.shape[-1]).numpy()
        cov[name] = cov.get(name, 0) + xs.T @ xs
        return plain(x, name)

    ref.linear = hooked
    with torch.no_grad():
        for w in range(WINDOWS):
            ref.forward(tok[w * CTX:(w + 1) * CTX])
    ref.linear = plain
    return cov


def corda_ref(W: np.ndarray, C: np.ndarray, mode: str, scale: float):
    n = C.shape[0]
    mean, damp = np.trace(C) / n, 0.01
    while True:
        Cd = C + damp * mean * np.eye(n)
        try:
            np.linalg.cholesky(Cd)
            break
        except np.linalg.LinAlgError:
            damp *= 2
    U, S, Vt = np.linalg.svd(W @ Cd, full_matrices=False)
    k = len(S)
    idx = range(k - RANK, k) if mode == "kpm" else range(RANK)
    b = np.zeros((W.shape[0], RANK))
    a = np.zeros((RANK, W.shape[1]))
    for i, c in enumerate(idx):
        x = np.linalg.solve(Cd, Vt[c])
        g = np.sqrt(S[c] * np.linalg.norm(x) / scale)
        b[:, i], a[i] = g * U[:, c], g * x / np.linalg.norm(x)
    return b, a, S[list(idx)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    torch.set_num_threads(2)
    passed = failed = 0
    for wtype in ("f32", "q8_0"):
        model = M.make_model("gqa", os.path.join(args.workdir, f"gqa-{wtype}.gguf"), wtype, seed=3)
        g = G.read_gguf(model)
        rng = np.random.default_rng(7)
        tok = rng.integers(0, M.config("gqa")["n_vocab"], size=WINDOWS * CTX).astype("<i4")
        tok_path = os.path.join(args.workdir, "calib.i32")
        tok.tofile(tok_path)
        # speck's forward on a Q8_0 base rounds each matmul's input through Q8_0 (ggml's
        # vec_dot_type): the reference does too, so later layers' inputs are the ones speck sees.
        q8 = [f"blk.{l}.{t}" for l in range(M.config("gqa")["n_layer"]) for t in GG]
        ref = L.LlamaRef(g.kv, g.tensors, q8_inputs=q8 if wtype == "q8_0" else ())
        cov = covariances(ref, tok)
        for mode in ("kpm", "ipm"):
            tag = f"{wtype}-{mode}"
            out = os.path.join(args.workdir, tag)
            os.makedirs(out, exist_ok=True)
            subprocess.run([args.dump, model, tok_path, str(len(tok)), str(CTX), str(RANK),
                            str(ALPHA), mode, out], check=True)
            ad = G.read_gguf(os.path.join(out, "adapter.gguf"))
            res = G.read_gguf(os.path.join(out, "residual.gguf"))
            scale = float(ad.kv["adapter.lora.alpha"]) / RANK
            worst, worst_res, n_mat = (0.0, ""), 0.0, 0
            for name in sorted(g.tensors):
                base = np.asarray(g.tensors[name], dtype=np.float64)
                if name + ".lora_a" not in ad.tensors:
                    ok = np.array_equal(np.asarray(res.tensors[name]), np.asarray(g.tensors[name]))
                    if not ok:
                        print(f"FAIL {tag}: {name} (not adapted) differs in the residual base")
                    passed, failed = passed + ok, failed + (not ok)
                    continue
                n_mat += 1
                a_c = np.asarray(ad.tensors[name + ".lora_a"], dtype=np.float64)  # (rank, n_in)
                b_c = np.asarray(ad.tensors[name + ".lora_b"], dtype=np.float64)  # (n_out, rank)
                b_r, a_r, sv = corda_ref(base, cov[name[:-len(".weight")]], mode, scale)
                for i in range(RANK):
                    ref_v = np.concatenate([b_r[:, i], a_r[i]])
                    got = np.concatenate([b_c[:, i], a_c[i]])
                    sgn = 1.0 if got @ ref_v >= 0 else -1.0
                    rel = np.linalg.norm(got - sgn * ref_v) / np.linalg.norm(ref_v)
                    if rel > worst[0]:
                        worst = (rel, f"{name} component {i} (sigma {sv[i]:.4g})")
                    ok = rel <= TOL_FACTOR
                    if not ok:
                        print(f"FAIL {tag} {name} component {i}: rel err {rel:.2e}")
                    passed, failed = passed + ok, failed + (not ok)
                delta = scale * (b_c @ a_c)
                wr = np.asarray(res.tensors[name], dtype=np.float64)
                err = np.abs(wr + delta - base).max()
                bound = 4 * 2.0**-24 * (np.abs(base).max() + np.abs(delta).max())
                worst_res = max(worst_res, err / bound)
                ok = err <= bound
                if not ok:
                    print(f"FAIL {tag} {name}: residual + adapter off W by {err:.3e} > {bound:.3e}")
                passed, failed = passed + ok, failed + (not ok)
            ok = n_mat == 2 * len(GG)
            if not ok:
                print(f"FAIL {tag}: {n_mat} adapted matrices, expected {2 * len(GG)}")
            passed, failed = passed + ok, failed + (not ok)
            print(f"PASS-INFO {tag}: {n_mat} matrices, worst factor rel err {worst[0]:.2e} "
                  f"({worst[1]}), worst residual error {worst_res:.2f} of its bound")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
