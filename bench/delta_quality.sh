#!/usr/bin/env bash
# Fine-tuning deltas, size against quality (docs/adaptation.md, BENCHMARKS.md): full-fine-tune
# the default code model (trained on Python) on Perl (Debian's perl-modules, never seen), then
# held-out Perl perplexity of base, tuned, the delta compressed by DARE p = 0.5 / 0.9 / 0.99,
# DAREx-q at 0.99 (q picked on a validation slice), ComPEFT density 0.1 / 0.05, with file sizes,
# and a rank-16 LoRA on the same data and steps. Not a test: minutes of training.
#   usage: bench/delta_quality.sh [SPECK] [WORKDIR] [STEPS 150]
# Prints a markdown table; the gain kept is (ppl_base − ppl_x) / (ppl_base − ppl_tuned), the
# issue's definition, and the same in nats per token (ln ppl), a stricter view when ppl falls 10x.
set -euo pipefail
trap 'echo "delta_quality.sh: failed at line $LINENO" >&2' ERR
SPECK=${1:-build/speck}
W=${2:-/tmp/speck-delta-bench}
STEPS=${3:-150}
BASE=${BASE:-models/default.gguf}
PERL=/usr/share/perl/5.36.0
T=${THREADS:-2}
[[ -d $PERL ]] || { echo "SKIP: $PERL missing (Debian perl-modules)"; exit 77; }
mkdir -p "$W"
# Files by a hash of their path: 1 in 10 held out (whole modules, so held-out text is unseen);
# training text: the first 1.5 MB of the others; validation for DAREx-q's q: 12 kB of the rest.
python3 - "$PERL" "$W" <<'EOF'
import hashlib, os, sys
root, w = sys.argv[1], sys.argv[2]
files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith('.pm'))
train, held = [], []
for p in files:
    try:
        s = open(p, encoding='utf-8').read()
    except (UnicodeDecodeError, OSError):
        continue
    h = int(hashlib.sha1(os.path.relpath(p, root).encode()).hexdigest(), 16) % 10
    (held if h == 0 else train).append(s)
t = '\n'.join(train)
open(os.path.join(w, 'train.txt'), 'w').write(t[:1_500_000])
open(os.path.join(w, 'val.txt'), 'w').write(t[1_500_000:1_512_000])
open(os.path.join(w, 'held.txt'), 'w').write('\n'.join(held)[:24_000])
EOF
ft=(-m "$BASE" --data "$W/train.txt" --steps "$STEPS" --batch 8 --ctx 128 --val-every 50
    --threads "$T" --quiet)

