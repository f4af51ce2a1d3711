#!/usr/bin/python3
"""Check speck's N:M sparse training (SR-STE) against PyTorch autograd (float64), written from the
paper's equations (Zhou et al. 2021, "Learning N:M Fine-grained Structured Sparse Neural Networks
From Scratch", eq. 5 and section 4):

  * mask E of a weight matrix W: in every group of M consecutive inputs of a row, the N largest
    |w| are kept (ties: the lower position, numpy's stable argsort), the others pruned;
  * forward with W~ = W * E for the layers' q, k, v, output, gate, up, down matrices (embedding,
    head and norms dense); backward by the straight-through estimator: the gradient of W is
    dL/dW~ (torch: W~ = W + (W * E - W).detach(), whose value is exactly W * E);
  * SR-STE update: the gradient g + lambda_W * (1 - E) * W goes to the optimizer (AdamW here,
    as speck_adamw_step: global-norm clip, then the update; the term is added before clipping,
    as an autograd implementation that adds it in backward would);
  * masks recomputed from the dense weights before steps 0, EVERY, 2 EVERY, ...

The C tool `train_dump` (mode nm:N:M:EVERY:LAMBDA:K) runs the same on a tiny model (make_model.py
"gqa": rows of 64 and 192 inputs) and batch. Compared:

  K = 0:  the loss (<= 1e-5 relative) and every tensor's gradient, relative error <= 1e-3 (as
          train_ref.py: float32 vs float64 ~1e-6; a gradient masked like the forward, i.e. not
          straight-through, is off by ~0.7 on the matrices);
  K > 0:  the masks of the last step (equal), the gradients that step handed to the optimizer
          (with the sparse-refined term; relative <= 1e-3), and every parameter after K steps
          (max abs <= 5e-4 and update relative <= 1e-3, train_ref.py's AdamW tolerances). For the
          cases with lambda > 0 the term's norm must be >= 0.5 x the gradient's on the masked
          matrices, so a missing or wrongly scaled term cannot hide under the tolerance;
  export: the f32 model train_dump exports after the K steps has, in every masked matrix, at
          most N nonzeros per group, and equals speck's own final dense weights times the mask
          that numpy's selection rule gives on them when K ends a mask period (else the last
          step's mask), exactly: the same float32 values.

The masks of speck (float32 weights) and of the reference (float64) could differ on a near tie
(the weights drift apart by up to ~4e-5 after 3 steps, on elements whose gradient is near Adam's
eps); the mask comparison above would then fail, not pass wrongly. The smallest gap between the
N-th and (N+1)-th largest |w| of a group over the mask computations is printed (PASS-INFO); with
these seeds the masks agree at every step.

Usage: /usr/bin/python3 tests/reference/srste_ref.py --dump build/tests/train_dump --workdir DIR
Prints PASS/FAIL per check and `N passed, M failed`; exits 1 on any failure.
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
import train_ref as TR  # noqa: E402

TOL_GRAD, TOL_ADAM, TOL_ADAM_REL = 1e-3, 5e-4, 1e-3
B, T = 2, 12
MASKED = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
# (N, M, EVERY, LAMBDA, K)
CASES = [(2, 4, 1, 0.0, 0), (2, 4, 1, 0.5, 3), (4, 8, 2, 0.5, 3), (1, 4, 1, 0.0, 2)]


def nm_mask(w: np.ndarray, n: int, m: int) -> tuple[np.ndarray, float]:
    """(mask of w's N:M selection, smallest gap between the n-th and (n+1)-th |w| of a group)."""
    rows, cols = w.shape
    a = np.abs(w).reshape(rows, cols // m, m)
    order = np.argsort(-a, axis=-1, kind="stable")
    mask = np.zeros_like(a)
    np.put_along_axis(mask, order[..., :n], 1.0, axis=-1)
    s = -np.sort(-a, axis=-1)
    return mask.reshape(rows, cols), float((s[..., n - 1] - s[..., n]).min())


class NMRef(L.LlamaRef):
    """llama_ref's model with the masked matrices used as W~ = W * E, straight-through."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.masks: dict[str, torch.Tensor] = {}

    def linear(self, x, name):
        key = name + ".weight"
        if key not in self.masks:
            return super().linear(x, name)
        W = self.w[key]
        return x @ (W + (W * self.masks[key] - W).detach()).T


def masked_names(ref: L.LlamaRef) -> list[str]:
    return [n for n in ref.w if n.startswith("blk.") and n.split(".")[2] in MASKED]


def check(args, n, m, every, lam, K) -> tuple[int, int]:
    tag = f"{n}:{m} every {every} lambda {lam} K {K}"
    passed = failed = 0

    def report(ok, msg):
        nonlocal passed, failed
        print(f"{'PASS' if ok else 'FAIL'} {tag}: {msg}")
        passed, failed = passed + ok, failed + (not ok)

    model = M.make_model("gqa", os.path.join(args.workdir, "nm.gguf"), "f32", seed=3)
    tok = np.random.default_rng(7).integers(0, M.config("gqa")["n_vocab"], size=(B, T + 1))
    tok_path = os.path.join(args.workdir, "nm.i32")
    tok.astype("<i4").tofile(tok_path)
    g = G.read_gguf(model)
    ref = NMRef(g.kv, g.tensors)
    params = TR.trainable(ref)
    names = masked_names(ref)
    decay = [t for nm, t in params.items() if t.dim() == 2 and nm != "token_embd.weight"]
    no_decay = [t for nm, t in params.items() if not (t.dim() == 2 and nm != "token_embd.weight")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    gap = np.inf
    last_grads: dict[str, np.ndarray] = {}
    term_ratio = np.inf
    for step in range(max(K, 1)):
        if step % every == 0:
            for nm in names:
                mk, gp = nm_mask(ref.w[nm].detach().numpy(), n, m)
                ref.masks[nm] = torch.from_numpy(mk)
                gap = min(gap, gp)
        opt.zero_grad()
        loss = TR.batch_loss(ref, tok)
        loss.backward()
        if K == 0:
            break
        with torch.no_grad():
            gn = tn = 0.0
            for nm in names:
                term = lam * (1 - ref.masks[nm]) * ref.w[nm]
                gn += float((params[nm].grad ** 2).sum())
                tn += float((term ** 2).sum())
                params[nm].grad += term
            term_ratio = min(term_ratio, (tn / gn) ** 0.5)
        last_grads = {nm: t.grad.detach().numpy().copy() for nm, t in params.items()}
        torch.nn.utils.clip_grad_norm_(list(params.values()), 0.5)
        for grp in opt.param_groups:
            grp["lr"] = TR.lr_at(step, total=K)
        opt.step()
    print(f"PASS-INFO {tag}: smallest N-th/(N+1)-th |w| gap over the mask computations "
          f"{gap:.2e}")
    out = os.path.join(args.workdir, f"nm-{n}of{m}-e{every}-l{lam}-k{K}")
    export = out + ".gguf"
    os.makedirs(out, exist_ok=True)
    subprocess.run([args.dump, model, tok_path, str(B), str(T), out,
                    f"nm:{n}:{m}:{every}:{lam}:{K}", export], check=True)
    if K == 0:
        c_loss = float(open(os.path.join(out, "loss.txt")).read())
        report(abs(c_loss - loss.item()) <= 1e-5 * max(1.0, abs(loss.item())),
               f"loss of the masked forward speck {c_loss:.7f} ref {loss.item():.7f}")
        p, f = TR.compare_grads(tag, params, out)
        return passed + p, failed + f
    if lam > 0:
        report(term_ratio >= 0.5, f"||lambda (1-E) W|| / ||dL/dW~|| on the masked matrices "
                                  f"{term_ratio:.2f} (>= 0.5: the term is visible)")
    bad_mask = [nm for nm in names if not np.array_equal(
        TR.read_dump(out, "mask." + nm, ref.masks[nm].shape), ref.masks[nm].numpy())]
    report(not bad_mask, "last step's masks equal the reference's" +
           ("" if not bad_mask else " except " + ", ".join(bad_mask)))
    worst, bad = 0.0, []
    for nm, gr in last_grads.items():
        gc = TR.read_dump(out, "grad." + nm, gr.shape)
        rel = np.linalg.norm(gc - gr) / max(np.linalg.norm(gr), 1e-30)
        worst = max(worst, rel)
        if not rel <= TOL_GRAD:
            bad.append(f"{nm} {rel:.2e}")
    report(not bad, f"last step's gradients with the sparse-refined term: worst rel err "
                    f"{worst:.2e} (tol {TOL_GRAD})" + ("" if not bad else "; " + ", ".join(bad)))
    worst, worst_rel, bad = 0.0, 0.0, []
    for nm, t in params.items():
        w = t.detach().numpy()
        wc = TR.read_dump(out, nm, w.shape)
        err = float(np.abs(wc - w).max())
        moved = np.linalg.norm(w - g.tensors[nm].reshape(w.shape))
        rel = float(np.linalg.norm(wc - w) / max(moved, 1e-30))
        worst, worst_rel = max(worst, err), max(worst_rel, rel)
        if not (err <= TOL_ADAM and rel <= TOL_ADAM_REL):
            bad.append(f"{nm} {err:.2e}/{rel:.2e}")
    report(not bad, f"dense weights after {K} AdamW steps: worst max abs err {worst:.2e} (tol "
                    f"{TOL_ADAM}), worst update rel err {worst_rel:.2e} (tol {TOL_ADAM_REL})" +
           ("" if not bad else "; " + ", ".join(bad)))
    ex = G.read_gguf(export)
    bad = []
    for nm in names:
        wc = TR.read_dump(out, nm, ref.w[nm].shape)
        # the export recomputes the masks when the last step ended a period, else reuses them
        mk = nm_mask(wc, n, m)[0] if K % every == 0 else \
            TR.read_dump(out, "mask." + nm, wc.shape)
        e = np.asarray(ex.tensors[nm], dtype=np.float32).reshape(wc.shape)
        nz = (e != 0).reshape(e.shape[0], -1, m).sum(-1).max()
        if nz > n or not np.array_equal(e, (wc * mk).astype(np.float32)):
            bad.append(nm)
    report(not bad, "exported matrices are N:M and equal the final dense weights times their "
                    "mask" + ("" if not bad else " except " + ", ".join(bad)))
    return passed, failed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    torch.set_num_threads(2)
    passed = failed = 0
    for case in CASES:
        p, f = check(args, *case)
        passed, failed = passed + p, failed + f
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
