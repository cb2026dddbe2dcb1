#!/usr/bin/env bash
# Mirroring cost, side by side in one run of the shared peer harness (gateway pinned to one CPU):
#   cohortgate              the benchmark policy, no mirror
#   cohortgate-mirror100    the same, mirroring 100% of requests to a (fast) shadow
#   cohortgate-slowshadow   mirroring 100% to a shadow that answers after 5 s (bounded queue, drops)
# Goals: mirror100 keeps >= 85% of the no-mirror throughput at c64; a slow shadow leaves the
# primary's p50/p99 within noise of no mirroring.
#   benchmarks/mirror_bench.sh [--quick] [extra gateway_bench.py flags]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
BENCH="${COHORTGATE_BENCH_DIR:-$ROOT/../shared/bench}"
"$BENCH/setup.sh" >/dev/null
"$ROOT/scripts/bootstrap"
GW="$ROOT/.venv/bin/cohortgate"
KEYHASH=$("$GW" policy hash-key sk-bench-master-key)
TMPL="$HERE/gateway_policy.tmpl.yaml"
OUT="${OUT:-$HERE/results/mirror-$(date +%F)}"
render="sed -e 's#@UPSTREAM@#{upstream_v1}#' -e 's#@KEYHASH@#$KEYHASH#' $TMPL"
# a dedicated shadow upstream (never a primary target) and a mirror block on both routes
shadow() { echo "sed -e 's#^upstreams:#upstreams:\n  shadow:\n    base_url: $1\n    model: fake-model\n    max_connections: 64#' -e 's#^    fallback: \[backup\]#    fallback: [backup]\n    mirror: {targets: [shadow], percent: 100, queue_size: 256, concurrency: 16, timeout_s: 10}#'"; }
exec "$BENCH/gateway_bench.py" --peers direct \
  --target "$render > {workdir}/p.yaml && exec $GW serve --policy {workdir}/p.yaml --port {port} --log-level WARNING" \
  --target-name cohortgate \
  --target "$render | $(shadow '{upstream_v1}') > {workdir}/m.yaml && exec $GW serve --policy {workdir}/m.yaml --port {port} --log-level WARNING" \
  --target-name cohortgate-mirror100 \
  --target "SP=\$(( {port} + 1 )); $render | $(shadow '@SHADOW@') | sed -e \"s#@SHADOW@#http://127.0.0.1:\$SP/v1#\" > {workdir}/s.yaml && ($GW fake-upstream --port \$SP --name slow --fault slow --delay 5 >/dev/null 2>&1 &) && sleep 1 && exec $GW serve --policy {workdir}/s.yaml --port {port} --log-level WARNING" \
  --target-name cohortgate-slowshadow \
  --ref cohortgate --out "$OUT" "$@"
