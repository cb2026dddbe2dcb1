"""Promotion on synthetic runs: only winning cohorts move; refusals; the policy passes the gateway's check."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from evals.promote import Gates, promote
from tests.evals.synth import write_provenance, write_run
from tests.helpers import ROOT

COHORTGATE = str(ROOT / ".venv" / "bin" / "cohortgate")
POLICY = ROOT / "policies" / "default.yaml"


def cg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([COHORTGATE, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def policy_check(path: Path) -> subprocess.CompletedProcess[str]:
    return cg("policy", "check", str(path))


def test_only_winning_cohorts_move(tmp_path):
    run = write_run(tmp_path / "run")
    prov = write_provenance(tmp_path / "cand")
    out = tmp_path / "new.yaml"
    r = cg(
        "promote",
        "--run",
        str(run),
        "--candidate",
        "candidate",
        "--policy",
        str(POLICY),
        "--out",
        str(out),
        "--provenance",
        str(prov),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    old = yaml.safe_load(POLICY.read_text())
    new = yaml.safe_load(out.read_text())
    decisions = {d["cohort"]: d for d in json.loads((tmp_path / "new.decisions.json").read_text())["decisions"]}
    assert {c for c, d in decisions.items() if d["promote"]} == {"billing_refund", "out_of_domain"}
    assert any("TaskCompletion: vs policy-specialist" in x for x in decisions["policy_exception"]["reasons"])
    assert any("latency p99" in x for x in decisions["tool_required"]["reasons"])
    routes = {r["id"]: r for r in new["routes"]}
    # billing_refund was shared with tool_required: split out, before the old route
    br = routes["billing_refund-candidate-canary"]
    assert br["cohorts"] == ["billing_refund"]
    assert br["targets"] == [
        {"upstream": "candidate", "weight": 10.0, "arm": "candidate"},
        {"upstream": "billing-specialist", "weight": 90.0, "arm": "control"},
    ]
    assert br["fallback"][0] == "billing-specialist" and "base" in br["fallback"]
    assert br["mirror"] == {"targets": ["candidate"], "percent": 10.0}
    assert br["sticky"] == {"key": "user"}  # settings of the route it came from are kept
    ids = [r["id"] for r in new["routes"]]
    assert ids.index("billing_refund-candidate-canary") < ids.index("billing")
    assert routes["billing"]["cohorts"] == ["tool_required"]
    assert routes["billing"]["targets"] == next(r for r in old["routes"] if r["id"] == "billing")["targets"]
    # out_of_domain was served by the catch-all: a specific route now, fallback to base
    ood = routes["out_of_domain-candidate-canary"]
    assert ood["targets"][1]["upstream"] == "base" and ood["fallback"][0] == "base"
    # losers untouched
    assert routes["policy"] == next(r for r in old["routes"] if r["id"] == "policy")
    assert routes["default"] == next(r for r in old["routes"] if r["id"] == "default")
    assert new["upstreams"]["candidate"] == {"base_url": "http://127.0.0.1:9000/candidate/v1", "model": "candidate"}
    md = (tmp_path / "new.decisions.md").read_text()
    assert "| billing_refund | **promote** |" in md and "| policy_exception | hold |" in md
    check = policy_check(out)
    assert check.returncode == 0, check.stdout + check.stderr


def test_gateway_explain_routes_winners_to_the_canary(tmp_path):
    run = write_run(tmp_path / "run")
    out = tmp_path / "new.yaml"
    res = promote(run, "candidate", POLICY, None, None, write_provenance(tmp_path / "c"), Gates())
    out.write_text(yaml.safe_dump(res.policy, sort_keys=False))
    for cohort, route in (
        ("billing_refund", "billing_refund-candidate-canary"),
        ("tool_required", "billing"),
        ("policy_exception", "policy"),
        ("out_of_domain", "out_of_domain-candidate-canary"),
    ):
        req = tmp_path / f"{cohort}.json"
        req.write_text(
            json.dumps(
                {
                    "body": {"model": "support-assistant", "messages": [{"role": "user", "content": "hi"}]},
                    "headers": {"x-cohort": cohort},
                }
            )
        )
        r = cg("policy", "explain", str(out), "--request", str(req), "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        got = json.loads(r.stdout)
        assert (got["cohort"], got["route"]) == (cohort, route)
        if route.endswith("canary"):
            assert got["weights"]["candidate"] == 10.0 and got["mirror"]["targets"] == ["candidate"]


def test_missing_baseline_refuses(tmp_path):
    run = write_run(tmp_path / "run", drop_model="policy-specialist")
    out = tmp_path / "new.yaml"
    r = cg(
        "promote",
        "--run",
        str(run),
        "--candidate",
        "candidate",
        "--policy",
        str(POLICY),
        "--out",
        str(out),
        "--provenance",
        str(write_provenance(tmp_path / "c")),
    )
    assert r.returncode == 2 and "lacks baseline model(s) policy-specialist" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_missing_base_refuses(tmp_path):
    run = write_run(tmp_path / "run", drop_model="base")
    r = cg(
        "promote",
        "--run",
        str(run),
        "--candidate",
        "candidate",
        "--policy",
        str(POLICY),
        "--out",
        str(tmp_path / "n.yaml"),
        "--provenance",
        str(write_provenance(tmp_path / "c")),
    )
    assert r.returncode == 2 and "lacks baseline model(s) base" in r.stderr


def test_missing_provenance_refuses(tmp_path):
    run = write_run(tmp_path / "run")
    out = tmp_path / "new.yaml"
    r = cg("promote", "--run", str(run), "--candidate", "candidate", "--policy", str(POLICY), "--out", str(out))
    assert r.returncode == 2 and "provenance" in r.stderr and not out.exists()
    r = cg(
        "promote",
        "--run",
        str(run),
        "--candidate",
        "candidate",
        "--policy",
        str(POLICY),
        "--out",
        str(out),
        "--provenance",
        str(tmp_path / "nowhere" / "provenance.json"),
    )
    assert r.returncode == 2 and "cannot read the candidate's provenance" in r.stderr and not out.exists()


def test_sources_must_cover_provenance(tmp_path):
    run = write_run(tmp_path / "run")
    r = cg(
        "promote",
        "--run",
        str(run),
        "--candidate",
        "candidate",
        "--policy",
        str(POLICY),
        "--out",
        str(tmp_path / "n.yaml"),
        "--provenance",
        str(write_provenance(tmp_path / "c")),
        "--sources",
        "billing-specialist",
    )
    assert r.returncode == 2 and "lists 2 input sources but --sources names 1" in r.stderr


def test_floors_and_margin_configurable(tmp_path):
    run = write_run(tmp_path / "run")
    prov = write_provenance(tmp_path / "c")
    strict = promote(run, "candidate", POLICY, None, None, prov, Gates(floors={"TaskCompletion": 0.96}))
    won = {d.cohort for d in strict.decisions if d.promote}
    assert won == {"out_of_domain"}  # billing TaskCompletion 0.95 < 0.96
    lax = promote(
        run,
        "candidate",
        POLICY,
        None,
        None,
        prov,
        Gates(floors={"TaskCompletion": 0.85}, margin=0.10, max_latency_ratio=None),
    )
    assert {d.cohort for d in lax.decisions if d.promote} == {
        "billing_refund",
        "out_of_domain",
        "policy_exception",
        "tool_required",
    }
    none = promote(run, "candidate", POLICY, None, None, prov, Gates(min_rows=31))
    assert not any(d.promote for d in none.decisions)
    assert none.policy == yaml.safe_load(POLICY.read_text())  # nothing won: the policy is unchanged


def test_held_cohorts_mirror_a_slice_to_the_candidate(tmp_path):
    run = write_run(tmp_path / "run")
    prov = write_provenance(tmp_path / "cand")
    out = tmp_path / "new.yaml"
    r = cg("promote", "--run", str(run), "--candidate", "candidate", "--policy", str(POLICY), "--out", str(out),
           "--provenance", str(prov), "--mirror-holds", "25")
    assert r.returncode == 0, r.stdout + r.stderr
    routes = {r["id"]: r for r in yaml.safe_load(out.read_text())["routes"]}
    # policy_exception (held, own route) and tool_required (held, left alone on the split route) mirror 25%
    assert routes["policy"]["mirror"] == {"targets": ["candidate"], "percent": 25.0}
    assert routes["billing"]["cohorts"] == ["tool_required"]
    assert routes["billing"]["mirror"] == {"targets": ["candidate"], "percent": 25.0}
    assert routes["policy"]["targets"] == [{"upstream": "policy-specialist", "weight": 1}]  # targets untouched
    # winners keep their own mirror share; the catch-all (covers winners too) is not touched
    assert routes["billing_refund-candidate-canary"]["mirror"]["percent"] == 10.0
    assert "mirror" not in routes["default"]
    assert policy_check(out).returncode == 0
