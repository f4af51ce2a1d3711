#!/usr/bin/python3
"""Check speck's online logit distillation (speck_distill_step, src/train/distill.c) against
PyTorch autograd (float64).

The loss, from the definition of the Kullback-Leibler divergence (not from speck's C): for each
position with a target, p = softmax(z_teacher / T), q = softmax(z_student / T),

    KL(p || q) = sum_j p_j (log p_j - log q_j)
    loss = mean over positions of (1 - w) T^2 KL(p || q) + w CE(z_student, target)

the teacher under torch.no_grad (no gradient flows into it). `distill_dump` runs one step of the
C code on the same weights and batch and writes the student's gradient for every parameter and
the loss; this script compares per tensor:

  gradients: relative error ||g_speck - g_ref|| / ||g_ref|| <= 1e-3. float32 against float64
             arithmetic gives ~1e-6 (the training pass's own check, train_ref.py, observes the
             same); a wrong term (a missing T, the CE mixed with the wrong sign, the KL reversed
             to KL(q || p)) gives >= 1e-2 — the reversed-KL control below shows the check sees it.
  loss, KL, CE: within 1e-5 relative.

Cases: two teacher/student pairs of different shapes sharing a 300-token vocabulary (a GQA
teacher and a tied-head student; an MHA teacher and an MQA student), temperatures 1 and 2, text
weights 0 and 0.3, one case with masked positions. Then a teacher with another vocabulary size
must be refused with an error naming both sizes.

Usage: /usr/bin/python3 tests/reference/distill_ref.py --dump build/tests/distill_dump --workdir DIR
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

TOL_GRAD = 1e-3
TOL_LOSS = 1e-5
B, T = 2, 12
# (teacher config, student config, temperature, text weight, masked positions)
CASES = [("gqa", "tied", 1.0, 0.0, False), ("gqa", "tied", 2.0, 0.0, False),
         ("gqa", "tied", 2.0, 0.3, True), ("mha", "mqa", 1.0, 0.3, False)]


def trainable(ref: L.LlamaRef) -> dict:
    tied = ref.w["output.weight"] is ref.w["token_embd.weight"]
    out = {}
    for name, t in ref.w.items():
        if name == "rope_freqs.weight" or (tied and name == "output.weight"):
            continue
        t.requires_grad_(True)
        out[name] = t
    return out


def distill_loss(student, teacher, tok, temp, w, reverse=False):
    """Mean over positions with a target (>= 0) of (1-w) T^2 KL(p||q) + w CE; also the means of
    KL and CE. reverse=True computes KL(q||p) instead (the control)."""
    loss = kl_sum = ce_sum = 0
    n = 0
    for b in range(tok.shape[0]):
        inputs = np.maximum(tok[b, :-1], 0)
        tgt = torch.as_tensor(tok[b, 1:], dtype=torch.int64)
        keep = tgt >= 0
        zs = student.forward(inputs)[keep]
        with torch.no_grad():
            zt = teacher.forward(inputs)[keep]
        logp = torch.log_softmax(zt / temp, dim=-1)
        logq = torch.log_softmax(zs / temp, dim=-1)
        if reverse:
            kl = (logq.exp() * (logq - logp)).sum()
        else:
            kl = (logp.exp() * (logp - logq)).sum()
        ce = torch.nn.functional.cross_entropy(zs, tgt[keep], reduction="sum")
        loss = loss + (1 - w) * temp * temp * kl + w * ce
        kl_sum, ce_sum, n = kl_sum + kl.item(), ce_sum + ce.item(), n + int(keep.sum())
    return loss / n, kl_sum / n, ce_sum / n


def grads_of(student_path, teacher_path, tok, temp, w, reverse=False):
    s, t = G.read_gguf(student_path), G.read_gguf(teacher_path)
    sref, tref = L.LlamaRef(s.kv, s.tensors), L.LlamaRef(t.kv, t.tensors)
    params = trainable(sref)
    loss, kl, ce = distill_loss(sref, tref, tok, temp, w, reverse)
    loss.backward()
    return {n: p.grad.numpy() for n, p in params.items()}, loss.item(), kl, ce


def run_dump(args, student, teacher, tok_path, out, temp, w):
    os.makedirs(out, exist_ok=True)
    return subprocess.run([args.dump, student, teacher, tok_path, str(B), str(T), out, str(temp),
                           str(w)], capture_output=True, text=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    torch.set_num_threads(2)
    passed = failed = 0

    def check(ok, msg):
        nonlocal passed, failed
        print(f"{'PASS' if ok else 'FAIL'} {msg}")
        passed, failed = passed + bool(ok), failed + (not ok)

    for i, (tcfg, scfg, temp, w, masked) in enumerate(CASES):
        tag = f"{tcfg}-to-{scfg}-T{temp}-w{w}{'-masked' if masked else ''}"
        teacher = M.make_model(tcfg, os.path.join(args.workdir, f"teacher-{tcfg}.gguf"), "f32",
                               seed=3)
        student = M.make_model(scfg, os.path.join(args.workdir, f"student-{scfg}.gguf"), "f32",
                               seed=5)
        n_vocab = M.config(tcfg)["n_vocab"]
        tok = np.random.default_rng(11 + i).integers(0, n_vocab, size=(B, T + 1)).astype("<i4")
        if masked:
            tok[0, 1:5] = -1  # targets of positions 0-3 of row 0 masked
        tok_path = os.path.join(args.workdir, tag + ".i32")
        tok.tofile(tok_path)
        out = os.path.join(args.workdir, tag)
        r = run_dump(args, student, teacher, tok_path, out, temp, w)
        if r.returncode:
            check(False, f"{tag}: distill_dump exit {r.returncode}: {r.stderr.strip()}")
            continue
        ref, loss, kl, ce = grads_of(student, teacher, tok, temp, w)
        c_loss, c_kl, c_ce = (float(x) for x in open(os.path.join(out, "loss.txt")).read().split())
        for name, want, got in (("loss", loss, c_loss), ("KL", kl, c_kl), ("CE", ce, c_ce)):
            check(abs(got - want) <= TOL_LOSS * max(1.0, abs(want)),
                  f"{tag}: {name} speck {got:.7f} ref {want:.7f}")
        worst, bad = (0.0, ""), []
        for name, gr in ref.items():
            gc = np.fromfile(os.path.join(out, name + ".f32"), dtype="<f4").reshape(gr.shape)
            rel = np.linalg.norm(gc - gr) / max(np.linalg.norm(gr), 1e-30)
            worst = max(worst, (rel, name))
            if not rel <= TOL_GRAD:
                bad.append(f"{name} {rel:.2e}")
        check(not bad, f"{tag}: gradients of {len(ref)} tensors, worst rel err {worst[0]:.2e} "
              f"({worst[1]}){' FAILED: ' + ', '.join(bad) if bad else ''}")
        if i == 0:  # control: the reversed KL's gradients must fail the tolerance
            rev, _, _, _ = grads_of(student, teacher, tok, temp, w, reverse=True)
            num = sum(np.linalg.norm(
                np.fromfile(os.path.join(out, n + ".f32"), dtype="<f4").reshape(g.shape) - g) ** 2
                for n, g in rev.items()) ** 0.5
            den = sum(np.linalg.norm(g) ** 2 for g in rev.values()) ** 0.5
            check(num / den > 10 * TOL_GRAD, f"control: KL(q || p) gradients differ from speck's "
                  f"by {num / den:.2e} (> {10 * TOL_GRAD}: the tolerance tells the directions apart)")

    # A teacher with another vocabulary is refused, naming both sizes.
    c = dict(M.config("gqa"), n_vocab=301)
    kv, tensors = M.build(c, "f32", 3)
    other = os.path.join(args.workdir, "teacher-301.gguf")
    G.write_gguf(other, kv, tensors)
    student = os.path.join(args.workdir, "student-tied.gguf")
    r = run_dump(args, student, other, os.path.join(args.workdir, "gqa-to-tied-T1.0-w0.0.i32"),
                 os.path.join(args.workdir, "mismatch"), 1.0, 0.0)
    check(r.returncode == 1 and "301" in r.stderr and "300" in r.stderr,
          f"vocabulary mismatch refused: exit {r.returncode}, '{r.stderr.strip()}'")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
