"""The parsed client request and the per-request record that travels through the gateway.

`ClientRequest` is built once per call from the raw body (orjson) and headers; everything
downstream (classification, routing, gates, telemetry) reads it instead of re-parsing.
`RequestRecord` accumulates what happened (cohort, route, attempts, usage, timings) and is
what metrics, spans, feedback and shadow pairs are made from.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from multidict import CIMultiDictProxy

OPERATIONS = {"/v1/chat/completions": "chat", "/v1/completions": "text_completion", "/v1/embeddings": "embeddings"}


@dataclass(slots=True)
class ClientRequest:
    path: str  # upstream-relative path, e.g. /chat/completions
    operation: str  # gen_ai.operation.name
    body: dict[str, Any]
    headers: CIMultiDictProxy[str]
    key_name: str  # caller key name, "anonymous" when auth is open
    alias: str
    stream: bool
    _last_user: str | None = None
    _last_user_lower: str | None = None
    _all_text_len: int = -1

    @property
    def last_user_text(self) -> str:
        if self._last_user is None:
            self._last_user = _last_user_text(self.body)
        return self._last_user

    @property
    def last_user_lower(self) -> str:
        if self._last_user_lower is None:
            self._last_user_lower = self.last_user_text.lower()
        return self._last_user_lower

    @property
    def prompt_chars(self) -> int:
        if self._all_text_len < 0:
            self._all_text_len = _all_text_len(self.body)
        return self._all_text_len


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _last_user_text(body: dict[str, Any]) -> str:
    msgs = body.get("messages")
    if isinstance(msgs, list):
        for m in reversed(msgs):
            if isinstance(m, dict) and m.get("role") == "user":
                return _text_of(m.get("content"))
        return ""
    prompt = body.get("prompt") if "prompt" in body else body.get("input")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], str):
        return prompt[-1]
    return ""


def _all_text_len(body: dict[str, Any]) -> int:
    msgs = body.get("messages")
    if isinstance(msgs, list):
        return sum(len(_text_of(m.get("content"))) for m in msgs if isinstance(m, dict))
    return len(_last_user_text(body))


@dataclass(slots=True)
class Attempt:
    upstream: str
    model: str
    outcome: str = "pending"  # ok | error reason
    status: int = 0
    seconds: float = 0.0
    reason: str | None = None  # why the next attempt happened
    # for its trace span: the client called, when (perf_counter_ns), and the upstream's HTTP
    # status when it answered with an error (`status` is the gateway's status for the failure)
    client: Any = None
    t0: int = 0
    upstream_status: int | None = None


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    operation: str = ""
    alias: str = ""
    key_name: str = ""
    cohort: str = ""
    cohort_reason: str = ""
    cohort_confidence: float | None = None
    route_id: str = ""
    arm: str = ""
    stream: bool = False
    started: float = field(default_factory=time.perf_counter)
    attempts: list[Attempt] = field(default_factory=list)
    served_by: str = ""  # upstream name that produced the answer
    served_model: str = ""  # upstream served model name
    response_model: str = ""
    status: int = 0
    outcome: str = "ok"
    error_type: str | None = None
    fallback_reason: str | None = None
    ttft_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reasons: list[str] = field(default_factory=list)
    mirrored: bool = False
    evals: list[tuple[str, float, bool, str]] = field(default_factory=list)  # name, score, passed, upstream
    request_params: tuple[tuple[str, Any], ...] = ()  # (name, value) of the sampling parameters sent
    output: dict[str, Any] | None = None  # the served message, kept when mirrored or content is recorded
    # tracing state (gateway/tracing.py) when tracing is on: the recorded request's spans, or
    # the trace context an unrecorded one passes upstream
    trace: Any = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
