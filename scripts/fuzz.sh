#!/usr/bin/env bash
# Fuzz every parser with libFuzzer (docs/fuzzing.md).
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#   SECONDS  per target (default 60); a long run is e.g. `scripts/fuzz.sh 3600`.
#   TARGET   any of the names below (default: all of them).
# Environment: FUZZ_JOBS targets at once (default 1), FUZZ_ARGS extra libFuzzer flags
# (e.g. FUZZ_ARGS=-runs=10000000 for a fixed number of executions; give SECONDS 0 then).
# Builds build-fuzz with clang (ASan + UBSan + libFuzzer), writes the seed corpus, and runs each
# target on its growing corpus (build-fuzz/corpus/T), the seeds and fuzz/regressions/T with its
# dictionary. A crash, leak, sanitizer report, hang (an input over 10 s) or allocation over
# 1 GB fails the run; the input is saved in build-fuzz/crashes/T/. Fix the bug, then add the
# input to fuzz/regressions/T/: ctest replays it in every build from then on.
set -euo pipefail
cd "$(dirname "$0")/.."
# Every target fuzz/CMakeLists.txt builds (its list has one name per indented line).
mapfile -t all < <(sed -n '/^set(SPECK_FUZZ_TARGETS$/,/)$/{/^ /{s/[ )]//g;p}}' fuzz/CMakeLists.txt)
((${#all[@]})) || { echo "fuzz.sh: no targets found in fuzz/CMakeLists.txt" >&2; exit 1; }
secs=${1:-60}
(($# > 0)) && shift
targets=("$@")
((${#targets[@]})) || targets=("${all[@]}")
for t in "${targets[@]}"; do
  [[ " ${all[*]} " == *" $t "* ]] || { echo "fuzz: unknown target '$t' (${all[*]})" >&2; exit 2; }
done

scripts/deps.sh --fuzz
jobs=$(nproc)
cmake -S . -B build-fuzz -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -g" -DSPECK_FUZZ=ON -DBUILD_TESTING=OFF >/dev/null
cmake --build build-fuzz -j"$jobs" --target fuzz_all >/dev/null
rm -rf build-fuzz/seeds
build-fuzz/fuzz/fuzz_seeds build-fuzz/seeds >/dev/null

dict_of() {
  case $1 in
    gguf | model | delta) echo gguf ;;
    safetensors | hf_config | tokenizer_json) echo json ;;
    chat) echo chat ;;
    *) echo text ;;
  esac
}

# One target: its log in build-fuzz/logs/T.log, a summary line on stdout, status 0 when clean.
run() {
  local t=$1 log=build-fuzz/logs/$1.log
  mkdir -p build-fuzz/corpus/"$t" build-fuzz/crashes/"$t" build-fuzz/logs
  local rc=0 time_arg=() dirs=(build-fuzz/corpus/"$t" build-fuzz/seeds/"$t")
  ((secs > 0)) && time_arg=(-max_total_time="$secs")
  [[ -d fuzz/regressions/$t ]] && dirs+=(fuzz/regressions/"$t")
  # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    build-fuzz/fuzz/fuzz_"$t" "${time_arg[@]}" -timeout=10 -rss_limit_mb=2048 \
    -malloc_limit_mb=1024 -print_final_stats=1 -dict=fuzz/dict/"$(dict_of "$t")".dict \
    -artifact_prefix=build-fuzz/crashes/"$t"/ ${FUZZ_ARGS:-} "${dirs[@]}" >"$log" 2>&1 || rc=$?
  local runs eps rss cov
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  eps=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)
  if ((rc == 0)); then
    printf 'fuzz_%-15s ok: %s executions (%s/s), %s, %s inputs in the corpus, peak RSS %s MB\n' \
      "$t" "${runs:-?}" "${eps:-?}" "${cov:-cov: ?}" "$(ls build-fuzz/corpus/"$t" | wc -l)" "${rss:-?}"
    return 0
  fi
  printf 'fuzz_%-15s FAILED (status %d): %s executions; log %s\n' "$t" "$rc" "${runs:-?}" "$log"
  grep -E 'ERROR:|runtime error|invariant violated|SUMMARY' "$log" | head -5 | sed 's/^/    /'
  for f in build-fuzz/crashes/"$t"/*; do
    [[ -e $f ]] || continue
    echo "    input: $f (replay: build-fuzz/fuzz/fuzz_$t $f)"
  done
  return 1
}

# Each target's status goes to a file: `wait -n` only paces the jobs.
mkdir -p build-fuzz/logs
rm -f build-fuzz/logs/*.status
running=0
for t in "${targets[@]}"; do
  if ((running >= ${FUZZ_JOBS:-1})); then
    wait -n || true
    running=$((running - 1))
  fi
  { run "$t" && echo 0 >build-fuzz/logs/"$t".status || echo 1 >build-fuzz/logs/"$t".status; } &
  running=$((running + 1))
done
wait
fail=0
for t in "${targets[@]}"; do
  [[ $(cat build-fuzz/logs/"$t".status 2>/dev/null) == 0 ]] || fail=1
done
if ((fail)); then
  echo "fuzz: failures above; once fixed, copy each input into fuzz/regressions/TARGET/" >&2
  exit 1
fi
