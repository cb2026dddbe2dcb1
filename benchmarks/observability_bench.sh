#!/usr/bin/env bash
# Observability overhead: the core gateway benchmark (shared peer harness, same policy as
# benchmarks/gateway_bench.sh) with two cohortgate targets in the same run:
#   cohortgate         no tracing (OTEL_* unset), /metrics not scraped
#   cohortgate-traced  every request traced and exported over OTLP/HTTP to a local sink
#                      (benchmarks/observability_sink.py, pinned with the load generator on CPU0),
#                      and /metrics scraped every second (15x Prometheus' default rate)
#   cohortgate-traced-10pct  the same with 10% head sampling (parentbased_traceidratio 0.1)
# The "xcohortgate" columns are the traced/plain ratios (target: within 10%). On a machine shared
# with other load, benchmarks/observability_ab.py (both gateways up at once, load alternating in
# short slices) gives steadier CPU-per-request ratios.
#   benchmarks/observability_bench.sh [--quick] [extra gateway_bench.py flags]
# Results: benchmarks/results/observability-<date>.{json,md} and .sink.json (spans received).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
BENCH="${COHORTGATE_BENCH_DIR:-$ROOT/../shared/bench}"
[ -x "$BENCH/gateway_bench.py" ] || { echo "peer harness not found at $BENCH (set COHORTGATE_BENCH_DIR)"; exit 2; }
command -v curl >/dev/null || { echo "curl is needed to scrape /metrics during the run"; exit 2; }
"$BENCH/setup.sh" >/dev/null
"$ROOT/scripts/bootstrap"
PY="$ROOT/.venv/bin/python"
GW="$ROOT/.venv/bin/cohortgate"
KEYHASH=$("$GW" policy hash-key sk-bench-master-key)
TMPL="$HERE/gateway_policy.tmpl.yaml"
OUT="${OUT:-$HERE/results/observability-$(date +%F)}"
mkdir -p "$(dirname "$OUT")"
SINK_PORT=$("$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PIN=(); command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ] && PIN=(taskset -c 0)
"${PIN[@]}" "$PY" "$HERE/observability_sink.py" --port "$SINK_PORT" --stats "$OUT.sink.json" &
SINK_PID=$!
trap 'kill "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$SINK_PORT/stats" >/dev/null && break; sleep 0.1; done

POLICY="sed -e 's#@UPSTREAM@#{upstream_v1}#' -e 's#@KEYHASH@#$KEYHASH#' $TMPL > {workdir}/policy.yaml"
SERVE="$GW serve --policy {workdir}/policy.yaml --host 127.0.0.1 --port {port} --log-level WARNING"
# The scraper stands in for Prometheus: it runs on the load generator's CPU and outside the
# gateway's process tree (a double fork), so its curl processes count neither against the
# gateway's core nor in its CPU per request; the gateway's own /metrics work does. It stops with
# the target's process group.
SCRAPE_PIN=""; [ ${#PIN[@]} -gt 0 ] && SCRAPE_PIN="taskset -c 0"
SCRAPE="{ ( $SCRAPE_PIN sh -c 'while sleep 1; do curl -s -o /dev/null http://127.0.0.1:{port}/metrics; done' & ) ; }"
OTEL="OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$SINK_PORT OTEL_SERVICE_NAME=cohortgate-bench"
SAMPLED="OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.1"
"$BENCH/gateway_bench.py" --peers none \
  --target "$POLICY && exec env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT $SERVE" \
  --target-name cohortgate \
  --target "$POLICY && $SCRAPE && exec env $OTEL $SERVE" \
  --target-name cohortgate-traced \
  --target "$POLICY && $SCRAPE && exec env $OTEL $SAMPLED $SERVE" \
  --target-name cohortgate-traced-10pct \
  --ref cohortgate --out "$OUT" "$@"
kill "$SINK_PID"; wait "$SINK_PID" 2>/dev/null || true
trap - EXIT
echo "OTLP sink: $(cat "$OUT.sink.json")"
