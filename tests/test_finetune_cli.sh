#!/usr/bin/env bash
# `speck finetune`, `speck adapter`, `speck merge` and `--lora` end to end on the default model:
# outputs load and run, Ctrl-C then --resume reproduces the uninterrupted loss curve, merged
# and unmerged adapters generate the same greedy text, clear errors and no file on bad input.
#   usage: test_finetune_cli.sh path/to/speck MODELS_DIR
set -u
SPECK=$1
M=$2/default.gguf
D=$2/draft.gguf
[[ -f $M && -f $D ]] || { echo "SKIP: $M not found (the default models ship in models/)"; exit 77; }
dir=$(mktemp -d /tmp/speck-finetune-cli.XXXXXX)
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

for i in $(seq 1 30); do
  printf '{"prompt": "def add_%d(a, b):\\n", "completion": "    return a + b * %d\\n"}\n' $i $i
done >"$dir/data.jsonl"
ft=(-m "$M" --data "$dir/data.jsonl" --rank 4 --steps 6 --batch 2 --ctx 32 --val-every 3
    --val-fraction 0.2 --ckpt-every 2 --threads 2 --quiet)

expect 0 "finetune --help" -- "$SPECK" finetune --help
grep -q "usage: speck finetune" "$dir/out" && ok || bad "finetune --help prints usage"
expect 0 "finetune" -- "$SPECK" finetune "${ft[@]}" -o "$dir/a.gguf"
[[ -f $dir/a.gguf && -f $dir/a.ckpt && -f $dir/a.csv ]] && ok || bad "finetune outputs"
[[ $(grep -c '^[0-9]' "$dir/a.csv") == 6 ]] && ok || bad "6 CSV rows: $(cat "$dir/a.csv")"
awk -F, 'NR > 1 && $3 != "" { v++ } END { exit !(v == 2) }' "$dir/a.csv" && ok || bad "2 validation losses"
expect 0 "adapter info" -- "$SPECK" adapter info "$dir/a.gguf"
grep -qF "rank 4, 4 layers, targets q,k,v,o,gate,up,down" "$dir/out" && ok || bad "info: $(cat "$dir/out")"

# Interrupted after step 3 (the signal handler saves a checkpoint), resumed: the same curve.
SPECK_TRAIN_SIGNAL_AT=3:2 "$SPECK" finetune "${ft[@]}" -o "$dir/b.gguf" >/dev/null 2>"$dir/err"
[[ $? == 130 ]] && ok || bad "Ctrl-C exits 130: $(tail -c 200 "$dir/err")"
expect 0 "finetune --resume" -- "$SPECK" finetune "${ft[@]}" -o "$dir/b.gguf" --resume
cmp -s <(cut -d, -f1-4 "$dir/a.csv") <(cut -d, -f1-4 "$dir/b.csv") && ok || bad "resumed curve differs: $(diff <(cut -d, -f1-4 "$dir/a.csv") <(cut -d, -f1-4 "$dir/b.csv") | head -5)"
cmp -s "$dir/a.gguf" "$dir/b.gguf" && ok || bad "resumed adapter differs from the uninterrupted one"

# Running it: unmerged (--lora) and merged give the same greedy text; a scale of 0 is the base.
gen=(-p "def add_7(a, b):" -n 16 --temp 0 -t 2)
expect 0 "generate --lora" -- "$SPECK" generate -m "$M" --lora "$dir/a.gguf" "${gen[@]}"
cp "$dir/out" "$dir/unmerged.txt"
expect 0 "merge" -- "$SPECK" merge "$M" "$dir/a.gguf" -o "$dir/merged.gguf" --type f32
expect 0 "generate merged" -- "$SPECK" generate -m "$dir/merged.gguf" "${gen[@]}"
cmp -s "$dir/out" "$dir/unmerged.txt" && ok || bad "merged text differs: $(cat "$dir/out") vs $(cat "$dir/unmerged.txt")"
expect 0 "generate base" -- "$SPECK" generate -m "$M" "${gen[@]}"
cp "$dir/out" "$dir/base.txt"
expect 0 "generate --lora :0" -- "$SPECK" generate -m "$M" --lora "$dir/a.gguf:0" "${gen[@]}"
cmp -s "$dir/out" "$dir/base.txt" && ok || bad "scale 0 is not the base"
expect 0 "bench --lora" -- "$SPECK" bench -m "$M" --lora "$dir/a.gguf" -p 8 -n 4 -r 1 -t 2

