#!/usr/bin/python3
"""Check speck's forward pass (via the `forward_dump` tool) against the PyTorch reference.

For every model config (make_model.py) and weight type, speck runs the same token sequence in
several ways -- one prefill, token-by-token decode, chunked prefill, KV-cache truncation and
re-decode, and token trees in a single masked forward -- and every way must reproduce the
reference logits computed by llama_ref.py in float64 from the very same (dequantized) weights.

Usage (as ctest runs it):
    /usr/bin/python3 tests/reference/test_forward.py --dump build/tests/forward_dump --workdir DIR
Debugging: --config gqa,qwen2  --type f32  --mode prefill,tree  --keep  -v
Prints `PASS|FAIL config type mode maxerr tol` per case and finally `N passed, M failed`;
exits 1 if anything failed.

forward_dump CLI: forward_dump MODEL.gguf MODE OUT.f32 TOKENS (comma-separated ids); it writes
raw little-endian float32 logits, row-major (rows, n_vocab).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_io as G  # noqa: E402
import llama_ref as L  # noqa: E402
import make_model as M  # noqa: E402
import skips as S  # noqa: E402

# ---- tolerances --------------------------------------------------------------------------------
# All tolerances scale with max(1, max|ref logit|) (about 3 for these models), so they are
# relative to the logit range but never tighter than absolute for tiny logits.
#
# f32 / f16 / bf16 weights: 16-bit weights are exact once widened, so speck computes with
# exactly the reference's weights and only its float32 arithmetic differs. Every value passes
# through dot products of 16..192 terms, RMSNorm and softmax over 2 layers; float32 rounding
# (2^-24 ~ 6e-8 relative per op) grows to about 1e-6 relative over that (a float32 run of this
# reference differs from the float64 one by 2-3e-6, see test_reference.py). 1e-4 leaves ~30-50x
# headroom for other summation orders and exp/sqrt implementations while still catching any
# real bug, which moves logits by 1e-2 or more.
TOL_FLOAT = 1e-4
# q8_0 / q4_0 weights: the reference uses the same dequantized weights, but speck (like ggml)
# also rounds each matmul input to Q8_0 (8 bits per block of 32 + fp16 scale). Emulating that
# rounding in the reference moves logits by at most 2.0-3.7e-2 x scale (mean 2.2-2.5e-2, rms
# ~0.5e-2 x scale) across configs, seeds and both types: with n_embd = 64 a block holds half a
# vector, so one rounding flip is visible. Even two emulations differing only in float32 vs
# float64 arithmetic disagree by up to 1.5e-2 x scale, so there is no tighter "exact" target.
# 1e-1 (about 3x the worst observed) still flags real bugs (wrong mask/RoPE/nibble order give
# errors of 0.3 x scale and more); the rms bound adds a check on the typical error size.
TOL_QUANT = 1e-1
TOL_QUANT_RMS = 2e-2
# The other 32-value block types (q4_1, q5_0, q5_1, iq4_nl) take the same Q8_0 activations, and
# their worst observed errors are alike (max 2.3-3.4e-2, rms 0.6-0.7e-2 x scale): the same bounds.
# The 256-value types (K-quants, iq4_xs, dgq4, and "mix", whose matrices are mostly Q4_K / Q6_K) round
# activations to Q8_K: one scale per 256 values, so each value's rounding step (the block's
# largest magnitude / 127, ~2.9 sigma for 256 Gaussian values against ~2.07 for 32) is ~1.4x
# Q8_0's. Observed worst over the configs and modes: max 6.8e-2, rms 1.2e-2 x scale (mix up to
# 4.2e-2 / 0.85e-2). 1.5e-1 / 3e-2 keep ~2.2-2.5x headroom; a wrong scale, level or element
# order moves these wide models' logits by 0.3 x scale and more.
TOL_QUANT_K = 1.5e-1
TOL_QUANT_K_RMS = 3e-2
K_ACT_TYPES = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_xs", "dgq4", "mix")
# --kv f16: both sides round keys and values to f16, but speck rounds values computed in float32
# and the reference values computed in float64, so an element lying near an f16 rounding
# boundary can round one f16 ulp (2^-11 relative) apart. Each such flip moves the logits by
# ~1e-4 x scale; a few per model were observed (worst 1.5e-4 x scale). 1e-3 keeps 6x headroom
# and still flags real bugs (a wrong row or type read moves logits by 1e-2 x scale or more).
TOL_FLOAT_KV16 = 1e-3
# --kv q8_0 / q4_0: both sides round each head's key and value rows with ggml's rules (speck's C
# quantizer, quant_ref.py's numpy one: byte-identical on the same floats, see quant_ref.py).
# Mostly no element lands near enough a rounding boundary for speck's float32 vs the reference's
# float64 to matter, and the logits agree as with an f32 cache (the 20-token runs of headdim and
# qwen3: <= 2.2e-6 x scale, exact parity of the cached levels). Where one does, it rounds one
# level apart (one Q8_0 level is the block's max / 127, one Q4_0 level its max / 8): observed
# worst 8.3e-4 x scale with q8_0 (gemma2hd32's 20 tokens) and 4.2e-3 with q4_0 (mistral32's
# 600), rms <= 8.3e-5 x scale, over the headdim, qwen3, mistral32 and gemma2hd32 configs.
# 5e-3 (q8_0) / 2e-2 (q4_0) and rms 5e-4 keep 4.8-6x headroom; a wrong level, nibble order,
# scale or row moves the logits by 1e-2 x scale or more, and even leaving the keys and values
# unrounded does by max 1.0-1.2e-2 / rms 1.9-2.2e-3 (q8_0) and 0.16-0.21 / 3.7e-2 (q4_0) x
# scale.
TOL_KV_BLOCK = {"q8_0": 5e-3, "q4_0": 2e-2}
TOL_KV_BLOCK_RMS = 5e-4

# Mixtures of experts with quantized weights: speck's logits differ from the reference's by the
# activation rounding above, and so do the router's inputs, so a token whose k-th and (k+1)-th
# router logits are nearly tied may pick another expert than the reference — a legitimate
# difference whose effect on its logits (another expert's output, ~0.3-2 x scale) no tolerance
# can absorb. Rows whose routing gap (smallest over the layers, in router logits) is below
# MOE_GAP are therefore left out of the quantized comparisons. The router's inputs move by about
# the tolerance above times the router's weight scale (~1e-2 x 0.4 x sqrt(64) ~ 0.03 in logits,
# observed: every row that differed had a gap < 0.1); MOE_GAP 0.15 leaves out 6-10 % of the rows
# of these tiny models, and at most MOE_SKIP_MAX of them may be left out (of cases with 20
# rows or more). Float weights are
# compared on every row: their routing must match exactly.
MOE_GAP = 0.15
MOE_SKIP_MAX = 0.25

N_TOKENS = 20
# A longer sequence for the batch attention's chunking (units of 64 queries, causal chunks over
# only the keys they see) and for speck_forward's split of batches above 512 tokens: a
# 600-token prefill runs as 512 + 88, chunks:70 adds cached entries to every batch.
LONG_TOKENS = 600
LONG_MODES = ["prefill", "chunks:70"]
# Windowed configs: their rings (window + 64 rows) wrap over 600 tokens, so the long sequence also
# runs token by token and in 5-token passes (the streaming path writing into a wrapping ring),
# and token trees follow a 150-token prefix (masked attention over a wrapped ring; the 40-node
# tree takes the batch path where the streaming one stops below 40 tokens: the row layout).
LONG_WINDOW_MODES = ["decode", "chunks:5"]
LONG_PREFIX = 150
LONG_TREES = [[-1, 0, 0, 1, 1, 2, -1, 6, 7], [-1] + [(i - 1) // 2 for i in range(1, 40)]]
# ... and the short modes once more in a 48-position context, where window + 64 > the context:
# windowed layers then keep the whole context (no ring), masked by position.
SMALL_CTX = 48
ROW_STEP = 7  # rows:7 asks that prefill for every 7th row's logits only
KV_TYPE = None  # --kv f16: speck's KV cache in f16, the reference rounding keys/values alike
# (prefix length, parent list): a bushy two-root tree reaching depth 3, and a plain chain,
# which must equal ordinary decoding.
TREES = [
    (6, [-1, 0, 0, 1, 1, 2, -1, 6, 7]),
    (1, [-1, 0, 1, 2, 3]),
    # 40 nodes, a binary tree 6 levels deep: enough to take the batch path (GEMMs, masked
    # attention units) instead of the streaming one.
    (5, [-1] + [(i - 1) // 2 for i in range(1, 40)]),
]


def modes(n: int) -> list[str]:
    """Modes whose rows are all n causal logits of the token sequence. truncate:K prefills all
    n tokens, cuts the KV cache back to K entries and decodes tokens K.. again; rows < K come
    from the prefill. K = 0 empties the cache, K = n - 1 redoes only the last token."""
    return ["prefill", "decode", "chunks:4", "chunks:7", "chunks:1",
            "truncate:8", "truncate:0", f"truncate:{n - 1}"]


def tree_mode(prefix: int, parents: list[int]) -> str:
    return f"tree:{prefix}:" + ",".join(map(str, parents))


def run_dump(exe: str, model: str, mode: str, tokens: list[int], out: str, n_rows: int,
             n_vocab: int, isa: str | None = None, ctx: int | None = None):
    """Run forward_dump; returns (logits, None) or (None, error text)."""
    if os.path.exists(out):
        os.remove(out)
    cmd = [exe, model, mode, out, ",".join(map(str, tokens))]
    try:
        env = dict(os.environ, SPECK_TEST_ISA=isa) if isa else dict(os.environ)
        if KV_TYPE:
            env["SPECK_TEST_KV"] = KV_TYPE
        if ctx:
            env["SPECK_TEST_CTX"] = str(ctx)
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{' '.join(cmd)}: {e}"
    if p.returncode != 0:
        return None, f"{' '.join(cmd)}: exit {p.returncode}\n{p.stderr.strip()}".strip()
    if not os.path.exists(out):
        return None, f"{' '.join(cmd)}: wrote no output file\n{p.stderr.strip()}".strip()
    data = np.fromfile(out, dtype="<f4")
    if data.size != n_rows * n_vocab:
        return None, (f"{' '.join(cmd)}: output has {data.size} floats, expected "
                      f"{n_rows} rows x {n_vocab}")
    return data.reshape(n_rows, n_vocab).astype(np.float64), None


def compare(got: np.ndarray, ref: np.ndarray, wtype: str, gaps: np.ndarray | None = None):
    """(ok, maxerr, tol, extra text). gaps: each row's routing gap (MoE), or None."""
    scale = max(1.0, float(np.abs(ref).max()))
    quant = wtype in ("q8_0", "q4_0") or wtype in M.QTYPES
    skipped = ""
    if gaps is not None and quant:
        keep = gaps >= MOE_GAP
        skipped = f" ({int((~keep).sum())} of {len(keep)} near-tie rows left out)"
        if len(keep) >= 20 and (~keep).mean() > MOE_SKIP_MAX:
            return False, float("nan"), 0.0, "too many near-tie rows" + skipped
        got, ref = got[keep], ref[keep]
    if not np.all(np.isfinite(got)):
        return False, float("inf"), 0.0, "non-finite logits"
    err = np.abs(got - ref)
    maxerr = float(err.max())
    row, col = np.unravel_index(int(err.argmax()), err.shape)
    where = f"worst row {row} col {col}"
    if quant:
        k = wtype in K_ACT_TYPES
        tol = (TOL_QUANT_K if k else TOL_QUANT) * scale
        tol_rms = (TOL_QUANT_K_RMS if k else TOL_QUANT_RMS) * scale
        rms = float(np.sqrt((err ** 2).mean()))
        ok = maxerr <= tol and rms <= tol_rms
        return ok, maxerr, tol, f"rms {rms:.2e} (tol {tol_rms:.2e}) {where}{skipped}"
    if KV_TYPE in ("q8_0", "q4_0"):
        tol, tol_rms = TOL_KV_BLOCK[KV_TYPE] * scale, TOL_KV_BLOCK_RMS * scale
        rms = float(np.sqrt((err ** 2).mean()))
        return (maxerr <= tol and rms <= tol_rms, maxerr, tol,
                f"rms {rms:.2e} (tol {tol_rms:.2e}) {where}")
    tol = (TOL_FLOAT_KV16 if KV_TYPE == "f16" else TOL_FLOAT) * scale
    return maxerr <= tol, maxerr, tol, where


