#!/usr/bin/env bash
# Two builds compared with bench_pass: this checkout's build/bench_pass against the same harness
# compiled with another revision's library, the two programs alternated process by process.
#
#   usage: bench/bench_pass_builds.sh [-R ROUNDS] [-b BUILD] BASE_REV [bench_pass options...]
#   e.g.:  bench/bench_pass_builds.sh -R 5 6aab6dc -m /tmp/m/smollm2-135m-f32.gguf \
#              -c kv=f32 -n 1,4,8 -r 9
#
# BASE_REV is exported with `git archive` (no worktree, the repository is left as it is) to
# /tmp/speck-pass-base-REV and its library built there; bench/bench_pass.c of this checkout is
# compiled against it (with BENCH_PASS_OLD_API / BENCH_PASS_NO_SET_ISA where that revision's
# speck.h lacks the f16 KV cache or speck_set_isa). Each round runs the base program then this
# one (ROUNDS, default 5), each with the given options plus --json; the report gives, per
# configuration and token count, each program's median of its runs' medians and the median of
# the per-round ratios new / base (< 1: the new build is faster). OPENBLAS_CORETYPE is unset.
set -eu
ROUNDS=5
BUILD=build
while getopts "R:b:h" o; do
  case $o in
    R) ROUNDS=$OPTARG ;;
    b) BUILD=$OPTARG ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ $# -lt 1 ]; then sed -n '2,15p' "$0"; exit 2; fi
REV=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
new="$root/$BUILD/bench_pass"
[ -x "$new" ] || { echo "bench_pass_builds.sh: build $new first" >&2; exit 1; }
sha=$(git -C "$root" rev-parse --short=10 "$REV^{commit}")
base_dir=/tmp/speck-pass-base-$sha
base="$base_dir/build/bench_pass"

if [ ! -x "$base" ]; then
  rm -rf "$base_dir"
  mkdir -p "$base_dir"
  git -C "$root" archive "$sha" | tar -x -C "$base_dir"
  cp "$root/bench/bench_pass.c" "$base_dir/bench/bench_pass_current.c"
  defs=""
  grep -q speck_ctx_new_kv "$base_dir/include/speck.h" || defs="$defs BENCH_PASS_OLD_API"
  grep -q speck_set_isa "$base_dir/include/speck.h" || defs="$defs BENCH_PASS_NO_SET_ISA"
  cat >>"$base_dir/CMakeLists.txt" <<EOF

add_executable(bench_pass bench/bench_pass_current.c)
target_link_libraries(bench_pass PRIVATE speck)
target_compile_definitions(bench_pass PRIVATE $defs)
EOF
  cmake -S "$base_dir" -B "$base_dir/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF >/dev/null
  cmake --build "$base_dir/build" -j2 --target bench_pass >/dev/null
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for r in $(seq 1 "$ROUNDS"); do
  env -u OPENBLAS_CORETYPE "$base" "$@" --json >"$out/base.$r.json"
  env -u OPENBLAS_CORETYPE "$new" "$@" --json >"$out/new.$r.json"
  echo "round $r of $ROUNDS done" >&2
done

python3 - "$out" "$ROUNDS" "$sha" "$(git -C "$root" rev-parse --short=10 HEAD)" <<'EOF'
import json, statistics, sys
d, rounds, base_rev, head = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
runs = {k: [json.load(open(f"{d}/{k}.{r}.json")) for r in range(1, rounds + 1)] for k in ("base", "new")}
first = runs["new"][0]
print(f"bench_pass, {base_rev} (base) vs {head} (this checkout; uncommitted changes included), "
      f"{rounds} alternated runs of {first['reps']} rounds each, depth {first['depth']}, "
      f"{first['threads']} threads, {first['isa']} path")
print("| config | n | base ms | new ms | new / base (median of per-run ratios) | per-run ratios |")
print("|---|---:|---:|---:|---:|---|")
keys = [(x["config"], x["n"]) for x in first["results"]]
for cfg, n in keys:
    def med(kind):
        return [next(x["median_ms"] for x in run["results"] if x["config"] == cfg and x["n"] == n)
                for run in runs[kind]]
    b, w = med("base"), med("new")
    ratios = [y / x for x, y in zip(b, w)]
    print(f"| {cfg} | {n} | {statistics.median(b):.3f} | {statistics.median(w):.3f} | "
          f"{statistics.median(ratios):.3f}x | {' / '.join(f'{r:.3f}' for r in ratios)} |")
EOF
