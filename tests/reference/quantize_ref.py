#!/usr/bin/python3
"""`speck quantize`, `speck imatrix` and `speck eval`'s quantization figures, checked from outside.

Every part runs the speck CLI on small random-weight models (make_model.py) and checks its files
with this directory's own readers (gguf_io.py, the numpy dequantizers of quant_ref.py) and
references written from the definitions (not from speck's C):

  mix      llama-quantize's file types: the type of every tensor (the mixes' rules as
           docs/convert.md states them, including the block fallback), general.file_type, and
           the error of each tensor under the per-type bound of quant_ref.QUANT_RMSE; --pure;
           the fallback is reported on stderr. (That speck's files are byte-identical to
           llama-quantize's is checked outside the tests: docs/convert.md.)
  eval     `speck eval --kld-base-out / --kld-base` (llama-perplexity's protocol and file format):
           the base file's header, tokens and log-probabilities against a float64 PyTorch
           forward (llama_ref.py) of the base model; perplexity, KL divergence (mean, median,
           99th percentile), top-1 agreement and delta perplexity of a second model against
           the same computed here from both models' float64 logits; damaged and mismatched
           base files are refused.

Usage (ctest): quantize_ref.py --speck build/speck --workdir DIR --part mix
Prints PASS/FAIL lines and `N passed, M failed`; exits 1 on failure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_io as G  # noqa: E402
import make_model as MM  # noqa: E402
import quant_ref as QR  # noqa: E402
from llama_ref import LlamaRef  # noqa: E402


class Results:
    def __init__(self, verbose: bool):
        self.passed = self.failed = 0
        self.verbose = verbose

    def check(self, ok: bool, text: str) -> bool:
        self.passed += bool(ok)
        self.failed += not ok
        if not ok or self.verbose:
            print(("PASS " if ok else "FAIL ") + text)
        return bool(ok)


def run(cmd, ok_codes=(0,)):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode not in ok_codes:
        raise SystemExit(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr}")
    return p


def write_model(path, seed=1, **over):
    """A make_model.py model with the given overrides of its base config."""
    c = MM.config("gqa")
    c.update(over)
    kv, tensors = MM.build(c, "f32", seed)
    G.write_gguf(path, kv, tensors)
    return c


# ---- mix -------------------------------------------------------------------------------------

FTYPES = {  # name -> (general.file_type, base type)
    "Q2_K": (10, "q2_k"), "Q3_K_S": (11, "q3_k"), "Q3_K_M": (12, "q3_k"), "Q3_K_L": (13, "q3_k"),
    "Q4_K_S": (14, "q4_k"), "Q4_K_M": (15, "q4_k"), "Q5_K_S": (16, "q5_k"),
    "Q5_K_M": (17, "q5_k"), "Q6_K": (18, "q6_k"), "Q8_0": (7, "q8_0"), "IQ4_NL": (25, "iq4_nl"),
    "IQ4_XS": (30, "iq4_xs"), "Q4_0": (2, "q4_0"), "Q4_1": (3, "q4_1"), "Q5_0": (8, "q5_0"),
    "Q5_1": (9, "q5_1"),
}
PURE_FT = {"q2_k": 10, "q3_k": 11, "q4_k": 14, "q5_k": 16, "q6_k": 18, "q8_0": 7, "iq4_nl": 25,
           "iq4_xs": 30, "q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9}
BLOCK = {name: bs for name, (_, bs, _) in QR.TYPES.items()}
# A type whose block does not divide a row is replaced by llama-quantize's fallback.
FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0",
            "iq4_xs": "iq4_nl"}


def more_bits(i, n):
    """The layers the _M mixes favour: first and last eighth, every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def mix_type(ft, name, ne0, n_layer, gqa, has_output, imatrix=False):
    """docs/convert.md's table: the type file type `ft` gives matrix `name`, before fallback."""
    base = FTYPES[ft][1]
    if BLOCK[base] == 1 or base == "q8_0":
        return base
    is_head = name == "output.weight" or (name == "token_embd.weight" and not has_output)
    if is_head:
        return "q8_0" if ne0 % BLOCK[base] else "q6_k"
    if name == "token_embd.weight":
        return base
    layer = int(name.split(".")[1])
    if name.endswith("attn_v.weight"):
        rules = {
            "Q2_K": "q4_k" if gqa >= 4 else "q3_k",
            "Q3_K_M": "q5_k" if layer < 2 else "q4_k",
            "Q3_K_L": "q5_k",
            "IQ4_NL": "q5_k" if gqa >= 4 else None, "IQ4_XS": "q5_k" if gqa >= 4 else None,
            "Q4_K_M": "q6_k" if more_bits(layer, n_layer) else None,
            "Q5_K_M": "q6_k" if more_bits(layer, n_layer) else None,
            "Q4_K_S": "q5_k" if layer < 4 else None,
        }
        return rules.get(ft) or base
    if name.endswith("ffn_down.weight"):
        first = layer < n_layer // 8
        rules = {
            "Q2_K": "q3_k", "Q3_K_M": "q5_k" if layer < n_layer // 16 else "q4_k",
            "Q3_K_L": "q5_k", "Q4_K_M": "q6_k" if more_bits(layer, n_layer) else None,
            "IQ4_NL": "q5_k" if first and not imatrix else None,
            "IQ4_XS": "q5_k" if first and not imatrix else None,
            "Q5_K_M": "q6_k" if more_bits(layer, n_layer) else None,
            "Q4_K_S": "q5_k" if first else None,
            "Q4_0": "q4_1" if first and imatrix else None,
            "Q5_0": "q5_1" if first and imatrix else None,
        }
        return rules.get(ft) or base
    if name.endswith("attn_output.weight"):
        return {"Q2_K": "q3_k", "Q3_K_M": "q4_k", "Q3_K_L": "q5_k"}.get(ft, base)
    return base


