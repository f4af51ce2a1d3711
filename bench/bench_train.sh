#!/usr/bin/env bash
# Training tokens/s: speck (bench_train) vs PyTorch CPU (bench_train_torch.py), same model, batch
# and sequence length, each at every thread count of a list, alternated run by run; each side is
# then taken at its best thread count (PyTorch 1.13 is fastest on one thread on this 2-core VM),
# and the ratio is speck's best median over PyTorch's best median.
#
#   usage: bench/bench_train.sh [-r ROUNDS] [-t "1 2"] [-s STEPS] BUILD_DIR
#                               [n_layer n_embd n_head n_head_kv n_ff n_vocab T B]
#   defaults: 3 rounds, threads "1 2", 10 optimizer steps per run (after 2 warm-up steps),
#   the model of bench_train.c (4 x 256, 5.25M parameters, batch 8 x 128).
# Both programs run with OPENBLAS_CORETYPE unset (this VM's environment sets Haswell, which halves
# OpenBLAS sgemm on Zen 5); -k keeps the environment as it is.
set -eu
ROUNDS=3
THREADS="1 2"
STEPS=10
KEEP_ENV=0
while getopts "r:t:s:kh" o; do
  case $o in
    r) ROUNDS=$OPTARG ;;
    t) THREADS=$OPTARG ;;
    s) STEPS=$OPTARG ;;
    k) KEEP_ENV=1 ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
BUILD=${1:-build}
shift || true
CFG=("$@")
if [ ${#CFG[@]} -ne 0 ] && [ ${#CFG[@]} -ne 8 ]; then
  echo "bench_train.sh: the model takes 8 numbers (n_layer n_embd n_head n_head_kv n_ff n_vocab T B)" >&2
  exit 2
fi
if [ ${#CFG[@]} -eq 0 ]; then CFG=(4 256 8 4 768 4096 128 8); fi
here=$(cd "$(dirname "$0")" && pwd)
run_env=(env -u OPENBLAS_CORETYPE)
[ "$KEEP_ENV" = 1 ] && run_env=(env)
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Each run's own lines go to stderr (so a log of 2>&1 keeps them in order); stdout gets the
# per-round lines and the summary.
for round in $(seq 1 "$ROUNDS"); do
  for t in $THREADS; do
    out=$("${run_env[@]}" "$BUILD/bench_train" "$t" "${CFG[@]}" "$STEPS")
    echo "$out" >&2
    s=$(awk '/^RESULT/ {split($3, a, "="); print a[2]}' <<<"$out")
    echo "speck $t $s" >>"$log"
    out=$("${run_env[@]}" /usr/bin/python3 "$here/bench_train_torch.py" "$t" "${CFG[@]}" "$STEPS")
    echo "$out" >&2
    p=$(awk '/^RESULT/ {split($3, a, "="); print a[2]}' <<<"$out")
    echo "torch $t $p" >>"$log"
    printf 'round %d, %d thread(s): speck %.0f tok/s, torch %.0f tok/s (load %s)\n' "$round" "$t" "$s" "$p" \
      "$(cut -d' ' -f1 /proc/loadavg)"
  done
done

# Medians per (program, threads); then each program's best thread count.
python3 - "$log" "${CFG[*]}" "$ROUNDS" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
runs = {}
for prog, t, v in rows:
    runs.setdefault((prog, int(t)), []).append(float(v))
print(f"\nmodel {sys.argv[2]} (n_layer n_embd n_head n_head_kv n_ff n_vocab T B), "
      f"{sys.argv[3]} alternated rounds, tokens/s of full AdamW steps")
print("| program | threads | median tok/s | runs |")
print("|---|---:|---:|---|")
for (prog, t), v in sorted(runs.items()):
    print(f"| {prog} | {t} | {statistics.median(v):.0f} | {' / '.join(f'{x:.0f}' for x in v)} |")
best = {}
for prog in ("speck", "torch"):
    cand = [(statistics.median(v), t) for (p, t), v in runs.items() if p == prog]
    best[prog] = max(cand)
    print(f"{prog} best: {best[prog][0]:.0f} tok/s at {best[prog][1]} thread(s)")
print(f"speck best / torch best = {best['speck'][0] / best['torch'][0]:.2f}x")
EOF
