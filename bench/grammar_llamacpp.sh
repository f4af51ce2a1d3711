#!/usr/bin/env bash
# Cross-check constrained greedy decoding against llama.cpp: the same GBNF grammar file and
# prompts through `speck generate --grammar` and llama.cpp's `llama-completion --grammar-file
# --temp 0`, outputs compared byte for byte (llama.cpp's " [end of text]" marker removed).
# Usage: bench/grammar_llamacpp.sh [MODEL.gguf] [LLAMA_BIN_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/default.gguf}
bin=${2:-/tmp/llama.cpp/build/bin}
[[ -x $bin/llama-completion ]] || { echo "no $bin/llama-completion"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# the grammar of build/speck's json_object, written out (docs/grammar.md)
cat > "$tmp/json.gbnf" <<'G'
root ::= object
value ::= object | array | string | number | ("true" | "false" | "null")
object ::= "{" ws ( string ws ":" ws value ws ( "," ws string ws ":" ws value ws )* )? "}"
array ::= "[" ws ( value ws ( "," ws value ws )* )? "]"
string ::= "\"" ( [^"\\\x00-\x1F] | "\\" ( ["\\/bfnrt] | "u" [0-9a-fA-F]{4} ) )* "\""
number ::= "-"? ( [0-9] | [1-9] [0-9]{1,15} ) ( "." [0-9]{1,16} )? ( [eE] [-+]? [0-9]{1,3} )?
ws ::= | " " | "\n" [ \t]{0,20}
G
cat > "$tmp/list.gbnf" <<'G'
root ::= ("- " item "\n"){1,4}
item ::= [a-z_]+ ( "(" [a-z_, ]* ")" )?
G
prompts=('config = ' $'def f():\n    return ' 'data = {"name": ' $'# settings\nx = '
         $'import os\n\n# TODO list\n' 'result = ' $'def load(path):\n    """' 'items = ')
same=0 total=0
for g in json list; do
  for p in "${prompts[@]}"; do
    a=$("$bin/llama-completion" -m "$model" -p "$p" -n 100 --temp 0 --grammar-file "$tmp/$g.gbnf" \
        -no-cnv -t 2 2>/dev/null | sed 's/ \[end of text\]$//')
    b=$(build/speck generate -m "$model" -p "$p" -n 100 --grammar "$tmp/$g.gbnf" --no-stats 2>/dev/null)
    total=$((total + 1))
    if [[ "$a" == "$b" ]]; then same=$((same + 1)); else
      printf 'DIFF (%s, %q)\n  llama.cpp: %q\n  speck:     %q\n' "$g" "$p" "$a" "$b"; fi
  done
done
echo "$same of $total constrained greedy outputs identical to llama.cpp's"