# ---- sparse fine-tuning (SpIEL, S2FT) against full and LoRA: begin ------------------------------
# SpIEL and S2FT at the trainable-parameter count of the rank-16 LoRA (311,296 for the default
# model; LORA_PARAMS= for another), same data, steps and batch; each of full, LoRA, SpIEL, S2FT
# run under /usr/bin/time -v for its peak RSS and training tok/s; held-out perplexity of the
# sparse deltas applied at load (speck eval --delta). ONLY=sparse runs just this block; in a
# whole run it trains full and LoRA a second time (timed), after the table above.
sparse_block() {
  local P=${LORA_PARAMS:-311296} name secs rss
  echo "# sparse block: $(date -u '+%F %H:%M') UTC; $(uptime)"
  timed() { # NAME CMD...: runs CMD under /usr/bin/time -v; prints "secs rss_kib"
    local n=$1
    shift
    /usr/bin/time -v "$@" 2> "$W/time_$n.txt" >/dev/null
    awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, a, ":"); s = 0
                  for (i = 1; i <= n; i++) s = s * 60 + a[i]; printf "%.1f ", s}
                /Maximum resident set size/ {print $2}' "$W/time_$n.txt"
  }
  local toks=$((STEPS * 8 * 128))
  echo "| method | trained parameters | held-out ppl | train s | tok/s | peak RSS MiB |"
  echo "|---|---:|---:|---:|---:|---:|"
  local pb
  pb=$("$SPECK" eval -m "$BASE" --text "$W/held.txt" -t "$T" 2>&1 | awk '/^perplexity:/ {print $2}')
  echo "| base | 0 | $pb | - | - | - |"
  for name in full lora spiel s2ft; do
    case $name in
      full) read -r secs rss < <(timed full "$SPECK" finetune --full "${ft[@]}" --lr 3e-4 -o "$W/sp_full.gguf") ;;
      lora) read -r secs rss < <(timed lora "$SPECK" finetune "${ft[@]}" --rank 16 --lr 1e-3 -o "$W/sp_lora.gguf") ;;
      *) read -r secs rss < <(timed "$name" "$SPECK" finetune --sparse "$name" --params "$P" "${ft[@]}" --lr 1e-3 -o "$W/sp_$name.gguf") ;;
    esac
    local ev=(-m "$BASE" --delta "$W/sp_$name.gguf") np=$P
    [[ $name == full ]] && ev=(-m "$W/sp_full.gguf") && np=all
    [[ $name == lora ]] && ev=(-m "$BASE" --lora "$W/sp_lora.gguf")
    [[ $name == s2ft ]] && np=$("$SPECK" delta info "$W/sp_s2ft.gguf" | sed -E 's/.* ([0-9]+) stored.*/\1/')
    local p
    p=$("$SPECK" eval "${ev[@]}" --text "$W/held.txt" -t "$T" 2>&1 | awk '/^perplexity:/ {print $2}')
    echo "| $name | $np | $p | $secs | $(python3 -c "print(f'{$toks / $secs:.0f}')") | $((rss / 1024)) |"
  done
  echo "# sparse block end: $(date -u '+%F %H:%M') UTC; $(uptime)"
}
[[ ${ONLY:-} == sparse ]] && { sparse_block; exit 0; }
# ---- sparse fine-tuning: end (called again at the bottom) ----------------------------------------
echo "# $(date -u '+%F %H:%M') UTC; $(uptime)"
t0=$(date +%s)
"$SPECK" finetune --full "${ft[@]}" --lr 3e-4 -o "$W/full.gguf"
t1=$(date +%s)
"$SPECK" finetune "${ft[@]}" --rank 16 --lr 1e-3 -o "$W/lora.gguf"
t2=$(date +%s)
echo "# full fine-tuning $((t1 - t0)) s, LoRA $((t2 - t1)) s ($STEPS steps of 8 x 128 tokens)"
"$SPECK" merge "$BASE" "$W/lora.gguf" -o "$W/lora_merged.gguf" --type f32 2>/dev/null
"$SPECK" delta extract "$BASE" "$W/full.gguf" -o "$W/d.gguf"
ppl() { "$SPECK" eval -m "$1" --text "${2:-$W/held.txt}" -t "$T" 2>&1 | awk '/^perplexity:/ {print $2}'; }
size() { stat -c %s "$1"; }
apply() { "$SPECK" delta apply "$BASE" "$1" -o "$W/applied.gguf" --type f32 2>/dev/null; }
pb=$(ppl "$BASE"); pt=$(ppl "$W/full.gguf")
gain() { python3 -c "import math; b, t, x = $pb, $pt, $1
print(f'{(b - x) / (b - t) * 100:.1f} | {(math.log(b) - math.log(x)) / (math.log(b) - math.log(t)) * 100:.1f}')"; }
echo "| model | delta file | bytes | held-out ppl | gain kept % (ppl) | gain kept % (nats) |"
echo "|---|---|---:|---:|---:|---:|"
echo "| base | - | - | $pb | 0 | 0 |"
echo "| full fine-tune | - | - | $pt | 100 | 100 |"
apply "$W/d.gguf"
p=$(ppl "$W/applied.gguf")
echo "| base + dense delta | f32 | $(size "$W/d.gguf") | $p | $(gain "$p") |"
for dp in 0.5 0.9 0.95 0.97 0.99; do
  "$SPECK" delta compress "$W/d.gguf" --dare "$dp" --seed 1 -o "$W/dare.gguf" 2>/dev/null
  apply "$W/dare.gguf"
  p=$(ppl "$W/applied.gguf")
  echo "| DARE p=$dp | bf16 values | $(size "$W/dare.gguf") | $p | $(gain "$p") |"
done
# A compression with the option from a grid that scores best on the validation slice (not the
# held-out text), as the papers tune DAREx-q's q and ComPEFT's alpha: tuned LABEL OPTION GRID...
tuned() {
  local label=$1 opt=$2 best="" best_v="" x v
  shift 2
  for x in "$@"; do
    # shellcheck disable=SC2086
    "$SPECK" delta compress "$W/d.gguf" ${opt//@/$x} -o "$W/tuned.gguf" 2>/dev/null
    apply "$W/tuned.gguf"
    v=$(ppl "$W/applied.gguf" "$W/val.txt")
    echo "# $label$x: validation ppl $v"
    if [[ -z $best_v ]] || python3 -c "import sys; sys.exit(not $v < $best_v)"; then
      best=$x best_v=$v
    fi
  done
  # shellcheck disable=SC2086
  "$SPECK" delta compress "$W/d.gguf" ${opt//@/$best} -o "$W/tuned.gguf" 2>/dev/null
  apply "$W/tuned.gguf"
  p=$(ppl "$W/applied.gguf")
  echo "| $label$best (best on validation) | - | $(size "$W/tuned.gguf") | $p | $(gain "$p") |"
}
tuned "DAREx-q p=0.99 q=" "--dare 0.99 --seed 1 --rescale darex-q=@" 0.02 0.03 0.04 0.05 0.07 0.1 0.2
for k in 0.1 0.05; do
  "$SPECK" delta compress "$W/d.gguf" --compeft --density "$k" -o "$W/compeft.gguf" 2>/dev/null
  apply "$W/compeft.gguf"
  p=$(ppl "$W/applied.gguf")
  echo "| ComPEFT density $k (l2 scale) | signs + scale | $(size "$W/compeft.gguf") | $p | $(gain "$p") |"
  tuned "ComPEFT density $k alpha=" "--compeft --density $k --scale @" 0.5 1 2 3 5 8 12 20
done
p=$(ppl "$W/lora_merged.gguf")
echo "| LoRA rank 16 (same data, steps) | adapter f32 | $(size "$W/lora.gguf") | $p | $(gain "$p") |"
echo "# $(date -u '+%F %H:%M') UTC; $(uptime)"
# sparse fine-tuning block (defined above)
sparse_block
