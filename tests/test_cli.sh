#!/usr/bin/env bash
# CLI behaviour: every subcommand's --help, exit codes and output, clear errors on bad input, no
# partial output files, determinism of seeded generation.  usage: test_cli.sh path/to/speck
set -u
SPECK=$1
dir=$(mktemp -d /tmp/speck-cli.XXXXXX)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

# expect CODE DESCRIPTION -- command...  (stderr saved in $dir/err)
expect() {
  local code=$1 what=$2; shift 3
  "$@" >"$dir/out" 2>"$dir/err"; local rc=$?
  if [[ $rc == "$code" ]]; then ok; else bad "$what: exit $rc, wanted $code: $(head -c 300 "$dir/err")"; fi
}
# stderr must mention each argument
mentions() {
  for s in "$@"; do grep -qF -- "$s" "$dir/err" || { bad "stderr lacks '$s': $(head -c 300 "$dir/err")"; return; }; done
  ok
}

expect 2 "no command" -- "$SPECK"
mentions "usage: speck <command>" "generate" "quantize"
expect 2 "unknown command" -- "$SPECK" frobnicate
mentions "unknown command 'frobnicate'"
for c in generate bench bench-decode info init tokenize quantize grow; do
  expect 0 "$c --help" -- "$SPECK" "$c" --help
  grep -q "usage: speck $c" "$dir/out" && ok || bad "$c --help prints usage"
  expect 2 "$c unknown option" -- "$SPECK" "$c" --no-such-option
  mentions "speck $c: unknown option '--no-such-option'"
done

expect 0 "init tiny" -- "$SPECK" init --preset tiny --seed 3 -o "$dir/tiny.gguf"
mentions "wrote $dir/tiny.gguf (tiny, f32, seed 3)"
# SPECK_ISA: a narrower kernel path, or a clear refusal.
expect 2 "SPECK_ISA unknown" -- env SPECK_ISA=sse9 "$SPECK" info "$dir/tiny.gguf"
mentions "SPECK_ISA" "'sse9'" "unknown"
expect 0 "SPECK_ISA=scalar" -- env SPECK_ISA=scalar "$SPECK" bench -m "$dir/tiny.gguf" -p 8 -n 4 -r 1 --json
grep -q '"isa": "scalar"' "$dir/out" && ok || bad "SPECK_ISA=scalar: bench reports $(grep -o '"isa": "[a-z0-9]*"' "$dir/out")"
expect 2 "init unknown preset" -- "$SPECK" init --preset huge -o "$dir/x.gguf"
mentions "unknown preset 'huge'"
expect 2 "init bad type" -- "$SPECK" init --preset tiny --type q9 -o "$dir/x.gguf"
mentions "unknown type 'q9'"
expect 1 "init into missing dir" -- "$SPECK" init --preset tiny -o "$dir/none/x.gguf"
mentions "$dir/none/x.gguf"
ls "$dir"/none* >/dev/null 2>&1 && bad "failed init left files" || ok
# Paths that cannot be created whoever runs this (root ignores directory permissions, and the
# scripts run as root): under a regular file, and in /proc.
cp "$dir/tiny.gguf" "$dir/keep.gguf"
expect 1 "init under a regular file" -- "$SPECK" init --preset tiny -o "$dir/keep.gguf/m.gguf"
mentions "$dir/keep.gguf/m.gguf" "cannot create"
cmp -s "$dir/keep.gguf" "$dir/tiny.gguf" && ok || bad "failed init changed the file in its path"
expect 1 "init into /proc" -- "$SPECK" init --preset tiny -o /proc/speck-test.gguf
mentions "/proc/speck-test.gguf" "cannot create"
# A write that fails halfway (a 64 KiB file size limit, with SIGXFSZ ignored so that write()
# returns EFBIG) over an existing file: the old file stays intact and no temporary is left.
expect 1 "init with a failing write" -- bash -c 'trap "" XFSZ; ulimit -f 64; exec "$0" "$@"' \
  "$SPECK" init --preset tiny --seed 9 -o "$dir/keep.gguf"
mentions "$dir/keep.gguf" "write failed"
cmp -s "$dir/keep.gguf" "$dir/tiny.gguf" && ok || bad "old file damaged by a failed init"
ls "$dir"/keep.gguf.* >/dev/null 2>&1 && bad "failed write left a temporary: $(ls "$dir" | tr "\n" " ")" || ok

