#!/usr/bin/env python3
"""Instructions per proxied request, counted by valgrind's callgrind: a noise-free companion to
benchmarks/gateway_bench.sh for shared, loaded machines (instruction counts do not depend on
what else the machine is doing).

For each gateway (cohortgate with the benchmark policy, and the peer minimal aiohttp proxy from
../shared/bench) it starts the gateway under callgrind with instrumentation off, warms it up,
switches instrumentation on, sends N non-streamed chat completions (keep-alive, concurrency C)
and M streamed ones, switches it off and reads the instruction count. The fake upstream runs
natively. Results: benchmarks/results/gateway-instructions-<date>.json and a printed table.

    benchmarks/gateway_instructions.py [--requests 400] [--streams 100]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCH = Path(os.environ.get("COHORTGATE_BENCH_DIR", ROOT.parent / "shared" / "bench"))
BENCH_PY = Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "gwbench")) / "venv" / "bin" / "python"
KEY = "sk-bench-master-key"
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "Hello, how are you today?"}],
        "max_tokens": 16}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float = 300.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(url, data=json.dumps(BODY).encode(), headers={
                "content-type": "application/json", "authorization": f"Bearer {KEY}"})
            with urllib.request.urlopen(req, timeout=30) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


async def load(url: str, n: int, streams: int, conc: int) -> None:
    async with aiohttp.ClientSession(headers={"authorization": f"Bearer {KEY}"}) as s:
        sem = asyncio.Semaphore(conc)

        async def one(stream: bool) -> None:
            async with sem:
                body = {**BODY, "stream": stream}
                async with s.post(url, json=body) as r:
                    await r.read()
                    assert r.status == 200, r.status

        await asyncio.gather(*(one(False) for _ in range(n)), *(one(True) for _ in range(streams)))


def measure(name: str, cmd: list[str], port: int, n: int, streams: int, conc: int, workdir: Path) -> int:
    out = workdir / f"{name}.callgrind"
    vg = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    proc = subprocess.Popen(vg + cmd, stdout=subprocess.DEVNULL, stderr=open(workdir / f"{name}.log", "wb"),
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        wait_ready(url)
        asyncio.run(load(url, 50, 10, conc))  # warm-up: pools, caches, lazy imports
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        asyncio.run(load(url, n, streams, conc))
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True, capture_output=True)
    finally:
        proc.terminate()
        proc.wait(120)
    text = out.read_text(errors="replace")
    m = re.search(r"^totals: (\d+)", text, re.M)
    if not m:
        raise RuntimeError(f"no totals in {out}")
    return int(m.group(1))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", default=str(HERE / "results" / f"gateway-instructions-{dt.date.today()}"))
    a = ap.parse_args()
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    workdir = Path(tempfile.mkdtemp(prefix="gwinstr-"))
    up_port = free_port()
    upstream = subprocess.Popen([str(BENCH_PY), str(BENCH / "fake_upstream.py"), "--port", str(up_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        keyhash = subprocess.run([str(ROOT / ".venv" / "bin" / "cohortgate"), "policy", "hash-key", KEY],
                                 capture_output=True, text=True, check=True).stdout.strip()
        policy = (HERE / "gateway_policy.tmpl.yaml").read_text().replace(
            "@UPSTREAM@", f"http://127.0.0.1:{up_port}/v1").replace("@KEYHASH@", keyhash)
        (workdir / "policy.yaml").write_text(policy)
        results = {}
        p1 = free_port()
        results["aiohttp-proxy"] = measure("aiohttp-proxy", [str(BENCH_PY), str(BENCH / "peers" / "aiohttp_proxy.py"),
                                           "--port", str(p1), "--upstream", f"http://127.0.0.1:{up_port}"],
                                           p1, a.requests, a.streams, a.concurrency, workdir)
        p2 = free_port()
        results["cohortgate"] = measure("cohortgate", [str(ROOT / ".venv" / "bin" / "python"), "-m", "cohortgate",
                                        "serve", "--policy", str(workdir / "policy.yaml"), "--port", str(p2),
                                        "--log-level", "WARNING"], p2, a.requests, a.streams, a.concurrency, workdir)
    finally:
        upstream.terminate()
        upstream.wait(10)
    total = a.requests + a.streams
    per = {k: v / total for k, v in results.items()}
    ratio = per["cohortgate"] / per["aiohttp-proxy"]
    report = {"date": dt.datetime.now(dt.UTC).isoformat(), "requests": a.requests, "streams": a.streams,
              "concurrency": a.concurrency, "instructions_total": results, "instructions_per_request": per,
              "cohortgate_over_aiohttp_proxy": ratio,
              "note": "callgrind instruction counts of the gateway process while it served the measured load"}
    Path(a.out + ".json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"instructions per request: aiohttp-proxy {per['aiohttp-proxy']:,.0f}, cohortgate "
          f"{per['cohortgate']:,.0f}  (ratio {ratio:.2f}; expected throughput ratio ~{1 / ratio:.2f}x)")


if __name__ == "__main__":
    main()