def fallback(t, ne0):
    while t in BLOCK and ne0 % BLOCK[t]:
        t = FALLBACK.get(t, "f16")
    return t


def rel_err(a, b):
    return float(np.sqrt(((a.astype(np.float64) - b) ** 2).sum() / (b.astype(np.float64) ** 2).sum()))


def part_mix(args, res):
    # Two 16-layer models (n / 8 = 2, n / 16 = 1, so every layer rule is exercised): A with
    # GQA 2, rows of 256 everywhere but a 480-wide ffn_down (falls back); B tied, GQA 4, rows of
    # 256 only.
    models = {
        "A": write_model(os.path.join(args.workdir, "mixA.gguf"), n_layer=16, n_embd=256,
                         n_ff=480, n_head=4, n_head_kv=2, head_dim=64, n_vocab=300),
        "B": write_model(os.path.join(args.workdir, "mixB.gguf"), seed=2, n_layer=16,
                         n_embd=256, n_ff=512, n_head=8, n_head_kv=2, head_dim=32, n_vocab=300,
                         tied=True),
    }
    for key, c in models.items():
        src = os.path.join(args.workdir, f"mix{key}.gguf")
        ref = G.read_gguf(src)
        gqa = c["n_head"] // c["n_head_kv"]
        for ft, (code, base) in FTYPES.items():
            # --pure on A only: the base types are the same for both models.
            for pure in (False, True) if key == "A" else (False,):
                out = os.path.join(args.workdir, f"mix{key}-{ft}{'-pure' if pure else ''}.gguf")
                p = run([args.speck, "quantize", src, out, ft] + (["--pure"] if pure else []))
                g = G.read_gguf(out)
                tag = f"{key} {ft}{' --pure' if pure else ''}"
                # A --pure file is described by its matrices' type (Q4_K -> Q4_K_S's code).
                want_ft = PURE_FT[base] if pure else code
                res.check(g.kv.get("general.file_type") == want_ft,
                          f"{tag}: general.file_type {g.kv.get('general.file_type')} == {want_ft}")
                res.check(g.kv.get("general.quantization_version") == 2,
                          f"{tag}: general.quantization_version 2")
                bad_type, bad_err, said = [], [], True
                for name, ttype in g.tensor_types.items():
                    ne0 = g.tensor_ne[name][0]
                    if len(g.tensor_ne[name]) < 2:
                        want = "f32"
                    else:
                        wanted = base if pure else mix_type(ft, name, ne0, c["n_layer"], gqa,
                                                            not c["tied"])
                        want = fallback(wanted, ne0)
                        if want != wanted and f"{name}: rows of {ne0} values" not in p.stderr:
                            said = False
                    got = G.TYPE_NAMES[ttype]
                    if got != want:
                        bad_type.append(f"{name} {got} (want {want})")
                    elif got in QR.QUANT_RMSE:
                        e = rel_err(g.tensors[name], ref.tensors[name])
                        if e > QR.QUANT_RMSE[got]:
                            bad_err.append(f"{name} {got} {e:.4f} > {QR.QUANT_RMSE[got]}")
                res.check(not bad_type, f"{tag}: every tensor's type {bad_type[:4]}")
                res.check(not bad_err, f"{tag}: quantization error within the type's bound "
                                       f"{bad_err[:4]}")
                res.check(said, f"{tag}: each fallback is reported on stderr")


