#!/usr/bin/env bash
# Draft models compared as drafters for the default code model (BENCHMARKS.md, "Distilled draft
# models"): for each DRAFT, `speck bench-decode` with the draft-model strategies only (plain
# decoding alongside as the baseline, prompt by prompt) on held-out code prompts
# (bench/make_code_prompts.py), greedy and at temperature 0.7,
#   1. on models/default.gguf (10 MB: acceptance is the figure; its passes are too cheap for
#      drafting to pay), 40 prompts x 128 tokens;
#   2. on the default model grown to the tinyllama-1.1b shape in Q4_0 (`speck grow`: the same
#      function at a 1.1B model's cost per pass, where drafting pays), 4 prompts x 64 tokens,
#      without model-auto (its cost calibration takes minutes there).
# Drafts run one after another, each in its own bench-decode run; `uptime` before and after.
#
# usage: bench/bench_drafts.sh BUILD_DIR WORK_DIR DRAFT.gguf...
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=$1 WORK=$2
shift 2
SPECK=$BUILD/speck
mkdir -p "$WORK"
[[ -s $WORK/prompts.jsonl ]] || python3 bench/make_code_prompts.py -n 40 > "$WORK/prompts.jsonl"
[[ -s $WORK/tl-q4_0.gguf ]] ||
  "$SPECK" grow -m models/default.gguf --preset tinyllama-1.1b --type q4_0 -o "$WORK/tl-q4_0.gguf"
for target in models/default.gguf "$WORK/tl-q4_0.gguf"; do
  if [[ $target == models/default.gguf ]]; then
    n=(-n 128 --max-prompts 40) S=model,model-adaptive,model-auto
  else # ~40 s a prompt on the busy machine
    n=(-n 64 --max-prompts 4) S=model,model-adaptive
  fi
  for d in "$@"; do
    echo "== target $target, draft $d; $(uptime)"
    "$SPECK" bench-decode -m "$target" --draft-model "$d" --prompts "$WORK/prompts.jsonl" "${n[@]}" \
      --temp 0.7 --strategies "$S" --no-curve -t 1
  done
done
echo "== done; $(uptime)"
