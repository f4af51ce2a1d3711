#!/usr/bin/env bash
# `speck finetune --init lq-lora` end to end on the small draft model: the quantized base and the
# adapter are written and run, the base + initial adapter scores closer to the f16 model than
# the plainly quantized base (the QLoRA start, --lq-iters 0) in perplexity and KL divergence, a
# bit budget mixes types, Ctrl-C + --resume gives the same run, and bad options give clear errors
# with nothing written.
#   usage: test_lqlora_cli.sh path/to/speck MODELS_DIR
set -u
SPECK=$1
M=$2/draft.gguf
[[ -f $M ]] || { echo "SKIP: $M not found (the default models ship in models/)"; exit 77; }
dir=$(mktemp -d /tmp/speck-lqlora-cli.XXXXXX)
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

for i in $(seq 1 60); do printf 'def add_%d(a, b):\n    return a + b * %d\n\n' $i $i; done >"$dir/data.txt"
# --lr 0: one step that changes nothing, so the adapter is the initial one.
ft=(-m "$M" --data "$dir/data.txt" --rank 4 --steps 1 --lr 0 --batch 2 --ctx 32 --threads 1)
ppl() { "$SPECK" eval "$@" --text "$dir/data.txt" -t 1 2>&1 | awk '/^perplexity:/ {print $2}'; }

expect 0 "lq-lora Q4_0" -- "$SPECK" finetune "${ft[@]}" --init lq-lora --type Q4_0 --lq-iters 3 -o "$dir/lq.gguf"
[[ -f $dir/lq.gguf && -f $dir/lq.base.gguf ]] && ok || bad "lq-lora outputs: $(ls "$dir")"
mentions "LQ-LoRA" "lq-lora: 14 matrices at 4.500 bits per weight"
expect 0 "info base" -- "$SPECK" info -m "$dir/lq.base.gguf"
[[ $(grep -c '^ *blk\..* q4_0 ' "$dir/out") == 14 ]] && ok || bad "14 Q4_0 matrices in the base"
grep -q 'token_embd.weight *f16' "$dir/out" && ok || bad "untouched tensors keep their type"
expect 0 "plain QLoRA start" -- "$SPECK" finetune "${ft[@]}" --init lq-lora --type Q4_0 --lq-iters 0 -o "$dir/q.gguf"
cmp -s "$dir/q.base.gguf" "$dir/lq.base.gguf" && bad "LQ-LoRA's base is the plainly quantized one" || ok
f=$(ppl -m "$M") lq=$(ppl -m "$dir/lq.base.gguf" --lora "$dir/lq.gguf") q=$(ppl -m "$dir/q.base.gguf" --lora "$dir/q.gguf")
awk -v f="$f" -v a="$lq" -v b="$q" 'BEGIN { d1 = a - f; d2 = b - f; exit !(f > 0 && (d1 < 0 ? -d1 : d1) < (d2 < 0 ? -d2 : d2)) }' \
  && ok || bad "step 0: |ppl(LQ base + adapter) - ppl(f16)| = |$lq - $f| not below the plain Q4_0 base's |$q - $f|"
# The same by KL divergence from the f16 model's next-token distributions (eval --kld-base with
# --lora attached).
kld() { "$SPECK" eval "$@" --kld-base "$dir/f16.kld" -t 1 2>&1 | awk '/^KLD:/ {print $3}'; }
expect 0 "kld base" -- "$SPECK" eval -m "$M" --text "$dir/data.txt" --kld-base-out "$dir/f16.kld" -t 1
klq=$(kld -m "$dir/lq.base.gguf" --lora "$dir/lq.gguf") kq=$(kld -m "$dir/q.base.gguf" --lora "$dir/q.gguf")
awk -v a="$klq" -v b="$kq" 'BEGIN { exit !(a > 0 && a < b) }' && ok || bad "step 0: KL(f16 || LQ) $klq not below KL(f16 || plain Q4_0) $kq"
# A budget of 5 bits per weight over q and down: one type per matrix (K-quants only fit down's
# 256-value rows).
expect 0 "lq-lora --bits 5" -- "$SPECK" finetune "${ft[@]}" --init lq-lora --bits 5 --targets q,down --lq-iters 2 -o "$dir/mix.gguf"
mentions "(mixed)"
bpw=$(sed -n 's/.*matrices at \([0-9.]*\) bits.*/\1/p' "$dir/err")
awk -v b="$bpw" 'BEGIN { exit !(b > 4 && b <= 5) }' && ok || bad "budget: $bpw bits per weight"
expect 0 "generate on the mixed base" -- "$SPECK" generate -m "$dir/mix.base.gguf" --lora "$dir/mix.gguf" -p "def add" -n 4 --temp 0 -t 1

