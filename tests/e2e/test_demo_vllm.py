"""Real vLLM (CPU) serving the tiny base and its LoRA adapter as two model names on 127.0.0.1.

Creates vLLM's own virtualenv on first run (~100-160 s, cached under the demo cache afterwards).
"""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from demo.train import TrainResult

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _post(url: str, body: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        assert r.status == 200
        return json.loads(r.read())  # type: ignore[no-any-return]


def test_vllm_serves_base_and_lora_adapter(tiny_model: Path, tiny_adapter: TrainResult, tmp_path: Path) -> None:
    from demo.vllm_server import group_alive, vllm_server

    log = tmp_path / "vllm.log"
    # Ctrl-C inside the block (KeyboardInterrupt) must stop the server just like a normal exit.
    with pytest.raises(KeyboardInterrupt):
        with vllm_server(tiny_model, "tiny-base", loras={"tiny-billing": tiny_adapter.adapter_dir}, log=log) as srv:
            pid = srv.pid
            _exercise(srv.base_url)
            stopping = time.monotonic()
            raise KeyboardInterrupt
    assert not group_alive(pid), "vLLM's process group is still running after the context exited"
    assert time.monotonic() - stopping < 30
    assert "tiny-billing" in log.read_text()


def _exercise(base_url: str) -> None:
    with urllib.request.urlopen(f"{base_url}/models", timeout=10) as r:
        names = {m["id"] for m in json.loads(r.read())["data"]}
    assert {"tiny-base", "tiny-billing"} <= names
    answers = {}
    for name in ("tiny-base", "tiny-billing"):
        out = _post(f"{base_url}/chat/completions", {
            "model": name, "temperature": 0, "max_tokens": 16,
            "messages": [{"role": "user", "content": "I was charged twice for invoice INV-12345."}]})
        assert out["model"] == name
        assert out["usage"]["completion_tokens"] > 0
        answers[name] = out["choices"][0]["message"]["content"]
    # The adapter changes the weights, so greedy outputs of the two names differ.
    assert answers["tiny-base"] != answers["tiny-billing"]
    _base_requests_are_not_served_by_an_adapter_in_mixed_batches(base_url)
    # A request with tools goes through the hermes parser without error (random weights: any answer).
    tools = [{"type": "function", "function": {"name": "lookup_invoice", "parameters": {
        "type": "object", "properties": {"invoice_id": {"type": "string"}}, "required": ["invoice_id"]}}}]
    out = _post(f"{base_url}/chat/completions", {
        "model": "tiny-billing", "temperature": 0, "max_tokens": 16, "tools": tools,
        "messages": [{"role": "user", "content": "Status of INV-12345?"}]})
    assert out["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")


def test_vllm_start_failure_reports_the_log(tmp_path: Path) -> None:
    from demo.vllm_server import VllmStartError, vllm_server

    bogus = tmp_path / "not-a-model"
    bogus.mkdir()
    with pytest.raises(VllmStartError, match="exited with code"):
        with vllm_server(bogus, "bogus", log=tmp_path / "bogus.log", ready_timeout=120):
            pass


def _base_requests_are_not_served_by_an_adapter_in_mixed_batches(base_url: str) -> None:
    """Regression: vLLM 0.32 CPU indexed LoRA slot -1 (no adapter) as the last slot, so base requests batched
    together with adapter requests got the adapter's answer (demo.vllm_server keeps a spare empty slot)."""
    def ask(model: str) -> str:
        out = _post(f"{base_url}/chat/completions", {
            "model": model, "temperature": 0, "max_tokens": 12,
            "messages": [{"role": "user", "content": "Write a haiku about the sea, please."}]})
        return str(out["choices"][0]["message"]["content"])

    alone = {m: ask(m) for m in ("tiny-base", "tiny-billing")}
    assert alone["tiny-base"] != alone["tiny-billing"]
    jobs = ["tiny-base", "tiny-billing"] * 4
    with ThreadPoolExecutor(len(jobs)) as pool:
        mixed = list(pool.map(ask, jobs))
    for model, text in zip(jobs, mixed, strict=True):
        assert text == alone[model], f"{model} answered {text!r} in a mixed batch, alone {alone[model]!r}"
