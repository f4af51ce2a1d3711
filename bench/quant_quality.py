#!/usr/bin/python3
"""Quantization quality (not a test): speck's methods against llama.cpp's llama-quantize, as bits
per weight against KL divergence and perplexity on held-out text, for the default models.

For each model: calibration text = 60 training-split modules of the Python standard library,
held-out text = the validation modules (speck train's split: scripts/train_default_models.sh),
disjoint by construction and checked. Files:

  llama      llama-quantize, every file type, and --pure (one type everywhere) for the K types
  llama+im   the same with llama-imatrix's importance matrix of the calibration text
  speck      speck quantize, every file type (byte-identical to llama's: shown for the record)
  speck+im   with speck imatrix's importance matrix of the same text and windows
  gptq       speck quantize --method gptq, every file type and --pure for the K types
  alloc      speck quantize --target-bpw X (with --imatrix), X = 2.7 3.5 4.5 5.5
  alloc+gptq speck quantize --target-bpw X --method gptq
  recon      speck quantize --method recon, every file type and --pure for the K types
  alloc+recon speck quantize --target-bpw X --method recon

All are evaluated by one program, `speck eval --kld-base` against the F16 model's
log-probabilities on the held-out text (llama-perplexity's protocol); `llama-perplexity
--kl-divergence` against the same base file re-measures a selection in llama.cpp, to show it
runs speck's files. Writes WORK/results.json, WORK/<model>-kld.png, WORK/<model>-ppl.png and
prints the markdown tables of BENCHMARKS.md.

Usage: bench/quant_quality.py [--build build] [--llama /tmp/llama.cpp/build/bin]
                              [--work /tmp/speck-quant-bench] [--models default,draft]
                              [--eval-bytes 180000] [--windows 100]
Env: OMP_WAIT_POLICY=passive is set for every run (the shared machine: spinning OpenMP threads
cost several times the work).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = "/usr/lib/python3.11"
FTYPES = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K",
          "Q8_0", "IQ4_NL", "IQ4_XS", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]
PURE = ["Q2_K", "Q3_K_S", "Q4_K_S", "Q5_K_S", "Q6_K", "IQ4_XS"]
TARGETS = [2.7, 3.5, 4.5, 5.5]
ENV = dict(os.environ, OMP_WAIT_POLICY="passive")


def fnv(h, b):
    for x in b:
        h = ((h ^ x) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def is_val(rel, frac=0.05):
    """speck train's split (src/train/data.c): whole files by a hash of the relative path."""
    h = fnv(0xCBF29CE484222325, rel.encode())
    h ^= h >> 29
    return (h % 1000000) < frac * 1e6


def texts(work, eval_bytes):
    files = []
    for d, dirs, fs in os.walk(CORPUS):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        files += [os.path.relpath(os.path.join(d, f), CORPUS) for f in fs
                  if f.endswith(".py") and not f.startswith(".")]
    files.sort()
    val = [f for f in files if is_val(f)]
    train = [f for f in files if not is_val(f)]
    cal = random.Random(1).sample(train, 60)
    assert not set(cal) & set(val)

    def cat(fs, path):
        with open(path, "w") as out:
            for f in fs:
                out.write(open(os.path.join(CORPUS, f), errors="replace").read())
        return path
    held = cat(val, os.path.join(work, "heldout.txt"))
    if eval_bytes:  # the first modules of the held-out split only (the evaluation's time)
        data = open(held, "rb").read()[:eval_bytes]
        open(held, "wb").write(data)
    return cat(cal, os.path.join(work, "calib.txt")), held, len(cal), len(val)


def sh(cmd, log=None, may_fail=False):
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV)
    if p.returncode and may_fail:
        return None, time.time() - t0
    if p.returncode:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    if log:
        open(log, "w").write(p.stdout + p.stderr)
    return p, time.time() - t0


