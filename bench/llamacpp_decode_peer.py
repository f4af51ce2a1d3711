#!/usr/bin/env python3
"""llama.cpp's own accelerated decoding on speck's files: the peer figure for bench-decode.

For each prompt of a bench-decode prompts file (one JSON string per line, as written by
bench/make_code_prompts.py) this runs, greedy and with the same thread count:
  plain        llama-bench -p 0 -n N               (one token per forward, from an empty
                                                   context: llama-simple runs its default
                                                   thread count and times the prompt too)
  lookup       llama-lookup --draft-max K          (prompt lookup / n-gram cache)
  speculative  llama-speculative-simple -md DRAFT  (draft model), when --draft is given
and reports the median decode tokens/s over the prompts and each strategy's speedup over plain,
as llama.cpp prints them ("decoded N tokens in T seconds"). Usage:

  python3 bench/llamacpp_decode_peer.py --llama-bin /tmp/llama.cpp/build/bin \
      -m models/default.gguf --draft models/draft.gguf --prompts p.jsonl -n 128 -t 2
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+([0-9.]+) s")


def run(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       errors="replace", timeout=600)
    m = DECODED.search(p.stdout)
    if p.returncode != 0 or not m:
        sys.stderr.write(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-2000:]}\n")
        return None
    n, secs = int(m.group(1)), float(m.group(2))
    return n / secs if secs > 0 else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("--draft")
    ap.add_argument("--prompts", required=True)
    ap.add_argument("-n", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--draft-max", type=int, default=6)
    ap.add_argument("--limit", type=int, default=0, help="use only the first N prompts")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    prompts = [json.loads(l) for l in open(a.prompts) if l.strip()]
    prompts = [p["prompt"] if isinstance(p, dict) else p for p in prompts]
    if a.limit:
        prompts = prompts[: a.limit]
    b = a.llama_bin
    common = ["-m", a.model, "-n", str(a.n), "-t", str(a.threads), "--temp", "0", "-c", "1024"]
    strategies = {
        "lookup": lambda f, p: [f"{b}/llama-lookup", *common, "-f", f,
                                "--spec-draft-n-max", str(a.draft_max)],
    }
    if a.draft:
        strategies["speculative"] = lambda f, p: [
            f"{b}/llama-speculative-simple", *common, "-md", a.draft, "-td", str(a.threads),
            "-f", f, "--spec-type", "draft-simple", "--spec-draft-n-max", str(a.draft_max)]
    rates = {"plain": []}
    rates.update({k: [] for k in strategies})
    for _ in range(3):
        p = subprocess.run([f"{b}/llama-bench", "-m", a.model, "-p", "0", "-n", str(a.n), "-t",
                            str(a.threads), "-r", "1", "-o", "json"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True, check=True)
        rates["plain"].append(json.loads(p.stdout)[0]["avg_ts"])
    env_threads = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    os.environ.update(env_threads)
    with tempfile.TemporaryDirectory() as tmp:
        for i, p in enumerate(prompts):
            f = os.path.join(tmp, f"p{i}.txt")
            with open(f, "w") as fh:
                fh.write(p)
            for k, mk in strategies.items():
                r = run(mk(f, p))
                if r:
                    rates[k].append(r)
    med = {k: statistics.median(v) for k, v in rates.items() if v}
    if a.json:
        print(json.dumps({"model": a.model, "draft": a.draft, "prompts": len(prompts),
                          "n_predict": a.n, "threads": a.threads, "median_tok_s": med}))
        return
    base = med.get("plain")
    print("| llama.cpp strategy | runs | median decode tok/s | speedup vs plain |")
    print("| --- | ---: | ---: | ---: |")
    for k, v in med.items():
        sp = f"{v / base:.2f}x" if base else "-"
        print(f"| {k} | {len(rates[k])} | {v:.1f} | {sp} |")


if __name__ == "__main__":
    main()