# PEFT round trip through the CLI.
expect 0 "adapter export" -- "$SPECK" adapter export "$dir/a.gguf" --peft "$dir/peft" -m "$M"
[[ -f $dir/peft/adapter_config.json && -f $dir/peft/adapter_model.safetensors ]] && ok || bad "PEFT files"
expect 0 "adapter import" -- "$SPECK" adapter import "$dir/peft" -o "$dir/c.gguf" -m "$M"
cmp -s "$dir/a.gguf" "$dir/c.gguf" && ok || bad "GGUF -> PEFT -> GGUF differs"

# Full fine-tuning (--full): the same data and masks through speck train's model; the loss
# falls on this repetitive data, the output is a model that loads and generates.
expect 0 "finetune --full" -- "$SPECK" finetune "${ft[@]}" --full --steps 8 --lr 1e-3 -o "$dir/full.gguf"
[[ -f $dir/full.gguf && -f $dir/full.ckpt ]] && ok || bad "finetune --full outputs"
awk -F, 'NR == 2 { first = $2 } NR > 1 { last = $2 } END { exit !(last < 0.8 * first) }' "$dir/full.csv" \
  && ok || bad "--full loss did not fall by 20 %: $(cut -d, -f1-2 "$dir/full.csv" | tr '\n' ' ')"
expect 0 "generate with the --full model" -- "$SPECK" generate -m "$dir/full.gguf" "${gen[@]}"
SPECK_TRAIN_SIGNAL_AT=4:2 "$SPECK" finetune "${ft[@]}" --full --steps 8 --lr 1e-3 -o "$dir/full_b.gguf" >/dev/null 2>"$dir/err"
[[ $? == 130 ]] && ok || bad "--full Ctrl-C exits 130: $(tail -c 200 "$dir/err")"
expect 0 "finetune --full --resume" -- "$SPECK" finetune "${ft[@]}" --full --steps 8 --lr 1e-3 -o "$dir/full_b.gguf" --resume
cmp -s <(cut -d, -f1-4 "$dir/full.csv") <(cut -d, -f1-4 "$dir/full_b.csv") && ok || bad "--full resumed curve differs"
# --full --nm 2:4: SR-STE through the same model (masked export: speck.prune.method sr-ste)
expect 0 "finetune --full --nm 2:4" -- "$SPECK" finetune "${ft[@]}" --full --nm 2:4 --steps 3 --lr 1e-3 -o "$dir/nm.gguf"
"$SPECK" info -m "$dir/nm.gguf" 2>&1 | grep -q "sr-ste" && ok || bad "--full --nm output lacks speck.prune.method sr-ste"
expect 2 "finetune --nm without --full" -- "$SPECK" finetune "${ft[@]}" --nm 2:4 --steps 3 -o "$dir/nm2.gguf"
cmp -s "$dir/full.gguf" "$dir/full_b.gguf" && ok || bad "--full resumed model differs from the uninterrupted one"
# Its delta against the base: extracted, compressed, applied, described.
expect 0 "delta extract" -- "$SPECK" delta extract "$M" "$dir/full.gguf" -o "$dir/d.gguf"
expect 0 "delta compress" -- "$SPECK" delta compress "$dir/d.gguf" --dare 0.9 -o "$dir/d90.gguf"
expect 0 "delta info" -- "$SPECK" delta info "$dir/d90.gguf"
grep -q "dare delta for llama" "$dir/out" && ok || bad "delta info: $(cat "$dir/out")"
expect 0 "delta apply" -- "$SPECK" delta apply "$M" "$dir/d90.gguf" -o "$dir/applied.gguf"
expect 0 "generate with the applied delta" -- "$SPECK" generate -m "$dir/applied.gguf" "${gen[@]}"
expect 1 "delta of another shape" -- "$SPECK" delta extract "$M" "$D" -o "$dir/x.gguf"
mentions "delta extract: tensor"
[[ ! -e $dir/x.gguf ]] && ok || bad "delta extract of another shape left a file"
expect 1 "model as delta" -- "$SPECK" delta apply "$M" "$M" -o "$dir/x.gguf"
mentions "general.type"
[[ ! -e $dir/x.gguf ]] && ok || bad "delta apply of a model left a file"