def file_bpw(path, speck):
    p, _ = sh([speck, "info", "-m", path])
    total = elems = 0
    for line in p.stdout.splitlines():
        f = line.split()
        if len(f) >= 4 and f[-1].isdigit() and f[2].startswith("["):
            shape = [int(x) for x in " ".join(f[2:-1]).strip("[]").split(",")]
            n = 1
            for s in shape:
                n *= s
            elems += n
            total += int(f[-1])
    return 8.0 * total / elems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--llama", default="/tmp/llama.cpp/build/bin")
    ap.add_argument("--work", default="/tmp/speck-quant-bench")
    ap.add_argument("--models", default="default,draft")
    ap.add_argument("--windows", type=int, default=100, help="calibration windows")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-bytes", type=int, default=180000,
                    help="held-out text evaluated (0: all of it)")
    ap.add_argument("--series", default="",
                    help="comma list of series to run (default: all; a shorter run, e.g. on a "
                    "loaded machine); results.json keeps earlier runs' files")
    ap.add_argument("--ftypes", default="", help="comma list of file types (default: all)")
    ap.add_argument("--targets", default="",
                    help="comma list of --target-bpw values (default: %s)" % TARGETS)
    args = ap.parse_args()
    speck = os.path.join(args.build, "speck")
    L = args.llama
    os.makedirs(args.work, exist_ok=True)
    calib, held, n_cal, n_val = texts(args.work, args.eval_bytes)
    res_path = os.path.join(args.work, "results.json")
    results = json.load(open(res_path)) if os.path.exists(res_path) else {}
    t = str(args.threads)
    for name in args.models.split(","):
        model = os.path.join(ROOT, "models", name + ".gguf") if "/" not in name else name
        tag = os.path.basename(model).replace(".gguf", "")
        w = os.path.join(args.work, tag)
        os.makedirs(w, exist_ok=True)
        R = results.setdefault(tag, {})
        ctx = 256
        ntok = str(args.windows * ctx)
        base = os.path.join(w, "base.kld")
        if not os.path.exists(base):
            sh([speck, "eval", "-m", model, "--text", held, "--kld-base-out", base, "--ctx",
                str(ctx), "-t", t])
        sim, lim = os.path.join(w, "speck-imatrix.gguf"), os.path.join(w, "llama-imatrix.gguf")
        if not os.path.exists(sim):
            sh([speck, "imatrix", "-m", model, "-f", calib, "-o", sim, "--ctx", str(ctx),
                "--chunks", str(args.windows), "-t", t, "-q"])
        if not os.path.exists(lim):
            sh([os.path.join(L, "llama-imatrix"), "-m", model, "-f", calib, "-o", lim, "-c",
                str(ctx), "-b", str(ctx), "--chunks", str(args.windows), "-t", t, "--no-ppl"])
        jobs = []  # (label, series, cmd(out))
        for ft in FTYPES:
            jobs.append((f"llama {ft}", "llama", lambda o, ft=ft: [
                os.path.join(L, "llama-quantize"), model, o, ft, t]))
            jobs.append((f"llama+im {ft}", "llama+im", lambda o, ft=ft: [
                os.path.join(L, "llama-quantize"), "--imatrix", lim, model, o, ft, t]))
            jobs.append((f"speck {ft}", "speck", lambda o, ft=ft: [
                speck, "quantize", model, o, ft, "-q", "-t", t]))
            jobs.append((f"speck+im {ft}", "speck+im", lambda o, ft=ft: [
                speck, "quantize", model, o, ft, "--imatrix", sim, "-q", "-t", t]))
            jobs.append((f"gptq {ft}", "gptq", lambda o, ft=ft: [
                speck, "quantize", model, o, ft, "--method", "gptq", "--calib", calib,
                "--calib-ctx", str(ctx), "--calib-tokens", ntok, "-q", "-t", t]))
            jobs.append((f"recon {ft}", "recon", lambda o, ft=ft: [
                speck, "quantize", model, o, ft, "--method", "recon", "--calib", calib,
                "--calib-ctx", str(ctx), "--calib-tokens", ntok, "-q", "-t", t]))
        for ft in PURE:
            jobs.append((f"llama {ft} pure", "llama", lambda o, ft=ft: [
                os.path.join(L, "llama-quantize"), "--pure", model, o, ft, t]))
            jobs.append((f"llama+im {ft} pure", "llama+im", lambda o, ft=ft: [
                os.path.join(L, "llama-quantize"), "--pure", "--imatrix", lim, model, o, ft, t]))
            jobs.append((f"gptq {ft} pure", "gptq", lambda o, ft=ft: [
                speck, "quantize", model, o, ft, "--pure", "--method", "gptq", "--calib", calib,
                "--calib-ctx", str(ctx), "--calib-tokens", ntok, "-q", "-t", t]))
            jobs.append((f"recon {ft} pure", "recon", lambda o, ft=ft: [
                speck, "quantize", model, o, ft, "--pure", "--method", "recon", "--calib", calib,
                "--calib-ctx", str(ctx), "--calib-tokens", ntok, "-q", "-t", t]))
        for x in ([float(v) for v in args.targets.split(",")] if args.targets else TARGETS):
            jobs.append((f"alloc {x}", "alloc", lambda o, x=x: [
                speck, "quantize", model, o, "Q4_K_M", "--target-bpw", str(x), "--imatrix", sim,
                "--calib", calib, "--calib-ctx", str(ctx), "--calib-tokens", ntok, "-q", "-t", t]))
            jobs.append((f"alloc+gptq {x}", "alloc+gptq", lambda o, x=x: [
                speck, "quantize", model, o, "Q4_K_M", "--target-bpw", str(x), "--method", "gptq",
                "--calib", calib, "--calib-ctx", str(ctx), "--calib-tokens", ntok, "-q", "-t",
                t]))
            jobs.append((f"alloc+recon {x}", "alloc+recon", lambda o, x=x: [
                speck, "quantize", model, o, "Q4_K_M", "--target-bpw", str(x), "--method",
                "recon", "--calib", calib, "--calib-ctx", str(ctx), "--calib-tokens", ntok, "-q",
                "-t", t]))
        want_s = set(args.series.split(",")) if args.series else None
        want_t = set(args.ftypes.split(",")) if args.ftypes else None
        for label, series, cmd in jobs:
            if want_s is not None and series not in want_s:
                continue
            ft = label.split()[1]
            if want_t is not None and not series.startswith("alloc") and ft not in want_t:
                continue
            if label in R and ("kld" in R[label] or "skipped" in R[label]):
                continue
            out = os.path.join(w, label.replace(" ", "_").replace("+", "p") + ".gguf")
            # A bit budget below what the candidate types reach is refused (the draft model's
            # 96-wide rows take 32-value blocks only): recorded and skipped.
            q, secs = sh(cmd(out), may_fail=series.startswith("alloc"))
            if q is None:
                R[label] = {"series": series, "skipped": "below the smallest mix"}
                print(f"{tag:8s} {label:22s} skipped: below the smallest mix", flush=True)
                continue
            p, _ = sh([speck, "eval", "-m", out, "--kld-base", base, "--json", "-t", t])
            r = json.loads(p.stdout)
            r.update(series=series, file=out, bpw=file_bpw(out, speck), quantize_s=secs)
            R[label] = r
            json.dump(results, open(res_path, "w"), indent=1)
            print(f"{tag:8s} {label:22s} {r['bpw']:6.3f} bpw  KLD {r['kld']:.5f}  "
                  f"ppl {r['ppl']:.3f}  top1 {100 * r['top1']:.2f} %  ({secs:.1f} s)", flush=True)
        # llama.cpp re-measures speck's best files (and, for scale, llama's Q4_K_M + imatrix).
        for label in ([f"alloc+recon {x}" for x in TARGETS] +
                      ["gptq Q4_K_M", "recon Q4_K_M", "llama+im Q4_K_M"]):
            if label not in R or "llama_kld" in R[label] or "skipped" in R[label]:
                continue
            p, _ = sh([os.path.join(L, "llama-perplexity"), "-m", R[label]["file"],
                       "--kl-divergence-base", base, "--kl-divergence", "-c", str(ctx), "-b",
                       str(ctx), "-t", t])
            for line in (p.stdout + p.stderr).splitlines():
                if line.startswith("Mean    KLD:"):
                    R[label]["llama_kld"] = float(line.split()[2])
                if line.startswith("Same top p:"):
                    R[label]["llama_top1"] = float(line.split()[3]) / 100
            json.dump(results, open(res_path, "w"), indent=1)
        plot(w, tag, R)
        report(tag, R, n_cal, n_val)
    return 0


