"""Conformance of every endpoint through the official openai SDK and raw HTTP."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.gateway.conftest import policy

ROUTES = """
- id: r
  cohorts: ["*"]
  targets: [{upstream: a}]
"""


@pytest.fixture
def gw(fake, gateway):
    a = fake("a")
    g = gateway(policy({"a": a.url}, ROUTES))
    return g, a


def client(g, key: str = "sk-anything") -> openai.OpenAI:
    return openai.OpenAI(base_url=g.base_url, api_key=key, max_retries=0, timeout=10)


def test_chat_non_streamed_with_headers(gw):
    g, a = gw
    raw = client(g).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hello there"}])
    r = raw.parse()
    assert r.choices[0].message.content == "[a] echo: hello there"
    assert r.usage.prompt_tokens == 2
    h = raw.headers
    assert h["x-request-id"].startswith("req_")
    assert h["x-cohort"] == "out_of_domain" and h["x-route"] == "r"
    assert h["x-upstream"] == "a" and h["x-upstream-model"] == "a-served"
    # the why-headers cost CPU on every answer: only on request (or by policy, below)
    assert not {"x-cohort-reason", "x-canary-arm", "x-gateway-overhead-ms"} & set(h)
    assert a.seen()[-1]["body"]["model"] == "a-served"
    dbg = client(g).chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hello there"}],
        extra_headers={"x-cohortgate-debug": "1"}).headers
    assert dbg["x-cohort-reason"] == "default (no rule matched)" and dbg["x-canary-arm"] == "primary"
    assert float(dbg["x-gateway-overhead-ms"]) >= 0


def test_debug_headers_by_policy(fake, gateway):
    a = fake("a")
    g = gateway(policy({"a": a.url}, ROUTES, extra="server:\n  debug_headers: true\n"))
    r = httpx.post(g.base_url + "/chat/completions", timeout=10,
                   json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    assert r.status_code == 200 and r.headers["x-cohort-reason"] and r.headers["x-canary-arm"] == "primary"


def test_chat_streamed_through_sdk(gw):
    g, a = gw
    stream = client(g).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "one two three four"}], stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "[a] echo: one two three four"
    # the gateway asked upstream for usage but the client did not: the usage event is stripped
    assert all(c.usage is None for c in chunks)
    assert a.seen()[-1]["body"]["stream_options"] == {"include_usage": True}


def test_stream_usage_passed_when_asked(gw):
    g, _ = gw
    chunks = list(client(g).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True}))
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens > 0


def test_every_field_passed_through(gw):
    g, a = gw
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}}}]
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": "auto",
            "response_format": {"type": "json_object"}, "n": 2, "seed": 7, "logprobs": True, "top_logprobs": 2,
            "temperature": 0.2, "max_tokens": 9, "chat_template_kwargs": {"enable_thinking": False},
            "guided_json": {"type": "object"}, "metadata": {"tenant": "t1"}, "user": "u"}
    r = httpx.post(g.base_url + "/chat/completions", json=body, timeout=10)
    assert r.status_code == 200, r.text
    sent = a.seen()[-1]["body"]
    for k, v in body.items():
        if k != "model":
            assert sent[k] == v, k
    assert len(r.json()["choices"]) == 2


def test_completions_and_embeddings(gw):
    g, _ = gw
    c = client(g)
    r = c.completions.create(model="m", prompt="say hi")
    assert r.choices[0].text.startswith("[a] completion")
    parts = list(c.completions.create(model="m", prompt="say hi", stream=True))
    assert "".join(p.choices[0].text for p in parts if p.choices).startswith("[a] completion")
    e = c.embeddings.create(model="m", input=["a", "b"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 8


def test_models_health_ready(gw):
    g, _ = gw
    assert [m.id for m in client(g).models.list()] == ["m", "m2"]
    assert client(g).models.retrieve("m").id == "m"
    assert httpx.get(g.url + "/healthz").json() == {"status": "ok"}
    r = httpx.get(g.url + "/readyz")
    assert r.status_code == 200 and r.json()["upstreams"] == {"a": "up"}


def test_request_id_is_echoed(gw):
    g, a = gw
    r = httpx.post(g.base_url + "/chat/completions", headers={"x-request-id": "abc-123"},
                   json={"model": "m", "messages": [{"role": "user", "content": "x"}]})
    assert r.headers["x-request-id"] == "abc-123"
    assert a.seen()[-1]["headers"]["x-request-id"] == "abc-123"


@pytest.mark.parametrize("body,status,param", [
    (b"{not json", 400, None),
    (b"[1,2]", 400, None),
    (b'{"messages": []}', 400, "model"),
    (b'{"model": "m"}', 400, "messages"),
    (b'{"model": "m", "messages": []}', 400, "messages"),
    (b'{"model": "m", "messages": [{"content": "x"}]}', 400, "messages[0]"),
    (b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "stream"),
    (b'{"model": "nope", "messages": [{"role": "user", "content": "x"}]}', 404, "model"),
], ids=["malformed", "not-object", "no-model", "no-messages", "empty-messages", "no-role", "bad-stream",
        "unknown-model"])
def test_bad_requests_get_openai_errors(gw, body, status, param):
    g, a = gw
    before = a.state.count
    r = httpx.post(g.base_url + "/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["param"] == param and err["message"]
    assert a.state.count == before  # never reached the upstream


def test_unknown_path_and_method(gw):
    g, _ = gw
    r = httpx.get(g.base_url + "/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    r = httpx.get(g.base_url + "/chat/completions")
    assert r.status_code == 405 and "error" in r.json()


def test_sdk_raises_typed_errors(gw):
    g, _ = gw
    with pytest.raises(openai.NotFoundError):
        client(g).chat.completions.create(model="ghost", messages=[{"role": "user", "content": "x"}])