# CorDA (--init corda-kpm|corda-ipm): the adapter plus its residual base; at lr 0 the adapter on
# the residual base generates the base's greedy text; Ctrl-C + --resume reuses the residual
# base and gives the same curve and adapter. Block-LoRA (--block-share): saved as the rank/K
# LoRA; a checkpoint of another K is refused.
for i in $(seq 1 150); do printf 'def scale_%d(x):\n    return x * %d + %d\n\n' $i $i $((i % 7)); done >"$dir/calib.txt"
expect 0 "finetune --init corda-ipm --lr 0" -- "$SPECK" finetune "${ft[@]}" --steps 1 --lr 0 --init corda-ipm --calib "$dir/calib.txt" -o "$dir/ci.gguf"
[[ -f $dir/ci.gguf && -f $dir/ci.base.gguf ]] && ok || bad "corda outputs: $(ls "$dir")"
expect 0 "generate corda step 0" -- "$SPECK" generate -m "$dir/ci.base.gguf" --lora "$dir/ci.gguf" "${gen[@]}"
cmp -s "$dir/out" "$dir/base.txt" && ok || bad "CorDA at step 0 is not the base: $(cat "$dir/out") vs $(cat "$dir/base.txt")"
expect 0 "generate corda residual alone" -- "$SPECK" generate -m "$dir/ci.base.gguf" "${gen[@]}"
cmp -s "$dir/out" "$dir/base.txt" && bad "IPM's residual base alone gives the base's text" || ok
ck=("${ft[@]}" --init corda-kpm --calib "$dir/calib.txt")
expect 0 "finetune corda-kpm" -- "$SPECK" finetune "${ck[@]}" -o "$dir/ck.gguf"
SPECK_TRAIN_SIGNAL_AT=3:2 "$SPECK" finetune "${ck[@]}" -o "$dir/ck2.gguf" >/dev/null 2>"$dir/err"
[[ $? == 130 ]] && ok || bad "corda Ctrl-C exits 130: $(tail -c 200 "$dir/err")"
expect 0 "corda --resume" -- "$SPECK" finetune "${ck[@]}" -o "$dir/ck2.gguf" --resume
cmp -s <(cut -d, -f1-4 "$dir/ck.csv") <(cut -d, -f1-4 "$dir/ck2.csv") && ok || bad "corda resumed curve differs"
cmp -s "$dir/ck.gguf" "$dir/ck2.gguf" && ok || bad "corda resumed adapter differs"
expect 0 "finetune --block-share 2" -- "$SPECK" finetune "${ft[@]}" --block-share 2 -o "$dir/bl.gguf"
expect 0 "adapter info (block)" -- "$SPECK" adapter info "$dir/bl.gguf"
grep -qF "rank 2, 4 layers" "$dir/out" && ok || bad "block-share 2 of rank 4 saved as rank 2: $(cat "$dir/out")"
expect 0 "generate --lora (block)" -- "$SPECK" generate -m "$M" --lora "$dir/bl.gguf" "${gen[@]}"
expect 1 "resume with another --block-share" -- "$SPECK" finetune "${ft[@]}" -o "$dir/bl.gguf" --resume
mentions "--block-share 2, the run has 1"
# Bad input of these options.
expect 2 "corda without --calib" -- "$SPECK" finetune "${ft[@]}" --init corda-kpm -o "$dir/x.gguf"
mentions "--init corda-* needs --calib"
expect 2 "unknown --init" -- "$SPECK" finetune "${ft[@]}" --init pissa -o "$dir/x.gguf"
mentions "unknown --init 'pissa'"
expect 1 "too few calibration tokens" -- "$SPECK" finetune "${ft[@]}" --init corda-ipm --calib "$dir/calib.txt" --calib-tokens 100 -o "$dir/x.gguf"
mentions "calib.txt" "too few"
[[ ! -e $dir/x.gguf && ! -e $dir/x.base.gguf && ! -e $dir/x.ckpt ]] && ok || bad "corda error left files: $(ls "$dir")"
expect 2 "block-share not dividing the rank" -- "$SPECK" finetune "${ft[@]}" --block-share 3 -o "$dir/x.gguf"
mentions "--block-share 3"

