#!/usr/bin/env bash
# Side-by-side gateway benchmark: cohortgate vs the peers in ../shared/bench (aiohttp proxy,
# FastAPI+httpx proxy, LiteLLM), same run, same fake upstream, gateway pinned to one CPU.
#   benchmarks/gateway_bench.sh [--quick] [extra gateway_bench.py flags]
# Results land in benchmarks/results/gateway-<date>.{json,md}.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
BENCH="${COHORTGATE_BENCH_DIR:-$ROOT/../shared/bench}"
[ -x "$BENCH/gateway_bench.py" ] || { echo "peer harness not found at $BENCH (set COHORTGATE_BENCH_DIR)"; exit 2; }
"$BENCH/setup.sh" >/dev/null
"$ROOT/scripts/bootstrap"
GW="$ROOT/.venv/bin/cohortgate"
KEYHASH=$("$GW" policy hash-key sk-bench-master-key)
TMPL="$HERE/gateway_policy.tmpl.yaml"
OUT="${OUT:-$HERE/results/gateway-$(date +%F)}"
exec "$BENCH/gateway_bench.py" \
  --target "sed -e 's#@UPSTREAM@#{upstream_v1}#' -e 's#@KEYHASH@#$KEYHASH#' $TMPL > {workdir}/policy.yaml && exec $GW serve --policy {workdir}/policy.yaml --host 127.0.0.1 --port {port} --log-level WARNING" \
  --target-name cohortgate --out "$OUT" "$@"
