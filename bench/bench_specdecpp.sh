#!/usr/bin/env bash
# SpecDec++ acceptance head against the existing draft-length rules (BENCHMARKS.md, "SpecDec++"):
#   1. training text: modules of the default code model's TRAINING split (/usr/lib/python3.11,
#      the is_val rule of bench/make_code_prompts.py negated), ~TEXT_KB kilobytes;
#   2. `speck train-accept` for models/draft-distill.gguf under models/default.gguf (it prints
#      the held-out AUC of the head and of the draft's own top probability);
#   3. `speck bench-decode` greedy on 40 held-out prompts x 128 tokens (make_code_prompts.py):
#      plain, model (fixed length), model-auto (cost-model budget), then model-adaptive (the
#      draft's top probability in the stopping rule) and model-specdecpp (the head in the same
#      rule) side by side at each threshold of THRESHOLDS, all with --draft-max 8 (and one run
#      at --draft-max 4 with every strategy at 0.5);
#   4. unless SKIP_BIG=1: the default model grown to the tinyllama-1.1b shape in Q4_0 (`speck
#      grow`, same function, a 1.1B model's cost per pass), 64 tokens on BIG_PROMPTS prompts
#      (default 8): --draft-max 8 at threshold 0.5 (model, model-adaptive, model-specdecpp), at
#      0.2 and 0.8 (model-adaptive, model-specdecpp), and --draft-max 4 at 0.5 (all three).
#      SKIP_DEFAULT=1 runs only this part. No model-auto (its calibration takes minutes there).
# `uptime` before each run (the machine is shared).
#
# usage: bench/bench_specdecpp.sh BUILD_DIR WORK_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=$1 WORK=$2
SPECK=$BUILD/speck
TEXT_KB=${TEXT_KB:-300}
THRESHOLDS=${THRESHOLDS:-"0.2 0.35 0.65 0.8 0.9"}
DRAFT=models/draft-distill.gguf
mkdir -p "$WORK"
[[ -s $WORK/prompts.jsonl ]] || python3 bench/make_code_prompts.py -n 40 > "$WORK/prompts.jsonl"
if [[ ! -s $WORK/train.txt ]]; then
  python3 - "$WORK/train.txt" "$TEXT_KB" <<'EOF'
import os, sys
sys.path.insert(0, "bench")
import make_code_prompts as M
out, kb = sys.argv[1], int(sys.argv[2])
root = "/usr/lib/python3.11"
rels = [r for r in M.files(root, "*.py") if not M.is_val(r, 0.05)]
text = []
size = 0
for r in rels[::7]:  # spread over the library
    with open(os.path.join(root, r), encoding="utf-8", errors="replace") as f:
        t = f.read()[:8000]
    text.append(t)
    size += len(t)
    if size > kb * 1024:
        break
open(out, "w").write("\n".join(text))
EOF
fi
HEAD=$WORK/accept-head.gguf
echo "== train-accept; $(uptime)"
[[ -s $HEAD ]] || "$SPECK" train-accept -m models/default.gguf --draft-model $DRAFT --text "$WORK/train.txt" \
  -o "$HEAD" -t 1
P=(--prompts "$WORK/prompts.jsonl" --draft-model $DRAFT --accept-head "$HEAD" --no-curve -t 1)
if [[ ${SKIP_DEFAULT:-0} != 1 ]]; then
echo "== default.gguf, --draft-max 4, threshold 0.5; $(uptime)"
"$SPECK" bench-decode -m models/default.gguf "${P[@]}" -n 128 --max-prompts 40 --draft-max 4 \
  --adaptive 0.5 --strategies model,model-adaptive,model-auto,model-specdecpp
echo "== default.gguf, --draft-max 8, threshold 0.5; $(uptime)"
"$SPECK" bench-decode -m models/default.gguf "${P[@]}" -n 128 --max-prompts 40 --draft-max 8 \
  --adaptive 0.5 --strategies model,model-adaptive,model-auto,model-specdecpp
for h in $THRESHOLDS; do
  echo "== default.gguf, --draft-max 8, threshold $h; $(uptime)"
  "$SPECK" bench-decode -m models/default.gguf "${P[@]}" -n 128 --max-prompts 40 --draft-max 8 \
    --adaptive "$h" --strategies model-adaptive,model-specdecpp
done
fi
[[ ${SKIP_BIG:-0} == 1 ]] && exit 0
[[ -s $WORK/tl-q4_0.gguf ]] ||
  "$SPECK" grow -m models/default.gguf --preset tinyllama-1.1b --type q4_0 -o "$WORK/tl-q4_0.gguf"
B=(-m "$WORK/tl-q4_0.gguf" "${P[@]}" -n 64 --max-prompts "${BIG_PROMPTS:-8}")
for run in "8 0.5 model,model-adaptive,model-specdecpp" "8 0.2 model-adaptive,model-specdecpp" \
  "8 0.8 model-adaptive,model-specdecpp" "4 0.5 model,model-adaptive,model-specdecpp"; do
  read -r dmax h S <<<"$run"
  echo "== tinyllama-shaped Q4_0, --draft-max $dmax, threshold $h; $(uptime)"
  "$SPECK" bench-decode "${B[@]}" --draft-max "$dmax" --adaptive "$h" --strategies "$S"
done
echo "== done; $(uptime)"
