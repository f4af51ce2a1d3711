#!/bin/bash
# Decode (and prefill) speed of the 2:4-sparse 8-bit type (S24_Q8) against dense Q8_0 on a real-shaped
# random-weight model, alternated in one run (the shared machine's bandwidth drifts): speck init
# writes the Q8_0 model, speck prune --type s24_q8 the sparse one (magnitude 2:4) and its dense
# zero-filled Q8_0 copy; speck bench measures each ROUNDS times, in turns. Not a test.
#
# Usage: bench/sparse_speed.sh [--build build] [--preset tinyllama-1.1b] [--work DIR]
#                              [--rounds 3] [-n 16] [-p 64] [-r 3]
set -euo pipefail
BUILD=build PRESET=tinyllama-1.1b WORK=/tmp/speck-sparse-speed ROUNDS=3 N=16 R=3 PP=64
while [ $# -gt 0 ]; do
  case "$1" in
    --build) BUILD=$2; shift 2 ;;
    --preset) PRESET=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    -n) N=$2; shift 2 ;;
    -p) PP=$2; shift 2 ;;
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
# Prefill (pp$PP) and decode (tg$N) tok/s of one file: "pp tg".
run() { $SPECK bench -m "$1" -p "$PP" -n "$N" -r "$R" | awk -F'|' '/ (pp|tg)[0-9]/ {gsub(/ /, "", $8); printf "%s ", $8}'; }
ratio() { echo "$1 / $2" | bc -l | cut -c1-5; }
for ((i = 1; i <= ROUNDS; i++)); do
  read -r dp d <<<"$(run "$DENSE")"; read -r sp s <<<"$(run "$SPARSE")"; read -r zp z <<<"$(run "$ZF")"
  echo "round $i: tg$N t/s  q8_0 $d  s24_q8 $s  q8_0(2:4 zero-filled) $z  ratio s24/q8_0 $(ratio "$s" "$d");" \
       "pp$PP t/s  q8_0 $dp  s24_q8 $sp  zero-filled $zp  ratio $(ratio "$sp" "$dp")"
done
echo "# load after: $(uptime | sed 's/.*load/load/')"
