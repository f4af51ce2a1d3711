#!/usr/bin/python3
"""Check speck's SpecDec++ acceptance head (src/decode/accept_head.c) against PyTorch autograd in
float64, from the head's and the loss's definitions (include/speck.h), not from speck's C:

    u = (x - mean) * scale,  a = W1 u + b1,  s = a * sigmoid(a),  z = w2 . s + b2
    p_accept = sigmoid(z)
    L = sum_i w_i BCE(sigmoid(z_i), y_i) / sum_i w_i,   w_i = 1 if y_i else w_rej

and its features (speck_accept_features): x = [hidden, max softmax(l), entropy of softmax(l)].

This script writes random heads as GGUF files (general.architecture "speck-accept-head"), random
samples and labels; `accept_head_dump` loads each head with speck's loader, computes the loss,
its gradient and every sample's p_accept, and checks that the head saved and loaded again
predicts the same. Tolerances:

  gradient: ||g_speck - g_ref|| / ||g_ref|| <= 1e-4. speck sums float32 products (inner products
            of up to ~100 terms, then up to 300 samples), ~1e-6 relative against float64; a wrong
            term (SiLU' without its second part, the weights swapped between classes, the mean
            not subtracted) moves it by >= 1e-2 -- the swapped-weights control below shows the
            check sees it.
  loss:     relative 1e-5;  p_accept: absolute 1e-5 (float32 outputs in [0, 1]).
  features: absolute 1e-5 on top probability and entropy (double accumulation in speck).

Then malformed head files must be refused with exit status 1 and an error that names the file
and the key or tensor at fault (nothing crashes, nothing is half-read).

Usage: /usr/bin/python3 tests/reference/accept_head_ref.py --dump build/tests/accept_head_dump --workdir DIR
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
from checks import Results  # noqa: E402

ARCH = "speck-accept-head"
TOL_GRAD, TOL_LOSS, TOL_P = 1e-4, 1e-5, 1e-5
# (n_embd, n_hidden, samples, w_rej, weight scale: large -> |z| of tens, the saturated regime)
CASES = [(16, 8, 50, 1.0, 1.0), (96, 32, 300, 3.0, 1.0), (8, 4, 40, 2.0, 8.0)]


def make_head(rng, n_embd, n_hidden, scale):
    n_in = n_embd + 2
    return {
        "accept.mean": rng.normal(0, 0.5, n_in).astype(np.float32),
        "accept.scale": rng.uniform(0.5, 2.0, n_in).astype(np.float32),
        "accept.w1": (rng.normal(0, 1, (n_hidden, n_in)) * scale / np.sqrt(n_in)).astype(np.float32),
        "accept.b1": rng.normal(0, 0.3, n_hidden).astype(np.float32),
        "accept.w2": (rng.normal(0, 1, n_hidden) * scale / np.sqrt(n_hidden)).astype(np.float32),
        "accept.b2": rng.normal(0, 0.5, 1).astype(np.float32),
    }


def write_head(path, n_embd, n_hidden, t, kv_override=None, drop=(), types=None):
    kv = [("general.architecture", G.GGUF_STRING, ARCH),
          (ARCH + ".n_embd", G.GGUF_U32, n_embd), (ARCH + ".n_hidden", G.GGUF_U32, n_hidden)]
    if kv_override is not None:
        kv = kv_override
    tensors = [(k, v, (types or {}).get(k, G.F32)) for k, v in t.items() if k not in drop]
    G.write_gguf(path, kv, tensors)


def reference(t, X, y, w_rej, swap=False):
    """Loss, gradient (W1, b1, w2, b2 flattened in that order) and p_accept, in float64."""
    P = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k not in ("accept.mean",
                                                                        "accept.scale"))
         for k, v in t.items()}
    x = torch.tensor(X, dtype=torch.float64)
    yt = torch.tensor(y, dtype=torch.float64)
    u = (x - P["accept.mean"]) * P["accept.scale"]
    a = u @ P["accept.w1"].T + P["accept.b1"]
    s = a * torch.sigmoid(a)
    z = s @ P["accept.w2"] + P["accept.b2"]
    w = torch.where(yt > 0, torch.ones_like(yt), torch.full_like(yt, w_rej))
    if swap:  # control: the weight on the wrong class
        w = torch.where(yt > 0, torch.full_like(yt, w_rej), torch.ones_like(yt))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(z, yt, reduction="none")
    loss = (w * bce).sum() / w.sum()
    loss.backward()
    g = torch.cat([P[k].grad.reshape(-1) for k in ("accept.w1", "accept.b1", "accept.w2",
                                                   "accept.b2")])
    return loss.item(), g.numpy(), torch.sigmoid(z).detach().numpy()


def run(dump, *args):
    return subprocess.run([dump, *map(str, args)], capture_output=True, text=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    torch.set_num_threads(1)
    R = Results()
    rng = np.random.default_rng(7)
    wd = args.workdir

    for ci, (E, H, N, w_rej, scale) in enumerate(CASES):
        t = make_head(rng, E, H, scale)
        hp = os.path.join(wd, f"head{ci}.gguf")
        write_head(hp, E, H, t)
        X = rng.normal(0, 1, (N, E + 2)).astype(np.float32)
        X[:, E] = rng.uniform(0, 1, N)  # top probability
        X[:, E + 1] = rng.uniform(0, 5, N)  # entropy
        y = (rng.uniform(0, 1, N) < 0.6).astype(np.uint8)
        xp, yp = os.path.join(wd, f"x{ci}.f32"), os.path.join(wd, f"y{ci}.u8")
        X.tofile(xp), y.tofile(yp)
        out = os.path.join(wd, f"out{ci}")
        os.makedirs(out, exist_ok=True)
        r = run(args.dump, "loss", hp, xp, yp, N, w_rej, out)
        tag = f"E={E} H={H} N={N} w_rej={w_rej} scale={scale}"
        if not R.check(r.returncode == 0, f"{tag}: accept_head_dump ran ({r.stderr.strip()})"):
            continue
        loss = float(open(os.path.join(out, "loss.txt")).read())
        g = np.fromfile(os.path.join(out, "grad.f32"), dtype=np.float32)
        p = np.fromfile(os.path.join(out, "prob.f32"), dtype=np.float32)
        rl, rg, rp = reference(t, X, y, w_rej)
        rel = np.linalg.norm(g - rg) / np.linalg.norm(rg)
        R.check(abs(loss - rl) <= TOL_LOSS * abs(rl), f"{tag}: loss {loss:.8f} vs {rl:.8f}")
        R.check(rel <= TOL_GRAD, f"{tag}: gradient relative error {rel:.2e} <= {TOL_GRAD}")
        R.check(np.abs(p - rp).max() <= TOL_P, f"{tag}: p_accept max error "
                f"{np.abs(p - rp).max():.2e} <= {TOL_P}")
        if w_rej != 1.0:
            _, cg, _ = reference(t, X, y, w_rej, swap=True)
            crel = np.linalg.norm(g - cg) / np.linalg.norm(cg)
            R.check(crel > 100 * TOL_GRAD, f"{tag}: control (class weights swapped) is seen: "
                    f"relative error {crel:.2e}")

    # Features: top probability and entropy of softmax(logits), the hidden row copied.
    M, E, V = 6, 10, 300
    hid = rng.normal(0, 1, (M, E)).astype(np.float32)
    lg = (rng.normal(0, 1, (M, V)) * np.array([0.1, 1, 3, 10, 30, 1])[:, None]).astype(np.float32)
    hid.tofile(os.path.join(wd, "hid.f32")), lg.tofile(os.path.join(wd, "lg.f32"))
    r = run(args.dump, "features", os.path.join(wd, "hid.f32"), os.path.join(wd, "lg.f32"),
            M, E, V, wd)
    if R.check(r.returncode == 0, f"features ran ({r.stderr.strip()})"):
        f = np.fromfile(os.path.join(wd, "feat.f32"), dtype=np.float32).reshape(M, E + 2)
        pr = torch.softmax(torch.tensor(lg, dtype=torch.float64), dim=-1)
        top = pr.max(dim=-1).values.numpy()
        ent = -(pr * torch.log(pr.clamp_min(1e-300))).sum(dim=-1).numpy()
        R.check(np.array_equal(f[:, :E], hid), "features: the hidden state copied")
        R.check(np.abs(f[:, E] - top).max() <= 1e-5,
                f"features: top probability error {np.abs(f[:, E] - top).max():.1e}")
        R.check(np.abs(f[:, E + 1] - ent).max() <= 1e-5,
                f"features: entropy error {np.abs(f[:, E + 1] - ent).max():.1e}")

    # Malformed head files: exit 1, an error naming the file and what is wrong, no crash.
    E, H, N = 8, 4, 3
    t = make_head(rng, E, H, 1.0)
    X = np.zeros((N, E + 2), np.float32)
    X.tofile(os.path.join(wd, "bx.f32"))
    np.ones(N, np.uint8).tofile(os.path.join(wd, "by.u8"))
    good_kv = [("general.architecture", G.GGUF_STRING, ARCH),
               (ARCH + ".n_embd", G.GGUF_U32, E), (ARCH + ".n_hidden", G.GGUF_U32, H)]
    nan_t = dict(t)
    nan_t["accept.w2"] = t["accept.w2"].copy()
    nan_t["accept.w2"][1] = np.nan
    wide_t = dict(t)
    wide_t["accept.w1"] = np.zeros((H, E + 3), np.float32)
    bad = [
        ("wrong-arch", dict(kv_override=[("general.architecture", G.GGUF_STRING, "llama")] +
                            good_kv[1:]), t, "general.architecture"),
        ("no-hidden-key", dict(kv_override=good_kv[:2]), t, ARCH + ".n_hidden"),
        ("zero-embd", dict(kv_override=[good_kv[0], (ARCH + ".n_embd", G.GGUF_U32, 0),
                                        good_kv[2]]), t, ARCH + ".n_embd"),
        ("str-embd", dict(kv_override=[good_kv[0], (ARCH + ".n_embd", G.GGUF_STRING, "8"),
                                       good_kv[2]]), t, ARCH + ".n_embd"),
        ("missing-b1", dict(drop=("accept.b1",)), t, "accept.b1"),
        ("w1-shape", {}, wide_t, "accept.w1"),
        ("f16-mean", dict(types={"accept.mean": G.F16}), t, "accept.mean"),
        ("nan-w2", {}, nan_t, "accept.w2"),
    ]
    for name, kw, tensors, field in bad:
        p = os.path.join(wd, f"bad-{name}.gguf")
        write_head(p, E, H, tensors, **kw)
        r = run(args.dump, "loss", p, os.path.join(wd, "bx.f32"), os.path.join(wd, "by.u8"), N,
                1.0, wd)
        err = r.stderr.strip()
        R.check(r.returncode == 1 and p in err and field in err,
                f"bad head {name}: exit {r.returncode}, error names the file and {field}: {err}")
    # A truncated file: the GGUF reader's own checks.
    good = os.path.join(wd, "head0.gguf")
    trunc = os.path.join(wd, "bad-truncated.gguf")
    with open(good, "rb") as f:
        data = f.read()
    with open(trunc, "wb") as f:
        f.write(data[: len(data) // 2])
    r = run(args.dump, "loss", trunc, os.path.join(wd, "bx.f32"), os.path.join(wd, "by.u8"), N,
            1.0, wd)
    R.check(r.returncode == 1 and trunc in r.stderr,
            f"truncated head: exit {r.returncode}: {r.stderr.strip()}")
    print(f"{R.passed} passed, {R.failed} failed")
    return 1 if R.failed else 0


if __name__ == "__main__":
    sys.exit(main())
