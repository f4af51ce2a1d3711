#!/bin/bash
# Decode speed of the 2:4-sparse 8-bit type (S24_Q8) against dense Q8_0 on a real-shaped
# random-weight model, alternated in one run (the shared machine's bandwidth drifts): speck init
# writes the Q8_0 model, speck prune --type s24_q8 the sparse one (magnitude 2:4) and its dense
# zero-filled Q8_0 copy; speck bench measures each ROUNDS times, in turns. Not a test.
#
# Usage: bench/sparse_speed.sh [--build build] [--preset tinyllama-1.1b] [--work DIR]
#                              [--rounds 3] [-n 16] [-r 3]
set -euo pipefail
BUILD=build PRESET=tinyllama-1.1b WORK=/tmp/speck-sparse-speed ROUNDS=3 N=16 R=3
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$2; shift 2 ;;
    --preset) PRESET=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -n) N=$2; shift 2 ;;
    -r) R=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=passive
SPECK=$BUILD/speck
mkdir -p "$WORK"
DENSE=$WORK/$PRESET-q8_0.gguf SPARSE=$WORK/$PRESET-s24_q8.gguf ZF=$WORK/$PRESET-24-q8_0.gguf
[ -f "$DENSE" ] || $SPECK init --preset "$PRESET" --type q8_0 -o "$DENSE"
[ -f "$SPARSE" ] || $SPECK prune "$DENSE" "$SPARSE" --method magnitude --sparsity 2:4 \
  --type s24_q8 --dense "$ZF" --quiet
echo "# $(date -u '+%F %T') $(uname -n) $(nproc) cores; load before: $(uptime | sed 's/.*load/load/')"
tg() { $SPECK bench -m "$1" -p 16 -n "$N" -r "$R" | awk -F'|' '/ tg/ {gsub(/ /, "", $8); print $8}'; }
for ((i = 1; i <= ROUNDS; i++)); do
  d=$(tg "$DENSE"); s=$(tg "$SPARSE"); z=$(tg "$ZF")
  echo "round $i: tg$N t/s  q8_0 $d  s24_q8 $s  q8_0(2:4 zero-filled) $z  ratio s24/q8_0 $(echo "$s / $d" | bc -l | cut -c1-5)"
done
echo "# load after: $(uptime | sed 's/.*load/load/')"
