"""`cohortgate demo --fast --no-serve` end to end with real vLLM (CPU), real merge, real eval,
real promotion and a real gateway; then the artifacts are checked as a user would."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.helpers import PYTHON, ROOT, free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def cg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "cohortgate", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("demo")
    r = cg("demo", "--fast", "--no-serve", "--workdir", str(work), "--port", str(free_port()), timeout=2400)
    assert r.returncode == 0, (r.stdout[-6000:], r.stderr[-3000:])
    summary = json.loads((work / "fast" / "demo-summary.json").read_text())
    summary["_stdout"] = r.stdout
    return summary


def test_adapters_have_training_provenance(demo):
    for name, prov in demo["adapters"].items():
        p = json.loads(Path(prov).read_text())
        data = p["training_data"][0]
        assert data["rows"] > 0 and len(data["sha256"]) == 64, name


def test_candidate_provenance_verifies(demo):
    prov = json.loads(Path(demo["candidate_provenance"]).read_text())
    assert prov["method"]["name"] == "task_arithmetic" and len(prov["sources"]) >= 3
    assert any((s.get("lineage") or {}).get("training_data") for s in prov["sources"])  # the adapters' data
    r = cg("merge", "verify", demo["candidate"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "refused as expected" in demo["_stdout"]  # the incompatible pair


def test_eval_run_has_all_four_models_and_a_report(demo):
    run = Path(demo["run"])
    models = {json.loads(line)["model"] for line in (run / "results.jsonl").read_text().splitlines() if line}
    assert models == {"base", "billing", "policy", "candidate"}
    cohorts = {json.loads(line)["cohort"] for line in (run / "results.jsonl").read_text().splitlines() if line}
    assert cohorts == {"billing_refund", "policy_exception", "out_of_domain", "tool_required"}
    assert (run / "report.html").stat().st_size > 1000 and (run / "report.json").exists()


def test_promoted_policy_passes_check_and_has_decisions(demo):
    r = cg("policy", "check", demo["promoted_policy"])
    assert r.returncode == 0, r.stderr
    assert {d["cohort"] for d in demo["decisions"]} == {"billing_refund", "policy_exception", "out_of_domain",
                                                        "tool_required"}
    assert Path(demo["decisions_md"]).read_text().startswith("# Promotion of `candidate`")


def test_gateway_metrics_show_traffic_by_cohort_and_model(demo):
    by = demo["gateway"]["traffic_by_cohort_model"]
    served = {k for k in by if not k.endswith("|none")}
    assert len({k.split("|")[0] for k in by}) >= 3 and served
    assert len(demo["gateway"]["requests"]) >= 8
