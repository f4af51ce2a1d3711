#!/usr/bin/env bash
# llama.cpp runs speck's LoRA adapters (not a test): greedy continuations of a few prompts by
# `speck generate --lora` and `llama-completion --lora` on the same base and adapter files.
# llama-completion sometimes drops the last few characters of its output at exit, so a pair
# agrees when the shorter text is a prefix of the longer one and at least half of it (every character both printed is the same).
#   usage: bench/lora_llamacpp_check.sh BUILD_DIR BASE.gguf ADAPTER.gguf... [LLAMA_BIN_DIR]
set -u
BUILD=$1 BASE=$2; shift 2
LLAMA=${LLAMA_BIN:-/tmp/llama.cpp/build/bin}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
agree=0 total=0
for ad in "$@"; do
  for p in "def encode(self, o):" "import os" "class Parser:" "def fibonacci(n):"; do
    "$BUILD/speck" generate -m "$BASE" --lora "$ad" -p "$p" -n 32 --temp 0 -t 1 2>/dev/null >"$tmp/s"
    timeout 120 "$LLAMA/llama-completion" -m "$BASE" --lora "$ad" -p "$p" -n 32 --temp 0 \
      -no-cnv -t 1 2>/dev/null >"$tmp/l"
    total=$((total + 1))
    if /usr/bin/python3 - "$tmp/s" "$tmp/l" <<'PY'
import sys
a, b = (open(f).read().rstrip() for f in sys.argv[1:3])
s, l = sorted([a, b], key=len)
sys.exit(not (l.startswith(s) and len(s) >= 0.5 * len(l)))
PY
    then agree=$((agree + 1)); else echo "DIFF $ad '$p'"; diff "$tmp/s" "$tmp/l"; fi
  done
done
echo "$agree / $total greedy continuations agree (speck vs llama.cpp, adapters unmerged)"
((agree == total))
