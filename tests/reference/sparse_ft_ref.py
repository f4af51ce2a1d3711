#!/usr/bin/python3
"""Check speck's sparse fine-tuning (SpIEL, S2FT) against PyTorch autograd and numpy.

Gradient: for tiny models (make_model.py configs, f32), the C tool `sparse_ft_dump grad` trains
a sparse delta for 3 AdamW steps on a random batch (SpIEL: one drop-and-regrow after the second
step), saves it, and writes the gradient of the mean next-token cross-entropy at the delta's
positions, with the delta as trained. This script reads the base and the saved delta (its
NAME.idx positions decoded from the byte layout in docs/adaptation.md, written here from that
description), builds W = W0 + delta in float64 in the reference model (llama_ref.py, from the
model definition, not from speck's C), takes autograd's dense gradient dL/dW and reads it at the
same positions:

  loss:       |loss_speck - loss_ref| <= 1e-5 max(1, |loss|)
  gradients:  ||g_speck - g_ref|| / ||g_ref|| <= 1e-3 per tensor (float32 vs float64 gives
              ~1e-6; reading the gradient at the wrong positions or transposed gives ~1)

S2FT's positions must be whole columns: of attn_output, head_dim blocks (heads); of ffn_down,
single columns (channels).

Drop and regrow (SpIEL, Ansell et al. 2024), written here from the rule: drop the floor(zeta*k)
active positions of smallest |delta| and grow as many candidates of largest |accumulated
gradient|; ties broken by the lower position; the new set sorted. Random cases with many ties
(values on a coarse grid) go through `sparse_ft_dump regrow` and must match exactly.

Usage: /usr/bin/python3 tests/reference/sparse_ft_ref.py --dump build/tests/sparse_ft_dump --workdir DIR
"""

from __future__ import annotations

import argparse
import os
import struct
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
# (config, method, density): SpIEL at 0.2 reads a dense per-matrix GEMM at its positions, at
# 0.02 (< 1/32) computes a dot product per position and candidate; S2FT trains 10 % of the model.
CASES = [("gqa", "spiel", 0.2), ("gqa", "spiel", 0.02), ("mqa", "spiel", 0.02), ("gqa", "s2ft", 0),
         ("mha", "s2ft", 0)]


def read_delta(path: str) -> dict:
    """name -> (positions int64, values float32) of a delta GGUF's sparse tensors."""
    data = open(path, "rb").read()
    r = G._Reader(data)
    assert r.take(4) == G.MAGIC
    r.scalar(G.GGUF_U32)
    n_t, n_kv = r.scalar(G.GGUF_U64), r.scalar(G.GGUF_U64)
    kv = {}
    for _ in range(n_kv):
        k = r.string()
        vt = r.scalar(G.GGUF_U32)
        kv[k] = r.value(vt)
    align = int(kv.get("general.alignment", G.DEFAULT_ALIGNMENT))
    infos = []
    for _ in range(n_t):
        name = r.string()
        nd = r.scalar(G.GGUF_U32)
        ne = [r.scalar(G.GGUF_U64) for _ in range(nd)]
        tt = r.scalar(G.GGUF_U32)
        off = r.scalar(G.GGUF_U64)
        infos.append((name, ne, tt, off))
    base = (r.pos + align - 1) // align * align
    raw = {}
    for name, ne, tt, off in infos:
        n = int(np.prod(ne))
        nbytes = n if tt == 24 else G.row_bytes(tt, n)  # 24: ggml I8, one byte each
        raw[name] = (tt, data[base + off: base + off + nbytes], n)
    out = {}
    for name, (tt, b, n) in raw.items():
        if not name.endswith(".idx"):
            continue
        t = name[:-4]
        enc, nd = b[0], b[1]
        ne = struct.unpack("<4Q", b[2:34])
        nnz = struct.unpack("<Q", b[34:42])[0]
        body = b[42:]
        if enc == 0:  # bitmap, bit j of byte j/8 (LSB first)
            bits = np.unpackbits(np.frombuffer(body, np.uint8), bitorder="little")
            pos = np.nonzero(bits[:int(np.prod(ne))])[0].astype(np.int64)
        else:  # LEB128 gaps: position = previous + gap + 1, starting from -1
            pos, prev, v, sh = [], -1, 0, 0
            for c in body:
                v |= (c & 0x7F) << sh
                sh += 7
                if not c & 0x80:
                    prev += v + 1
                    pos.append(prev)
                    v, sh = 0, 0
            pos = np.array(pos, np.int64)
        assert len(pos) == nnz, (name, len(pos), nnz)
        vt, vb, vn = raw[t + ".val"]
        out[t] = (pos, G.dequantize(vb, vt, vn).astype(np.float32), ne, nd)
    return out


def batch_loss(ref, tok):
    total = 0
    for b in range(tok.shape[0]):
        logits = ref.forward(tok[b, :-1])
        total = total + torch.nn.functional.cross_entropy(
            logits, torch.as_tensor(tok[b, 1:], dtype=torch.int64), reduction="sum")
    return total / (tok.shape[0] * (tok.shape[1] - 1))


