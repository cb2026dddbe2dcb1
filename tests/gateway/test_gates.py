"""Eval-threshold fallback: bad JSON or a wrong tool from the primary -> the caller gets the
fallback's valid answer; streams are evaluated after the fact without fallback."""

from __future__ import annotations

import httpx
import orjson
import pytest

from tests.gateway.conftest import policy
from tests.helpers import wait_until

CHAIN = """
- id: r
  cohorts: ["*"]
  targets: [{upstream: a}]
  fallback: [b]
"""
SCHEMA_RF = {"type": "json_schema", "json_schema": {"name": "refund", "schema": {
    "type": "object", "properties": {"refund_id": {"type": "string"}, "amount": {"type": "number"}},
    "required": ["refund_id", "amount"]}}}
TOOLS = [{"type": "function", "function": {"name": "issue_refund", "parameters": {
    "type": "object", "properties": {"invoice_id": {"type": "string"}, "amount": {"type": "number"}},
    "required": ["invoice_id", "amount"], "additionalProperties": False}}}]


def post(g, **body):
    return httpx.post(g.base_url + "/chat/completions", timeout=10, json={
        "model": "m", "messages": [{"role": "user", "content": "refund invoice 42"}], **body})


@pytest.mark.parametrize("fault,body,evaluator", [
    ("bad_json", {"response_format": SCHEMA_RF}, "JSONValidation"),
    ("bad_json", {"response_format": {"type": "json_object"}}, "JSONValidation"),
    ("wrong_tool", {"tools": TOOLS}, "ToolSelectionAccuracy"),
    ("bad_args", {"tools": TOOLS}, "ToolSelectionAccuracy"),
])
def test_failing_gate_falls_back(fake, gateway, fault, body, evaluator):
    a, b = fake("a", fault), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, CHAIN))
    r = post(g, **body)
    assert r.status_code == 200, r.text
    assert r.headers["x-upstream"] == "b" and r.headers["x-fallback-reason"] == "eval_failed"
    msg = r.json()["choices"][0]["message"]
    if "response_format" in body:
        orjson.loads(msg["content"])  # the fallback's valid JSON
    else:
        assert msg["tool_calls"][0]["function"]["name"] == "issue_refund"
    ev = g.state.metrics.evals
    assert ev.value((evaluator, "out_of_domain", "a", "fail")) == 1
    assert ev.value((evaluator, "out_of_domain", "b", "pass")) == 1
    fb = g.state.metrics.fallbacks
    assert fb.value(("out_of_domain", "r", "a", "eval_failed")) == 1


def test_passing_answer_is_served_by_primary(fake, gateway):
    a, b = fake("a"), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, CHAIN))
    r = post(g, response_format=SCHEMA_RF)
    assert r.status_code == 200 and r.headers["x-upstream"] == "a" and b.state.count == 0


def test_all_targets_fail_gate_gives_clean_502(fake, gateway):
    a, b = fake("a", "bad_json"), fake("b", "bad_json")
    g = gateway(policy({"a": a.url, "b": b.url}, CHAIN))
    r = post(g, response_format=SCHEMA_RF)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "eval_gate_failed:JSONValidation"


def test_gates_can_be_turned_off_per_route(fake, gateway):
    a, b = fake("a", "bad_json"), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, CHAIN + "  eval_gates: []\n"))
    r = post(g, response_format=SCHEMA_RF)
    assert r.status_code == 200 and r.headers["x-upstream"] == "a"


def test_threshold_from_policy(fake, gateway):
    # a lenient threshold lets a partially valid answer through
    a, b = fake("a", "bad_args"), fake("b")
    routes = CHAIN + "  eval_gates: [{evaluator: ToolSelectionAccuracy, threshold: 0.0}]\n"
    g = gateway(policy({"a": a.url, "b": b.url}, routes))
    assert post(g, tools=TOOLS).headers["x-upstream"] == "a"


def test_stream_is_evaluated_after_the_fact_without_fallback(fake, gateway):
    a, b = fake("a", "bad_json"), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, CHAIN))
    with httpx.stream("POST", g.base_url + "/chat/completions", timeout=10, json={
            "model": "m", "stream": True, "response_format": SCHEMA_RF,
            "messages": [{"role": "user", "content": "x"}]}) as r:
        assert r.status_code == 200 and r.headers["x-upstream"] == "a"
        r.read()
    assert b.state.count == 0
    assert wait_until(lambda: g.state.metrics.evals.value(("JSONValidation", "out_of_domain", "a", "fail")) == 1,
                      timeout=5)