# Importance from calibration text (an imatrix collected on the fly): the weighted decomposition.
expect 0 "lq-lora --calib" -- "$SPECK" finetune "${ft[@]}" --init lq-lora --type Q4_0 --lq-iters 2 --calib "$dir/data.txt" -o "$dir/w.gguf"
mentions "importance-weighted error" "w.base.gguf"
# The same from an imatrix file (speck imatrix; llama-imatrix's format).
expect 0 "imatrix" -- "$SPECK" imatrix -m "$M" -f "$dir/data.txt" -o "$dir/d.imatrix" --ctx 32 --threads 1
expect 0 "lq-lora --imatrix" -- "$SPECK" finetune "${ft[@]}" --init lq-lora --type Q4_0 --lq-iters 2 --imatrix "$dir/d.imatrix" -o "$dir/wi.gguf"
mentions "importance-weighted error"
expect 0 "lq-lora unweighted, 2 iterations" -- "$SPECK" finetune "${ft[@]}" --init lq-lora --type Q4_0 --lq-iters 2 -o "$dir/u.gguf"
[[ -f $dir/wi.base.gguf ]] && ! cmp -s "$dir/wi.base.gguf" "$dir/u.base.gguf" && ok || bad "--imatrix: no base, or the unweighted one"
expect 2 "--imatrix with --calib" -- "$SPECK" finetune "${ft[@]}" --init lq-lora --type Q4_0 --calib "$dir/data.txt" --imatrix "$dir/x" -o "$dir/e.gguf"
mentions "--imatrix and --calib"

# Ctrl-C after step 3, then --resume (which reuses the base written): the uninterrupted run's
# curve and adapter.
rs=(-m "$M" --data "$dir/data.txt" --rank 4 --steps 6 --batch 2 --ctx 32 --threads 1 --quiet
    --ckpt-every 2 --init lq-lora --type Q4_0 --lq-iters 3)
expect 0 "lq-lora 6 steps" -- "$SPECK" finetune "${rs[@]}" -o "$dir/r1.gguf"
SPECK_TRAIN_SIGNAL_AT=3:2 "$SPECK" finetune "${rs[@]}" -o "$dir/r2.gguf" >/dev/null 2>"$dir/err"
[[ $? == 130 ]] && ok || bad "Ctrl-C exits 130: $(tail -c 200 "$dir/err")"
expect 0 "lq-lora --resume" -- "$SPECK" finetune "${rs[@]}" -o "$dir/r2.gguf" --resume
cmp -s <(cut -d, -f1-4 "$dir/r1.csv") <(cut -d, -f1-4 "$dir/r2.csv") && cmp -s "$dir/r1.gguf" "$dir/r2.gguf" \
  && ok || bad "resumed LQ-LoRA run differs from the uninterrupted one"

# Bad options: exit 2 (usage) or 1 (input), a message naming the problem, no base written.
expect 2 "no type" -- "$SPECK" finetune "${ft[@]}" --init lq-lora -o "$dir/e.gguf"
mentions "--type" "--bits"
expect 2 "f32 type" -- "$SPECK" finetune "${ft[@]}" --init lq-lora --type f32 -o "$dir/e.gguf"
mentions "--type f32" "quantized type"
expect 2 "bits out of range" -- "$SPECK" finetune "${ft[@]}" --init lq-lora --bits 1 -o "$dir/e.gguf"
mentions "--bits 1"
expect 2 "imatrix without lq-lora" -- "$SPECK" finetune "${ft[@]}" --imatrix "$dir/none" -o "$dir/e.gguf"
mentions "--init lq-lora"
expect 2 "with --full" -- "$SPECK" finetune "${ft[@]}" --init lq-lora --type Q4_0 --full -o "$dir/e.gguf"
mentions "--full"
expect 1 "Q4_K on 96-value rows" -- "$SPECK" finetune "${ft[@]}" --init lq-lora --type Q4_K -o "$dir/e.gguf"
mentions "blk.0.attn_q" "96" "q4_k"
expect 1 "missing imatrix" -- "$SPECK" finetune "${ft[@]}" --init lq-lora --type Q4_0 --imatrix "$dir/none.imatrix" -o "$dir/e.gguf"
mentions "$dir/none.imatrix"
expect 1 "rank too large" -- "$SPECK" finetune "${ft[@]}" --init lq-lora --type Q4_0 --rank 64 -o "$dir/e.gguf"
mentions "rank 64" "blk.0.attn_k"
[[ ! -e $dir/e.base.gguf && ! -e $dir/e.gguf ]] && ok || bad "a failed run left files: $(ls "$dir")"
ls "$dir" | grep -q '\.tmp' && bad "temporary files left: $(ls "$dir")" || ok

echo "$pass passed, $fail failed"
[[ $fail == 0 ]]
