#!/usr/bin/env bash
# The whole test suite: a release build and an AddressSanitizer + UndefinedBehaviorSanitizer
# build, both through ctest, then a short run of every fuzz target (docs/fuzzing.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh --test
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=ON >/dev/null
cmake --build build -j"$jobs"
# The sanitizer build is optimised (-O1, as the ASan documentation advises for speed): at -O0 its
# tests took 1.7x the CPU time (the 8 heaviest: 320 s against 187 s), far more than -O1 adds to
# the build (~50 s on 2 cores).
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" \
  -DSPECK_SANITIZE=ON -DBUILD_TESTING=ON >/dev/null
cmake --build build-asan -j"$jobs"
# ctest lists skipped tests (exit 77: a missing dependency, or a CPU without an instruction set)
# but shows only failures' output: print the reasons the tests gave. With CI set, a missing
# dependency fails its test instead.
skip_reasons() {
  grep -h '^SKIP' "$1/Testing/Temporary/LastTest.log" 2>/dev/null | sort -u | sed 's/^/  /' || true
}
(cd build && ctest --output-on-failure --no-tests=error -j"$jobs")
skip_reasons build
# Under the sanitizers: every test that runs speck's C code on inputs of its own. Left out are the
# ones whose time goes to Python/Node rather than C (the transformers.js corpus comparison, the
# Hugging Face reference and the reference's self-test), and the reruns of the forward-pass
# comparison on other kernel paths and layouts (AVX2, portable, row layout, f16 cache; dense and
# mixture-of-experts): they run the same forward-pass code as forward_reference(_moe) over other
# kernels, whose memory accesses
# test_kernels checks under the sanitizers on every path; their numerics are checked in the
# release run above. Together they took ~60 % of the sanitizer run's time. For the same reason
# the block types' forward comparison (forward_reference_quant: the forward_reference code over
# the other types' kernels, which test_quant runs here on every path) and the file-type mixes
# (quantize_mix: the quantizers test_quant runs here, through the CLI for each ftype; the CLI's
# streaming writer still runs here in quantize_imatrix / _gptq / _alloc / _recon) stay in the
# release run: 22 s and 39 s of the sanitizer run's 233 s (2026-12-07). train_reference_arch
# (PyTorch gradients of the qwen / olmoe layers) likewise: test_train_arch runs the same training
# code (biases, q/k norms, the shared expert) here.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd build-asan && ctest --output-on-failure --no-tests=error -j"$jobs" \
  -E '^(tokenizer_hf|hf_reference|reference_selftest|quantize_mix|train_reference_arch|forward_reference_(avx2|scalar|rows|kv16|kv16_avx2|mix_avx2|mix_scalar|quant|quant_rows|moe_avx2|moe_scalar|moe_rows))$')
skip_reasons build-asan
# Fuzz smoke run: each libFuzzer target for 8 s, as many at once as there are cores (about
# 1.5 minutes with the clang build on 2 cores). A crash, sanitizer report, leak, hang or
# oversized allocation fails the suite; the input is kept in build-fuzz/crashes/TARGET/.
FUZZ_JOBS=$jobs bash scripts/fuzz.sh 8
