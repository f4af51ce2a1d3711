#!/usr/bin/env bash
# `speck tokenizer-train`, `speck train`, `speck eval` end to end: outputs load, Ctrl-C and
# kill -9 followed by --resume reproduce the uninterrupted loss curve, clear errors on bad input.
#   usage: test_train_cli.sh path/to/speck
set -u
SPECK=$1
dir=$(mktemp -d /tmp/speck-train-cli.XXXXXX)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }
expect() { # expect CODE WHAT -- cmd...
  local code=$1 what=$2; shift 3
  "$@" >"$dir/out" 2>"$dir/err"; local rc=$?
  [[ $rc == "$code" ]] && ok || bad "$what: exit $rc, wanted $code: $(tail -c 300 "$dir/err")"
}
mentions() { for s in "$@"; do grep -qF -- "$s" "$dir/err" || { bad "stderr lacks '$s': $(tail -c 300 "$dir/err")"; return; }; done; ok; }

# a small Python-like corpus: 24 files
mkdir -p "$dir/corpus/pkg" "$dir/empty"
for i in $(seq 1 24); do
  f="$dir/corpus/$([[ $((i % 2)) == 0 ]] && echo pkg/)m$i.py"
  for j in $(seq 1 40); do
    printf 'def f%d_%d(x, y):\n    """Return x plus %d."""\n    return x + y * %d\n\n' $i $j $j $((i * j)) >>"$f"
  done
done

for c in train tokenizer-train eval; do
  expect 0 "$c --help" -- "$SPECK" $c --help
  grep -q "usage: speck $c" "$dir/out" && ok || bad "$c --help prints usage"
done

expect 0 "tokenizer-train" -- "$SPECK" tokenizer-train --data "$dir/corpus" --glob '*.py' --vocab-size 320 -o "$dir/vocab.gguf"
mentions "24 files" "(320 tokens)"
# The vocabulary has its 320 tokens and merges that shorten the corpus' text.
expect 0 "tokenize with the trained vocabulary" -- "$SPECK" tokenize -m "$dir/vocab.gguf" '    return x + y * 12'
n_ids=$(wc -w <"$dir/out")
(( n_ids > 0 && n_ids < 19 )) && ok || bad "20 bytes of corpus text took $n_ids tokens: $(cat "$dir/out")"
"$SPECK" info -m "$dir/vocab.gguf" >"$dir/out" 2>&1
grep -q "tokenizer.ggml.tokens *= \[str x 320\]" "$dir/out" && ok || bad "trained vocabulary size: $(grep tokens "$dir/out")"
expect 1 "tokenizer-train empty corpus" -- "$SPECK" tokenizer-train --data "$dir/empty" --glob '*.py' -o "$dir/v2.gguf"
mentions "empty corpus"

ARGS=(--data "$dir/corpus" --glob '*.py' --vocab "$dir/vocab.gguf" --val-fraction 0.2 --n-layer 1 --n-embd 32 --n-head 2
      --n-ff 64 --ctx 32 --batch 4 --steps 120 --val-every 40 --ckpt-every 20 --threads 2 --quiet)
expect 0 "train" -- "$SPECK" train "${ARGS[@]}" -o "$dir/a.gguf"
[[ -s $dir/a.gguf && -s $dir/a.ckpt && -s $dir/a.csv ]] && ok || bad "train outputs"
first=$(awk -F, 'NR==2 {print $2}' "$dir/a.csv"); last=$(awk -F, 'END {print $2}' "$dir/a.csv")
awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < a - 1.0)}' && ok || bad "loss fell: $first -> $last"
expect 0 "eval" -- "$SPECK" eval -m "$dir/a.gguf" --text "$dir/corpus/m1.py" --ctx 32
# Better than uniform over the 320 tokens, and the three figures agree: nats = ln(perplexity),
# bits/byte = nats x the tokens scored (all but the first) / bytes / ln 2, within 2e-4 (the
# figures are printed to 4 decimals: rounding moves the recomputed ones by at most ~8e-5).
awk -v bytes="$(wc -c <"$dir/corpus/m1.py")" '
  /^text:/ {b = substr($3, 2) + 0; tokens = $5 + 0}
  /^perplexity:/ {ppl = $2; nats = substr($3, 2) + 0}
  /^bits\/byte:/ {bpb = $2}
  END {
    ok = b == bytes && tokens > 0 && ppl > 1 && ppl < 320 && (log(ppl) - nats) ^ 2 < 4e-8 &&
         (nats * (tokens - 1) / bytes / log(2) - bpb) ^ 2 < 4e-8
    exit !ok
  }' "$dir/out" && ok || bad "eval output: $(cat "$dir/out")"