def plot(w, tag, R):
    R = {k: r for k, r in R.items() if "skipped" not in r}
    series = ["llama", "llama+im", "speck+im", "gptq", "recon", "alloc", "alloc+gptq",
              "alloc+recon"]
    for s in series:
        with open(os.path.join(w, f"{s}.dat"), "w") as f:
            pts = sorted((r["bpw"], r["kld"], r["ppl"]) for r in R.values() if r["series"] == s)
            for p in pts:
                f.write(f"{p[0]} {p[1]} {p[2]}\n")
    base_ppl = next(iter(R.values()))["ppl_base"]
    for what, col, ylabel, logy in (("kld", 2, "KL divergence from F16 (nats/token)", True),
                                    ("ppl", 3, "perplexity (F16: %.3f)" % base_ppl, False)):
        png = os.path.join(w, f"{tag}-{what}.png")
        g = [f"set terminal png size 900,600", f"set output '{png}'",
             f"set title 'speck quantize vs llama-quantize: {tag} model, held-out stdlib code'",
             "set xlabel 'bits per weight (all tensors)'", f"set ylabel '{ylabel}'",
             "set grid", "set key top right"]
        if logy:
            g.append("set logscale y")
        else:
            g.append(f"set yrange [{base_ppl * 0.995}:{base_ppl * 1.25}]")
        plots = []
        for s in series:
            style = "linespoints" if s.startswith("alloc") else "points"
            plots.append(f"'{os.path.join(w, s + '.dat')}' using 1:{col} with {style} pt 7 "
                         f"title '{s}'")
        g.append("plot " + ", ".join(plots))
        subprocess.run(["gnuplot"], input="\n".join(g), text=True, check=True)
        print(f"wrote {png}")


