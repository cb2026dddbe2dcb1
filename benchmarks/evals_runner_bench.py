"""Runner throughput: 1,000 rows x 4 models with the deterministic evaluators (TaskCompletion,
JSONValidation, ToolSelectionAccuracy, and Groundedness/HallucinationScore in lexical mode)
against a fast local OpenAI-compatible server (tests/evals/fake_openai.py, no delay).
Target: < 120 s on the 2-core dev machine. Runs the real CLI (`cohortgate eval run`) as a
subprocess, so start-up, dataset validation, scoring and fsync'd writes are all included.
Writes benchmarks/results/evals-runner.json.
Run: .venv/bin/python benchmarks/evals_runner_bench.py [--rows 1000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "evals" / "datasets" / "support_cohorts.jsonl"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_dataset(n: int, path: Path) -> None:
    base = [json.loads(x) for x in EXAMPLE.read_text().splitlines() if x.strip()]
    with path.open("w") as f:
        for i in range(n):
            row = dict(base[i % len(base)])
            row["id"] = f"{row['id']}-{i:05d}"
            f.write(json.dumps(row) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--models", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "evals-runner.json"))
    a = ap.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        ds = tmp / "bench.jsonl"
        make_dataset(a.rows, ds)
        server = subprocess.Popen(
            [sys.executable, "-m", "tests.evals.fake_openai", "--port", str(port)],
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.05)
            models = [
                f"--model=m{i}=http://127.0.0.1:{port}/v1:{'good' if i % 2 == 0 else 'bad'}-{i}"
                for i in range(a.models)
            ]
            cmd = [
                str(ROOT / ".venv" / "bin" / "cohortgate"),
                "eval",
                "run",
                "--dataset",
                str(ds),
                *models,
                "--out",
                str(tmp / "run"),
                "--support",
                "lexical",
                "--concurrency",
                str(a.concurrency),
                "--no-progress",
            ]
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
            elapsed = time.perf_counter() - t0
            if r.returncode != 0:
                sys.exit(f"runner failed ({r.returncode}): {r.stdout}{r.stderr}")
            written = sum(1 for _ in (tmp / "run" / "results.jsonl").open())
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(10)
    pairs = a.rows * a.models
    result = {
        "benchmark": "evals_runner",
        "rows": a.rows,
        "models": a.models,
        "pairs": pairs,
        "written": written,
        "concurrency": a.concurrency,
        "evaluators": "TaskCompletion, Groundedness+HallucinationScore (lexical), "
        "JSONValidation, ToolSelectionAccuracy",
        "elapsed_s": round(elapsed, 2),
        "pairs_per_s": round(pairs / elapsed, 1),
        "target_s": 120,
        "pass": elapsed < 120 and written == pairs,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "runner_summary": r.stdout.strip(),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