expect 0 "generate with the trained model" -- "$SPECK" generate -m "$dir/a.gguf" -n 8 -p "def"
[[ $(head -c 3 "$dir/out") == def && $(wc -c <"$dir/out") -gt 4 ]] && grep -q "generated 8 tokens" "$dir/err" && ok || bad "generate output: $(head -c 100 "$dir/out") / $(cat "$dir/err")"

# Ctrl-C: checkpoint + model saved, exit 130; --resume finishes the identical curve.
# (SPECK_TRAIN_SIGNAL_AT=STEP:SIGNAL makes the run signal itself after STEP: no timing races.)
SPECK_TRAIN_SIGNAL_AT=47:2 "$SPECK" train "${ARGS[@]}" -o "$dir/b.gguf" 2>"$dir/err"; rc=$?
[[ $rc == 130 ]] && ok || bad "Ctrl-C exit $rc, wanted 130"
grep -q "interrupted at step 47" "$dir/err" && ok || bad "interrupt message: $(tail -c 200 "$dir/err")"
[[ -s $dir/b.ckpt && -s $dir/b.gguf ]] && ok || bad "checkpoint and model saved on Ctrl-C"
expect 0 "resume after Ctrl-C" -- "$SPECK" train "${ARGS[@]}" -o "$dir/b.gguf" --resume
cmp -s <(cut -d, -f1-3 "$dir/a.csv") <(cut -d, -f1-3 "$dir/b.csv") && ok || bad "resumed loss curve differs after Ctrl-C"

# kill -9 mid-run: the last periodic checkpoint survives and --resume reproduces the curve.
SPECK_TRAIN_SIGNAL_AT=53:9 "$SPECK" train "${ARGS[@]}" -o "$dir/c.gguf" 2>/dev/null; rc=$?
[[ $rc == 137 ]] && ok || bad "kill -9 exit $rc"
[[ -s $dir/c.ckpt && ! -e $dir/c.gguf ]] && ok || bad "after kill -9 only the step-40 checkpoint exists"
expect 0 "resume after kill -9" -- "$SPECK" train "${ARGS[@]}" -o "$dir/c.gguf" --resume
cmp -s <(cut -d, -f1-3 "$dir/a.csv") <(cut -d, -f1-3 "$dir/c.csv") && ok || bad "resumed loss curve differs after kill -9"

# Distillation: a narrower student learns a.gguf's distributions; the KL (train_loss) falls and
# the text loss on validation (val_loss) falls with it.
expect 0 "train --distill-from" -- "$SPECK" train "${ARGS[@]}" --n-embd 16 --steps 60 --val-every 60 \
  --lr 3e-3 --distill-from "$dir/a.gguf" --distill-temp 2 --distill-ce 0.1 -o "$dir/d.gguf"
awk -F, 'NR == 2 {first = $2} END {exit !($2 < first - 0.3 && $3 < 5.0)}' "$dir/d.csv" && ok ||
  bad "distillation loss did not fall: $(sed -n '2p;$p' "$dir/d.csv")"
