"""The runner's throughput target: 1,000 rows x 4 models with deterministic evaluators in < 2 min."""

from __future__ import annotations

import json
import subprocess

from tests.helpers import PYTHON, ROOT


def test_runner_1000_rows_x_4_models_under_2_minutes(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [PYTHON, "benchmarks/evals_runner_bench.py", "--rows", "1000", "--models", "4", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert res["written"] == 4000 and res["elapsed_s"] < 120, res