# ---- eval ------------------------------------------------------------------------------------

def read_base(path):
    """llama-perplexity's --kl-divergence-base file: (n_ctx, n_vocab, n_chunk, tokens,
    scale (rows), min_log_prob (rows), u16 levels (rows, n_vocab))."""
    with open(path, "rb") as f:
        d = f.read()
    assert d[:8] == b"_logits_", "magic"
    n_ctx, n_vocab, n_chunk = np.frombuffer(d[8:20], dtype="<u4").astype(int)
    off = 20 + 4 * n_chunk * n_ctx
    toks = np.frombuffer(d[20:off], dtype="<i4")
    nv = 2 * ((n_vocab + 1) // 2) + 4
    rows = np.frombuffer(d[off:], dtype="<u2").reshape(-1, nv)
    head = rows[:, :4].copy().view("<f4")
    return n_ctx, n_vocab, n_chunk, toks, head[:, 0], head[:, 1], rows[:, 4:4 + n_vocab]


def part_eval(args, res):
    w = args.workdir
    c = MM.config("gqa")
    kv, tensors = MM.build(c, "f32", 3)
    a_path, b_path = os.path.join(w, "evalA.gguf"), os.path.join(w, "evalB.gguf")
    G.write_gguf(a_path, kv, tensors)
    # B: A with every matrix perturbed by 20 % noise -- far enough for a KL divergence of a few
    # hundredths, near enough that the top tokens mostly agree.
    rng = np.random.default_rng(4)
    pert = [(n, x + 0.2 * x.std() * rng.standard_normal(x.shape).astype(np.float32)
             if x.ndim == 2 else x, t) for n, x, t in tensors]
    G.write_gguf(b_path, kv, pert)
    n_ctx, n_chunk = 32, 6
    text = bytes(rng.integers(32, 127, size=n_ctx * n_chunk + 11, dtype=np.uint8))
    txt = os.path.join(w, "eval.txt")
    with open(txt, "wb") as f:
        f.write(text)
    base = os.path.join(w, "base.kld")
    run([args.speck, "eval", "-m", a_path, "--text", txt, "--kld-base-out", base, "--ctx",
         str(n_ctx)])
    ctx_, nvoc, nch, toks, scale, minlp, q = read_base(base)
    res.check((ctx_, nvoc, nch) == (n_ctx, c["n_vocab"], n_chunk),
              f"eval: base header (n_ctx, n_vocab, n_chunk) = {(ctx_, nvoc, nch)}")
    # Byte-level vocabulary without merges: token ids are the bytes (whole chunks only).
    res.check(np.array_equal(toks, np.frombuffer(text[:n_ctx * n_chunk], np.uint8)),
              "eval: base tokens are the text's, whole chunks only")
    first, n_out = n_ctx // 2, n_ctx - 1 - n_ctx // 2
    ref = {}
    for key, path in (("A", a_path), ("B", b_path)):
        m = LlamaRef.from_file(path)
        rows = []
        for k in range(n_chunk):
            with torch.no_grad():
                lg = m.forward(toks[k * n_ctx:(k + 1) * n_ctx].tolist())
            rows.append(lg[first:first + n_out].numpy())
        ref[key] = np.concatenate(rows)  # (n_chunk * n_out, n_vocab) float64
    lpa = ref["A"] - np.logaddexp.reduce(ref["A"], axis=1, keepdims=True)
    lpb = ref["B"] - np.logaddexp.reduce(ref["B"], axis=1, keepdims=True)
    # Stored log-probs: min_log_prob + scale * q within half a step (plus the float error of
    # speck's logits, 1e-4 of their size: test_forward.py's bound) where above the max - 16 floor.
    dec = minlp[:, None].astype(np.float64) + scale[:, None] * q
    above = lpa > lpa.max(axis=1, keepdims=True) - 16 + 1e-3
    tol = scale[:, None] / 2 + 1e-4 * np.maximum(1, np.abs(ref["A"]).max())
    err = np.abs(dec - lpa)
    res.check(bool((err[above] <= np.broadcast_to(tol, err.shape)[above]).all()),
              f"eval: stored log-probs within half a step of the reference's "
              f"(worst {float((err - tol)[above].max()):+.2e} over the bound)")
    p = run([args.speck, "eval", "-m", b_path, "--kld-base", base, "--json"])
    import json
    got = json.loads(p.stdout)
    tgt = np.concatenate([toks[k * n_ctx + first + 1:(k + 1) * n_ctx] for k in range(n_chunk)])
    nll_b = -lpb[np.arange(len(tgt)), tgt]
    nll_a = -lpa[np.arange(len(tgt)), tgt]
    kl = (np.exp(lpa) * (lpa - lpb)).sum(axis=1)
    want = dict(ppl=np.exp(nll_b.mean()), ppl_base=np.exp(nll_a.mean()), kld=kl.mean(),
                kld_median=np.median(kl), kld_p99=np.percentile(kl, 99),
                top1=np.mean(ref["A"].argmax(1) == ref["B"].argmax(1)))
    want["dppl"] = want["ppl"] - want["ppl_base"]
    # Tolerances: speck's logits are within 1e-4 * max|logit| of the float64 ones (f32 weights),
    # which moves each KL term by at most ~2e-4 nats; the base is stored to 16 / 65535 (2.4e-4)
    # per log-prob, which moves a KL divergence by at most that much; and the terms below
    # e^-16 that llama-perplexity's formula leaves out weigh < 4096 * 1e-7 = 4e-4 in the
    # worst case. A wrong formula (a sign, the direction of the divergence, a missing
    # normalisation) is off by far more than 1e-3 on divergences of ~0.05.
    for k, tol in (("ppl", 2e-3), ("ppl_base", 2e-3), ("dppl", 4e-3), ("kld", 1e-3),
                   ("kld_median", 1e-3), ("kld_p99", 2e-3)):
        res.check(abs(got[k] - want[k]) <= tol * max(1.0, abs(want[k])),
                  f"eval: {k} {got[k]:.6f} vs reference {want[k]:.6f}")
    res.check(abs(got["top1"] - want["top1"]) <= 1.5 / len(tgt),
              f"eval: top-1 agreement {got['top1']:.4f} vs {want['top1']:.4f}")
    res.check(0.01 < want["kld"] < 1 and want["top1"] < 1,
              f"eval: the test's models differ measurably (KLD {want['kld']:.4f})")
    # A base made with another vocabulary, a truncated one and a non-base file are refused.
    other = os.path.join(w, "other.gguf")
    c2 = dict(c, n_vocab=c["n_vocab"] + 2)
    kv2, t2 = MM.build(c2, "f32", 3)
    G.write_gguf(other, kv2, t2)
    p = run([args.speck, "eval", "-m", other, "--kld-base", base], ok_codes=(1,))
    res.check("vocabulary" in p.stderr and base in p.stderr,
              f"eval: a base of another vocabulary is refused: {p.stderr.strip()}")
    trunc = os.path.join(w, "trunc.kld")
    with open(base, "rb") as f, open(trunc, "wb") as g:
        g.write(f.read()[:-100])
    p = run([args.speck, "eval", "-m", b_path, "--kld-base", trunc], ok_codes=(1,))
    res.check("truncated" in p.stderr, f"eval: a truncated base is refused: {p.stderr.strip()}")
    p = run([args.speck, "eval", "-m", b_path, "--kld-base", txt], ok_codes=(1,))
    res.check("not a log-probability file" in p.stderr,
              f"eval: a non-base file is refused: {p.stderr.strip()}")
    # Nothing half-written: a base file into a missing directory fails and leaves nothing.
    bad = os.path.join(w, "nodir", "x.kld")
    p = run([args.speck, "eval", "-m", a_path, "--text", txt, "--kld-base-out", bad, "--ctx",
             str(n_ctx)], ok_codes=(1,))
    res.check(not os.path.exists(os.path.dirname(bad)), "eval: failed base write leaves nothing")


PARTS = {"mix": part_mix, "eval": part_eval}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--speck", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--part", default=",".join(PARTS))
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    res = Results(args.verbose)
    for part in args.part.split(","):
        PARTS[part](args, res)
    print(f"{res.passed} passed, {res.failed} failed")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
