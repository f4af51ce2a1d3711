#!/usr/bin/env bash
# Conversion benchmark (not a test): write a qwen2.5-0.5b-shaped Hugging Face checkpoint (random
# weights, real Qwen tokenizer, bf16, 2 shards) with the PyTorch reference, then time
# `speck convert --type q8_0` and report seconds and peak RSS against the largest shard.
#
# usage: bench/bench_convert.sh [BUILD_DIR (default build)] [WORK_DIR (default /tmp/speck-bench-convert)]
# env:   DTYPE=BF16|F16|F32 (default BF16), TYPE=q8_0 (speck --type), KEEP=1 keeps the files,
#        REUSE=1 reuses a checkpoint kept by an earlier KEEP=1 run (writing it takes minutes)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
work=${2:-/tmp/speck-bench-convert}
dtype=${DTYPE:-BF16}
type=${TYPE:-q8_0}
speck=$build/speck
[ -x "$speck" ] || { echo "no $speck (build first)" >&2; exit 1; }
if [ "${REUSE:-0}" = 1 ] && [ -f "$work/hf/config.json" ]; then
    rm -f "$work/out.gguf"
else
    rm -rf "$work"
    mkdir -p "$work"
    echo "writing qwen2.5-0.5b-shaped checkpoint ($dtype, 2 shards) to $work/hf ..."
    t0=$(date +%s.%N)
    /usr/bin/python3 "$root/tests/reference/hf_reference.py" --make-only qwen2.5-0.5b \
        --dtype "$dtype" --shards 2 --workdir "$work/hf" --node "$root/tests/node"
    t1=$(date +%s.%N)
    echo "  written in $(echo "$t1 - $t0" | bc) s"
fi
largest=$(stat -c %s "$work"/hf/*.safetensors | sort -n | tail -1)
total=$(cat "$work"/hf/*.safetensors | wc -c)
sync
/usr/bin/time -v "$speck" convert "$work/hf" -o "$work/out.gguf" --type "$type" 2> "$work/time.txt" || {
    cat "$work/time.txt" >&2; exit 1; }
grep -E "^convert:" "$work/time.txt" || true
secs=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time.txt")
rss_kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$work/time.txt")
out=$(stat -c %s "$work/out.gguf")
printf "checkpoint:  %.1f MB in 2 shards, largest %.1f MB\n" "$(echo "$total/1000000" | bc -l)" \
    "$(echo "$largest/1000000" | bc -l)"
printf "output:      %.1f MB (%s)\n" "$(echo "$out/1000000" | bc -l)" "$type"
echo   "wall time:   $secs (m:ss)"
printf "peak RSS:    %.1f MB = %.2f x largest shard\n" "$(echo "$rss_kb*1024/1000000" | bc -l)" \
    "$(echo "$rss_kb*1024/$largest" | bc -l)"
[ "${KEEP:-0}" = 1 ] || rm -rf "$work"
