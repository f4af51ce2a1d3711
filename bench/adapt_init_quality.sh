#!/usr/bin/env bash
# CorDA initialisation and Block-LoRA against plain LoRA (docs/adaptation.md, BENCHMARKS.md): the
# default code model (trained on Python) fine-tuned on Perl as bench/delta_quality.sh does it
# (Debian's perl-modules, the same split, steps, batch and lr), then for each adapter the
# held-out Perl perplexity (the task) and the held-out Python perplexity (the base's own domain,
# the 5 % of modules the default model never saw: KPM's claim is that it forgets less of it).
#   usage: [SEED=1] [THREADS=1] [CALIB_TOKENS=16384] bench/adapt_init_quality.sh [SPECK] [WORKDIR] [STEPS 150]
# Runs: LoRA rank 16; CorDA-KPM rank 16 (calibrated on Python training modules, the base's
# domain); CorDA-IPM rank 16 (calibrated on the Perl training text, the task); Block-LoRA rank 24
# with 8 shared blocks (273,408 trainable parameters) and LoRA rank 14 (272,384) beside it.
# Not a test: minutes of training. THREADS (default 1: on a shared 2-core machine two OpenMP
# threads fighting other jobs' threads ran 10x slower than one).
set -euo pipefail
trap 'echo "adapt_init_quality.sh: failed at line $LINENO" >&2' ERR
SPECK=${1:-build/speck}
W=${2:-/tmp/speck-adapt-init-bench}
STEPS=${3:-150}
BASE=${BASE:-models/default.gguf}
PERL=/usr/share/perl/5.36.0
PY=/usr/lib/python3.11
T=${THREADS:-1}
CAL=${CALIB_TOKENS:-16384}
SEED=${SEED:-1} # the training windows (CorDA's initialisation does not depend on it)
[[ -d $PERL ]] || { echo "SKIP: $PERL missing (Debian perl-modules)"; exit 77; }
[[ -d $PY ]] || { echo "SKIP: $PY missing (Debian libpython3.11-stdlib)"; exit 77; }
mkdir -p "$W"
# Perl: delta_quality.sh's split (1 in 10 modules held out by a hash of the path; training text
# the first 1.5 MB of the others). Python: the default model's own validation modules (its
# --val-fraction 0.05 hash, scripts/make_chat_data.py) for held-out text, 24 kB; the first 150 kB
# of its training modules for KPM's calibration.
/usr/bin/python3 - "$PERL" "$PY" "$W" "$(dirname "$0")/../scripts" <<'PYEOF'
import hashlib, os, sys
perl, py, w, scripts = sys.argv[1:5]
sys.path.insert(0, scripts)
import make_chat_data as mcd
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
pt, ph = [], []
for rel in mcd.list_files(py):
    try:
        s = open(os.path.join(py, rel), encoding='utf-8').read()
    except (UnicodeDecodeError, OSError):
        continue
    (ph if mcd.default_model_holds_out(rel) else pt).append(s)
open(os.path.join(w, 'py_held.txt'), 'w').write('\n'.join(ph)[:24_000])
open(os.path.join(w, 'py_calib.txt'), 'w').write('\n'.join(pt)[:150_000])
PYEOF
ft=(--data "$W/train.txt" --steps "$STEPS" --batch 8 --ctx 128 --val-every 50 --threads "$T"
    --lr 1e-3 --seed "$SEED")
ppl() { "$SPECK" eval -m "$1" --text "$2" -t "$T" 2>&1 | awk '/^perplexity:/ {print $2}'; }
echo "# $(date -u '+%F %H:%M') UTC; $(uptime)"
pb=$(ppl "$BASE" "$W/held.txt"); pyb=$(ppl "$BASE" "$W/py_held.txt")
echo "| adapter | trainable parameters | train s | held-out Perl ppl | held-out Python ppl (base $pyb) |"
echo "|---|---:|---:|---:|---:|"
echo "| none (base) | 0 | - | $pb | $pyb |"
# run NAME FINETUNE-OPTIONS...: train, merge into an f32 model (CorDA: onto its residual base),
# evaluate both texts.
run() {
  local name=$1 base=$BASE t0 t1 n
  shift
  t0=$(date +%s)
  "$SPECK" finetune -m "$BASE" "${ft[@]}" -o "$W/$name.gguf" "$@" 2>"$W/$name.log" || {
    cat "$W/$name.log" >&2; return 1; }
  t1=$(date +%s)
  [[ -f $W/$name.base.gguf ]] && base=$W/$name.base.gguf
  "$SPECK" merge "$base" "$W/$name.gguf" -o "$W/$name.merged.gguf" --type f32 2>/dev/null
  n=$(sed -n 's/.*, \([0-9.]*\)M parameters.*/\1/p' "$W/$name.log" | head -1)
  echo "| $name | ${n:-?}M | $((t1 - t0)) | $(ppl "$W/$name.merged.gguf" "$W/held.txt") | $(ppl "$W/$name.merged.gguf" "$W/py_held.txt") |"
}
run lora16 --rank 16
run corda-kpm16 --rank 16 --init corda-kpm --calib "$W/py_calib.txt" --calib-tokens "$CAL"
run corda-ipm16 --rank 16 --init corda-ipm --calib "$W/train.txt" --calib-tokens "$CAL"
run block24x8 --rank 24 --block-share 8
run lora14 --rank 14
echo "# $(date -u '+%F %H:%M') UTC; $(uptime)"
