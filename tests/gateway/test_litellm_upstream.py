"""A hosted provider as an upstream through litellm: a local fake of Anthropic's Messages API,
streamed and not, and fallback from a dead OpenAI-compatible upstream to it."""

from __future__ import annotations

import importlib.util

import httpx
import openai
import pytest

from tests.gateway import fake_anthropic
from tests.gateway.conftest import _start, policy
from tests.helpers import free_port

if importlib.util.find_spec("litellm") is None:  # not imported here: the gateway imports it lazily
    pytest.skip("litellm (extra 'providers') is not installed", allow_module_level=True)


@pytest.fixture
def anthropic(loop_thread):
    seen: list = []
    port = free_port()
    runner = loop_thread.run(_start(fake_anthropic.make_app(seen), port))
    yield f"http://127.0.0.1:{port}", seen
    loop_thread.run(runner.cleanup())


def _policy(dead_url: str, anthropic_url: str) -> str:
    text = policy({"local": dead_url}, """
- id: r
  cohorts: ["*"]
  targets: [{upstream: local}]
  fallback: [claude]
""")
    return text.replace("models:\n", f"""  claude:
    kind: litellm
    base_url: {anthropic_url}
    model: anthropic/claude-sonnet-4-5
    provider: anthropic
    api_key_env: ANTHROPIC_TEST_KEY
models:
""", 1)


def test_fallback_to_hosted_provider(gateway, anthropic, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_TEST_KEY", "sk-ant-test")
    url, seen = anthropic
    g = gateway(_policy(f"http://127.0.0.1:{free_port()}/v1", url))
    c = openai.OpenAI(base_url=g.base_url, api_key="x", max_retries=0, timeout=30)
    raw = c.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "hi there"}])
    r = raw.parse()
    assert raw.headers["x-upstream"] == "claude" and raw.headers["x-fallback-reason"] == "upstream_unavailable"
    assert r.choices[0].message.content == "[anthropic] echo: hi there"
    assert r.usage.prompt_tokens == 7 and r.usage.completion_tokens == 5
    assert seen[-1]["headers"]["x-api-key"] == "sk-ant-test"
    assert seen[-1]["body"]["model"] == "claude-sonnet-4-5"

    chunks = list(c.chat.completions.create(model="m", messages=[{"role": "user", "content": "stream me"}],
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip() == "[anthropic] echo: stream me"
    assert any(ch.usage and ch.usage.completion_tokens == 5 for ch in chunks)
    assert seen[-1]["body"]["stream"] is True


def test_provider_failure_maps_to_gateway_error(gateway, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_TEST_KEY", "sk-ant-test")
    dead = f"http://127.0.0.1:{free_port()}"
    g = gateway(_policy(f"http://127.0.0.1:{free_port()}/v1", dead))
    r = httpx.post(g.base_url + "/chat/completions", json={"model": "m", "messages": [
        {"role": "user", "content": "x"}]}, timeout=30)
    assert r.status_code in (502, 504)
    assert r.json()["error"]["code"] and "sk-ant-test" not in r.text
