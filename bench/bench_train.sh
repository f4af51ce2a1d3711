#!/usr/bin/env bash
# Training tokens/s: speck (bench_train) vs PyTorch CPU (bench_train_torch.py), same model,
# batch, sequence length and threads, run back to back (twice, alternating, to expose noise).
#   usage: bench/bench_train.sh BUILD_DIR [threads] [n_layer n_embd n_head n_head_kv n_ff n_vocab T B]
set -eu
BUILD=${1:-build}; shift || true
THREADS=${1:-2}; shift || true
CFG=("$@")
here=$(cd "$(dirname "$0")" && pwd)
for round in 1 2; do
  s=$("$BUILD/bench_train" "$THREADS" "${CFG[@]}" | tee -a /dev/stderr | awk '/^RESULT/ {split($3, a, "="); print a[2]}')
  t=$(/usr/bin/python3 "$here/bench_train_torch.py" "$THREADS" "${CFG[@]}" | tee -a /dev/stderr | awk '/^RESULT/ {split($3, a, "="); print a[2]}')
  awk -v s="$s" -v t="$t" -v r=$round 'BEGIN {printf "round %d: speck %.0f tok/s, torch %.0f tok/s, speck/torch = %.2fx\n", r, s, t, s / t}'
done