# Bad input: clear errors, nothing written.
printf '{"text": "a"}\n{"text": "b"}\n{"text": "c"\n' >"$dir/bad.jsonl"
expect 1 "malformed JSONL" -- "$SPECK" finetune -m "$M" --data "$dir/bad.jsonl" -o "$dir/x.gguf" --steps 1
mentions "bad.jsonl:3: not a JSON object"
[[ ! -e $dir/x.gguf && ! -e $dir/x.ckpt ]] && ok || bad "malformed data left files"
expect 2 "rank 0" -- "$SPECK" finetune "${ft[@]}" --rank 0 -o "$dir/x.gguf"
mentions "--rank 0 must be in [1, 4096]"
expect 1 "unknown target" -- "$SPECK" finetune "${ft[@]}" --targets q,v,mlp -o "$dir/x.gguf"
mentions "unknown target 'mlp'"
expect 1 "adapter of another base" -- "$SPECK" generate -m "$D" --lora "$dir/a.gguf" -p x -n 1
mentions "--lora $dir/a.gguf:" "another base model"
expect 1 "merge onto another base" -- "$SPECK" merge "$D" "$dir/a.gguf" -o "$dir/x.gguf"
[[ ! -e $dir/x.gguf ]] && ok || bad "merge onto another base left a file"
expect 1 "model as adapter" -- "$SPECK" generate -m "$M" --lora "$M" -p x -n 1
mentions "not 'adapter'"
# Sparse fine-tuning (--sparse spiel|s2ft): a delta applied at load (--delta) scores as the same
# delta merged by `delta apply`; two deltas compose; bad options and another base are refused.
sft=(-m "$M" --data "$dir/data.jsonl" --steps 3 --batch 2 --ctx 32 --val-every 0 --threads 2 --quiet)
expect 0 "finetune --sparse spiel" -- "$SPECK" finetune --sparse spiel --density 0.01 --update-every 2 "${sft[@]}" -o "$dir/sp.gguf"
expect 0 "finetune --sparse s2ft" -- "$SPECK" finetune --sparse s2ft --params 20000 "${sft[@]}" -o "$dir/s2.gguf"
expect 0 "delta info (sparse)" -- "$SPECK" delta info "$dir/s2.gguf"
grep -q "sft delta for llama.*sparse fine-tuning (s2ft)" "$dir/out" && ok || bad "delta info: $(cat "$dir/out")"
expect 0 "delta apply BASE D1 D2" -- "$SPECK" delta apply "$M" "$dir/sp.gguf" "$dir/s2.gguf" -o "$dir/m12.gguf"
printf 'sub hello {\n    my ($x) = @_;\n    return $x + 1;\n}\n' >"$dir/p.txt"
expect 0 "eval merged" -- "$SPECK" eval -m "$dir/m12.gguf" --text "$dir/p.txt"
merged=$(grep '^perplexity:' "$dir/out")
expect 0 "eval --delta D1 --delta D2" -- "$SPECK" eval -m "$M" --delta "$dir/sp.gguf" --delta "$dir/s2.gguf" --text "$dir/p.txt"
[[ -n $merged && $(grep '^perplexity:' "$dir/out") == "$merged" ]] && ok || bad "--delta at load: $(grep '^perplexity:' "$dir/out") vs merged $merged"
expect 0 "generate --delta" -- "$SPECK" generate -m "$M" --delta "$dir/sp.gguf" "${gen[@]}"
expect 0 "bench --delta" -- "$SPECK" bench -m "$M" --delta "$dir/sp.gguf" -p 8 -n 4 -r 1 -t 2 --json
/usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["tg_tok_s"] > 0' "$dir/out" && ok || bad "bench --delta: $(head -c 300 "$dir/out")"
expect 1 "bench --delta onto another base" -- "$SPECK" bench -m "$D" --delta "$dir/sp.gguf" -p 8 -n 4 -r 1
mentions "sp.gguf"
expect 2 "--sparse unknown" -- "$SPECK" finetune --sparse lora "${sft[@]}" -o "$dir/x.gguf"
mentions "unknown method 'lora'"
for dens in 0 1.5 -0.2; do
  expect 2 "--density $dens" -- "$SPECK" finetune --sparse spiel --density $dens "${sft[@]}" -o "$dir/x.gguf"
  mentions "--density" "(0, 1]"
done
expect 1 "sparse delta onto another base" -- "$SPECK" delta apply "$D" "$dir/sp.gguf" -o "$dir/x.gguf"
mentions "another base model"
expect 1 "--delta onto another base" -- "$SPECK" eval -m "$D" --delta "$dir/sp.gguf" --text "$dir/p.txt"
mentions "another base model"
[[ ! -e $dir/x.gguf ]] && ok || bad "a refused sparse run or apply left a file"
ls "$dir" | grep -q '\.tmp\.' && bad "temporary files left: $(ls "$dir")" || ok

echo "$pass passed, $fail failed"
((fail == 0))
