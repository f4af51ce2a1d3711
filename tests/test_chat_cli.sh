#!/usr/bin/env bash
# `speck chat` driven through piped stdin on a random-weight tiny model: a reply is what plain
# generation gives for the template's rendering, it runs several turns, reuses the KV cache across
# turns (only the new turn is prefilled), honours /reset, exits 0 at end of input, and fails
# clearly on a missing model or an unknown template.
# usage: test_chat_cli.sh path/to/speck
set -u
SPECK=$1
dir=$(mktemp -d /tmp/speck-chat.XXXXXX)
trap 'rm -rf "$dir"' EXIT
pass=0 fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

# expect CODE DESCRIPTION INPUT -- command...  (stdout in $dir/out, stderr in $dir/err)
expect() {
  local code=$1 what=$2 input=$3; shift 4
  printf '%b' "$input" | "$@" >"$dir/out" 2>"$dir/err"; local rc=$?
  if [[ $rc == "$code" ]]; then ok; else bad "$what: exit $rc, wanted $code: $(head -c 300 "$dir/err")"; fi
}
mentions() {
  for s in "$@"; do grep -qF -- "$s" "$dir/err" || { bad "stderr lacks '$s': $(head -c 300 "$dir/err")"; return; }; done
  ok
}

expect 0 "chat --help" "" -- "$SPECK" chat --help
grep -q "usage: speck chat" "$dir/out" && ok || bad "chat --help prints usage"
expect 2 "chat unknown option" "" -- "$SPECK" chat --no-such-option
mentions "speck chat: unknown option '--no-such-option'"
"$SPECK" init --preset tiny --seed 5 -o "$dir/tiny.gguf" >/dev/null 2>&1 && ok || bad "init tiny"

# reply_is PROMPT N: the reply in $dir/out (and its newline) is the continuation `speck generate`
# prints for PROMPT, the conversation rendered by hand, greedy, N tokens. The tiny vocabulary has
# no special tokens and add_bos_token false, so both tokenize the same text the same way.
reply_is() {
  "$SPECK" generate -m "$dir/tiny.gguf" -p "$1" -n "$2" --no-stats >"$dir/gen" 2>/dev/null
  [[ -s $dir/out ]] && cmp -s "$dir/out" <(tail -c +$((${#1} + 1)) "$dir/gen") && ok ||
    bad "reply '$(head -c 80 "$dir/out")' is not generate's '$(tail -c +$((${#1} + 1)) "$dir/gen" | head -c 80)'"
}
expect 0 "one turn, greedy" "Hello there\n" -- "$SPECK" chat -m "$dir/tiny.gguf" -n 12
reply_is $'<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n' 12

# Two turns, then end of input.
expect 0 "two turns" "Hello there\nHow are you?\n" -- \
  "$SPECK" chat -m "$dir/tiny.gguf" -n 12 --stats --seed 1 --temp 0.8
mentions "no chat template; using chatml"
turns=$(grep -c "^speck: prefill" "$dir/err")
[[ $turns == 2 ]] && ok || bad "expected 2 replies, stats show $turns"
# Turn 2 prefills only its own text: the cache already held turn 1 (context - prefill large).
read -r p2 c2 < <(awk '/^speck: prefill/ {p=$3; split($NF, a, "/"); c=a[1]} END {print p, c}' "$dir/err")
(( p2 > 0 && c2 - p2 > 40 )) && ok || bad "turn 2 prefilled $p2 tokens of $c2: cache not reused"

# Same seed, same conversation: same replies (the sampler is seeded once per session).
cp "$dir/out" "$dir/out1"
expect 0 "two turns again" "Hello there\nHow are you?\n" -- \
  "$SPECK" chat -m "$dir/tiny.gguf" -n 12 --seed 1 --temp 0.8
cmp -s "$dir/out" "$dir/out1" && ok || bad "seeded chat is not reproducible"

# /reset empties the cache: the next turn is prefilled from scratch, as short as the first.
expect 0 "reset" "Hi\n/reset\nHi\n" -- "$SPECK" chat -m "$dir/tiny.gguf" -n 4 --stats
mentions "conversation cleared"
first=$(grep "^speck: prefill" "$dir/err" | sed -n 1p | awk '{print $3}')
second=$(grep "^speck: prefill" "$dir/err" | sed -n 2p | awk '{print $3}')
[[ -n $first && $first == "$second" ]] && ok || bad "after /reset prefill $second, first turn $first"

# Template override and a system message; /exit ends early with status 0.
expect 0 "llama3 template" "Hi\n/exit\nnot read\n" -- \
  "$SPECK" chat -m "$dir/tiny.gguf" -n 4 --template llama3 --system "Be brief." --stats
turns=$(grep -c "^speck: prefill" "$dir/err")
[[ $turns == 1 ]] && ok || bad "/exit: expected 1 reply, got $turns"
reply_is $'<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>'$'<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n' 4
expect 0 "empty input" "" -- "$SPECK" chat -m "$dir/tiny.gguf"
[[ ! -s $dir/out ]] && ok || bad "empty input printed a reply: $(head -c 80 "$dir/out")"

# A context too small for the conversation: the message is dropped with a clear error.
expect 0 "context full" "$(printf 'x%.0s' {1..80})\n" -- "$SPECK" chat -m "$dir/tiny.gguf" -c 32
mentions "context full"

# Errors.
expect 1 "missing model" "Hi\n" -- "$SPECK" chat -m "$dir/none.gguf"
mentions "$dir/none.gguf"
expect 2 "unknown template" "Hi\n" -- "$SPECK" chat -m "$dir/tiny.gguf" --template vicuna
mentions "unknown format 'vicuna'"

echo "$pass passed, $fail failed"
[[ $fail == 0 ]]
