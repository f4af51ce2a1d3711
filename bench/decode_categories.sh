#!/usr/bin/env bash
# Accelerated decoding per task category, as Spec-Bench reports it (BENCHMARKS.md, "Decoding by
# task category"): held-out prompts of four kinds (bench/make_code_prompts.py --categories:
# completion, editing, docstring, multiturn), `speck bench-decode --category`, greedy:
#   1. models/chat.gguf (the default code model tuned to ChatML turns, so the multi-turn prompts
#      mean something), N prompts per category x 96 tokens, every strategy without a draft model
#      (draft.gguf's vocabulary differs from chat.gguf's by the renamed end-of-turn token);
#   2. the default code model grown to the tinyllama-1.1b shape in Q4_0 (`speck grow`: the same
#      function at a 1.1B model's cost per pass), K prompts per category x 64 tokens, the
#      strategies named in STRATEGIES, with models/draft.gguf for the draft-model ones.
# `uptime` before and after each run.
#
# usage: bench/decode_categories.sh BUILD_DIR WORK_DIR [N (20)] [K (3)]
#        STRATEGIES=prompt,aded,prompt+aded,model (default) for the grown model
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=$1 WORK=$2 N=${3:-20} K=${4:-3}
SPECK=$BUILD/speck
mkdir -p "$WORK"
python3 bench/make_code_prompts.py -n "$N" --categories > "$WORK/categories.jsonl"
# The first K of each category, for the slow model.
python3 - "$WORK/categories.jsonl" "$K" > "$WORK/categories-$K.jsonl" <<'PY'
import collections, json, sys
seen = collections.Counter()
for line in open(sys.argv[1]):
    c = json.loads(line)["category"]
    seen[c] += 1
    if seen[c] <= int(sys.argv[2]):
        sys.stdout.write(line)
PY
[[ -s $WORK/tl-q4_0.gguf ]] ||
  "$SPECK" grow -m models/default.gguf --preset tinyllama-1.1b --type q4_0 -o "$WORK/tl-q4_0.gguf"
echo "== models/chat.gguf, $N prompts per category; $(uptime)"
"$SPECK" bench-decode -m models/chat.gguf --prompts "$WORK/categories.jsonl" -n 96 --no-curve \
  --category -t 1
echo "== tinyllama-1.1b growth (Q4_0), $K prompts per category; $(uptime)"
"$SPECK" bench-decode -m "$WORK/tl-q4_0.gguf" --draft-model models/draft.gguf \
  --prompts "$WORK/categories-$K.jsonl" -n 64 --no-curve --category \
  --strategies "${STRATEGIES:-prompt,aded,prompt+aded,model}"
echo "== done; $(uptime)"