expect 0 "generate with the distilled model" -- "$SPECK" generate -m "$dir/d.gguf" -n 4 -p "def"
# The target must share the vocabulary token for token: another size, or the same size with
# other tokens (a vocabulary trained on other text), is refused before training.
"$SPECK" init --preset tiny -o "$dir/tiny.gguf" >/dev/null 2>&1
expect 1 "train --distill-from: vocabulary size" -- "$SPECK" train "${ARGS[@]}" --distill-from "$dir/tiny.gguf" -o "$dir/e.gguf"
mentions "vocabulary mismatch" "tiny.gguf"
mkdir -p "$dir/other"
for i in $(seq 1 30); do printf 'SELECT col%d FROM table%d WHERE id = %d;\n' $i $i $((i * 7)) >>"$dir/other/q.py"; done
"$SPECK" tokenizer-train --data "$dir/other" --vocab-size 320 --min-frequency 1 -o "$dir/vocab-other.gguf" 2>/dev/null
"$SPECK" train "${ARGS[@]}" --vocab "$dir/vocab-other.gguf" --data "$dir/other" --val-fraction 0 --steps 1 \
  --val-every 0 --ctx 16 -o "$dir/other.gguf" 2>/dev/null
expect 1 "train --distill-from: other tokens" -- "$SPECK" train "${ARGS[@]}" --distill-from "$dir/other.gguf" -o "$dir/e.gguf"
mentions "vocabulary mismatch: token"
expect 2 "train: --distill-temp 0" -- "$SPECK" train "${ARGS[@]}" --distill-from "$dir/a.gguf" --distill-temp 0 -o "$dir/e.gguf"
mentions "--distill-temp"
# A mixture of experts from scratch: the CSV's aux_loss column, a loss that falls, a model that
# speck's inference path runs (bench's per-expert counts cover every token-choice); clear errors.
MOE=(--n-expert 4 --n-expert-used 2 --n-ff 32 --steps 60 --val-every 30 --ckpt-every 0)
expect 0 "train moe" -- "$SPECK" train "${ARGS[@]}" "${MOE[@]}" -o "$dir/moe.gguf"
head -1 "$dir/moe.csv" | grep -q ',aux_loss$' && ok || bad "moe csv header: $(head -1 "$dir/moe.csv")"
awk -F, 'NR > 1 && !($7 >= 0.99 && $7 <= 2.01) {bad = 1} END {exit bad}' "$dir/moe.csv" && ok ||
  bad "aux loss in [1, experts/top-k]: $(tail -1 "$dir/moe.csv")"
first=$(awk -F, 'NR==2 {print $2}' "$dir/moe.csv"); last=$(awk -F, 'END {print $2}' "$dir/moe.csv")
awk -v a="$first" -v b="$last" 'BEGIN {exit !(b < a - 1.0)}' && ok || bad "moe loss fell: $first -> $last"
expect 0 "bench the moe model" -- "$SPECK" bench -m "$dir/moe.gguf" -p 16 -n 4 -r 1 -t 1
grep -qi "expert" "$dir/out" "$dir/err" && ok || bad "bench prints expert usage: $(cat "$dir/out")"
# The other families from their presets (qwen2moe: biases, experts, the shared expert; qwen3:
# per-head q/k norms), then `finetune --full` and LoRA continue the qwen3 file (docs/training.md,
# "Architectures beyond Llama"). One thread: two spin at barriers on a loaded machine.
expect 0 "train qwen2moe" -- "$SPECK" train "${ARGS[@]}" --preset tiny-qwen2moe --n-expert 4 --n-ff 16 --n-ff-shexp 16 --steps 4 --ckpt-every 0 --threads 1 -o "$dir/q2m.gguf"
expect 0 "generate with the qwen2moe model" -- "$SPECK" generate -m "$dir/q2m.gguf" -p "def" -n 4 -t 1
"$SPECK" info -m "$dir/q2m.gguf" >"$dir/out" 2>&1
grep -q "qwen2moe.expert_shared_feed_forward_length" "$dir/out" && grep -q "attn_q.bias" "$dir/out" && ok ||
  bad "qwen2moe export lacks the shared expert or biases: $(grep -c . "$dir/out") lines"
