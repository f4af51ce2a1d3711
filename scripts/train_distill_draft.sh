#!/usr/bin/env bash
# A distilled draft model for models/default.gguf against a text-trained one at the same size and
# token budget (docs/training.md, "Distilled draft models"; figures in BENCHMARKS.md):
#   WORK/draft-text.gguf     2 x 96 draft (models/draft.gguf's shape and flags) trained on text
#   WORK/draft-distill.gguf  the same draft, same data, seed and schedule, trained on the target's
#                            next-token distributions (speck train --distill-from, KL at T = 1)
# Both see STEPS x 8 x 256 tokens; the committed models/draft.gguf saw 6000 steps, but online
# distillation runs the 5.25M target forward on every batch (~3x the draft's own step), which
# the shared 2-core machine could not afford for 6000 steps, so both get the smaller budget.
# Then both are compared as drafters (bench/bench_drafts.sh), with models/draft.gguf alongside.
#
# usage: scripts/train_distill_draft.sh [BUILD_DIR] [WORK_DIR]
# Env: STEPS (1000), THREADS (1: the runs go side by side), TEMP (1), CE (0: pure KL).
# BENCHMARKS.md's figures: this script with the defaults on 2026-12-07 (busy machine: ~30 min for
# the text run, ~56 min for the distilled one); its step-400 and step-600 rows are copies of
# WORK/draft-*.ckpt taken as the runs wrote them (--ckpt-every 200), benched the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-/tmp/speck-distill}
SPECK=$BUILD/speck
CORPUS=/usr/lib/python3.11
STEPS=${STEPS:-1000}
THREADS=${THREADS:-1}
[[ -d $CORPUS ]] || { echo "missing $CORPUS: scripts/deps.sh --train" >&2; exit 1; }
mkdir -p "$WORK"

# models/draft.gguf's flags (scripts/train_default_models.sh), the vocabulary from the target
DRAFT=(--data "$CORPUS" --glob '*.py' --vocab models/default.gguf --val-fraction 0.05 --seed 1
       --threads "$THREADS" --type f16 --resume --plot --cache "$WORK/code.tokens"
       --n-layer 2 --n-embd 96 --n-head 4 --n-head-kv 2 --n-ff 256 --ctx 256 --tied --batch 8
       --steps "$STEPS" --lr 3e-3 --warmup 100 --val-every 500 --val-batches 8 --ckpt-every 200)
# the token cache first, so the two runs do not both write it
[[ -s $WORK/code.tokens ]] ||
  "$SPECK" train "${DRAFT[@]}" --steps 1 --val-every 0 -o "$WORK/cache-only.gguf" --quiet
nice "$SPECK" train "${DRAFT[@]}" --name speck-draft-text-2x96 -o "$WORK/draft-text.gguf" \
  > "$WORK/draft-text.log" 2>&1 &
TEXT_PID=$!
nice "$SPECK" train "${DRAFT[@]}" --distill-from models/default.gguf \
  --distill-temp "${TEMP:-1}" --distill-ce "${CE:-0}" --name speck-draft-distill-2x96 \
  -o "$WORK/draft-distill.gguf" > "$WORK/draft-distill.log" 2>&1
wait $TEXT_PID

# validation perplexity of both (the held-out modules' tokens)
for m in draft-text draft-distill; do
  "$SPECK" eval -m "$WORK/$m.gguf" --tokens "$WORK/code.tokens" --ctx 256 --stride 128 \
    --threads 1 | tee "$WORK/$m.eval.txt"
done

# acceptance and speed, the committed draft alongside
bench/bench_drafts.sh "$BUILD" "$WORK" models/draft.gguf "$WORK/draft-text.gguf" \
  "$WORK/draft-distill.gguf" | tee "$WORK/bench.txt"
