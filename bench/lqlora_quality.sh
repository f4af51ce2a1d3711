#!/usr/bin/env bash
# LQ-LoRA against QLoRA (docs/adaptation.md, BENCHMARKS.md): the default code model (trained on
# Python) fine-tuned on Perl as bench/adapt_init_quality.sh does it (Debian's perl-modules, the
# same split, batch, lr), for each base quantization: held-out Perl perplexity at step 0 (the
# quantized base + the initial adapter, against the f16 model) and after STEPS steps.
#   usage: [SEED=1] [THREADS=1] [RANK=16] [CONFIGS="f16 q4_k q3_k bits3.5 q3_k+imatrix"]
#          bench/lqlora_quality.sh [SPECK] [WORKDIR] [STEPS 100]
# "f16": plain LoRA on the f16 model (the unquantized reference). Per other config two runs: QLoRA (--lq-iters 0: the base quantized with the same type(s), B = 0) and
# LQ-LoRA (--lq-iters 10, the paper's stop rule); "bitsB" is a mix of types within B bits per
# adapted weight (the budget's types chosen per matrix by each method's own errors), "+imatrix"
# weights LQ-LoRA by the importance of the Perl training text (16,384 tokens). The step-0 figure
# comes from a run of --steps 1 --lr 0 (one step that changes nothing). Then llama.cpp runs the
# LQ-LoRA Q4_K base + trained adapter (bench/lora_llamacpp_check.sh) when LLAMA_BIN has it.
# Last, the step-0 models' KL divergence from the f16 model on the held-out Perl text (eval
# --kld-base; KLD_ONLY=1 computes just that table from a finished run's WORKDIR).
# Not a test: tens of minutes.
set -euo pipefail
trap 'echo "lqlora_quality.sh: failed at line $LINENO" >&2' ERR
SPECK=${1:-build/speck}
W=${2:-/tmp/speck-lqlora-bench}
STEPS=${3:-100}
BASE=${BASE:-models/default.gguf}
PERL=/usr/share/perl/5.36.0
T=${THREADS:-1}
SEED=${SEED:-1}
RANK=${RANK:-16}
CONFIGS=${CONFIGS:-f16 q4_k q3_k bits3.5 q3_k+imatrix}
[[ -d $PERL ]] || { echo "SKIP: $PERL missing (Debian perl-modules)"; exit 77; }
mkdir -p "$W"
# delta_quality.sh's split: 1 in 10 modules held out by a hash of the path; training text the
# first 1.5 MB of the others, held-out text 24 kB.
/usr/bin/python3 - "$PERL" "$W" <<'PYEOF'
import hashlib, os, sys
perl, w = sys.argv[1:3]
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(perl) for f in fs if f.endswith('.pm'))
train, held = [], []
for p in files:
    try:
        s = open(p, encoding='utf-8').read()
    except (UnicodeDecodeError, OSError):
        continue
    h = int(hashlib.sha1(os.path.relpath(p, perl).encode()).hexdigest(), 16) % 10
    (held if h == 0 else train).append(s)
open(os.path.join(w, 'train.txt'), 'w').write('\n'.join(train)[:1_500_000])
open(os.path.join(w, 'held.txt'), 'w').write('\n'.join(held)[:24_000])
PYEOF
ft=(-m "$BASE" --data "$W/train.txt" --batch 8 --ctx 128 --val-every 50 --threads "$T"
    --seed "$SEED" --rank "$RANK")
