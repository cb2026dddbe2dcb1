"""Caller keys, scopes, body limits and header hygiene (no caller key upstream, no upstream key back)."""

from __future__ import annotations

import httpx
import openai
import pytest

from gateway.auth import hash_key
from tests.gateway.conftest import policy

ROUTES = """
- id: billing
  cohorts: [billing]
  targets: [{upstream: a}]
- id: r
  cohorts: ["*"]
  targets: [{upstream: a}]
"""
COHORTS = """
- name: billing
  rules: [{keywords: [refund]}]
"""
UPSTREAM_SECRET = "sk-upstream-SECRET-do-not-leak"


@pytest.fixture
def gw(fake, gateway, monkeypatch):
    monkeypatch.setenv("A_KEY", UPSTREAM_SECRET)
    a = fake("a")
    extra = f"""
server: {{max_body_bytes: 2048}}
auth:
  keys:
    - {{name: full, sha256: {hash_key('sk-full')}}}
    - {{name: narrow, sha256: {hash_key('sk-narrow')}, models: [m2], cohorts: [out_of_domain]}}
"""
    text = policy({"a": a.url}, ROUTES, COHORTS, extra=extra).replace(
        "model: a-served", "model: a-served\n    api_key_env: A_KEY")
    return gateway(text), a


def call(g, key=None, body=None, **kw):
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.post(g.base_url + "/chat/completions", headers=headers, timeout=10,
                      json=body or {"model": "m", "messages": [{"role": "user", "content": "hello"}]}, **kw)


@pytest.mark.parametrize("key,code", [(None, "missing_api_key"), ("sk-wrong", "invalid_api_key")])
def test_401_with_openai_body(gw, key, code):
    g, a = gw
    r = call(g, key)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication_error" and r.json()["error"]["code"] == code
    assert a.state.count == 0


def test_malformed_authorization_header(gw):
    g, _ = gw
    r = httpx.post(g.base_url + "/chat/completions", headers={"authorization": "Basic abc"}, json={})
    assert r.status_code == 401


def test_sdk_authentication_error(gw):
    g, _ = gw
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=g.base_url, api_key="nope", max_retries=0).models.list()


def test_models_list_is_scoped_per_key(gw):
    g, _ = gw
    assert [m.id for m in openai.OpenAI(base_url=g.base_url, api_key="sk-full").models.list()] == ["m", "m2"]
    assert [m.id for m in openai.OpenAI(base_url=g.base_url, api_key="sk-narrow").models.list()] == ["m2"]


def test_key_scopes(gw):
    g, _ = gw
    assert call(g, "sk-narrow").status_code == 404  # model m not allowed
    ok = {"model": "m2", "messages": [{"role": "user", "content": "hello"}]}
    assert call(g, "sk-narrow", ok).status_code == 200
    refund = {"model": "m2", "messages": [{"role": "user", "content": "refund please"}]}
    r = call(g, "sk-narrow", refund)
    assert r.status_code == 403 and r.json()["error"]["code"] == "cohort_not_allowed"
    assert call(g, "sk-full", refund).status_code == 200


def test_body_limit_413(gw):
    g, a = gw
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]}
    r = call(g, "sk-full", big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    # chunked upload without content-length is limited too
    def gen():
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 1000
        yield b'"}]}'
    r = httpx.post(g.base_url + "/chat/completions", content=gen(),
                   headers={"authorization": "Bearer sk-full", "content-type": "application/json"})
    assert r.status_code == 413
    assert a.state.count == 0


def test_caller_key_never_forwarded_and_upstream_key_used(gw):
    g, a = gw
    assert call(g, "sk-full").status_code == 200
    sent = a.seen()[-1]["headers"]
    assert sent["authorization"] == f"Bearer {UPSTREAM_SECRET}"
    assert "sk-full" not in str(sent)


def test_upstream_key_never_in_responses_or_errors(gw, caplog):
    g, a = gw
    a.set("500")
    a.state.echo_auth = True  # the upstream quotes the key it received in its error body
    r = call(g, "sk-full")
    assert "[redacted]" in r.json()["error"]["message"]
    assert r.status_code == 502
    assert UPSTREAM_SECRET not in r.text and UPSTREAM_SECRET not in str(r.headers)
    assert UPSTREAM_SECRET not in caplog.text