expect 0 "info" -- "$SPECK" info -m "$dir/tiny.gguf"
grep -q "blk.1.ffn_down.weight" "$dir/out" && grep -q "^model: *llama" "$dir/out" && ok || bad "info shows tensors and model"
# quantize: the matrices change type (info shows them), the rest and the text stay usable.
expect 0 "quantize q8_0" -- "$SPECK" quantize "$dir/tiny.gguf" "$dir/tiny-q8.gguf" q8_0 --quiet
expect 0 "info of the quantized file" -- "$SPECK" info -m "$dir/tiny-q8.gguf"
grep -q "blk.1.ffn_down.weight *q8_0" "$dir/out" && grep -q "attn_norm.weight *f32" "$dir/out" && ok || bad "quantized matrices q8_0, norms f32"
expect 0 "generate with the quantized file" -- "$SPECK" generate -m "$dir/tiny-q8.gguf" -p hi -n 4 --ignore-eos
[[ $(head -c 2 "$dir/out") == hi && $(wc -c <"$dir/out") -gt 2 ]] && grep -q "generated 4 tokens" "$dir/err" && ok || bad "quantized generate output: $(head -c 200 "$dir/out") / $(cat "$dir/err")"
expect 2 "quantize unknown type" -- "$SPECK" quantize "$dir/tiny.gguf" "$dir/x.gguf" q9
mentions "unknown type 'q9'"
expect 2 "quantize missing arguments" -- "$SPECK" quantize "$dir/tiny.gguf"
mentions "need IN OUT TYPE"
expect 1 "quantize missing input" -- "$SPECK" quantize "$dir/missing.gguf" "$dir/x.gguf" q4_0
mentions "$dir/missing.gguf"
expect 1 "quantize twice refused" -- "$SPECK" quantize "$dir/tiny-q8.gguf" "$dir/x.gguf" q4_0
mentions "already q8_0" "--allow-requantize"
ls "$dir"/x.gguf* >/dev/null 2>&1 && bad "failed quantize left files" || ok

