#!/usr/bin/env bash
# KV cache types at depth: speck's decode tok/s and cache memory with an f16, Q8_0 and Q4_0 cache,
# alternated round by round in one run, and llama.cpp's llama-bench (-ctk/-ctv, -fa 1) on the same
# file beside them. Prints one line per run and a table of medians (BENCHMARKS.md).
#
#   bench/kv_cache.sh [-m MODEL.gguf] [-d "1024 4096"] [-n 32] [-r ROUNDS] [-t THREADS]
#                     [--speck PATH] [--llama-bin DIR]
#
# Without -m it writes the tinyllama-1.1b preset in Q4_0 (random weights, real shapes) to
# /tmp/speck-kv-bench/ once. Each round runs every (depth, type) once for each program, in a
# rotating order, so the machine's bandwidth drift hits all alike; each run is llama-bench's own
# median of 3 (speck bench -r 3 likewise).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
speck=$here/build/speck
llama=/tmp/llama.cpp/build/bin
model=
depths="1024 4096"
n_gen=32
rounds=3
threads=$(nproc)
while [[ $# -gt 0 ]]; do
  case $1 in
    -m) model=$2; shift 2 ;;
    -d) depths=$2; shift 2 ;;
    -n) n_gen=$2; shift 2 ;;
    -r) rounds=$2; shift 2 ;;
    -t) threads=$2; shift 2 ;;
    --speck) speck=$2; shift 2 ;;
    --llama-bin) llama=$2; shift 2 ;;
    *) echo "bench/kv_cache.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
work=/tmp/speck-kv-bench
mkdir -p "$work"
if [[ -z $model ]]; then
  model=$work/tinyllama-1.1b-q4_0.gguf
  [[ -f $model ]] || "$speck" init --preset tinyllama-1.1b --type q4_0 --seed 1 -o "$model"
fi
types="f16 q8_0 q4_0"
have_llama=0
[[ -x $llama/llama-bench ]] && have_llama=1
echo "# $(date -u +%FT%TZ) $(uname -n) load: $(cut -d' ' -f1-3 /proc/loadavg); model $model; threads $threads"
res=$work/results.txt
: >"$res"
for ((r = 0; r < rounds; r++)); do
  order=$(echo $types | tr ' ' '\n' | awk -v r=$r '{a[NR]=$0} END {for (i = 0; i < NR; i++) print a[(i + r) % NR + 1]}')
  for d in $depths; do
    for t in $order; do
      j=$("$speck" bench -m "$model" -p 0 -n "$n_gen" -d "$d" -r 3 -t "$threads" --kv-type "$t" --json)
      tg=$(echo "$j" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["tg_tok_s"], d["kv_cache_mib"])')
      echo "speck $d $t $tg" | tee -a "$res"
      if ((have_llama)); then
        lj=$("$llama/llama-bench" -m "$model" -p 0 -n "$n_gen" -d "$d" -r 3 -t "$threads" \
          -ctk "$t" -ctv "$t" -fa 1 -o json 2>/dev/null)
        ltg=$(echo "$lj" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["avg_ts"])')
        echo "llama.cpp $d $t $ltg -" | tee -a "$res"
      fi
    done
  done
done
echo "# $(date -u +%FT%TZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$res" <<'EOF'
import statistics, sys
rows = {}
mib = {}
for line in open(sys.argv[1]):
    prog, d, t, tg, m = line.split()
    rows.setdefault((prog, int(d), t), []).append(float(tg))
    if m != "-":
        mib[(int(d), t)] = float(m)
print("| depth | KV type | speck KV MiB | speck tg t/s | vs f16 | llama.cpp tg t/s | vs f16 | speck / llama.cpp |")
print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for d in sorted({k[1] for k in rows}):
    base = statistics.median(rows[("speck", d, "f16")])
    lbase = statistics.median(rows.get(("llama.cpp", d, "f16"), [float("nan")]))
    for t in ("f16", "q8_0", "q4_0"):
        s = statistics.median(rows[("speck", d, t)])
        l = statistics.median(rows.get(("llama.cpp", d, t), [float("nan")]))
        print(f"| {d} | {t} | {mib[(d, t)]:.1f} | {s:.2f} | {s / base:.2f}x | {l:.2f} | "
              f"{l / lbase:.2f}x | {s / l:.2f}x |")
EOF
