#!/usr/bin/env bash
# Side-by-side merge benchmark: cohortgate vs mergekit on the shared harness (../shared/bench).
#   benchmarks/merge_bench.sh [--size tiny|small|470m] [--methods ...] [other merge_bench.py flags]
# Results land in benchmarks/results/merge-cohortgate-<size>-<date>.{json,md} unless --out is given.
# Needs the shared bench venv (run /work/shared/bench/setup.sh once) and this repo's .venv.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(dirname "$HERE")"
BENCH="${BENCH_DIR:-$REPO/../shared/bench}"
[ -x "$BENCH/merge_bench.py" ] || { echo "no merge_bench.py under $BENCH (set BENCH_DIR)"; exit 2; }
SIZE=470m
ARGS=("$@")
for ((i = 0; i < ${#ARGS[@]}; i++)); do
  if [ "${ARGS[$i]}" = "--size" ]; then SIZE="${ARGS[$((i + 1))]}"; fi
done
OUT=()
case " $* " in *" --out "*) ;; *) OUT=(--out "$HERE/results/merge-cohortgate-$SIZE-$(date -u +%F)") ;; esac
exec "$BENCH/merge_bench.py" \
  --candidate "$REPO/.venv/bin/python -m merge.cli {config} {out} --no-progress" \
  --candidate-name cohortgate --drop-caches inputs "${OUT[@]}" "$@"