ppl() { "$SPECK" eval "$@" --text "$W/held.txt" -t "$T" 2>&1 | awk '/^perplexity:/ {print $2}'; }
kld_table() {
  "$SPECK" eval -m "$BASE" --text "$W/held.txt" --kld-base-out "$W/f16.kld" -t "$T" >/dev/null 2>&1
  echo "| step-0 model | KL(f16 || model), mean | top-1 agreement with f16 |"
  echo "|---|---:|---:|"
  for f in "$W"/*.s0.gguf; do
    [[ $f == *.base.gguf ]] && continue
    local n=${f%.s0.gguf} out b
    b=$n.s0.base.gguf
    [[ -f $b ]] || b=$BASE
    out=$("$SPECK" eval -m "$b" --lora "$f" --kld-base "$W/f16.kld" -t "$T" 2>&1)
    echo "| $(basename "$n") | $(awk '/^KLD:/ {print $3}' <<<"$out") | $(awk '/^top-1:/ {print $2}' <<<"$out") % |"
  done
}
if [[ ${KLD_ONLY:-0} == 1 ]]; then kld_table; exit 0; fi
echo "# $(date -u '+%F %H:%M') UTC; $(uptime)"
echo "# f16 model: held-out Perl ppl $(ppl -m "$BASE")"
echo "| base | method | bits/weight (adapted matrices) | init s | step-0 ppl | ppl after $STEPS steps | final val loss |"
echo "|---|---|---:|---:|---:|---:|---:|"
# run CONFIG METHOD OPTIONS...: the step-0 run, then the training run.
run() {
  local cfg=$1 meth=$2 name t0 t1 bpw v
  shift 2
  name=$cfg-$meth
  t0=$(date +%s)
  "$SPECK" finetune "${ft[@]}" --steps 1 --lr 0 --val-every 0 -o "$W/$name.s0.gguf" "$@" \
    2>"$W/$name.s0.log" || { cat "$W/$name.s0.log" >&2; return 1; }
  t1=$(date +%s)
  bpw=$(tr '\r' '\n' <"$W/$name.s0.log" | sed -n 's/.*matrices at \([0-9.]*\) bits.*/\1/p' | head -1)
  local p0 p1 b0=$W/$name.s0.base.gguf b1=$W/$name.base.gguf
  [[ -f $b0 ]] || b0=$BASE b1=$BASE
  p0=$(ppl -m "$b0" --lora "$W/$name.s0.gguf")
  "$SPECK" finetune "${ft[@]}" --steps "$STEPS" --lr 1e-3 -o "$W/$name.gguf" "$@" \
    2>"$W/$name.log" || { cat "$W/$name.log" >&2; return 1; }
  p1=$(ppl -m "$b1" --lora "$W/$name.gguf")
  v=$(awk -F, 'NR > 1 && $3 != "" { v = $3 } END { print v }' "$W/$name.csv")
  echo "| $cfg | $meth | $bpw | $((t1 - t0)) | $p0 | $p1 | $v |"
}
for cfg in $CONFIGS; do
  if [[ $cfg == f16 ]]; then run f16 lora; continue; fi
  case $cfg in
    bits*) q=(--bits "${cfg#bits}") ;;
    *+imatrix) q=(--type "${cfg%+imatrix}" --calib "$W/train.txt" --calib-tokens 16384) ;;
    *) q=(--type "$cfg") ;;
  esac
  [[ $cfg == *+imatrix ]] || run "$cfg" qlora "${q[@]}" --init lq-lora --lq-iters 0
  run "$cfg" lq-lora "${q[@]}" --init lq-lora
done
echo "# $(date -u '+%F %H:%M') UTC; $(uptime)"
kld_table
LB=${LLAMA_BIN:-/tmp/llama.cpp/build/bin}
if [[ -x $LB/llama-completion && -f $W/q4_k-lq-lora.gguf ]]; then
  # lora_llamacpp_check.sh runs BUILD_DIR/speck: a directory where SPECK is named so.
  bd=$(mktemp -d)
  ln -s "$(realpath "$SPECK")" "$bd/speck"
  LLAMA_BIN=$LB bash "$(dirname "$0")/lora_llamacpp_check.sh" "$bd" \
    "$W/q4_k-lq-lora.base.gguf" "$W/q4_k-lq-lora.gguf" || true
  rm -rf "$bd"
fi
