#!/usr/bin/env bash
# Train speck's embedded default models on the Python 3.11 standard library
# (Debian package libpython3.11-stdlib: /usr/lib/python3.11/**/*.py):
#   models/default.gguf  code model, 4 layers x 256 wide, 8 heads (4 kv), ffn 768, ctx 256,
#                        vocabulary 4096 (byte-level BPE trained on the same corpus), F16
#   models/draft.gguf    draft model for speculative decoding, same tokenizer, 2 x 96, ffn 256,
#                        tied head, 0.60M parameters (< 1/8 of the default model's), F16
# Validation = whole modules held out by a hash of their path (5%); the same split is used for the
# bigram/trigram baseline (scripts/ngram_baseline.py), which the models must beat.
#
# usage: scripts/train_default_models.sh [BUILD_DIR] [WORK_DIR]
# Env: THREADS (2). The committed models were made exactly so on this project's shared 2-core
# machine: the default model in three stages (0-700 and 700-1800 on a busy machine, ~45 min;
# 1800-4000 with 2 threads beside light other work, ~22 min), the draft model in one 6000-step
# run on 1 thread (~22 min). Each default-model stage after the first is `--resume` with a longer
# `--steps`, which continues from the checkpoint under the longer cosine schedule (a warm restart
# of the learning rate). A run can be interrupted with Ctrl-C and continued by running the script
# again.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
WORK=${2:-/tmp/speck-default}
SPECK=$BUILD/speck
CORPUS=/usr/lib/python3.11
THREADS=${THREADS:-2}
[[ -d $CORPUS ]] || { echo "missing $CORPUS: scripts/deps.sh --train" >&2; exit 1; }
mkdir -p "$WORK" models

# 1. tokenizer: 4096 tokens = 256 bytes + 3839 merges + <|endoftext|>
[[ -s $WORK/vocab.gguf ]] ||
  "$SPECK" tokenizer-train --data "$CORPUS" --glob '*.py' --vocab-size 4096 -o "$WORK/vocab.gguf"

COMMON=(--data "$CORPUS" --glob '*.py' --vocab "$WORK/vocab.gguf" --val-fraction 0.05 --seed 1
        --threads "$THREADS" --type f16 --resume --plot)

# 2. default code model (5.25M parameters): steps 0-700 under a 700-step schedule, then to 1800,
#    then to 4000
for steps in 700 1800 4000; do
  "$SPECK" train "${COMMON[@]}" --n-layer 4 --n-embd 256 --n-head 8 --n-head-kv 4 --n-ff 768 \
    --ctx 256 --untied --batch 8 --steps $steps --lr 2e-3 --warmup 60 --val-every 200 \
    --val-batches 8 --ckpt-every 100 --name speck-default-code-4x256 -o "$WORK/default.gguf"
done

# 3. draft model (0.60M parameters, same tokenizer and token cache; 1 thread so it can run beside
#    step 2)
"$SPECK" train "${COMMON[@]}" --cache "$WORK/default.tokens" --n-layer 2 --n-embd 96 \
  --n-head 4 --n-head-kv 2 --n-ff 256 --ctx 256 --tied --batch 8 --steps 6000 --lr 3e-3 \
  --threads 1 --warmup 100 --val-every 500 --val-batches 8 --ckpt-every 200 \
  --name speck-draft-code-2x96 -o "$WORK/draft.gguf"

# 4. baselines and evaluation on the validation split (the same tokens)
/usr/bin/python3 scripts/ngram_baseline.py "$WORK/default.tokens" 4096 | tee "$WORK/baseline.txt"
for m in default draft; do
  "$SPECK" eval -m "$WORK/$m.gguf" --tokens "$WORK/default.tokens" --ctx 256 --stride 128 \
    --threads 1 | tee "$WORK/$m.eval.txt"
done
cp "$WORK/default.gguf" models/default.gguf
cp "$WORK/draft.gguf" models/draft.gguf
ls -la models/