def reference_outputs(ref_model, first: int, seq, long_seq, trees) -> dict:
    """The reference's logits (and routing margins of MoE models) for every case of one model:
    the causal rows of both sequences, and each tree node's row (the last row of prefix +
    root-to-node path, run causally)."""
    R = {}
    with torch.no_grad():
        R["causal"] = ref_model.forward(seq).numpy()
        gaps = L.routing_margins(ref_model, first)
        R["long"] = ref_model.forward(long_seq).numpy()
        gaps_long = L.routing_margins(ref_model, first)
        if gaps is not None:
            R["gaps"], R["gaps_long"] = gaps, gaps_long
        for i, (prefix, parents, toks) in enumerate(trees):
            rows, tgaps = [], []
            for branch in L.tree_paths(parents):
                rows.append(ref_model.forward(toks[:prefix] + [toks[prefix + j] for j in branch])
                            [-1].numpy())
                m = L.routing_margins(ref_model, first)
                tgaps.append(None if m is None else m[-1])
            R[f"tree{i}"] = np.stack(rows)
            if gaps is not None:
                R[f"tree{i}_gaps"] = np.array(tgaps)
    return R


def cached_reference(cache_dir, model_path: str, variant, seq, long_seq, trees, compute) -> dict:
    """compute(), or its result from an earlier run with the identical model file, KV rounding,
    token sequences and reference code. ctest reruns the comparison on other kernel paths and
    layouts (forward_reference_avx2, _scalar, _rows, ...) over the same models: the float64
    reference, about 60 % of each run's time, is then computed once. A lock per entry makes a
    test running beside the one computing it wait for the result instead of repeating it."""
    if not cache_dir:
        return compute()
    import fcntl
    import hashlib
    h = hashlib.sha256()
    with open(model_path, "rb") as f:
        h.update(f.read())
    here = os.path.dirname(os.path.abspath(__file__))
    for src in ("llama_ref.py", "quant_ref.py", "gguf_io.py", "test_forward.py"):
        with open(os.path.join(here, src), "rb") as f:
            h.update(f.read())
    h.update(repr((variant, seq, long_seq, trees)).encode())
    os.makedirs(cache_dir, exist_ok=True)
    # Entries of older reference code or models are never read again: drop what no run has
    # used for three days (a full set of reruns keeps ~300 MB).
    for old in os.listdir(cache_dir):
        p = os.path.join(cache_dir, old)
        try:
            if time.time() - os.path.getmtime(p) > 3 * 86400:
                os.remove(p)
        except OSError:
            pass  # another run removed it
    entry = os.path.join(cache_dir, h.hexdigest()[:32] + ".npz")
    with open(entry + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(entry):
            os.utime(entry)
            with np.load(entry) as z:
                return {k: z[k] for k in z.files}
        R = compute()
        tmp = entry + f".{os.getpid()}.tmp.npz"
        np.savez(tmp, **R)
        os.replace(tmp, entry)
        return R


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", required=True, help="path of the forward_dump executable")
    ap.add_argument("--workdir", default=None, help="where models and outputs are written")
    ap.add_argument("--config", default=",".join(c for c in M.CONFIGS if c not in M.MOE_CONFIGS),
                    help="comma-separated configs (default: all but the mixtures of experts, "
                         "which ctest runs as forward_reference_moe)")
    ap.add_argument("--type", default=",".join(M.TYPES), help="comma-separated weight types")
    ap.add_argument("--mode", default=None,
                    help="comma-separated mode prefixes to run (e.g. prefill,chunks,tree)")
    ap.add_argument("--isa", default=None,
                    help="kernel path for speck (scalar, avx2, avx512; default: the best); a CPU "
                         "without it skips the run")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kv", choices=["f32", "f16", "q8_0", "q4_0"], default="f32",
                    help="KV cache type of speck's context (the reference rounds its keys and "
                         "values the same way: f16, or quant_ref.py's Q8_0 / Q4_0 blocks)")
    ap.add_argument("--ref-cache", default=None,
                    help="directory keeping the reference's results between runs (ctest shares "
                         "one between the reruns on other kernel paths)")
    ap.add_argument("--keep", action="store_true", help="keep models and outputs")
    ap.add_argument("-v", "--verbose", action="store_true", help="print where each case is worst")
    args = ap.parse_args(argv)
    global KV_TYPE
    KV_TYPE = args.kv if args.kv != "f32" else None

    configs = [c for c in args.config.split(",") if c]
    types = [t for t in args.type.split(",") if t]
    for c in configs:
        M.config(c)  # validates the name
    for t in types:
        if t not in M.ALL_TYPES:
            ap.error(f"unknown type {t!r}")
    mode_filter = args.mode.split(",") if args.mode else None

    def wanted(mode: str) -> bool:
        return mode_filter is None or any(mode.startswith(f) for f in mode_filter)

    passed = failed = 0
    if not (os.path.isfile(args.dump) and os.access(args.dump, os.X_OK)):
        print(f"FAIL forward_dump not found or not executable: {args.dump}")
        print("0 passed, 1 failed")
        return 1

    if args.isa:
        probe = subprocess.run([args.dump, "-", "-", "-", "-"], capture_output=True, text=True,
                               env=dict(os.environ, SPECK_TEST_ISA=args.isa))
        if probe.returncode == 3:
            return S.unsupported(f"this CPU cannot run speck's {args.isa} kernels")

    if args.workdir:
        os.makedirs(args.workdir, exist_ok=True)
        work = tempfile.mkdtemp(prefix="fwd-", dir=args.workdir)
    else:
        work = tempfile.mkdtemp(prefix="speck-fwd-")

    rng = np.random.default_rng(args.seed)
    seq = rng.integers(0, BASE_VOCAB, size=N_TOKENS).tolist()
    long_seq = rng.integers(0, BASE_VOCAB, size=LONG_TOKENS).tolist()
    tree_cases = []
    for prefix, parents in TREES:
        toks = rng.integers(0, BASE_VOCAB, size=prefix + len(parents)).tolist()
        tree_cases.append((prefix, parents, toks))
    long_trees = [(LONG_PREFIX, parents,
                   rng.integers(0, BASE_VOCAB, size=LONG_PREFIX + len(parents)).tolist())
                  for parents in LONG_TREES]

    try:
        for cfg in configs:
            for wtype in types:
                path = os.path.join(work, f"{cfg}_{wtype}.gguf")
                M.make_model(cfg, path, wtype, args.seed)
                g = G.read_gguf(path)  # the reference sees exactly the stored weights
                ref_model = L.LlamaRef(g.kv, g.tensors)
                ref_model.kv_f16 = args.kv == "f16"
                ref_model.kv_quant = args.kv if args.kv in ("q8_0", "q4_0") else None
                ref_model.long_rope = M.longrope_long(M.config(cfg))
                windowed = ref_model.hp.window > 0
                n_vocab = ref_model.hp.n_vocab
                # Routing gaps that matter: every layer's, but the first one's where only the
                # experts are quantized (its router sees float inputs as in the reference).
                first = 1 if M.config(cfg)["experts_only"] else 0
                trees = tree_cases + (long_trees if windowed else [])
                R = cached_reference(args.ref_cache, path, (cfg, args.kv), seq, long_seq, trees,
                                     lambda: reference_outputs(ref_model, first, seq, long_seq,
                                                               trees))
                ref_causal, gaps = R["causal"], R.get("gaps")
                ref_long, gaps_long = R["long"], R.get("gaps_long")

                def g(x, sl=slice(None)):
                    return None if x is None else x[sl]

                cases = [(m, seq, ref_causal, gaps) for m in modes(len(seq))]
                if windowed:
                    cases += [(m + f"@ctx{SMALL_CTX}", seq, ref_causal, gaps)
                              for m in modes(len(seq))]
                cases += [(m, long_seq, ref_long, gaps_long) for m in LONG_MODES]
                cases.append((f"rows:{ROW_STEP}", long_seq, ref_long[::ROW_STEP],
                              g(gaps_long, slice(None, None, ROW_STEP))))
                if windowed:
                    cases += [(m, long_seq, ref_long, gaps_long) for m in LONG_WINDOW_MODES]
                for i, (prefix, parents, toks) in enumerate(trees):
                    cases.append((tree_mode(prefix, parents), toks, R[f"tree{i}"],
                                  None if gaps is None else R[f"tree{i}_gaps"]))

                for mode, toks, ref, rgaps in cases:
                    if not wanted(mode):
                        continue
                    ctx = None
                    if mode.endswith(f"@ctx{SMALL_CTX}"):
                        mode, ctx = mode[:-len(f"@ctx{SMALL_CTX}")], SMALL_CTX
                    tag = mode.replace(":", "_").replace(",", "_") + f"_{len(toks)}"
                    name = f"{mode}@{len(toks)}" if len(toks) == LONG_TOKENS else mode
                    if mode.startswith(f"tree:{LONG_PREFIX}:"):
                        name = f"tree:{LONG_PREFIX}:{mode.count(',') + 1} nodes"
                    if ctx:
                        name += f" (context {ctx})"
                    out = os.path.join(work, f"{cfg}_{wtype}_{tag}.f32")
                    got, error = run_dump(args.dump, path, mode, toks, out, ref.shape[0], n_vocab,
                                          args.isa, ctx)
                    if error is not None:
                        failed += 1
                        print(f"FAIL {cfg} {wtype} {name} - - forward_dump failed:")
                        print("    " + error.replace("\n", "\n    "))
                        continue
                    ok, maxerr, tol, extra = compare(got, ref, wtype, rgaps)
                    passed += ok
                    failed += not ok
                    line = f"{'PASS' if ok else 'FAIL'} {cfg} {wtype} {name} {maxerr:.3e} {tol:.3e}"
                    if not ok or args.verbose:
                        line += f"  [{extra}]"
                    print(line, flush=True)
    finally:
        if args.keep:
            print(f"kept files in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


# Token ids are drawn below the smallest vocabulary of all configs.
BASE_VOCAB = min(M.config(c)["n_vocab"] for c in M.CONFIGS)

if __name__ == "__main__":
    sys.exit(main())
