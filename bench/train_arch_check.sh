#!/usr/bin/env bash
# Train a tiny model of each family speck trains beyond llama (not a test), after tiny-mixtral as
# the baseline (FAMILIES overrides the list): qwen2 (q/k/v biases),
# qwen3 (per-head QK-norm), qwen2moe (biases + experts + the shared expert), qwen3moe (QK-norm +
# experts), olmoe (whole-row QK-norm + experts not renormalised), from scratch with the tiny-*
# presets' shapes on the default model's corpus (the Python 3.11 standard library) and tokenizer,
# export f16, then have llama.cpp (`llama-simple`) and `speck generate` continue the same code
# prompts greedily (bench/llamacpp_greedy.py: where they part, the float64 reference scores the
# two tokens chosen).
#
# usage: bench/train_arch_check.sh [BUILD_DIR] [WORK_DIR]
# Env: STEPS (150), THREADS (1), FAMILIES (mixtral qwen2 qwen3 qwen2moe qwen3moe olmoe), EXTRA
# (more `speck train` flags, e.g. size flags over the presets' shapes)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-/tmp/speck-train-arch}
STEPS=${STEPS:-150}
THREADS=${THREADS:-1}
CORPUS=/usr/lib/python3.11
[[ -d $CORPUS ]] || { echo "missing $CORPUS: scripts/deps.sh --train" >&2; exit 1; }
mkdir -p "$WORK"
files=()
for fam in ${FAMILIES:-mixtral qwen2 qwen3 qwen2moe qwen3moe olmoe}; do
  nice -n 10 "$BUILD/speck" train --data "$CORPUS" --glob '*.py' --vocab models/default.gguf \
    --cache "$WORK/corpus.tokens" --preset "tiny-$fam" --ctx 128 --batch 8 --steps "$STEPS" \
    --lr 3e-3 --warmup 10 --val-every 50 --val-batches 2 --ckpt-every 1000 --threads "$THREADS" \
    --seed 1 --type f16 --quiet ${EXTRA:-} -o "$WORK/$fam.gguf"
  # train_loss at step 0 and train/val_loss at each validation
  awk -F, -v f="$fam" 'NR > 1 && ($1 == 0 || $3 != "") {l = l sprintf(" %d:%s%s", $1, $2,
    $3 != "" ? "/" $3 : "")} END {print f ":" l}' "$WORK/$fam.csv"
  files+=("$WORK/$fam.gguf")
done
/usr/bin/python3 bench/llamacpp_greedy.py "${files[@]}" --speck "$BUILD/speck" -n 32
