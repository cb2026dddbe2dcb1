"""Each fallback trigger, the statuses when nothing can answer, streams before/after commit,
and passive health ejection."""

from __future__ import annotations

import time

import httpx
import openai
import orjson
import pytest

from tests.gateway.conftest import policy
from tests.helpers import wait_until

CHAIN = """
- id: r
  cohorts: ["*"]
  targets: [{upstream: a}]
  fallback: [b]
  retry: {max_attempts: 3, retry_after_max_s: 0.5}
"""
SOLO = """
- id: r
  cohorts: ["*"]
  targets: [{upstream: a}]
"""
MSG = {"model": "m", "messages": [{"role": "user", "content": "hello world"}]}


def post(g, body=None, **kw):
    return httpx.post(g.base_url + "/chat/completions", json=body or MSG, timeout=15, **kw)


@pytest.mark.parametrize("fault", ["500", "503", "reset", "malformed", "slow"])
def test_fallback_triggers(fake, gateway, fault):
    a, b = fake("a", fault, delay=3.0), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, CHAIN))
    r = post(g)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].startswith("[b]")
    assert r.headers["x-upstream"] == "b" and r.headers["x-gateway-attempts"] == "2"
    assert r.headers["x-fallback-reason"] in {"upstream_unavailable", "bad_response", "timeout"}


def test_429_short_retry_after_retries_same_target(fake, gateway):
    a, b = fake("a"), fake("b")
    a.set("429", rate=1.0, retry_after=0.2, fault_budget=1)  # one 429, then healthy
    g = gateway(policy({"a": a.url, "b": b.url}, CHAIN))
    t0 = time.monotonic()
    r = post(g)
    assert r.status_code == 200 and r.headers["x-upstream"] == "a"
    assert time.monotonic() - t0 >= 0.2  # waited for Retry-After
    assert a.state.count == 2 and b.state.count == 0


def test_429_long_retry_after_moves_on(fake, gateway):
    a, b = fake("a", "429", retry_after=30), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, CHAIN))
    t0 = time.monotonic()
    r = post(g)
    assert r.status_code == 200 and r.headers["x-upstream"] == "b"
    assert time.monotonic() - t0 < 5  # did not wait 30 s


@pytest.mark.parametrize("fault,status,code", [
    ("500", 502, "upstream_500"),
    ("503", 502, "upstream_503"),
    ("reset", 502, "upstream_unavailable"),
    ("malformed", 502, "bad_upstream_response"),
    ("slow", 504, "upstream_read_timeout"),
    ("429", 429, "rate_limit_exceeded"),
])
def test_statuses_without_fallback(fake, gateway, fault, status, code):
    a = fake("a", fault, delay=3.0, retry_after=30)
    g = gateway(policy({"a": a.url}, SOLO))
    r = post(g)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == code and err["message"]
    if status == 429:
        assert int(r.headers["retry-after"]) >= 1


def test_upstream_connection_refused_then_no_healthy_target(fake, gateway):
    from tests.helpers import free_port

    dead = f"http://127.0.0.1:{free_port()}/v1"
    g = gateway(policy({"a": dead}, SOLO).replace("timeouts:", "health: {failures_to_eject: 2, cooldown_s: 60}\n"
                                                              "    timeouts:"))
    assert post(g).status_code == 502
    assert post(g).status_code == 502
    r = post(g)  # ejected now
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_target"
    assert httpx.get(g.url + "/readyz").status_code == 503


def test_upstream_4xx_is_passed_through_without_fallback(fake, gateway):
    a, b = fake("a"), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, CHAIN))
    # a's base_url points at a path the server does not serve: it answers 404 (a client error)
    g2 = gateway(policy({"a": a.url.replace("/v1", "/nope"), "b": b.url}, CHAIN))
    r = post(g2)
    assert r.status_code == 404
    assert b.state.count == 0  # no fallback on a client error
    assert post(g).status_code == 200


def test_dead_target_is_ejected_and_stops_receiving_traffic(fake, gateway):
    a, b = fake("a", "500"), fake("b")
    text = policy({"a": a.url, "b": b.url}, CHAIN).replace(
        "timeouts:", "health: {failures_to_eject: 3, cooldown_s: 60}\n    timeouts:", 1)
    g = gateway(text)
    for _ in range(10):
        assert post(g).status_code == 200
    assert a.state.count == 3  # after 3 consecutive failures, a gets nothing
    assert b.state.count == 10


# ---------------------------------------------------------------- streams

def stream_events(g, body=None):
    events = []
    with httpx.stream("POST", g.base_url + "/chat/completions", json={**(body or MSG), "stream": True},
                      timeout=15) as r:
        status = r.status_code
        headers = r.headers
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    return status, headers, events


@pytest.mark.parametrize("fault", ["500", "reset", "429"])
def test_stream_falls_back_before_first_byte(fake, gateway, fault):
    a, b = fake("a", fault, retry_after=30), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, CHAIN))
    status, headers, events = stream_events(g)
    assert status == 200 and headers["x-upstream"] == "b"
    assert events[-1] == "[DONE]"
    assert "".join(orjson.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
                   if orjson.loads(e)["choices"]).startswith("[b]")


@pytest.mark.parametrize("fault", ["midstream_drop", "stall", "no_done"])
def test_stream_failure_after_commit_ends_with_error_event(fake, gateway, fault):
    a, b = fake("a", fault, delay=10.0, chunks=4), fake("b")
    g = gateway(policy({"a": a.url, "b": b.url}, CHAIN))
    t0 = time.monotonic()
    status, headers, events = stream_events(g, {"model": "m", "messages": [
        {"role": "user", "content": "one two three four five six seven eight"}]})
    assert time.monotonic() - t0 < 8  # never a hang: the 2 s read timeout ends a stall
    assert status == 200 and headers["x-upstream"] == "a"
    assert "[DONE]" not in events
    last = orjson.loads(events[-1])
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert b.state.count == 0  # no retroactive fallback after the commit point


def test_sdk_sees_mid_stream_error_as_exception(fake, gateway):
    a = fake("a", "midstream_drop", chunks=4)
    g = gateway(policy({"a": a.url}, SOLO))
    c = openai.OpenAI(base_url=g.base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in c.chat.completions.create(model="m", stream=True, messages=[
                {"role": "user", "content": "one two three four five six seven eight"}]):
            pass


def test_active_health_probe_ejects_and_restores(fake, gateway):
    a, b = fake("a"), fake("b")
    text = policy({"a": a.url, "b": b.url}, CHAIN).replace(
        "timeouts:", "health: {probe_path: /health, probe_interval_s: 0.2, probe_timeout_s: 1}\n    timeouts:", 1)
    g = gateway(text)
    assert post(g).headers["x-upstream"] == "a"
    a.set("503")  # its /health answers 503 now

    def probed(state: str) -> bool:
        return wait_until(lambda: httpx.get(g.url + "/readyz").json()["upstreams"]["a"] == state, timeout=5)

    assert probed("probe_failed")
    count = a.state.count
    r = post(g)
    assert r.headers["x-upstream"] == "b" and a.state.count == count  # a is skipped, not tried
    a.set("none")
    assert probed("up")
    assert post(g).headers["x-upstream"] == "a"
