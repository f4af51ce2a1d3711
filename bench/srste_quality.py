#!/usr/bin/python3
"""Trained 2:4 sparsity (not a test): SR-STE fine-tuning of models/default.gguf (`speck train
--init-from --nm 2:4`) against the dense model and one-shot 2:4 pruning (`speck prune`:
magnitude, Wanda, SparseGPT), as held-out perplexity and KL divergence from the dense model.

Training data: the default model's own corpus and split (the Python 3.11 standard library, whole
modules held out by speck's path hash, val-fraction 0.05: scripts/train_default_models.sh).
Evaluation: prune_quality.py's texts and protocol (quant_quality.py's held-out text = the first
--eval-bytes of the validation modules; calibration = 60 training-split modules for Wanda and
SparseGPT), every model scored by `speck eval --kld-base` against the dense model's
log-probabilities. With --dense-control, the same fine-tuning without --nm as well, so the
recovery is not credited with what more training alone gives the dense model.

Writes WORK/results.json and prints the markdown table of BENCHMARKS.md.

Usage: bench/srste_quality.py [--build build] [--work /tmp/speck-srste] [--steps 300]
                              [--batch 8] [--lr 5e-4] [--lambda 2e-4] [--every 1]
                              [--dense-control] [--tag sr-ste] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quant_quality as QQ  # noqa: E402  (the texts and the command runner)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = "/usr/lib/python3.11"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--work", default="/tmp/speck-srste")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", default="5e-4")
    ap.add_argument("--lambda", dest="lam", default="2e-4")
    ap.add_argument("--every", default="1")
    ap.add_argument("--windows", type=int, default=100, help="calibration windows of 256")
    ap.add_argument("--eval-bytes", type=int, default=180000)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--dense-control", action="store_true")
    ap.add_argument("--tag", default="sr-ste", help="the SR-STE run's label (ablations)")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    speck = os.path.join(args.build, "speck")
    model = os.path.join(ROOT, "models", "default.gguf")
    calib, held, n_cal, n_val = QQ.texts(args.work, args.eval_bytes)
    res_path = os.path.join(args.work, "results.json")
    R = json.load(open(res_path)) if os.path.exists(res_path) else {}
    t, ctx = args.threads, 256
    base = os.path.join(args.work, "base.kld")
    if not os.path.exists(base):
        QQ.sh([speck, "eval", "-m", model, "--text", held, "--kld-base-out", base, "--ctx",
               str(ctx), "-t", t])

    def evaluate(label, path, extra):
        p, _ = QQ.sh([speck, "eval", "-m", path, "--kld-base", base, "--json", "-t", t])
        r = json.loads(p.stdout)
        r.update(extra)
        R[label] = r
        json.dump(R, open(res_path, "w"), indent=1)
        print(f"{label:28s} KLD {r['kld']:.5f}  ppl {r['ppl']:.3f} (dense {r['ppl_base']:.3f})  "
              f"top1 {100 * r['top1']:.2f} %", flush=True)

    for m in ("magnitude", "wanda", "sparsegpt"):
        label = f"one-shot {m}"
        if label in R:
            continue
        out = os.path.join(args.work, f"{m}-2of4.gguf")
        cmd = [speck, "prune", model, out, "--method", m, "--sparsity", "2:4", "-q", "-t", t]
        if m != "magnitude":
            cmd += ["--calib", calib, "--calib-ctx", str(ctx), "--calib-tokens",
                    str(args.windows * ctx)]
        QQ.sh(cmd)
        evaluate(label, out, {})

    runs = [(args.tag, ["--nm", "2:4", "--nm-lambda", args.lam, "--nm-every", args.every,
                        "--type", "s24_q8"])]
    if args.dense_control:
        runs.append(("dense fine-tune", []))
    for tag, extra in runs:
        label = f"{tag} {args.steps} steps"
        if label in R:
            continue
        stem = os.path.join(args.work, tag.replace(" ", "-") + f"-{args.steps}")
        cmd = [speck, "train", "--init-from", model, "--data", CORPUS, "--glob", "*.py",
               "--val-fraction", "0.05", "--seed", "1", "--threads", t, "--steps",
               str(args.steps), "--batch", str(args.batch), "--lr", args.lr, "--warmup", "20",
               "--val-every", "100", "--val-batches", "8", "--ckpt-every", "50", "--resume",
               "--cache", os.path.join(args.work, "default.tokens"), "-q",
               "-o", stem + ".gguf"] + extra
        t0 = time.time()
        QQ.sh(cmd, log=stem + ".log")
        secs = time.time() - t0
        # the dense copy (f16, what llama.cpp runs) and the S24_Q8 file hold the same weights
        evaluate(label, stem + (".dense.gguf" if extra else ".gguf"),
                 {"train_s": secs, "steps": args.steps})
        if extra:
            evaluate(label + " (S24_Q8)", stem + ".gguf", {"train_s": secs, "steps": args.steps})

    base_ppl = next(iter(R.values()))["ppl_base"]
    print(f"\ndefault model: dense perplexity {base_ppl:.3f}; held-out {n_val} modules "
          f"(first {args.eval_bytes} bytes), calibration {n_cal} modules\n")
    print("| model | KLD mean | KLD 99 % | top-1 agree | ppl | Δppl vs dense | "
          "ln(ppl/ppl_dense) ± err | train time |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, r in R.items():
        tt = f"{r['train_s'] / 60:.1f} min" if "train_s" in r else ""
        print(f"| {label} | {r['kld']:.4f} | {r.get('kld_p99', float('nan')):.4f} | "
              f"{100 * r['top1']:.2f} % | {r['ppl']:.3f} | "
              f"{100 * (r['ppl'] / base_ppl - 1):+.1f} % | "
              f"{r['ln_ppl_ratio']:+.4f} ± {r['ln_ppl_ratio_err']:.4f} | {tt} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
