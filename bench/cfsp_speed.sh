#!/bin/bash
# Decode and prefill speed of a CFSP-pruned model (fewer FFN channels, dense) against its dense
# source on a real-shaped random-weight model, alternated in one run (the shared machine's
# bandwidth drifts): speck init writes the Q8_0 model, speck prune --method cfsp the narrower one
# (calibrated on a little text: random weights, so only the shapes matter here), speck bench
# measures each ROUNDS times, in turns. Not a test. Quality: bench/cfsp_recovery.sh.
#
# Usage: bench/cfsp_speed.sh [--build build] [--preset tinyllama-1.1b] [--ratio 0.36]
#                            [--work DIR] [--rounds 3] [-n 16] [-p 64] [-r 3] [-t 2]
set -euo pipefail
BUILD=build PRESET=tinyllama-1.1b RATIO=0.36 WORK=/tmp/speck-cfsp-speed ROUNDS=3 N=16 R=3 PP=64 T=2
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$2; shift 2 ;;
    --preset) PRESET=$2; shift 2 ;;
    --ratio) RATIO=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -n) N=$2; shift 2 ;;
    -p) PP=$2; shift 2 ;;
    -r) R=$2; shift 2 ;;
    -t) T=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=passive
SPECK=$BUILD/speck
mkdir -p "$WORK"
DENSE=$WORK/$PRESET-q8_0.gguf PRUNED=$WORK/$PRESET-cfsp$RATIO-q8_0.gguf
[ -f "$DENSE" ] || $SPECK init --preset "$PRESET" --type q8_0 -o "$DENSE"
head -c 8192 /usr/lib/python3.11/argparse.py > "$WORK/calib.txt"
[ -f "$PRUNED" ] || $SPECK prune "$DENSE" "$PRUNED" --method cfsp --ratio "$RATIO" \
  --calib "$WORK/calib.txt" --calib-ctx 128 --calib-tokens 256 --threads "$T" 2>&1 | grep -v keeps
echo "# $(date -u '+%F %T') $(uname -n) $(nproc) cores; sizes: dense $(stat -c %s "$DENSE")," \
     "pruned $(stat -c %s "$PRUNED") bytes; load before: $(uptime | sed 's/.*load/load/')"
run() { $SPECK bench -m "$1" -p "$PP" -n "$N" -r "$R" -t "$T" |
  awk -F'|' '/ (pp|tg)[0-9]/ {gsub(/ /, "", $8); printf "%s ", $8}'; }
ratio() { echo "$1 / $2" | bc -l | cut -c1-5; }
for ((i = 1; i <= ROUNDS; i++)); do
  read -r dp d <<<"$(run "$DENSE")"; read -r cp c <<<"$(run "$PRUNED")"
  echo "round $i: tg$N t/s dense $d cfsp $c ratio $(ratio "$c" "$d");" \
       "pp$PP t/s dense $dp cfsp $cp ratio $(ratio "$cp" "$dp")"
done
echo "# load after: $(uptime | sed 's/.*load/load/')"