def report(tag, R, n_cal, n_val):
    R = {k: r for k, r in R.items() if "skipped" not in r}
    rows = sorted(R.items(), key=lambda kv: (kv[1]["series"], kv[1]["bpw"]))
    r0 = next(iter(R.values()))
    print(f"\n### {tag}: {r0['scored']} held-out tokens scored ({r0['chunks']} chunks of "
          f"{r0['n_ctx']}), F16 perplexity {r0['ppl_base']:.4f}\n")
    print("| file | bpw | KLD mean | KLD 99 % | top-1 % | ppl | delta ppl | quantize s | "
          "llama.cpp KLD |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r in rows:
        lk = f"{r['llama_kld']:.5f}" if "llama_kld" in r else ""
        print(f"| {label} | {r['bpw']:.3f} | {r['kld']:.5f} | {r['kld_p99']:.4f} | "
              f"{100 * r['top1']:.2f} | {r['ppl']:.4f} | {r['dppl']:+.4f} | "
              f"{r['quantize_s']:.1f} | {lk} |")
    # The goal: speck's best at about X bpw against llama-quantize + imatrix's best at <= X.
    print(f"\n| about | speck best (file, bpw, KLD, ppl) | llama-quantize + imatrix best at <= "
          f"that bpw | KLD ratio |")
    print("|---|---|---|---|")
    for x in TARGETS:
        s = R.get(f"alloc+recon {x}")
        if not s:
            continue
        cands = [(r["kld"], k, r) for k, r in R.items() if r["series"] == "llama+im" and
                 r["bpw"] <= s["bpw"] + 0.02]
        if not cands:
            continue
        kl, lk, lr = min(cands)
        print(f"| {x} | alloc+recon {x}: {s['bpw']:.3f}, {s['kld']:.5f}, {s['ppl']:.4f} | "
              f"{lk}: {lr['bpw']:.3f}, {lr['kld']:.5f}, {lr['ppl']:.4f} | "
              f"{s['kld'] / kl:.3f} |")


if __name__ == "__main__":
    sys.exit(main())
