#!/usr/bin/env bash
# Observability overhead as CPU instructions per request: deterministic, so it can be measured on
# a machine shared with other load (where CPU-time ratios swing by +-15%).
# The gateway runs under valgrind (cachegrind, no cache simulation: it counts the instructions of
# every thread of the process) with the benchmark policy, in three modes:
#   plain       no OTEL_* variables
#   unsampled   tracing configured but OTEL_TRACES_SAMPLER=always_off (request hooks only)
#   traced      every request traced and exported over OTLP/HTTP to benchmarks/observability_sink.py
#               in POSTs of 512 spans (the default batch size; the rest at shutdown). The timer
#               is pushed out of the way (OTEL_BSP_SCHEDULE_DELAY=600000): under valgrind a
#               request takes ~50x longer, so the default 5 s timer would send smaller POSTs, as
#               many as the machine's other load slows the run, instead of the full batches the
#               same gateway sends at any real request rate
# Each mode runs twice, with N1 and N2 sequential chat completions on one keep-alive connection;
# (instructions(N2) - instructions(N1)) / (N2 - N1) cancels start-up and shutdown.
#   benchmarks/observability_instructions.sh [N1 N2]        (defaults 200 1200; ~5 minutes)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
N1="${1:-200}"; N2="${2:-1200}"
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)"; exit 2; }
PY="$ROOT/.venv/bin/python"
WORK="$(mktemp -d)"
port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
UP=$(port); SINK=$(port)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
"$PY" -m cohortgate fake-upstream --port "$UP" --name fake-model >"$WORK/upstream.log" 2>&1 & PIDS+=($!)
"$PY" "$HERE/observability_sink.py" --port "$SINK" --stats "$WORK/sink.json" >"$WORK/sink.log" 2>&1 & PIDS+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$UP/health" >/dev/null && break; sleep 0.1; done
KEYHASH=$("$ROOT/.venv/bin/cohortgate" policy hash-key sk-bench-master-key)
sed -e "s#@UPSTREAM@#http://127.0.0.1:$UP/v1#" -e "s#@KEYHASH@#$KEYHASH#" "$HERE/gateway_policy.tmpl.yaml" >"$WORK/policy.yaml"

run() {  # MODE N -> prints instructions
  local mode=$1 n=$2 gp vpid
  gp=$(port)
  (
    unset OTEL_EXPORTER_OTLP_ENDPOINT OTEL_EXPORTER_OTLP_TRACES_ENDPOINT OTEL_TRACES_SAMPLER
    case $mode in
      traced) export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK" OTEL_BSP_SCHEDULE_DELAY=600000 ;;
      unsampled) export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$SINK" OTEL_TRACES_SAMPLER=always_off ;;
    esac
    exec valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=/dev/null \
      "$PY" -m cohortgate serve --policy "$WORK/policy.yaml" --port "$gp" --log-level WARNING
  ) >"$WORK/$mode-$n.log" 2>&1 &
  vpid=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$gp/healthz" >/dev/null && break; sleep 0.5; done
  "$PY" - "$gp" "$n" <<'PY'
import http.client, json, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
body = json.dumps({"model": "fake-model", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "hello there, how are you"}]})
for _ in range(n):
    c.request("POST", "/v1/chat/completions", body=body,
              headers={"content-type": "application/json", "authorization": "Bearer sk-bench-master-key"})
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
PY
  kill -TERM "$vpid"; wait "$vpid" || true
  grep -o 'I *refs: *[0-9,]*' "$WORK/$mode-$n.log" | tr -d ', ' | cut -d: -f2
}

declare -A PER
for mode in plain unsampled traced; do
  a=$(run "$mode" "$N1") b=$(run "$mode" "$N2")
  PER[$mode]=$(( (b - a) / (N2 - N1) ))
  echo "$mode: ${PER[$mode]} instructions/request"
done
"$PY" -c "
p, u, t = ${PER[plain]}, ${PER[unsampled]}, ${PER[traced]}
print(f'request hooks (unsampled/plain): {u / p:.3f}   traced and exported (traced/plain): {t / p:.3f}')"
echo "sink: $(curl -s "http://127.0.0.1:$SINK/stats")"
