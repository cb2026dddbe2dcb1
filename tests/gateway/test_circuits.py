"""Per-cohort circuit breaking: opens after the threshold, sends the cohort straight to its
fallback, half-open probes close it after recovery; other cohorts are unaffected."""

from __future__ import annotations

import time

import httpx

from tests.gateway.conftest import policy

COHORTS = """
- name: json_jobs
  rules: [{has_tools: false, response_format: [json_object]}]
"""
ROUTES = """
- id: r
  cohorts: ["*"]
  targets: [{upstream: a}]
  fallback: [b]
  circuit: {window_s: 30, min_requests: 5, max_eval_fail_rate: 0.5, max_error_rate: 0.5, open_s: 0.5,
            half_open_probes: 2}
"""


def post(c, g, json_mode: bool):
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    if json_mode:
        body["response_format"] = {"type": "json_object"}
    return c.post(g.base_url + "/chat/completions", json=body)


def test_circuit_opens_and_recovers(fake, gateway):
    a, b = fake("a", "bad_json"), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, ROUTES, COHORTS))
    with httpx.Client(timeout=10) as c:
        for _ in range(5):
            r = post(c, g, True)
            assert r.status_code == 200 and r.headers["x-upstream"] == "b"
        assert a.state.count == 5
        state = g.state.metrics.circuit.value(("json_jobs", "a"))
        assert state == 1.0  # open
        for _ in range(5):
            r = post(c, g, True)
            assert r.headers["x-upstream"] == "b"
        assert a.state.count == 5  # open: json_jobs goes straight to b
        # another cohort on the same upstream is not affected
        r = post(c, g, False)
        assert r.headers["x-upstream"] == "a" and r.headers["x-cohort"] == "out_of_domain"
        # a recovers; after open_s the half-open probes close the circuit
        a.set("none")
        time.sleep(0.6)
        served = [post(c, g, True).headers["x-upstream"] for _ in range(4)]
        assert served == ["a", "a", "a", "a"], served
        assert g.state.metrics.circuit.value(("json_jobs", "a")) == 0.0


def test_half_open_failure_reopens(fake, gateway):
    a, b = fake("a", "500"), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, ROUTES, COHORTS).replace(
        "timeouts:", "health: {failures_to_eject: 1000}\n    timeouts:"))
    with httpx.Client(timeout=10) as c:
        for _ in range(5):
            assert post(c, g, True).headers["x-upstream"] == "b"
        assert g.state.metrics.circuit.value(("json_jobs", "a")) == 1.0
        time.sleep(0.6)
        count = a.state.count
        assert post(c, g, True).headers["x-upstream"] == "b"  # the probe failed
        assert a.state.count == count + 1
        assert g.state.metrics.circuit.value(("json_jobs", "a")) == 1.0
        assert post(c, g, True).headers["x-upstream"] == "b" and a.state.count == count + 1
