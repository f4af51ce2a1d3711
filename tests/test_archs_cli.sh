#!/usr/bin/env bash
# Every tiny preset of every architecture through the CLI: init, info, generation, and
# accelerated decoding (chains, token trees, a draft model) identical to plain greedy decoding —
# over 300 tokens, so the windowed presets' rings (window 32 + 64) wrap and are rolled back and
# compacted after rejected drafts; train takes qwen3 and refuses the others.
# usage: test_archs_cli.sh path/to/speck
set -u
SPECK=$1
dir=$(mktemp -d /tmp/speck-archs.XXXXXX)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

prompt="def fib(n): return fib(n-1) + fib(n-2) def fib(n): return"
for p in tiny-mistral tiny-qwen3 tiny-gemma2 tiny-gemma3 tiny-phi3; do
  m="$dir/$p.gguf"
  "$SPECK" init --preset "$p" --type f16 -o "$m" >/dev/null 2>"$dir/err" && ok || bad "init $p: $(cat "$dir/err")"
  "$SPECK" info -m "$m" >"$dir/out" 2>&1 && grep -q "arch" "$dir/out" && ok || bad "info $p"
  for draft in "prompt,aded" "prompt,aded --tree-width 3 --draft-nodes 14" "model:$m --draft-max 6"; do
    # shellcheck disable=SC2086
    "$SPECK" generate -m "$m" -p "$prompt" -n 300 --draft $draft --compare >"$dir/out" 2>"$dir/err"
    if grep -q "output identical to plain greedy decoding" "$dir/err"; then ok
    else bad "$p --draft $draft: $(tail -c 300 "$dir/err")"; fi
  done
  # qwen3 trains (docs/training.md, "Architectures beyond Llama"); the windowed, post-norm and
  # fused layouts are refused.
  T=(--vocab "$m" --data "$dir" --steps 2 --batch 1 --ctx 32 --threads 1 --quiet -o "$dir/t.gguf")
  "$SPECK" train --preset "$p" "${T[@]}" >"$dir/out" 2>"$dir/err"
  rc=$?
  if [[ $p == tiny-qwen3 ]]; then [[ $rc == 0 ]] && ok || bad "train --preset $p: exit $rc, $(head -c 200 "$dir/err")"
  elif [[ $rc != 0 ]] && grep -q "sliding window\|cannot be trained" "$dir/err"; then ok
  else bad "train --preset $p: exit $rc, $(head -c 200 "$dir/err")"; fi
  "$SPECK" train --init-from "$m" "${T[@]}" >"$dir/out" 2>"$dir/err"
  rc=$?
  if [[ $p == tiny-qwen3 ]]; then [[ $rc == 0 ]] && ok || bad "train --init-from $p: exit $rc, $(head -c 200 "$dir/err")"
  elif [[ $rc != 0 ]] && grep -q "cannot be trained by speck" "$dir/err"; then ok
  else bad "train --init-from $p: exit $rc, $(head -c 200 "$dir/err")"; fi
done
echo "$pass passed, $fail failed"
[[ $fail == 0 ]]
