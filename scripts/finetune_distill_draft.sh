#!/usr/bin/env bash
# The committed draft (models/draft.gguf, 6000 text steps) trained further for STEPS steps two
# ways from the same start, data, seed and schedule (docs/training.md, "Distilled draft models"):
#   WORK/draft-ft-text.gguf     more text training
#   WORK/draft-ft-distill.gguf  distillation from models/default.gguf (KL at T = TEMP)
# models/draft-distill.gguf is the latter when it wins (BENCHMARKS.md, "Distilled draft").
#
# usage: scripts/finetune_distill_draft.sh [BUILD_DIR] [WORK_DIR]
# Env: STEPS (400), THREADS (1: the runs go side by side), TEMP (1), CE (0: pure KL), INSTALL.
# The committed models/draft-distill.gguf: INSTALL=1 with the defaults (2026-12-07, busy machine:
# ~30 min for both runs side by side), then bench/bench_drafts.sh BUILD WORK models/draft.gguf
# WORK/draft-ft-text.gguf WORK/draft-ft-distill.gguf.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-/tmp/speck-distill}
SPECK=$BUILD/speck
CORPUS=/usr/lib/python3.11
STEPS=${STEPS:-400}
THREADS=${THREADS:-1}
[[ -d $CORPUS ]] || { echo "missing $CORPUS: scripts/deps.sh --train" >&2; exit 1; }
mkdir -p "$WORK"

FT=(--data "$CORPUS" --glob '*.py' --init-from models/draft.gguf --val-fraction 0.05 --seed 2
    --threads "$THREADS" --type f16 --resume --plot --cache "$WORK/code.tokens" --ctx 256
    --batch 8 --steps "$STEPS" --lr 1e-3 --min-lr 1e-4 --warmup 20 --val-every 100
    --val-batches 8 --ckpt-every 100)
[[ -s $WORK/code.tokens ]] ||
  "$SPECK" train "${FT[@]}" --steps 1 --val-every 0 -o "$WORK/cache-only.gguf" --quiet
nice "$SPECK" train "${FT[@]}" --name speck-draft-code-2x96 -o "$WORK/draft-ft-text.gguf" \
  > "$WORK/draft-ft-text.log" 2>&1 &
TEXT_PID=$!
nice "$SPECK" train "${FT[@]}" --distill-from models/default.gguf --distill-temp "${TEMP:-1}" \
  --distill-ce "${CE:-0}" --name speck-draft-distill-2x96 -o "$WORK/draft-ft-distill.gguf" \
  > "$WORK/draft-ft-distill.log" 2>&1
wait $TEXT_PID
for m in draft-ft-text draft-ft-distill; do
  "$SPECK" eval -m "$WORK/$m.gguf" --tokens "$WORK/code.tokens" --ctx 256 --stride 128 \
    --threads 1 | tee "$WORK/$m.eval.txt"
done
# INSTALL=1: the distilled one becomes models/draft-distill.gguf (and its loss curve)
if [[ ${INSTALL:-0} == 1 ]]; then
  for x in gguf csv png; do cp "$WORK/draft-ft-distill.$x" "models/draft-distill.$x"; done
fi
