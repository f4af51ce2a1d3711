#!/usr/bin/env bash
# One command from a fresh Debian 12 machine: install what is missing, build, and run the main
# job on the default model: the same completion by plain and by accelerated decoding, and the
# speedup; then the speed benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >/dev/null
cmake --build build -j"$(nproc)"
model=models/default.gguf
build/speck info -m "$model" --no-tensors | tail -2
prompt='def read_config(path):
    """Read a configuration file and return a dict."""
    with open(path) as f:
'
build/speck generate -m "$model" -p "$prompt" -n 96 --temp 0 --draft prompt,aded --compare
build/speck bench -m "$model" -r 3
