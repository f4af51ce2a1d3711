#!/usr/bin/env bash
# Training speed of each family's layer against the llama layer at the same size (bench_train:
# full optimizer steps, tokens/s), runs alternated round by round so machine load hits all alike;
# prints each config's median and its ratio to the median of its baseline (llama for the dense
# families, Mixtral's layout for the MoE ones).
#
# Each run also reports tokens per second of CPU time, which the other engineers' processes on a
# shared machine disturb far less than the wall clock (they still share the caches).
#
# usage: bench/bench_train_arch.sh [BUILD_DIR] [ROUNDS (3)] [THREADS (1)] [STEPS (5)]
# Shapes: dense 4 x 256, 8 heads (4 kv), ffn 768, vocab 4096, batch 8 x 128 (bench_train's
# default); MoE the same with 8 experts of 192, top 2 (models/moe.gguf's shape), qwen2moe's shared
# expert 192 wide (one more expert's work per token, so it is compared as such).
set -euo pipefail
BUILD=${1:-build}
ROUNDS=${2:-3}
THREADS=${3:-1}
STEPS=${4:-5}
BT=$BUILD/bench_train
DENSE="4 256 8 4 768 4096 128 8 $STEPS"
MOE="4 256 8 4 192 4096 128 8 $STEPS 8 2"
declare -A ARGS=(
  [llama]="$DENSE 0 0" [qwen2]="$DENSE 0 0 qwen2" [qwen3]="$DENSE 0 0 qwen3"
  [mixtral]="$MOE llama" [qwen3moe]="$MOE qwen3moe" [olmoe]="$MOE olmoe"
  [qwen2moe]="$MOE qwen2moe 192"
)
ORDER="llama qwen2 qwen3 mixtral qwen3moe olmoe qwen2moe"
declare -A RES CPU
uptime
for r in $(seq "$ROUNDS"); do
  for k in $ORDER; do
    # shellcheck disable=SC2086
    out=$(env -u OPENBLAS_CORETYPE "$BT" "$THREADS" ${ARGS[$k]})
    t=$(sed -n 's/^RESULT speck tokens_per_s=\([0-9.]*\).*/\1/p' <<<"$out")
    c=$(sed -n 's/^RESULT .*cpu_tokens_per_s=\([0-9.]*\).*/\1/p' <<<"$out")
    RES[$k]="${RES[$k]:-} $t"
    CPU[$k]="${CPU[$k]:-} $c"
    echo "round $r $k $t tok/s, $c tok per CPU-second"
  done
done
uptime
med() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# Wall-clock tokens/s, then tokens per CPU-second (less sensitive to the other processes).
for what in RES CPU; do
  declare -n V=$what
  for k in $ORDER; do
    m=$(echo "${V[$k]}" | med)
    case $k in llama|qwen2|qwen3) base=llama ;; *) base=mixtral ;; esac
    b=$(echo "${V[$base]}" | med)
    unit=tok/s
    [[ $what == CPU ]] && unit=tok/CPU-s
    awk -v k="$k" -v m="$m" -v b="$b" -v base="$base" -v all="${V[$k]}" -v u="$unit" \
      'BEGIN {printf "%-9s %-9s median %7.0f (runs:%s)  x%.2f vs %s\n", k, u, m, all, m / b, base}'
  done
done
