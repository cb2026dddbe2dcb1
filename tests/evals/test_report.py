"""Report: numbers on a synthetic run, retention minimum, JSON/HTML output, Chromium rendering."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from evals.report import build_report, write_report
from evals.stats import wilson
from tests.evals.synth import N, write_run
from tests.helpers import ROOT, require_tool

COHORTGATE = str(ROOT / ".venv" / "bin" / "cohortgate")


def test_report_numbers(tmp_path):
    run = write_run(tmp_path / "run")
    rep = build_report(run, candidate="candidate", sources=["billing-specialist", "policy-specialist"], base="base")
    cell = next(c for c in rep["cells"] if c["cohort"] == "billing_refund" and c["model"] == "candidate")
    tc = cell["evaluators"]["TaskCompletion"]
    assert tc["n"] == N and tc["mean"] == pytest.approx(0.95)
    # scores 0.91, 0.95, 0.99 repeated: pass (>= 0.9) on all 30 -> Wilson(30, 30)
    assert tc["pass_rate"] == 1.0 and tc["pass_ci"] == pytest.approx(list(wilson(30, 30)))
    # t interval: sample sd = sqrt(20 * 0.04^2 / 29) = 0.033218; half = 2.045 * 0.033218 / sqrt(30) = 0.012403
    assert tc["mean_ci"] == pytest.approx([0.95 - 0.012403, 0.95 + 0.012403], abs=1e-5)
    assert cell["latency_ms"]["p50"] == pytest.approx(114.5) and cell["latency_ms"]["p99"] == pytest.approx(128.71)
    assert cell["tokens"] == {"input_mean": pytest.approx(114.5), "output_mean": 40.0}
    ret = rep["retention"]
    assert ret["by_cohort"]["billing_refund"]["TaskCompletion"] == pytest.approx(0.95 / 0.94)
    assert ret["min"]["cohort"] == "policy_exception"
    assert ret["min"]["value"] == pytest.approx(0.86 / 0.95)
    agg = {a["model"]: a for a in rep["aggregate"]}
    assert agg["candidate"]["n"] == 4 * N  # aggregate exists, alongside the cells


def test_report_cli_and_html_renders_with_plots(tmp_path):
    chromium = require_tool("chromium")
    run = write_run(tmp_path / "run")
    r = subprocess.run(
        [COHORTGATE, "eval", "report", str(run), "--candidate", "candidate", "--base", "base"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    assert "minimum retention: 0.91 (TaskCompletion on policy_exception)" in r.stdout
    assert "(all cohorts)" in r.stdout
    rep = json.loads((run / "report.json").read_text())
    assert rep["retention"]["sources"] == ["billing-specialist", "policy-specialist"]
    html = (run / "report.html").read_text()
    assert not re.search(r"""(src|href)\s*=|<script|<link|@import|url\(""", html)  # self-contained
    assert html.count("<svg") == len(rep["evaluators"]) + 2  # per evaluator + retention + latency
    common = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome'}",
    ]
    shot = tmp_path / "report.png"
    s = subprocess.run(
        [*common, f"--screenshot={shot}", "--window-size=1280,2000", f"file://{run / 'report.html'}"],
        capture_output=True,
        timeout=120,
    )
    assert s.returncode == 0, s.stderr[-2000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 30_000  # a blank page compresses to a few KB
    dom = subprocess.run(
        [*common, "--dump-dom", f"file://{run / 'report.html'}"], capture_output=True, text=True, timeout=120
    ).stdout
    assert dom.count('class="bar"') >= 4 * 4 * 2  # the browser parsed the SVG bars
    assert 'fill="#dc2626"' in dom  # the minimum retention is highlighted


def test_report_errors(tmp_path):
    r = subprocess.run([COHORTGATE, "eval", "report", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no results.jsonl" in r.stderr and "Traceback" not in r.stderr
    run = write_run(tmp_path / "run")
    r = subprocess.run(
        [COHORTGATE, "eval", "report", str(run), "--candidate", "nope"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2 and "'nope' is not in the run" in r.stderr


def test_write_report_roundtrip(tmp_path):
    run = write_run(tmp_path / "run")
    jp, hp = write_report(build_report(run), tmp_path / "out")
    assert json.loads(jp.read_text())["retention"] is None and hp.exists()


def test_report_reads_a_bare_run_jsonl(tmp_path):
    run = write_run(tmp_path / "run")
    sink = tmp_path / "sink.jsonl"
    sink.write_bytes((run / "results.jsonl").read_bytes())
    r = subprocess.run(
        [COHORTGATE, "eval", "report", str(sink), "--quiet", "--out", str(tmp_path / "rep")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert len(json.loads((tmp_path / "rep" / "report.json").read_text())["cells"]) == 16


def test_cli_module_imports_no_numpy_or_torch():
    code = "import sys, evals.cli; print([m for m in ('numpy', 'torch') if m in sys.modules])"
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
