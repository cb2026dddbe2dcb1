"""Feedback attribution to cohort x model, authentication, and clear errors."""

from __future__ import annotations

import httpx
import pytest

from gateway.auth import hash_key
from tests.gateway.conftest import policy

COHORTS = """
- name: billing
  rules: [{keywords: [refund]}]
"""
ROUTES = """
- id: billing
  cohorts: [billing]
  targets: [{upstream: cand}]
- id: r
  cohorts: ["*"]
  targets: [{upstream: base}]
"""


@pytest.fixture
def gw(fake, gateway):
    cand, base = fake("cand"), fake("base")
    extra = f"""
auth:
  keys:
    - {{name: alice, sha256: {hash_key('sk-alice')}}}
    - {{name: bob, sha256: {hash_key('sk-bob')}}}
"""
    return gateway(policy({"cand": cand.url, "base": base.url}, ROUTES, COHORTS, extra=extra))


def ask(g, text, key="sk-alice"):
    r = httpx.post(g.base_url + "/chat/completions", headers={"authorization": f"Bearer {key}"},
                   json={"model": "m", "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200
    return r.headers["x-request-id"]


def feedback(g, body, key="sk-alice"):
    return httpx.post(g.base_url + "/feedback", headers={"authorization": f"Bearer {key}"}, json=body)


def test_feedback_attributed_to_cohort_and_model(gw):
    rid = ask(gw, "refund please")
    r = feedback(gw, {"request_id": rid, "signal": "thumbs_down", "comment": "wrong amount"})
    assert r.status_code == 200
    assert r.json() == {"object": "feedback", "request_id": rid, "signal": "thumbs_down", "cohort": "billing",
                        "route": "billing", "model": "cand"}
    rid2 = ask(gw, "hello")
    assert feedback(gw, {"request_id": rid2, "signal": "escalation"}).status_code == 200
    fb = gw.state.metrics.feedback
    assert fb.value(("thumbs_down", "billing", "cand")) == 1
    assert fb.value(("escalation", "out_of_domain", "base")) == 1


def test_feedback_errors(gw):
    rid = ask(gw, "refund please")
    r = feedback(gw, {"request_id": "req_unknown", "signal": "thumbs_down"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "request_not_found"
    assert feedback(gw, {"request_id": rid, "signal": "meh"}).status_code == 400
    assert feedback(gw, {"signal": "thumbs_up"}).json()["error"]["param"] == "request_id"
    assert feedback(gw, {"request_id": rid, "signal": "thumbs_up"}, key="sk-bob").status_code == 404  # not bob's
    assert feedback(gw, {"request_id": rid, "signal": "thumbs_up"}, key="sk-wrong").status_code == 401
    r = httpx.post(gw.base_url + "/feedback", headers={"authorization": "Bearer sk-alice"}, content=b"{bad")
    assert r.status_code == 400


def test_feedback_table_is_bounded(gw):
    gw.state.feedback.max_entries = 3
    ids = [ask(gw, f"hello {i}") for i in range(5)]
    assert len(gw.state.feedback._served) == 3
    assert feedback(gw, {"request_id": ids[0], "signal": "thumbs_up"}).status_code == 404  # evicted
    assert feedback(gw, {"request_id": ids[-1], "signal": "thumbs_up"}).status_code == 200
