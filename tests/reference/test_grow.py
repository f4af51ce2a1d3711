#!/usr/bin/python3
"""Function-preserving growth (`speck grow`, src/model/grow.c) against the PyTorch reference.

For small source models of every shape class (make_model.py: GQA, MQA, tied head, Qwen2 biases
with NEOX RoPE, and the RoPE-scaling and head-size variants), `speck grow` writes the model at
larger shapes; the float64 reference (llama_ref.py) reads both files and must give the same
logits, and speck's own forward pass (forward_dump) on the grown file must give the source's
reference logits. Also: the grown file's metadata (target shapes, the source's vocabulary,
tokenizer, RoPE and architecture, scaled epsilon), every output type, quantized sources,
determinism of the seed, and controls showing that the tolerance sees the construction's
smallest terms (a missing epsilon scaling or query scaling fails it).

Usage (as ctest runs it):
    /usr/bin/python3 tests/reference/test_grow.py --speck build/speck --dump build/tests/forward_dump --workdir DIR
Prints `PASS|FAIL case check value tol` per check and finally `N passed, M failed`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_io as G  # noqa: E402
import llama_ref as L  # noqa: E402
import make_model as M  # noqa: E402
from test_forward import run_dump  # noqa: E402

# ---- tolerances (all times max(1, max |source logit|), about 3 for these models) ---------------
# Reference (float64) on the grown f32 file vs on the source: the construction is exact in real
# arithmetic, and float64 adds ~1e-15, so what remains is the rounding of the grown weights that
# are products (norm weights c * g * share, queries sqrt(m) * w, split output columns share * w,
# epsilon * k E / E') to f32: 2^-24 ~ 6e-8 relative each. Observed 0.6-1.1e-7 x scale. 1e-5
# leaves ~100x headroom and still fails a construction without its epsilon scaling (~1e-4 x
# scale here) or with unscaled queries (~1e-1), checked below as controls.
TOL_EXACT = 1e-5
# speck's forward (f32 arithmetic) on the grown f32 file vs the source's float64 reference:
# test_forward.py's TOL_FLOAT with the same reasoning (float32 rounding ~1e-6 relative over a
# few layers, 1e-4 with headroom); the grown model's longer dot products (up to 10x more terms)
# stay well inside it (observed <= 1e-5 x scale).
TOL_SPECK = 1e-4
# Other output types round the grown weights as quantizing the source rounds the source's:
# the grown model's error must stay within 2x the source's own in the same type (measured on the
# same tokens, `speck quantize` of the source) plus the exact tolerance. Observed ratios
# 0.5-1.3 (a copy is rounded like the original; shares and padding change the blocks a little).
QUANT_RATIO = 2.0

N_TOKENS = 24

# (case, source config, source type, target shape flags, extra speck grow flags). Each target
# exercises a part of the construction, named in the comment.
CASES = [
    # everything doubled; more query heads per kv head (G 2 -> 4), same head size
    ("gqa-x2", "gqa", "f32", dict(n_embd=128, n_layer=4, n_head=8, n_head_kv=2, n_ff=384), []),
    # widths not multiples (padding + epsilon), head size x2 (RoPE pairs i -> 2i, query
    # scale), kv heads copied unevenly (5 = 2 + 3 copies), G 2 -> 1, FFN 2-3 copies per unit
    ("gqa-padded", "gqa", "f32", dict(n_embd=160, n_layer=3, n_head=5, n_head_kv=5, n_ff=480), []),
    # MQA source into GQA: the one kv head copied twice, its 4 query heads over 6 slots
    ("mqa", "mqa", "f32", dict(n_embd=192, n_layer=3, n_head=6, n_head_kv=2, n_ff=256), []),
    ("mha", "mha", "f32", dict(n_embd=128, n_layer=2, n_head=8, n_head_kv=8, n_ff=192), []),
    # tied head stays tied (the embedding writes copies and zeros, the head reads them)
    ("tied", "tied", "f32", dict(n_embd=96, n_layer=3, n_head=6, n_head_kv=3, n_ff=224), []),
    # tied head untied
    ("tied-untied", "tied", "f32", dict(n_embd=128, n_head=4, n_head_kv=4), ["--untied"]),
    # Qwen2: q/k/v biases, NEOX RoPE (pairs (i, i + d/2)), head size x2, eps 1e-6
    ("qwen2", "qwen2", "f32", dict(n_embd=256, n_layer=5, n_head=8, n_head_kv=4, n_ff=320), []),
    ("qwen2-padded", "qwen2", "f32", dict(n_embd=224, n_layer=2, n_head=7, n_head_kv=7, n_ff=192),
     []),
    # Llama 3.1 RoPE scaling as keys and as the rope_freqs.weight tensor (remapped to pair 2i)
    ("llama3", "llama3", "f32", dict(n_embd=128, n_head=4, n_head_kv=2), []),
    ("llama3f", "llama3f", "f32", dict(n_embd=128, n_head=4, n_head_kv=2), []),
    ("linear", "linear", "f32", dict(n_embd=192, n_head=6, n_head_kv=3, n_layer=3), []),
    # MQA kept: 8 query heads of 64 (x4) on the one kv head
    ("mqa-mqa", "mqa", "f32", dict(n_embd=512, n_head=8, n_head_kv=1, n_ff=192), []),
    # a head size given by key_length (32, != 64 / 4) grown to 64
    ("headdim", "headdim", "f32", dict(n_embd=256, n_head=4, n_head_kv=4), []),
    # quantized sources: the grown copies are their dequantized values
    ("q8_0-source", "gqa", "q8_0", dict(n_embd=128, n_layer=3, n_head=4, n_head_kv=2, n_ff=384),
     []),
    ("q4_0-source", "qwen2", "q4_0", dict(n_embd=256, n_head=8, n_head_kv=4, n_ff=384), []),
]
OUT_TYPES_CASE = "gqa-padded"  # also grown as f16, bf16, q8_0, q4_0 (its widths are blockable)
OUT_TYPES = ("f16", "bf16", "q8_0", "q4_0")


class Checks:
    def __init__(self, verbose: bool):
        self.passed = self.failed = 0
        self.verbose = verbose

    def __call__(self, case: str, what: str, ok: bool, value=None, tol=None, detail: str = ""):
        self.passed += ok
        self.failed += not ok
        if ok and not self.verbose and value is None:
            return
        v = "" if value is None else f" {value:.3e}"
        t = "" if tol is None else f" {tol:.3e}"
        d = f"  [{detail}]" if detail and (not ok or self.verbose) else ""
        print(f"{'PASS' if ok else 'FAIL'} {case} {what}{v}{t}{d}", flush=True)


def grow(speck: str, src: str, out: str, shape: dict, extra: list, wtype: str = "f32",
         seed: int = 1):
    cmd = [speck, "grow", "-m", src, "-o", out, "--type", wtype, "--seed", str(seed), "--quiet"]
    for k, v in shape.items():
        cmd += ["--" + k.replace("_", "-"), str(v)]
    p = subprocess.run(cmd + extra, capture_output=True, text=True, timeout=300)
    return p.returncode, p.stderr.strip()


def logits(path: str, tokens) -> tuple[np.ndarray, L.LlamaRef]:
    g = G.read_gguf(path)
    ref = L.LlamaRef(g.kv, g.tensors)
    with torch.no_grad():
        return ref.forward(tokens).numpy(), ref


def check_metadata(chk: Checks, case: str, src: G.GGUFFile, dst: G.GGUFFile, cfg: dict,
                   shape: dict, extra: list):
    a = cfg["arch"] + "."
    kv = dst.kv
    chk(case, "architecture kept", kv.get("general.architecture") == cfg["arch"])
    for key in ("embedding_length", "block_count", "feed_forward_length",
                "attention.head_count", "attention.head_count_kv"):
        name = {"embedding_length": "n_embd", "block_count": "n_layer",
                "feed_forward_length": "n_ff", "attention.head_count": "n_head",
                "attention.head_count_kv": "n_head_kv"}[key]
        want = shape.get(name, src.kv[a + key])
        chk(case, f"{a}{key} = {want}", int(kv.get(a + key, -1)) == want,
            detail=f"got {kv.get(a + key)}")
    for key in ("context_length", "rope.freq_base", "rope.scaling.type", "rope.scaling.factor"):
        chk(case, f"{a}{key} kept", kv.get(a + key) == src.kv.get(a + key),
            detail=f"{kv.get(a + key)} vs {src.kv.get(a + key)}")
    for key in [k for k in src.kv if k.startswith("tokenizer.")]:
        chk(case, f"{key} copied", kv.get(key) == src.kv[key])
    # epsilon x k E / E'
    E, E2 = src.kv[a + "embedding_length"], kv[a + "embedding_length"]
    want = np.float32(cfg["eps"] * (E2 // E) * E / E2)
    chk(case, "rms epsilon scaled by kE/E'",
        np.float32(kv[a + "attention.layer_norm_rms_epsilon"]) == want,
        detail=f"{kv[a + 'attention.layer_norm_rms_epsilon']} vs {want}")
    tied_out = "output.weight" not in dst.tensor_ne
    chk(case, "head tying", tied_out == (cfg["tied"] and "--untied" not in extra))
    chk(case, "vocabulary kept",
        dst.tensor_ne["token_embd.weight"][1] == src.tensor_ne["token_embd.weight"][1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speck", required=True, help="the speck executable")
    ap.add_argument("--dump", required=True, help="the forward_dump executable")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--case", default=None, help="comma-separated case names (default: all)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    for exe in (args.speck, args.dump):
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            print(f"FAIL {exe} not found or not executable\n0 passed, 1 failed")
            return 1
    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        work = tempfile.mkdtemp(prefix="grow-", dir=args.workdir)
    else:
        work = tempfile.mkdtemp(prefix="speck-grow-")
    wanted = set(args.case.split(",")) if args.case else None
    chk = Checks(args.verbose)
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, M.BASE["n_vocab"], size=N_TOKENS).tolist()
    try:
        for case, cfg_name, stype, shape, extra in CASES:
            if wanted and case not in wanted:
                continue
            cfg = M.config(cfg_name)
            src = os.path.join(work, f"{case}-src.gguf")
            M.make_model(cfg_name, src, stype, seed=3)
            out = os.path.join(work, f"{case}.gguf")
            rc, err = grow(args.speck, src, out, shape, extra)
            chk(case, "speck grow", rc == 0, detail=err)
            if rc != 0:
                continue
            ref, _ = logits(src, tokens)
            scale = max(1.0, float(np.abs(ref).max()))
            got, gref = logits(out, tokens)
            d = float(np.abs(got - ref).max())
            chk(case, "reference logits, grown f32 vs source", d <= TOL_EXACT * scale, d,
                TOL_EXACT * scale)
            check_metadata(chk, case, G.read_gguf(src, dequant=False),
                           G.read_gguf(out, dequant=False), cfg, shape, extra)
            dump, error = run_dump(args.dump, out, "prefill", tokens,
                                   os.path.join(work, f"{case}.f32"), N_TOKENS, ref.shape[1])
            if error:
                chk(case, "speck forward on the grown model", False, detail=error)
            else:
                d = float(np.abs(dump - ref).max())
                chk(case, "speck forward (grown f32) vs source reference",
                    d <= TOL_SPECK * scale, d, TOL_SPECK * scale)
                dec, error = run_dump(args.dump, out, "decode", tokens,
                                      os.path.join(work, f"{case}.dec.f32"), N_TOKENS,
                                      ref.shape[1])
                d = float(np.abs(dec - ref).max()) if error is None else float("inf")
                chk(case, "speck decode (grown f32) vs source reference",
                    d <= TOL_SPECK * scale, d, TOL_SPECK * scale, detail=error or "")

            if case == "gqa-padded":
                controls(chk, case, gref, ref, scale, tokens, cfg)
                seeds(chk, args.speck, case, src, out, shape, extra, tokens, ref, scale, work)
            if case == OUT_TYPES_CASE:
                for t in OUT_TYPES:
                    out_t = os.path.join(work, f"{case}-{t}.gguf")
                    rc, err = grow(args.speck, src, out_t, shape, extra, wtype=t)
                    chk(case, f"speck grow --type {t}", rc == 0, detail=err)
                    q_src = os.path.join(work, f"{case}-src-{t}.gguf")
                    p = subprocess.run([args.speck, "quantize", src, q_src, t],
                                       capture_output=True, text=True)
                    if rc or p.returncode:
                        chk(case, f"speck quantize {t}", p.returncode == 0, detail=p.stderr)
                        continue
                    dg = float(np.abs(logits(out_t, tokens)[0] - ref).max())
                    ds = float(np.abs(logits(q_src, tokens)[0] - ref).max())
                    tol = QUANT_RATIO * ds + TOL_EXACT * scale
                    chk(case, f"{t}: grown vs source (source in {t}: {ds:.2e})", dg <= tol, dg,
                        tol)
    finally:
        if args.keep:
            print(f"kept files in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{chk.passed} passed, {chk.failed} failed")
    return 1 if chk.failed else 0


def controls(chk: Checks, case: str, gref: L.LlamaRef, ref: np.ndarray, scale: float, tokens,
             cfg: dict):
    """The tolerance must see the construction's smallest terms: the grown model evaluated
    without its epsilon scaling, or with its queries not scaled for the larger head, must fail."""
    eps = gref.hp.norm_eps
    gref.hp.norm_eps = cfg["eps"]
    with torch.no_grad():
        d = float(np.abs(gref.forward(tokens).numpy() - ref).max())
    gref.hp.norm_eps = eps
    chk(case, "control: without the epsilon scaling the logits differ", d > TOL_EXACT * scale, d,
        TOL_EXACT * scale)
    m = gref.hp.head_dim // M.config("gqa")["head_dim"]
    w = gref.w["blk.0.attn_q.weight"]
    gref.w["blk.0.attn_q.weight"] = w / np.sqrt(m)
    with torch.no_grad():
        d = float(np.abs(gref.forward(tokens).numpy() - ref).max())
    gref.w["blk.0.attn_q.weight"] = w
    chk(case, "control: without the query scaling the logits differ", d > TOL_EXACT * scale, d,
        TOL_EXACT * scale)


def seeds(chk: Checks, speck: str, case: str, src: str, out: str, shape: dict, extra: list,
          tokens, ref: np.ndarray, scale: float, work: str):
    """The same seed writes the same bytes; another seed other shares and free weights, and
    the same function."""
    again = os.path.join(work, f"{case}-again.gguf")
    other = os.path.join(work, f"{case}-seed2.gguf")
    rc1, _ = grow(speck, src, again, shape, extra)
    rc2, _ = grow(speck, src, other, shape, extra, seed=2)
    if rc1 or rc2:
        chk(case, "seed runs", False)
        return
    with open(out, "rb") as f1, open(again, "rb") as f2, open(other, "rb") as f3:
        a, b, c = f1.read(), f2.read(), f3.read()
    chk(case, "same seed, same file", a == b)
    chk(case, "another seed, another file", a != c)
    d = float(np.abs(logits(other, tokens)[0] - ref).max())
    chk(case, "another seed, same logits", d <= TOL_EXACT * scale, d, TOL_EXACT * scale)


if __name__ == "__main__":
    sys.exit(main())
