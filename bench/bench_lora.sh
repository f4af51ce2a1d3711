#!/usr/bin/env bash
# Adapters: decode with a rank-16 LoRA adapter unmerged vs the base (bench_lora, alternating
# rounds in one process), and LoRA fine-tuning tokens/s of speck vs the PyTorch LoRA peer
# (bench/bench_lora_torch.py: same shapes, batch 8 x 256, rank 16 on every projection), each at
# 1 and 2 threads, twice, alternating; the ratio is speck's best over torch's best.
#   usage: bench/bench_lora.sh BUILD_DIR [MODEL (models/default.gguf)]
set -eu
BUILD=${1:-build}
here=$(cd "$(dirname "$0")" && pwd)
MODEL=${2:-$here/../models/default.gguf}
echo "machine load: $(uptime)"
best_s=0 best_t=0
for round in 1 2; do
  for th in 1 2; do
    out=$("$BUILD/bench_lora" "$MODEL" "$th" 16 64 15 8 256 4)
    echo "$out" | grep -v RESULT
    s=$(echo "$out" | awk '/^RESULT finetune/ {split($3, a, "="); print a[2]}')
    t=$(/usr/bin/python3 "$here/bench_lora_torch.py" "$th" 16 | tee -a /dev/stderr |
        awk '/^RESULT/ {split($3, a, "="); print a[2]}')
    best_s=$(awk -v a="$best_s" -v b="$s" 'BEGIN {print (b > a ? b : a)}')
    best_t=$(awk -v a="$best_t" -v b="$t" 'BEGIN {print (b > a ? b : a)}')
  done
done
awk -v s="$best_s" -v t="$best_t" 'BEGIN {printf "LoRA fine-tuning: speck best %.0f tok/s, torch best %.0f tok/s, speck/torch = %.2fx\n", s, t, s / t}'
echo "machine load: $(uptime)"