expect 0 "train qwen3" -- "$SPECK" train "${ARGS[@]}" --preset tiny-qwen3 --steps 4 --ckpt-every 0 --threads 1 -o "$dir/q3.gguf"
for i in 1 2 3 4 5 6; do printf '{"prompt": "def f%d(x):", "completion": " return x + %d"}\n' $i $i; done >"$dir/ft.jsonl"
expect 0 "finetune --full a qwen3 model" -- "$SPECK" finetune --full -m "$dir/q3.gguf" --data "$dir/ft.jsonl" --steps 2 --threads 1 --quiet -o "$dir/q3ft.gguf"
expect 0 "LoRA on a qwen3 model" -- "$SPECK" finetune -m "$dir/q3.gguf" --data "$dir/ft.jsonl" --steps 2 --rank 2 --threads 1 --quiet -o "$dir/q3lora.gguf"
expect 0 "LoRA on a qwen2moe model (attention adapted, experts frozen)" -- "$SPECK" finetune -m "$dir/q2m.gguf" --data "$dir/ft.jsonl" --steps 2 --rank 2 --threads 1 --quiet -o "$dir/q2mlora.gguf"
expect 0 "generate with the qwen2moe LoRA" -- "$SPECK" generate -m "$dir/q2m.gguf" --lora "$dir/q2mlora.gguf" -p "def" -n 4 -t 1
expect 1 "LoRA of only FFN matrices on a mixture of experts" -- "$SPECK" finetune -m "$dir/q2m.gguf" --data "$dir/ft.jsonl" --steps 2 --rank 2 --targets gate,up --threads 1 --quiet -o "$dir/e.gguf"
mentions "none of the targeted"
expect 0 "generate with the qwen3 LoRA" -- "$SPECK" generate -m "$dir/q3.gguf" --lora "$dir/q3lora.gguf" -p "def" -n 4 -t 1
expect 1 "train: top-k > experts" -- "$SPECK" train "${ARGS[@]}" --n-expert 4 --n-expert-used 5 -o "$dir/e.gguf"
mentions "5 used"
expect 2 "train: top-k without experts" -- "$SPECK" train "${ARGS[@]}" --n-expert-used 2 -o "$dir/e.gguf"
mentions "--n-expert"
expect 1 "train: a preset of a family speck cannot train" -- "$SPECK" train "${ARGS[@]}" --preset tiny-phi3 -o "$dir/e.gguf"
mentions "phi3"
"$SPECK" init --preset tiny-gemma2 -o "$dir/g2.gguf" >/dev/null 2>&1
expect 1 "train: --init-from a gemma2 model" -- "$SPECK" train "${ARGS[@]}" --init-from "$dir/g2.gguf" -o "$dir/e.gguf"
mentions "cannot be trained"

# N:M sparse training (SR-STE) from the trained model: S24_Q8 + its dense copy, both loadable
expect 0 "train --nm 2:4 --type s24_q8" -- "$SPECK" train "${ARGS[@]}" --init-from "$dir/a.gguf" --nm 2:4 \
  --steps 4 --type s24_q8 -o "$dir/nm.gguf"
