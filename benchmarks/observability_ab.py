"""Interleaved A/B of observability overhead, for a shared noisy machine.

Two gateways run at once, both pinned to the same CPU: `plain` (no OTEL_* variables) and
`traced` (every request traced and exported over OTLP/HTTP to benchmarks/observability_sink.py,
/metrics scraped every second). The load (wrk, pinned with the fake upstream and the sink on the
other CPU) alternates between them in short slices, ABBA order, so a burst of other tenants' load
hits both about equally; each slice measures the gateway's CPU time (utime+stime from /proc) per
request. Reported: medians over slices of CPU ms/request, requests/s and p50 latency, and the
median of the per-pair traced/plain ratios.

    .venv/bin/python benchmarks/observability_ab.py [--slices 12] [--seconds 2] [--conns 64,1]

Needs wrk, taskset and the shared peer harness's fake upstream (../shared/bench, or
COHORTGATE_BENCH_DIR) run by its venv ($BENCH_CACHE/venv, made by its setup.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def foreign_load() -> tuple[float, float]:
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(x) for x in parts]
    return sum(vals) - vals[3] - vals[4], time.monotonic()  # busy jiffies (all processes), now


def wrk(url: str, conns: int, seconds: int, script: Path) -> tuple[int, float]:
    out = subprocess.run(["taskset", "-c", "0", "wrk", "-t1", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    n = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    m = re.search(r"50%\s+([\d.]+)(us|ms|s)", out)
    p50 = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)] if m else float("nan")
    return n, p50


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=12, help="A/B pairs per concurrency")
    ap.add_argument("--seconds", type=int, default=2, help="length of one slice (whole seconds, wrk)")
    ap.add_argument("--conns", default="64,1", help="wrk concurrencies to measure")
    ap.add_argument("--out", default=str(HERE / "results" / f"observability-ab-{time.strftime('%F')}.json"))
    a = ap.parse_args()
    bench = Path(os.environ.get("COHORTGATE_BENCH_DIR", ROOT.parent / "shared" / "bench"))
    bench_py = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "gwbench")) / "venv" / "bin" / "python"
    for tool in ("wrk", "taskset", "curl"):
        if shutil.which(tool) is None:
            print(f"{tool} is required", file=sys.stderr)
            return 2
    if not (bench / "fake_upstream.py").exists() or not bench_py.exists():
        print(f"fake upstream or its venv missing ({bench}, {bench_py}): run {bench}/setup.sh", file=sys.stderr)
        return 2
    gw = str(ROOT / ".venv" / "bin" / "cohortgate")
    work = Path(tempfile.mkdtemp(prefix="obs-ab-"))
    up, sink = free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def start(cmd: list[str], env: dict[str, str] | None = None, log: str = "log") -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=open(work / log, "wb"),
                             stderr=subprocess.STDOUT, start_new_session=True)
        procs.append(p)
        return p

    stop_scrape = threading.Event()
    try:
        start(["taskset", "-c", "0", str(bench_py), str(bench / "fake_upstream.py"), "--port", str(up)],
              log="upstream.log")
        start(["taskset", "-c", "0", sys.executable, str(HERE / "observability_sink.py"), "--port", str(sink),
               "--stats", str(work / "sink.json")], log="sink.log")
        wait(f"http://127.0.0.1:{up}/health")
        key = subprocess.run([gw, "policy", "hash-key", "sk-bench-master-key"], capture_output=True, text=True,
                             check=True).stdout.strip()
        policy = (HERE / "gateway_policy.tmpl.yaml").read_text().replace("@UPSTREAM@", f"http://127.0.0.1:{up}/v1")
        (work / "policy.yaml").write_text(policy.replace("@KEYHASH@", key))
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        ports = {"plain": free_port(), "traced": free_port()}
        pids = {}
        for name, port in ports.items():
            env = dict(base_env)
            if name == "traced":
                env.update(OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{sink}", OTEL_SERVICE_NAME="cohortgate-ab")
            p = subprocess.Popen(["taskset", "-c", "1", gw, "serve", "--policy", str(work / "policy.yaml"),
                                  "--port", str(port), "--log-level", "INFO"], env=env,
                                 stdout=open(work / f"{name}.log", "wb"), stderr=subprocess.STDOUT,
                                 start_new_session=True)
            procs.append(p)
            pids[name] = p.pid
            wait(f"http://127.0.0.1:{port}/healthz")

        def scrape() -> None:  # Prometheus' part, 15x its default rate
            while not stop_scrape.wait(1.0):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{ports['traced']}/metrics", timeout=2).read()
                except OSError:
                    pass

        threading.Thread(target=scrape, daemon=True).start()
        script = work / "chat.lua"
        script.write_text('wrk.method = "POST"\nwrk.body = \'{"model":"fake-model","messages":[{"role":"user",'
                          '"content":"hello there, how are you"}],"max_tokens":16}\'\n'
                          'wrk.headers["Content-Type"] = "application/json"\n'
                          'wrk.headers["Authorization"] = "Bearer sk-bench-master-key"\n')
        results: dict[str, object] = {"slices": a.slices, "seconds": a.seconds, "cpu": os.cpu_count()}
        for conns in (int(c) for c in a.conns.split(",")):
            for name in ports:  # warm-up
                wrk(f"http://127.0.0.1:{ports[name]}/v1/chat/completions", conns, 1, script)
            rows: dict[str, list[tuple[float, float, float, float]]] = {"plain": [], "traced": []}
            for i in range(a.slices):
                order = ("plain", "traced") if i % 2 == 0 else ("traced", "plain")
                for name in order:
                    c0, (b0, t0) = cpu_s(pids[name]), foreign_load()
                    n, p50 = wrk(f"http://127.0.0.1:{ports[name]}/v1/chat/completions", conns, a.seconds, script)
                    c1, (b1, t1) = cpu_s(pids[name]), foreign_load()
                    busy = (b1 - b0) / os.sysconf("SC_CLK_TCK") / (t1 - t0)  # all CPUs' busy cores
                    rows[name].append((1e3 * (c1 - c0) / max(1, n), n / a.seconds, p50, busy))
            ratios = [t[0] / p[0] for p, t in zip(rows["plain"], rows["traced"], strict=True) if p[0] > 0]
            summary = {name: {"cpu_ms_per_req": statistics.median(r[0] for r in rs),
                              "rps": statistics.median(r[1] for r in rs),
                              "p50_ms": statistics.median(r[2] for r in rs),
                              "machine_busy_cores": statistics.median(r[3] for r in rs)} for name, rs in rows.items()}
            summary["traced_over_plain_cpu_per_req_median_of_pairs"] = statistics.median(ratios)
            summary["traced_over_plain_rps"] = summary["traced"]["rps"] / summary["plain"]["rps"]  # type: ignore[index]
            summary["traced_over_plain_p50"] = summary["traced"]["p50_ms"] / summary["plain"]["p50_ms"]  # type: ignore[index]
            summary["slices_raw"] = rows
            results[f"c{conns}"] = summary
            print(f"c{conns}: " + json.dumps({k: v for k, v in summary.items() if k != "slices_raw"}, indent=1))
    finally:
        stop_scrape.set()
        for p in reversed(procs):
            try:
                os.killpg(p.pid, 15)
                p.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(p.pid, 9)
    results["sink"] = json.loads((work / "sink.json").read_text()) if (work / "sink.json").exists() else None
    results["traced_log"] = [ln for ln in (work / "traced.log").read_text().splitlines() if "tracing" in ln]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=1))
    print("exporter:", *results["traced_log"], sep="\n  ")  # type: ignore[misc]
    print("sink:", json.dumps(results["sink"]))
    print("wrote", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