def check_grad(args, cfg: str, method: str, density: float) -> tuple[int, int]:
    tag = f"{cfg}-{method}" + (f"-{density}" if density else "")
    model = M.make_model(cfg, os.path.join(args.workdir, tag + ".gguf"), "f32", seed=5)
    c = M.config(cfg)
    rng = np.random.default_rng(11)
    tok = rng.integers(0, c["n_vocab"], size=(B, T + 1)).astype("<i4")
    tok_path = os.path.join(args.workdir, tag + ".i32")
    tok.tofile(tok_path)
    out = os.path.join(args.workdir, tag)
    os.makedirs(out, exist_ok=True)
    subprocess.run([args.dump, "grad", model, tok_path, str(B), str(T), out, method] +
                   ([str(density)] if density else []), check=True)
    delta = read_delta(os.path.join(out, "delta.gguf"))
    g_c = np.fromfile(os.path.join(out, "grad.f32"), "<f4")
    c_loss = float(open(os.path.join(out, "loss.txt")).read())

    gf = G.read_gguf(model)
    tensors = dict(gf.tensors)
    for name, (pos, val, ne, nd) in delta.items():
        w = tensors[name].astype(np.float64).copy()
        flat = w.reshape(-1)
        flat[pos] += val.astype(np.float64)
        tensors[name] = w
    ref = L.LlamaRef(gf.kv, tensors)
    params = {n: ref.w[n].requires_grad_(True) for n in delta}
    loss = batch_loss(ref, tok)
    loss.backward()
    passed = failed = 0
    ok = abs(c_loss - loss.item()) <= TOL_LOSS * max(1.0, abs(loss.item()))
    print(f"{'PASS' if ok else 'FAIL'} {tag} loss speck {c_loss:.7f} ref {loss.item():.7f}")
    passed, failed = passed + ok, failed + (not ok)
    off, worst = 0, 0.0
    # the dump's gradient is in the delta file's tensor order (the order speck wrote them)
    for name, (pos, val, ne, nd) in delta.items():
        gr = params[name].grad.numpy().reshape(-1)[pos]
        gc = g_c[off:off + len(pos)]
        off += len(pos)
        rel = np.linalg.norm(gc - gr) / max(np.linalg.norm(gr), 1e-30)
        worst = max(worst, rel)
        if not rel <= TOL_GRAD:
            print(f"FAIL {tag} grad {name} rel err {rel:.2e} > {TOL_GRAD}")
            failed += 1
        else:
            passed += 1
        if method == "s2ft":
            cols, rows = ne[0], ne[1]
            cnt = np.bincount(pos % cols, minlength=cols)
            whole = bool(np.all((cnt == 0) | (cnt == rows)))
            if "attn_output" in name:
                hd = c["n_embd"] // c["n_head"]
                whole &= bool(np.all(cnt.reshape(-1, hd) == cnt.reshape(-1, hd)[:, :1]))
            elif "ffn_down" not in name:
                whole = False
            print(f"{'PASS' if whole else 'FAIL'} {tag} {name}: whole columns "
                  f"({int((cnt > 0).sum())} of {cols})")
            passed, failed = passed + whole, failed + (not whole)
    ok = off == len(g_c)
    print(f"{'PASS' if ok else 'FAIL'} {tag}: {off} positions in the delta, {len(g_c)} gradients; "
          f"worst rel err {worst:.2e}")
    return passed + ok, failed + (not ok)


def regrow_ref(idx, val, cand, acc, zeta):
    k = len(idx)
    d = min(int(np.floor(float(np.float32(zeta)) * k)), len(cand))
    order = np.lexsort((idx, np.abs(val)))  # by |val|, then position
    keep = np.ones(k, bool)
    keep[order[:d]] = False
    gorder = np.lexsort((cand, -np.abs(acc)))
    grown = cand[gorder[:d]]
    new = np.concatenate([idx[keep], grown])
    flag = np.concatenate([np.zeros(keep.sum(), np.uint8), np.ones(d, np.uint8)])
    o = np.argsort(new, kind="stable")
    return d, new[o], flag[o]


def check_regrow(args) -> tuple[int, int]:
    rng = np.random.default_rng(3)
    passed = failed = 0
    for case in range(40):
        n = int(rng.integers(8, 400))
        k = int(rng.integers(1, n))
        perm = rng.permutation(n)
        idx = np.sort(perm[:k]).astype(np.int64)
        c = int(rng.integers(0, n - k + 1))
        cand = np.sort(perm[k:k + c]).astype(np.int64)
        # values on a coarse grid: ties in |val| and |acc| are common
        val = (rng.integers(-4, 5, size=k) * 0.25).astype(np.float32)
        acc = (rng.integers(-3, 4, size=c) * 0.5).astype(np.float32)
        zeta = float(np.float32(rng.choice([0.0, 0.1, 0.25, 0.5, 1.0, rng.random()])))
        fin = os.path.join(args.workdir, "regrow_in.bin")
        fout = os.path.join(args.workdir, "regrow_out.bin")
        with open(fin, "wb") as f:
            f.write(struct.pack("<qqf", k, c, zeta))
            f.write(idx.astype("<i8").tobytes() + val.astype("<f4").tobytes())
            f.write(cand.astype("<i8").tobytes() + acc.astype("<f4").tobytes())
        subprocess.run([args.dump, "regrow", fin, fout], check=True)
        b = open(fout, "rb").read()
        d_c = struct.unpack("<q", b[:8])[0]
        new_c = np.frombuffer(b[8:8 + 8 * k], "<i8")
        gr_c = np.frombuffer(b[8 + 8 * k:8 + 9 * k], np.uint8)
        d, new, gr = regrow_ref(idx, val, cand, acc, zeta)
        ok = d_c == d and np.array_equal(new_c, new) and np.array_equal(gr_c, gr)
        if not ok:
            print(f"FAIL regrow case {case}: n {n} k {k} c {c} zeta {zeta}: speck d {d_c}, ref {d}")
        passed, failed = passed + ok, failed + (not ok)
    print(f"{'PASS' if not failed else 'FAIL'} regrow: {passed} of {passed + failed} cases equal")
    return passed, failed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    torch.set_num_threads(2)
    passed = failed = 0
    p, f = check_regrow(args)
    passed, failed = passed + p, failed + f
    for cfg, method, density in CASES:
        p, f = check_grad(args, cfg, method, density)
        passed, failed = passed + p, failed + f
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