# grow: the plan is printed, the file has the target shapes, bad targets are explained and leave
# nothing behind (the logits are checked in tests/reference/test_grow.py).
expect 0 "grow dry run" -- "$SPECK" grow -m "$dir/tiny.gguf" --n-embd 160 --n-head 5 --n-head-kv 5 --dry-run
mentions "n_embd 64 -> 160 (units x2 + 32 zero units)" "RoPE pair i -> 2i" "rms eps 1e-05 -> 8e-06"
ls "$dir"/*.gguf | grep -qv -e tiny -e keep && bad "grow --dry-run wrote a file" || ok
expect 0 "grow" -- "$SPECK" grow -m "$dir/tiny.gguf" --n-embd 128 --n-layer 3 --n-ff 256 --type q8_0 -o "$dir/grown.gguf" --quiet
mentions "wrote $dir/grown.gguf (q8_0, seed 1)"
expect 0 "info of the grown file" -- "$SPECK" info -m "$dir/grown.gguf"
grep -q "llama, 3 layers, width 128, 4 heads (2 kv, head dim 32), ffn 256, vocab 512" "$dir/out" && grep -q "blk.2.ffn_down.weight *q8_0" "$dir/out" && ok || bad "grown shapes: $(grep model: "$dir/out")"
expect 0 "generate with the grown file" -- "$SPECK" generate -m "$dir/grown.gguf" -p hi -n 4 --ignore-eos
expect 1 "grow narrower" -- "$SPECK" grow -m "$dir/tiny.gguf" --n-embd 32 -o "$dir/x.gguf"
mentions "$dir/tiny.gguf" "n_embd 32 is smaller than the source's 64"
expect 1 "grow to fewer kv heads" -- "$SPECK" grow -m "$dir/tiny.gguf" --n-head-kv 1 -o "$dir/x.gguf"
mentions "1 kv heads with 4 query heads each cannot hold the source's 2 kv heads" "n_head_kv must be at least 2"
expect 1 "grow to a head size that keeps no RoPE frequency" -- "$SPECK" grow -m "$dir/tiny.gguf" --n-embd 96 -o "$dir/x.gguf"
mentions "head size 24" "not a multiple of the source's 16"
expect 2 "grow without a target" -- "$SPECK" grow -m "$dir/tiny.gguf" -o "$dir/x.gguf"
mentions "--preset NAME or shape flags"
expect 2 "grow unknown preset" -- "$SPECK" grow -m "$dir/tiny.gguf" --preset huge -o "$dir/x.gguf"
mentions "unknown preset 'huge'"
expect 2 "grow bad number" -- "$SPECK" grow -m "$dir/tiny.gguf" --n-embd 12x -o "$dir/x.gguf"
mentions "--n-embd" "'12x'"
expect 1 "grow missing source" -- "$SPECK" grow -m "$dir/missing.gguf" --n-layer 3 -o "$dir/x.gguf"
mentions "$dir/missing.gguf"
ls "$dir"/x.gguf* >/dev/null 2>&1 && bad "failed grow left files" || ok
head -c 1000 "$dir/tiny.gguf" >"$dir/trunc.gguf"
expect 1 "info truncated" -- "$SPECK" info -m "$dir/trunc.gguf"
mentions "$dir/trunc.gguf" "truncated"
printf 'NOPE0000000000000000000000' >"$dir/magic.gguf"
expect 1 "generate bad magic" -- "$SPECK" generate -m "$dir/magic.gguf" -p hi
mentions "$dir/magic.gguf" "magic"
expect 1 "bench missing file" -- "$SPECK" bench -m "$dir/missing.gguf"
mentions "$dir/missing.gguf" "cannot open"
expect 2 "generate bad number" -- "$SPECK" generate -m "$dir/tiny.gguf" -n abc
mentions "-n" "abc"
expect 1 "generate bad token id" -- "$SPECK" generate -m "$dir/tiny.gguf" --ids 1,2,99999 -n 2
mentions "token id 99999"

expect 0 "generate greedy" -- "$SPECK" generate -m "$dir/tiny.gguf" -p "hello world" -n 16 --no-stats --ignore-eos
cp "$dir/out" "$dir/g1"
[[ ! -s $dir/err ]] && ok || bad "--no-stats still printed: $(cat "$dir/err")"
# The text is the prompt and then the continuation, the same continuation as from the prompt's
# token ids (speck tokenize) given with --ids, which prints only what it generates.
expect 0 "tokenize the prompt" -- "$SPECK" tokenize -m "$dir/tiny.gguf" "hello world"
ids=$(tr ' ' ',' <"$dir/out")
[[ $ids =~ ^[0-9]+(,[0-9]+)+$ ]] && ok || bad "tokenize printed '$(cat "$dir/out")'"
expect 0 "generate greedy from ids" -- "$SPECK" generate -m "$dir/tiny.gguf" --ids "$ids" -n 16 --no-stats --ignore-eos
[[ -s $dir/out ]] && cmp -s <(printf 'hello world'; cat "$dir/out") "$dir/g1" && ok || bad "greedy output '$(head -c 100 "$dir/g1")' is not the prompt + the --ids continuation '$(head -c 100 "$dir/out")'"
expect 0 "generate greedy again" -- "$SPECK" generate -m "$dir/tiny.gguf" -p "hello world" -n 16 --no-stats --ignore-eos -t 1
cmp -s "$dir/out" "$dir/g1" && ok || bad "greedy output differs between runs/thread counts"
expect 0 "generate --hugepages" -- "$SPECK" generate -m "$dir/tiny.gguf" -p "hello world" -n 16 --no-stats --ignore-eos --hugepages
cmp -s "$dir/out" "$dir/g1" && ok || bad "--hugepages changed the greedy output"
expect 0 "bench --hugepages" -- "$SPECK" bench -m "$dir/tiny.gguf" -p 8 -n 4 -r 1 --hugepages
grep -Eq '^\| .* \| f32 \| .* \| pp8 \| [0-9.]+ \|$' "$dir/out" && grep -Eq '\| tg4 \| [0-9.]+ \|$' "$dir/out" && ok || bad "bench table: $(cat "$dir/out")"
expect 0 "generate seeded" -- "$SPECK" generate -m "$dir/tiny.gguf" -p "hello" -n 24 --temp 1.0 --top-k 40 --seed 5 --no-stats --ignore-eos
cp "$dir/out" "$dir/s1"
[[ $(head -c 5 "$dir/out") == hello && $(wc -c <"$dir/out") -gt 5 ]] && ok || bad "seeded output: $(head -c 100 "$dir/out")"
expect 0 "generate another seed" -- "$SPECK" generate -m "$dir/tiny.gguf" -p "hello" -n 24 --temp 1.0 --top-k 40 --seed 6 --no-stats --ignore-eos
cmp -s "$dir/out" "$dir/s1" && bad "seeds 5 and 6 gave the same 24 sampled tokens" || ok
expect 0 "generate seeded again" -- "$SPECK" generate -m "$dir/tiny.gguf" -p "hello" -n 24 --temp 1.0 --top-k 40 --seed 5 --no-stats --ignore-eos
cmp -s "$dir/out" "$dir/s1" && ok || bad "same seed gave different output"
expect 0 "generate --ids" -- "$SPECK" generate -m "$dir/tiny.gguf" --ids 1,2,3 -n 4 --ignore-eos
grep -q "generated 4 tokens" "$dir/err" && ok || bad "stats line: $(cat "$dir/err")"
expect 0 "generate to context limit" -- "$SPECK" generate -m "$dir/tiny.gguf" --ids 1,2,3 -n 100 -c 16 --ignore-eos
grep -q "context full" "$dir/err" && ok || bad "context-full stop: $(cat "$dir/err")"

expect 0 "bench json" -- "$SPECK" bench -m "$dir/tiny.gguf" -p 16 -n 4 -r 2 --json
/usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["pp_tok_s"]>0 and d["tg_tok_s"]>0 and 0<d["roofline_fraction"]' "$dir/out" && ok || bad "bench --json output: $(cat "$dir/out")"
cp "$dir/out" "$dir/b0"
expect 0 "bench at a depth, f32 KV cache" -- "$SPECK" bench -m "$dir/tiny.gguf" -p 8 -n 4 -d 40 -r 1 --kv-type f32 --json
/usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d0=json.load(open(sys.argv[2])); assert d["n_depth"]==40 and d["pp_tok_s"]>0 and d["tg_tok_s"]>0 and d["bytes_per_token"]>d0["bytes_per_token"]' "$dir/out" "$dir/b0" && ok || bad "bench -d output: $(cat "$dir/out")"
cp "$dir/out" "$dir/b32"
expect 0 "bench at a depth, f16 KV cache (the default)" -- "$SPECK" bench -m "$dir/tiny.gguf" -p 8 -n 4 -d 40 -r 1 --json
/usr/bin/python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d0=json.load(open(sys.argv[2])); z=json.load(open(sys.argv[3])); assert d["tg_tok_s"]>0 and d0["bytes_per_token"]<d["bytes_per_token"]<z["bytes_per_token"]' "$dir/out" "$dir/b0" "$dir/b32" && ok || bad "bench f16 KV cache output: $(cat "$dir/out")"
expect 2 "bad --kv-type" -- "$SPECK" generate -m "$dir/tiny.gguf" -p "hello" -n 4 --kv-type q4_k
mentions "--kv-type" "q4_k" "q8_0"
expect 2 "bad --cache-type-v" -- "$SPECK" bench -m "$dir/tiny.gguf" -ctv int4
mentions "--cache-type-v" "int4"
expect 2 "K and V cache types differ" -- "$SPECK" generate -m "$dir/tiny.gguf" -p "hello" -n 4 -ctk q8_0 -ctv q4_0
mentions "--cache-type-k q8_0" "--cache-type-v q4_0" "one type"
expect 1 "q8_0 KV cache on head size 16" -- "$SPECK" generate -m "$dir/tiny.gguf" -p "hello" -n 4 --kv-type q8_0
mentions "q8_0" "multiple of 32"
# Q8_0 / Q4_0 KV caches on a head size of 32: accelerated decoding identical to plain, and the
# bytes a generated token reads fall with the cache's bits.
expect 0 "init tiny-qwen3" -- "$SPECK" init --preset tiny-qwen3 --seed 3 -o "$dir/tq3.gguf"
expect 0 "generate q8_0 KV cache, accelerated" -- "$SPECK" generate -m "$dir/tq3.gguf" -p "hello world hello world" -n 24 --ignore-eos --kv-type q8_0 --draft prompt,aded --compare
grep -q "output identical" "$dir/err" && ok || bad "q8_0 KV cache: accelerated output differs: $(cat "$dir/err")"
expect 0 "bench q8_0 KV cache" -- "$SPECK" bench -m "$dir/tq3.gguf" -p 8 -n 4 -d 40 -r 1 --kv-type q8_0 --json
cp "$dir/out" "$dir/bq8"
expect 0 "bench q4_0 KV cache (llama-bench's names)" -- "$SPECK" bench -m "$dir/tq3.gguf" -p 8 -n 4 -d 40 -r 1 -ctk q4_0 -ctv q4_0 --json
/usr/bin/python3 -c 'import json,sys; q4=json.load(open(sys.argv[1])); q8=json.load(open(sys.argv[2])); assert q4["kv_type"]=="q4_0" and q8["kv_type"]=="q8_0" and q4["tg_tok_s"]>0 and q4["bytes_per_token"]<q8["bytes_per_token"]' "$dir/out" "$dir/bq8" && ok || bad "bench block KV cache output: $(cat "$dir/out")"
expect 0 "generate f32 KV cache, accelerated" -- "$SPECK" generate -m "$dir/tiny.gguf" -p "hello world hello world" -n 24 --ignore-eos --kv-type f32 --draft prompt,aded --compare
grep -q "output identical" "$dir/err" && ok || bad "f32 KV cache: accelerated output differs: $(cat "$dir/err")"

# bench-decode: every strategy greedy-identical to plain decoding, the cost curve, and the
# perfect-draft ceiling it implies (max of n / cost(n), to the printed rounding: costs have 3
# decimals, so n / cost is known only within the interval of cost +- 0.0005, which is wide when a
# loaded machine measures a tiny relative cost).
printf '%s\n' '"def foo(x):\n    return x + 1\n\ndef bar("' '"hello world hello world hello"' '{"prompt": "import os\nimport sys\n"}' >"$dir/prompts.jsonl"
expect 0 "bench-decode json" -- "$SPECK" bench-decode -m "$dir/tiny.gguf" --prompts "$dir/prompts.jsonl" -n 12 --json
/usr/bin/python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
r = d["results"]
assert r[0]["strategy"] == "plain" and len(r) > 5 and all(x["identical"] for x in r), r
c = d["cost_curve"]
assert c[0]["n"] == 1 and c[0]["relative_cost"] == 1 and all(x["relative_cost"] > 0 for x in c), c
def span(x):
    return x["n"] / (x["relative_cost"] + 0.0005), x["n"] / max(x["relative_cost"] - 0.0005, 1e-9)
cl = d["perfect_draft_ceiling"]
at = [x for x in c if x["n"] == cl["n"]]
assert len(at) == 1, cl
lo, hi = span(at[0])
assert 0.999 * lo <= cl["speedup"] <= 1.001 * hi, (cl, at)
assert all(span(x)[0] <= 1.001 * cl["speedup"] for x in c), (cl, c)
' "$dir/out" && ok || bad "bench-decode --json output: $(head -c 600 "$dir/out")"
expect 0 "bench-decode --strategies" -- "$SPECK" bench-decode -m "$dir/tiny.gguf" --prompts "$dir/prompts.jsonl" -n 12 --json --strategies prompt,aded --no-curve
/usr/bin/python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
assert [x["strategy"] for x in d["results"]] == ["plain", "prompt", "aded"], d["results"]
assert d["cost_curve"] == [] and d["perfect_draft_ceiling"] is None, d
' "$dir/out" && ok || bad "bench-decode --strategies output: $(head -c 600 "$dir/out")"
# --category: the main object, then one per category in first-appearance order, each with its
# prompts' count and every strategy against plain decoding on those prompts.
printf '%s\n' '{"prompt": "def foo(x):\n    return x + 1\n\ndef bar(", "category": "code"}' '"hello world hello world hello"' '{"prompt": "import os\nimport sys\n", "category": "code"}' '{"prompt": "hello hello", "category": "chat"}' >"$dir/cat.jsonl"
expect 0 "bench-decode --category" -- "$SPECK" bench-decode -m "$dir/tiny.gguf" --prompts "$dir/cat.jsonl" -n 12 --json --strategies prompt,aded --no-curve --category
/usr/bin/python3 -c '
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
assert len(lines) == 4 and lines[0]["prompts"] == 4, lines
cats = [(l["category"], l["prompts"]) for l in lines[1:]]
assert cats == [("code", 2), ("(none)", 1), ("chat", 1)], cats
for l in lines[1:]:
    r = l["results"]
    assert [x["strategy"] for x in r] == ["plain", "prompt", "aded"], r
    assert r[0]["speedup"] == 1 and all(x["identical"] and x["tok_s"] > 0 for x in r), r
' "$dir/out" && ok || bad "bench-decode --category output: $(head -c 900 "$dir/out")"
printf '%s\n' '{"prompt": "x", "category": 3}' >"$dir/badcat.jsonl"
expect 1 "bench-decode non-string category" -- "$SPECK" bench-decode -m "$dir/tiny.gguf" --prompts "$dir/badcat.jsonl" --category
mentions "badcat.jsonl: line 1"
# The committed distilled draft drafts for the code model with plain greedy's exact output.
models=$(cd "$(dirname "$0")/../models" && pwd)
if [[ -f $models/draft-distill.gguf ]]; then
  expect 0 "bench-decode with models/draft-distill.gguf" -- "$SPECK" bench-decode -m "$models/default.gguf" --draft-model "$models/draft-distill.gguf" --prompts "$dir/prompts.jsonl" -n 32 --json --strategies model,model-adaptive --no-curve -t 1
  /usr/bin/python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))["results"]
assert len(r) == 3 and all(x["identical"] for x in r) and r[1]["accepted_per_pass"] > 0.5, r
' "$dir/out" && ok || bad "distilled draft: $(head -c 600 "$dir/out")"
fi
expect 2 "bench-decode unknown strategy" -- "$SPECK" bench-decode -m "$dir/tiny.gguf" --prompts "$dir/prompts.jsonl" --strategies prompt,nope
mentions "unknown strategy 'nope'"
expect 1 "bench-decode missing prompts" -- "$SPECK" bench-decode -m "$dir/tiny.gguf" --prompts "$dir/none.jsonl"
mentions "none.jsonl" "cannot open"

# The default model when -m is omitted: found from the executable's location whatever the working
# directory (a checkout's build/speck, or an install's PREFIX/bin with PREFIX/share/speck/models);
# a binary with no model beside it says so.
repo=$(cd "$(dirname "$0")/.." && pwd)
if [[ -f $repo/models/default.gguf && $SPECK -ef $repo/build/speck ]]; then
  expect 0 "default model from another directory" -- env -u SPECK_MODEL -C "$dir" "$repo/build/speck" info --no-tensors
  grep -qF "$repo/build/../models/default.gguf" "$dir/out" && ok || bad "info without -m from $dir: $(head -c 300 "$dir/out")"
fi
mkdir -p "$dir/inst/bin" "$dir/inst/share/speck/models"
cp "$SPECK" "$dir/inst/bin/speck"
expect 2 "no default model" -- env -u SPECK_MODEL -C "$dir" "$dir/inst/bin/speck" generate -p x -n 1
mentions "no default model found" "-m"
cp "$dir/tiny.gguf" "$dir/inst/share/speck/models/default.gguf"
expect 0 "installed default model" -- env -u SPECK_MODEL -C / "$dir/inst/bin/speck" tokenize "ab"
expect 0 "installed default model (info)" -- env -u SPECK_MODEL -C / "$dir/inst/bin/speck" info --no-tensors
grep -qF "$dir/inst/bin/../share/speck/models/default.gguf" "$dir/out" && ok || bad "installed info: $(head -c 300 "$dir/out")"
# chat and serve take the chat model (models/chat.gguf) when there is one, else the code model;
# generate keeps the code model. (tiny.gguf has no chat template: chat names the file it loaded.)
expect 0 "chat without a chat model" -- env -u SPECK_MODEL -C / "$dir/inst/bin/speck" chat -n 2 <<<"hi"
mentions "share/speck/models/default.gguf: no chat template"
"$SPECK" init --preset tiny --seed 9 -o "$dir/inst/share/speck/models/chat.gguf" >/dev/null 2>&1
expect 0 "chat with a chat model" -- env -u SPECK_MODEL -C / "$dir/inst/bin/speck" chat -n 2 <<<"hi"
mentions "share/speck/models/chat.gguf: no chat template"
expect 0 "generate keeps the code model" -- env -u SPECK_MODEL -C / "$dir/inst/bin/speck" info --no-tensors
grep -qF "models/default.gguf" "$dir/out" && ok || bad "info with a chat model: $(head -c 300 "$dir/out")"
expect 0 "\$SPECK_MODEL before the chat model" -- env -C / SPECK_MODEL="$dir/tiny.gguf" "$dir/inst/bin/speck" chat -n 2 <<<"hi"
mentions "$dir/tiny.gguf: no chat template"

echo "$pass passed, $fail failed"
[[ $fail == 0 ]]