[[ -s $dir/nm.gguf && -s $dir/nm.dense.gguf ]] && ok || bad "S24_Q8 model and its dense copy"
"$SPECK" info -m "$dir/nm.gguf" >"$dir/out" 2>&1
grep -q "sr-ste" "$dir/out" && grep -qi "s24_q8" "$dir/out" && ok || bad "info of the SR-STE model: $(head -c 600 "$dir/out")"
expect 0 "eval the S24_Q8 model" -- "$SPECK" eval -m "$dir/nm.gguf" --text "$dir/corpus/m1.py" --ctx 32
expect 0 "eval its dense copy" -- "$SPECK" eval -m "$dir/nm.dense.gguf" --text "$dir/corpus/m1.py" --ctx 32
# --nm with Ctrl-C + --resume: the masks come back from the checkpoint's dense weights, so the
# curve is the uninterrupted one (masks recomputed every step)
NM=(--init-from "$dir/a.gguf" --nm 2:4 --nm-lambda 0.01 --steps 6 --val-every 3 --ckpt-every 0)
expect 0 "train --nm, 6 steps" -- "$SPECK" train "${ARGS[@]}" "${NM[@]}" -o "$dir/nm6.gguf"
SPECK_TRAIN_SIGNAL_AT=3:2 "$SPECK" train "${ARGS[@]}" "${NM[@]}" -o "$dir/nm6b.gguf" >/dev/null 2>"$dir/err"
[[ $? == 130 ]] && ok || bad "--nm Ctrl-C exits 130: $(tail -c 200 "$dir/err")"
expect 0 "train --nm --resume" -- "$SPECK" train "${ARGS[@]}" "${NM[@]}" -o "$dir/nm6b.gguf" --resume
cmp -s <(cut -d, -f1-4 "$dir/nm6.csv") <(cut -d, -f1-4 "$dir/nm6b.csv") && ok || bad "--nm resumed curve differs: $(cat "$dir/nm6.csv" "$dir/nm6b.csv")"
cmp -s "$dir/nm6.gguf" "$dir/nm6b.gguf" && ok || bad "--nm resumed model differs"
expect 1 "train: --nm 2:3 (M does not divide the rows)" -- "$SPECK" train "${ARGS[@]}" --nm 2:3 -o "$dir/e.gguf"
mentions "not a multiple of M = 3" "--nm"
expect 1 "train: --nm 4:4" -- "$SPECK" train "${ARGS[@]}" --nm 4:4 -o "$dir/e.gguf"
mentions "1 <= N < M"
expect 1 "train: --nm 2:4 with rows of 30" -- "$SPECK" train "${ARGS[@]}" --n-ff 30 --nm 2:4 -o "$dir/e.gguf"
mentions "ffn_down.weight has rows of 30"
expect 2 "train: --nm garbage" -- "$SPECK" train "${ARGS[@]}" --nm 2-4 -o "$dir/e.gguf"
mentions "expected N:M"
expect 2 "train: --type s24_q8 without --nm 2:4" -- "$SPECK" train "${ARGS[@]}" --type s24_q8 -o "$dir/e.gguf"
mentions "--nm 2:4"
expect 1 "train: --nm-every without --nm" -- "$SPECK" train "${ARGS[@]}" --nm-every 2 -o "$dir/e.gguf"
mentions "need --nm"

# bad input
expect 1 "train: empty corpus" -- "$SPECK" train "${ARGS[@]}" --data "$dir/empty" -o "$dir/e.gguf"
mentions "no files"
expect 1 "train: unreadable vocabulary" -- "$SPECK" train "${ARGS[@]}" --vocab "$dir/nope.gguf" -o "$dir/e.gguf"
mentions "nope.gguf"
expect 1 "train: unreadable corpus" -- "$SPECK" train "${ARGS[@]}" --data "$dir/nope" -o "$dir/e.gguf"
mentions "nope"
"$SPECK" init --preset tiny -o "$dir/tiny.gguf" >/dev/null 2>&1
expect 1 "train: vocabulary/model mismatch" -- "$SPECK" train "${ARGS[@]}" --init-from "$dir/tiny.gguf" -o "$dir/e.gguf"
mentions "mismatch"
expect 1 "train: checkpoint from another config" -- "$SPECK" train "${ARGS[@]}" --n-embd 64 -o "$dir/a.gguf" --resume
mentions "another config"
expect 2 "train: unknown option" -- "$SPECK" train --bogus
mentions "unknown option '--bogus'"
[[ ! -e $dir/e.gguf ]] && ok || bad "no output after errors"

echo "$pass passed, $fail failed"
[[ $fail == 0 ]]
