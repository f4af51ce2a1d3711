#!/usr/bin/env python3
"""speck vs llama.cpp on the identical GGUF files, same threads, same machine, one run.

For each model (written by `speck init` with real checkpoint shapes and random weights) this runs
`speck bench --json` and `llama-bench -o json` alternately, REPS times each, and reports the median
prefill (pp) and decode (tg) tokens/s of both, their ratio, speck's peak RSS and the decode
roofline fraction. Prints a Markdown table (paste into BENCHMARKS.md) and writes JSON.

usage: bench/compare_llamacpp.py --llama-bin DIR [--speck build/speck] [--models DIR]
                                 [--reps 5] [--threads 2] [--only smollm2-135m:q8_0,...]
                                 [--pp 512] [--tg 128] [--depth 0] [--speck-base OLD_BUILD/speck]
                                 [--isa avx2] [--ik-bin DIR]
With --ik-bin, ik_llama.cpp's llama-bench joins the alternation twice per rep, plain (its default
flash attention on) and with run-time repacking (-rtr 1 -fa 1); it is reported at its better
setting per test. A spec's file is MODELS/PRESET-TYPE.gguf when it exists (e.g. a file written by
speck quantize / llama-quantize: tinyllama-1.1b:Q4_K_M), else speck init writes it.
llama.cpp is built outside the repository (see BENCHMARKS.md for the exact commands).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

DEFAULT_MODELS = ["smollm2-135m:f32", "smollm2-135m:q8_0", "tinyllama-1.1b:q4_0"]


def run_json(cmd, env):
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


SPECK_EXTRA = []  # --hugepages / --depth: extra speck bench flags
LLAMA_EXTRA = []  # and llama-bench's matching flags


def speck_once(speck, path, n_pp, n_tg, threads, env):
    d = run_json([speck, "bench", "-m", path, "-p", str(n_pp), "-n", str(n_tg), "-r", "1",
                  "-t", str(threads), "--json", *SPECK_EXTRA], env)
    return d


def llama_once(bindir, path, n_pp, n_tg, threads, env, extra=()):
    res = {}
    for test, args in (("pp", ["-p", str(n_pp), "-n", "0"]), ("tg", ["-p", "0", "-n", str(n_tg)])):
        if (test == "pp" and n_pp == 0) or (test == "tg" and n_tg == 0):
            continue
        rows = run_json([os.path.join(bindir, "llama-bench"), "-m", path, "-t", str(threads),
                         "-r", "1", "-o", "json"] + args + LLAMA_EXTRA + list(extra), env)
        res[test] = rows[0]["avg_ts"]
    return res


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--llama-bin", required=True, help="directory with llama-bench")
    ap.add_argument("--speck", default="build/speck")
    ap.add_argument("--speck-base", default=None,
                    help="an older speck build to alternate with (its tg is reported too)")
    ap.add_argument("--models", default="/tmp/speck-bench-models")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--depth", type=int, default=0,
                    help="tokens already in the KV cache for every test (llama-bench -d)")
    ap.add_argument("--only", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--json", default=None, help="write results here")
    ap.add_argument("--isa", default=None,
                    help="run speck on this kernel path (SPECK_ISA: avx2, scalar); pair it with a "
                         "llama.cpp built for the same instruction set")
    ap.add_argument("--ik-bin", default=None,
                    help="ik_llama.cpp's build/bin: a second peer, plain and -rtr 1 -fa 1")
    ap.add_argument("--hugepages", action="store_true",
                    help="speck bench --hugepages (weights read into transparent huge pages) "
                         "against llama-bench -mmp 0 (weights read into memory, no mmap)")
    a = ap.parse_args()
    if a.hugepages:
        SPECK_EXTRA.append("--hugepages")
        LLAMA_EXTRA.extend(["-mmp", "0"])
    if a.depth:
        SPECK_EXTRA.extend(["-d", str(a.depth)])
        LLAMA_EXTRA.extend(["-d", str(a.depth)])

    env = dict(os.environ)
    # The machine sets OPENBLAS_CORETYPE=Haswell, which halves sgemm on Zen 5; both programs run
    # without it (llama.cpp does not use OpenBLAS in this build, speck does for prefill).
    env.pop("OPENBLAS_CORETYPE", None)
    if a.isa:
        env["SPECK_ISA"] = a.isa  # llama.cpp ignores it
    os.makedirs(a.models, exist_ok=True)
    results = []
    for spec in a.only.split(","):
        preset, typ = spec.split(":")
        path = os.path.join(a.models, f"{preset}-{typ}.gguf")
        if not os.path.exists(path):
            subprocess.run([a.speck, "init", "--preset", preset, "--type", typ, "--seed", "1",
                            "-o", path], check=True, env=env)
        sp, stg, lp, ltg, rss, roof, frac, btg, bw = [], [], [], [], [], [], [], [], []
        load0 = os.getloadavg()[0]
        ik = {"plain": ([], []), "rtr": ([], [])}  # setting: (pp runs, tg runs)
        ik_flags = {"plain": [], "rtr": ["-rtr", "1", "-fa", "1"]}
        # One warm-up of each (page cache, CPU clocks), then alternate so drift hits both alike.
        speck_once(a.speck, path, 16, 4, a.threads, env)
        llama_once(a.llama_bin, path, 16, 4, a.threads, env)
        if a.ik_bin:
            llama_once(a.ik_bin, path, 16, 4, a.threads, env)
        for _ in range(a.reps):
            d = speck_once(a.speck, path, a.pp, a.tg, a.threads, env)
            sp.append(d["pp_tok_s"])
            stg.append(d["tg_tok_s"])
            rss.append(d["peak_rss_mib"])
            roof.append(d["roofline_tok_s"])
            frac.append(d["roofline_fraction"])
            bw.append(d.get("bandwidth_gb_s", 0.0))
            l = llama_once(a.llama_bin, path, a.pp, a.tg, a.threads, env)
            lp.append(l.get("pp", 0.0))
            ltg.append(l.get("tg", 0.0))
            for k in (ik if a.ik_bin else ()):
                l = llama_once(a.ik_bin, path, a.pp, a.tg, a.threads, env, ik_flags[k])
                ik[k][0].append(l.get("pp", 0.0))
                ik[k][1].append(l.get("tg", 0.0))
            if a.speck_base:
                btg.append(speck_once(a.speck_base, path, 0, a.tg, a.threads, env)["tg_tok_s"])
        r = {
            "model": preset, "type": typ, "file_mib": os.path.getsize(path) / 2**20,
            "speck_pp": statistics.median(sp), "llama_pp": statistics.median(lp),
            "speck_tg": statistics.median(stg), "llama_tg": statistics.median(ltg),
            "roofline_tg": statistics.median(roof), "speck_peak_rss_mib": max(rss),
            "runs": a.reps,
            # The minute's conditions: the read probe's bandwidth (median over speck's runs) and
            # the 1-minute load average before and after (other tenants of a shared machine).
            "bandwidth_gb_s": statistics.median(bw), "loadavg": [load0, os.getloadavg()[0]],
            # Run-by-run ratios (the programs alternate, so each pair shares its minute).
            "pp_ratio_runs": [x / y for x, y in zip(sp, lp) if y],
            "tg_ratio_runs": [x / y for x, y in zip(stg, ltg) if y],
        }
        if btg:
            r["base_tg"] = statistics.median(btg)
            r["tg_vs_base"] = r["speck_tg"] / r["base_tg"]
        if a.ik_bin:
            for i, test in ((0, "pp"), (1, "tg")):
                med = {k: statistics.median(v[i]) for k, v in ik.items()}
                best = max(med, key=med.get)
                r[f"ik_{test}_plain"], r[f"ik_{test}_rtr"] = med["plain"], med["rtr"]
                r[f"ik_{test}"], r[f"ik_{test}_setting"] = med[best], best
                r[f"ik_{test}_ratio"] = r[f"speck_{test}"] / med[best] if med[best] else None
        r["pp_ratio"] = r["speck_pp"] / r["llama_pp"] if r["llama_pp"] else None
        r["tg_ratio"] = r["speck_tg"] / r["llama_tg"] if r["llama_tg"] else None
        # Each run against the bandwidth probed right after it (the machine's drifts).
        r["tg_roofline_fraction"] = statistics.median(frac)
        results.append(r)
        print(json.dumps(r), file=sys.stderr)

    print(f"\n{time.strftime('%Y-%m-%d')}, {cpu_name()}, {a.threads} threads, "
          f"median of {a.reps} alternating runs, pp{a.pp} / tg{a.tg}"
          f"{f' at depth {a.depth}' if a.depth else ''}, OPENBLAS_CORETYPE unset"
          f"{f', speck SPECK_ISA={a.isa}' if a.isa else ''}"
          f"{', speck --hugepages vs llama.cpp -mmp 0' if a.hugepages else ''}\n")
    print("| model | type | file MiB | speck pp t/s | llama.cpp pp t/s | pp ratio | speck tg t/s "
          "| llama.cpp tg t/s | tg ratio | tg ratio per run | tg roofline t/s | % of roofline "
          "| probe GB/s | speck peak RSS MiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: "
          "| ---: |")
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)
    for r in results:
        print(f"| {r['model']} | {r['type']} | {r['file_mib']:.0f} | {f(r['speck_pp'], '.1f')} | "
              f"{f(r['llama_pp'], '.1f')} | {f(r['pp_ratio'], '.2f')}x | {r['speck_tg']:.1f} | "
              f"{r['llama_tg']:.1f} | {f(r['tg_ratio'], '.2f')}x | "
              f"{' / '.join(format(x, '.2f') for x in r['tg_ratio_runs'])} | {r['roofline_tg']:.1f} | "
              f"{100 * r['tg_roofline_fraction']:.0f} % | {r['bandwidth_gb_s']:.0f} | "
              f"{r['speck_peak_rss_mib']:.0f} |")
    if a.ik_bin:
        print("\n| model | type | speck pp t/s | ik pp t/s (plain / -rtr 1 -fa 1) | pp vs ik "
              "| speck tg t/s | ik tg t/s (plain / -rtr 1 -fa 1) | tg vs ik |")
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in results:
            print(f"| {r['model']} | {r['type']} | {r['speck_pp']:.1f} | {r['ik_pp_plain']:.1f} / "
                  f"{r['ik_pp_rtr']:.1f} | {f(r['ik_pp_ratio'], '.2f')}x | {r['speck_tg']:.1f} | "
                  f"{r['ik_tg_plain']:.1f} / {r['ik_tg_rtr']:.1f} | {f(r['ik_tg_ratio'], '.2f')}x |")
    if any("base_tg" in r for r in results):
        print("\n| model | type | speck tg t/s | --speck-base tg t/s | ratio |")
        print("| --- | --- | ---: | ---: | ---: |")
        for r in results:
            if "base_tg" in r:
                print(f"| {r['model']} | {r['type']} | {r['speck_tg']:.1f} | {r['base_tg']:.1f} | "
                      f"{r['tg_vs_base']:.2f}x |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
