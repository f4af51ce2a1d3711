#!/usr/bin/env bash
# One command from a fresh Debian 12 machine: install what is missing, build, and run the main
# job (generation with the default model).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >/dev/null
cmake --build build -j"$(nproc)"
model=models/default.gguf
if [[ ! -f $model ]]; then
  # Until the trained default model lands, a small random-weight model written by speck itself.
  model=build/speck-tiny.gguf
  [[ -f $model ]] || build/speck init --preset tiny --seed 1 -o "$model"
fi
build/speck info -m "$model" --no-tensors | tail -3
build/speck generate -m "$model" -p "def fibonacci(n):" -n 48 --temp 0
build/speck bench -m "$model" -r 3
