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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_io as G  # noqa: E402
import make_model as MM  # noqa: E402
import quant_ref as QR  # noqa: E402


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


PARTS = {"mix": part_mix}


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
