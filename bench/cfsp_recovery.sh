#!/bin/bash
# CFSP structured pruning of the default model, then recovery training: held-out perplexity of
# the dense, the pruned and the pruned + recovered model, and decode speed of pruned vs dense
# alternated in the same run. Not a test.
#
#   1. calibration text: the first training-split files of the corpus (the split rule of
#      src/train/data.c, reproduced below, so no held-out module is used), CALIB_BYTES of them;
#   2. speck prune --method cfsp --ratio RATIO (one calibration pass);
#   3. recovery: speck train --init-from the pruned model on the same corpus, split and token
#      cache as the default model (docs/training.md), STEPS x 8 x 256 tokens (400 steps =
#      819K tokens = 10 % of the 8.19M the default model saw), cosine schedule from LR;
#      CONTROL=1 also trains the dense model the same way (what the same tokens do without
#      pruning);
#   4. speck eval (--ctx 256 --stride 128, as docs/training.md) on the first VAL_BYTES of the
#      held-out modules (the whole split, 120K tokens, takes ~15 min per model on a loaded
#      2-core machine; VAL_BYTES=0 evaluates the whole split from the token cache);
#   5. speck bench (-p 64 -n 32) dense and pruned in turns, ROUNDS times.
#
# Usage: bench/cfsp_recovery.sh [BUILD_DIR]   env: RATIO=0.5625 ALIGN=16 STEPS=400 LR=5e-4
#        THREADS=2 WORK=/tmp/speck-cfsp ROUNDS=3 CONTROL=0
set -euo pipefail
BUILD=${1:-build}
SPECK=$BUILD/speck
RATIO=${RATIO:-0.5625} ALIGN=${ALIGN:-16} STEPS=${STEPS:-400} LR=${LR:-5e-4} THREADS=${THREADS:-2}
WORK=${WORK:-/tmp/speck-cfsp} ROUNDS=${ROUNDS:-3} CONTROL=${CONTROL:-0}
CALIB_BYTES=${CALIB_BYTES:-131072} VAL_BYTES=${VAL_BYTES:-65536}
CORPUS=/usr/lib/python3.11 DENSE=models/default.gguf
[[ -d $CORPUS ]] || { echo "missing $CORPUS: scripts/deps.sh --train" >&2; exit 1; }
mkdir -p "$WORK"
export OMP_WAIT_POLICY=passive
tag=r$RATIO-a$ALIGN
PRUNED=$WORK/cfsp-$tag.gguf RECOV=$WORK/cfsp-$tag-rec$STEPS.gguf CALIB=$WORK/calib.txt
echo "# $(date -u '+%F %T') $(uname -n) $(nproc) cores; load before: $(uptime | sed 's/.*load/load/')"

# 1. calibration text from the training split (is_val of src/train/data.c: FNV-1a of the path
#    relative to the corpus, h ^= h >> 29, validation when h % 1e6 < 0.05e6).
/usr/bin/python3 - "$CORPUS" "$CALIB" "$CALIB_BYTES" "$WORK/heldout.txt" "$VAL_BYTES" <<'EOF'
import os, sys
root, out, limit, vout, vlimit = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
def is_val(rel):
    h = 0xcbf29ce484222325
    for b in rel.encode():
        h = ((h ^ b) * 0x100000001b3) & 0xffffffffffffffff
    h ^= h >> 29
    return h % 1000000 < 0.05 * 1e6
files = sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root)
               for f in fs if f.endswith(".py"))
text = b""
for rel in files:
    if not is_val(rel) and len(text) < limit:
        text += open(os.path.join(root, rel), "rb").read()
open(out, "wb").write(text[:limit])
val = b""
for rel in files:
    if is_val(rel) and len(val) < vlimit:
        val += open(os.path.join(root, rel), "rb").read()
open(vout, "wb").write(val[:vlimit])
EOF

# 2. prune
"$SPECK" prune "$DENSE" "$PRUNED" --method cfsp --ratio "$RATIO" --align "$ALIGN" \
  --calib "$CALIB" --threads "$THREADS" 2>&1 | grep -v "keeps" || true

# 3. recovery training (also builds the token cache on first use)
train() { # IN OUT
  "$SPECK" train --init-from "$1" --data "$CORPUS" --glob '*.py' --val-fraction 0.05 --seed 1 \
    --cache "$WORK/default.tokens" --threads "$THREADS" --type f16 --ctx 256 --batch 8 \
    --steps "$STEPS" --lr "$LR" --warmup 20 --val-every 100 --val-batches 8 -o "$2" \
    > "$2.log" 2>&1
  tr '\r' '\n' < "$2.log" | grep -v '^$' | tail -2
}
[[ -s $RECOV ]] || train "$PRUNED" "$RECOV"
CTRL=$WORK/dense-rec$STEPS.gguf
[[ $CONTROL != 1 || -s $CTRL ]] || train "$DENSE" "$CTRL"

# 4. held-out perplexity
if [[ $VAL_BYTES == 0 ]]; then EVAL=(--tokens "$WORK/default.tokens"); else EVAL=(--text "$WORK/heldout.txt"); fi
ppl() { "$SPECK" eval -m "$1" "${EVAL[@]}" --ctx 256 --stride 128 --threads "$THREADS" 2>&1 |
  awk '/^perplexity:/ {print $2}'; }
pd=$(ppl "$DENSE"); pp=$(ppl "$PRUNED"); pr=$(ppl "$RECOV")
echo "held-out perplexity: dense $pd  pruned $pp  pruned+recovered($STEPS steps) $pr" \
     "($(echo "100 * ($pr / $pd - 1)" | bc -l | cut -c1-5) % above dense)"
[[ $CONTROL != 1 ]] || echo "control: dense + the same $STEPS steps $(ppl "$CTRL")"

# 5. decode / prefill speed, alternated
run() { "$SPECK" bench -m "$1" -p 64 -n 32 -r 3 -t "$THREADS" |
  awk -F'|' '/ (pp|tg)[0-9]/ {gsub(/ /, "", $8); printf "%s ", $8}'; }
for ((i = 1; i <= ROUNDS; i++)); do
  read -r dp d <<<"$(run "$DENSE")"; read -r rp r <<<"$(run "$RECOV")"
  echo "round $i: tg32 t/s dense $d pruned $r ratio $(echo "$r / $d" | bc -l | cut -c1-5);" \
       "pp64 t/s dense $dp pruned $rp ratio $(echo "$rp / $dp" | bc -l | cut -c1-5)"
done
echo "# load after: $(uptime | sed 's/.*load/load/')"
