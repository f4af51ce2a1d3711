#!/usr/bin/env bash
# Quantize wall time (not a test): `speck quantize` against llama.cpp's `llama-quantize` for the
# same file types without calibration, runs alternated (speck, llama, speck, llama, ...) so both
# see the same machine load; prints every run and the medians. Both write byte-identical files
# (checked here with bench/gguf_diff.py).
#
# usage: bench/quant_speed.sh [BUILD_DIR] [WORK_DIR]
# env:   MODEL (default: a tinyllama-1.1b-shaped F16 file written by speck init, 2.2 GB),
#        TYPES (default "Q4_K_M Q8_0 Q4_0 IQ4_XS"), RUNS (3), THREADS (2),
#        LLAMA (/tmp/llama.cpp/build/bin), KEEP (a folder: keep the last run's files there as
#        speck-TYPE.gguf and llama-TYPE.gguf, e.g. for bench/compare_llamacpp.py)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
work=${2:-/tmp/speck-quant-speed}
llama=${LLAMA:-/tmp/llama.cpp/build/bin}
types=${TYPES:-Q4_K_M Q8_0 Q4_0 IQ4_XS}
runs=${RUNS:-3}
threads=${THREADS:-2}
export OMP_WAIT_POLICY=passive # spinning OpenMP threads on a shared machine cost several times the work
mkdir -p "$work"
model=${MODEL:-$work/tl-f16.gguf}
[ -f "$model" ] || "$build/speck" init --preset tinyllama-1.1b --type f16 --seed 1 -o "$model"
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "model $model, $threads threads, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%F)"
for t in $types; do
  : >"$work/s.$t" ; : >"$work/l.$t"
  for r in $(seq "$runs"); do
    /usr/bin/time -f "%e %M" -o "$work/t" "$build/speck" quantize "$model" "$work/s.gguf" "$t" -q -t "$threads"
    read -r s ms <"$work/t"; echo "$s" >>"$work/s.$t"
    /usr/bin/time -f "%e %M" -o "$work/t" "$llama/llama-quantize" "$model" "$work/l.gguf" "$t" "$threads" >/dev/null 2>&1
    read -r l ml <"$work/t"; echo "$l" >>"$work/l.$t"
    echo "$t run $r: speck $s s ($((ms / 1024)) MB), llama-quantize $l s ($((ml / 1024)) MB)"
  done
  same=$(/usr/bin/python3 "$root/bench/gguf_diff.py" "$work/s.gguf" "$work/l.gguf" | tail -1)
  echo "$t median: speck $(median <"$work/s.$t") s, llama-quantize $(median <"$work/l.$t") s; $same"
  if [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP" && mv "$work/s.gguf" "$KEEP/speck-$t.gguf" && mv "$work/l.gguf" "$KEEP/llama-$t.gguf"
  fi
done
rm -f "$work/s.gguf" "$work/l.gguf"
echo "done, load $(cut -d' ' -f1-3 /proc/loadavg)"
