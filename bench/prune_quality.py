#!/usr/bin/python3
"""Pruning quality (not a test): `speck prune` with every method at 50 / 60 / 70 % unstructured
and 2:4, as held-out perplexity and KL divergence against the dense model. Methods: magnitude,
wanda, sparsegpt, and DSnoT on the magnitude and Wanda masks (magnitude+dsnot, wanda+dsnot:
the paper's 50 cycles and threshold 0.1; METHOD@T or METHOD@T/C in --methods sets the
threshold to T and the cycles to C). ALLOC:METHOD runs METHOD with per-block ratios from
`--alloc ALLOC` (ecoflap:wanda, tyr:wanda, ecoflap:sparsegpt, ...; 2:4 is skipped for them);
ALLOC followed by a number N (ecoflap16:wanda) measures it on N calibration windows
(--alloc-windows N).

Texts are quant_quality.py's: calibration = 60 training-split modules of the Python standard
library, held-out = the validation modules (first --eval-bytes of them), disjoint by
construction. Every pruned model is evaluated by one program, `speck eval --kld-base`, against
the dense model's log-probabilities on the held-out text (llama-perplexity's protocol). Writes
WORK/results.json, WORK/<model>-prune-{kld,ppl}.png (gnuplot) and prints the markdown table of
BENCHMARKS.md.

Usage: bench/prune_quality.py [--build build] [--work /tmp/speck-prune-bench]
                              [--models default] [--windows 100] [--eval-bytes 180000]
                              [--methods magnitude,wanda,...] [--sparsities 50%,2:4,...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import quant_quality as QQ  # noqa: E402  (the texts and the command runner)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ["magnitude", "magnitude+dsnot", "wanda", "wanda+dsnot", "sparsegpt"]
SPARSITIES = ["50%", "60%", "70%", "2:4"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--work", default="/tmp/speck-prune-bench")
    ap.add_argument("--models", default="default")
    ap.add_argument("--windows", type=int, default=100, help="calibration windows of 256")
    ap.add_argument("--eval-bytes", type=int, default=180000)
    ap.add_argument("--threads", default="2")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--sparsities", default=",".join(SPARSITIES))
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    speck = os.path.join(args.build, "speck")
    calib, held, n_cal, n_val = QQ.texts(args.work, args.eval_bytes)
    res_path = os.path.join(args.work, "results.json")
    results = json.load(open(res_path)) if os.path.exists(res_path) else {}
    t = args.threads
    for tag in args.models.split(","):
        model = os.path.join(ROOT, "models", f"{tag}.gguf")
        w = os.path.join(args.work, tag)
        os.makedirs(w, exist_ok=True)
        R = results.setdefault(tag, {})
        ctx = 256
        base = os.path.join(w, "base.kld")
        if not os.path.exists(base):
            QQ.sh([speck, "eval", "-m", model, "--text", held, "--kld-base-out", base, "--ctx",
                   str(ctx), "-t", t])
        for sp in args.sparsities.split(","):
            for m in args.methods.split(","):
                label = f"{m} {sp}"
                if label in R:
                    continue
                # ALLOC:METHOD: per-block ratios (unstructured only)
                alloc, _, mm = m.rpartition(":")
                if alloc and ":" in sp:
                    continue
                out = os.path.join(w, f"{safe(m)}-"
                                      f"{sp.replace(':', 'of').replace('%', '')}.gguf")
                # METHOD@T[/C]: DSnoT with --dsnot-threshold T (and --dsnot-cycles C)
                mname, _, tc = mm.partition("@")
                thr, _, cyc = tc.partition("/")
                cmd = [speck, "prune", model, out, "--method", mname, "--sparsity", sp, "-q", "-t",
                       t] + (["--dsnot-threshold", thr] if thr else []) + \
                    (["--dsnot-cycles", cyc] if cyc else []) + \
                    (["--alloc", alloc.rstrip("0123456789")] if alloc else []) + \
                    (["--alloc-windows", alloc.lstrip("abcdefghijklmnopqrstuvwxyz")]
                     if alloc[-1:].isdigit() else [])
                if m != "magnitude":
                    cmd += ["--calib", calib, "--calib-ctx", str(ctx), "--calib-tokens",
                            str(args.windows * ctx)]
                if alloc:
                    cmd.remove("-q")  # the progress output names the block ratios
                t0 = time.time()
                pp, _ = QQ.sh(cmd)
                secs = time.time() - t0
                ratios = [ln.split("):", 1)[1].split() for ln in pp.stderr.replace("\r", "\n")
                          .splitlines() if ln.startswith("prune: block sparsity")]
                p, _ = QQ.sh([speck, "eval", "-m", out, "--kld-base", base, "--json", "-t", t])
                r = json.loads(p.stdout)
                r.update(method=m, sparsity=sp, prune_s=secs)
                if ratios:
                    r["block_sparsity"] = [float(x) for x in ratios[0]]
                R[label] = r
                json.dump(results, open(res_path, "w"), indent=1)
                print(f"{tag:8s} {label:16s} KLD {r['kld']:.5f}  ppl {r['ppl']:.3f} "
                      f"(dense {r['ppl_base']:.3f})  top1 {100 * r['top1']:.2f} %  "
                      f"({secs:.1f} s){' blocks ' + ' '.join(ratios[0]) if ratios else ''}",
                      flush=True)
        methods = args.methods.split(",")
        plot(w, tag, R, methods)
        report(tag, R, n_cal, n_val, methods, args.sparsities.split(","))
    return 0


def safe(m):
    return m.replace("/", "_c").replace(":", "_")


def plot(w, tag, R, methods):
    xs = {"50%": 0.5, "60%": 0.6, "70%": 0.7}
    for m in methods:
        with open(os.path.join(w, f"{safe(m)}.dat"), "w") as f:
            for sp, x in xs.items():
                r = R.get(f"{m} {sp}")
                if r:
                    f.write(f"{x} {r['kld']} {r['ppl']}\n")
        with open(os.path.join(w, f"{safe(m)}-24.dat"), "w") as f:
            r = R.get(f"{m} 2:4")
            if r:
                f.write(f"0.5 {r['kld']} {r['ppl']}\n")
    base_ppl = next(iter(R.values()))["ppl_base"]
    for what, col, ylabel in (("kld", 2, "KL divergence from dense (nats/token)"),
                              ("ppl", 3, "perplexity (dense: %.3f)" % base_ppl)):
        png = os.path.join(w, f"{tag}-prune-{what}.png")
        g = ["set terminal png size 900,600 noenhanced", f"set output '{png}'",
             f"set title 'speck prune: {tag} model, held-out stdlib code (2:4 drawn at 0.5)'",
             "set xlabel 'sparsity of the layer matrices'", f"set ylabel '{ylabel}'",
             "set grid", "set key top left", "set logscale y", "set xrange [0.45:0.75]"]
        plots = []
        for i, m in enumerate(methods):
            plots.append(f"'{os.path.join(w, safe(m) + '.dat')}' using 1:{col} with linespoints "
                         f"lc {i + 1} pt 7 title '{m}'")
            plots.append(f"'{os.path.join(w, safe(m) + '-24.dat')}' using 1:{col} with points "
                         f"lc {i + 1} pt 5 ps 2 title '{m} 2:4'")
        g.append("plot " + ", ".join(plots))
        subprocess.run(["gnuplot"], input="\n".join(g), text=True, check=True)
        print(f"wrote {png}")


def report(tag, R, n_cal, n_val, methods, sparsities):
    base_ppl = next(iter(R.values()))["ppl_base"]
    print(f"\n{tag} model: dense perplexity {base_ppl:.3f}; calibration {n_cal} modules, "
          f"held-out {n_val} modules\n")
    print("| sparsity | method | KLD mean | KLD 99 % | top-1 agree | ppl | Δppl | prune s | "
          "block ratios |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for sp in sparsities:
        for m in methods:
            r = R.get(f"{m} {sp}")
            if not r:
                continue
            print(f"| {sp} | {m} | {r['kld']:.4f} | {r.get('kld_p99', float('nan')):.4f} | "
                  f"{100 * r['top1']:.2f} % | {r['ppl']:.3f} | "
                  f"{100 * (r['ppl'] / base_ppl - 1):+.1f} % | {r.get('prune_s', 0):.1f} | "
                  f"{' '.join(f'{x:.3f}' for x in r.get('block_sparsity', [])) or '-'} |")


if __name__ == "__main__":
    sys.exit(main())
