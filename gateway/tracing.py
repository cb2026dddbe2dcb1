"""OpenTelemetry tracing: GenAI-convention spans for every client request, exported over OTLP.

Contract
- Off unless OTLP is configured by the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) and `OTEL_SDK_DISABLED` is not true: then `from_env`
  returns None, `AppState.tracing` stays None and the request path pays one `is None` test per hook.
- Protocol from `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`:
  `http/protobuf` (default, base install) or `grpc` (extra `otlp-grpc`). Service name from
  `OTEL_SERVICE_NAME` (default `cohortgate`); sampler and batch limits from the SDK's own
  `OTEL_TRACES_SAMPLER*` / `OTEL_BSP_*` variables. Export runs in the BatchSpanProcessor's thread
  with a bounded queue (spans past it are dropped, a request never waits on the collector).
- One SERVER span per client request, named `{gen_ai.operation.name} {gen_ai.request.model}`, which
  continues an incoming W3C `traceparent` and is the current span (contextvars) from `begin` to
  `finish`; both run in the aiohttp handler's task. One CLIENT span per upstream attempt
  (`{operation} {served model}`), whose context is what the upstream receives in `traceparent`.
  A streamed attempt's span stays open until the stream ends, so it carries the usage and
  finish reasons read from the relayed events.
- Shadow (mirrored) calls get their own trace, linked to the primary request's span (a shadow is
  not part of what the caller waited for), with the pair id (the primary's request id).
- Prompt and completion content are recorded only when the policy sets `telemetry.record_content`.

Names: OpenTelemetry GenAI semantic conventions (Development stability, semconv 1.37 names, which
the genai repo keeps), the OpenInference token/model names, and ours under `cohortgate.`.
`gen_ai.provider.name` is the upstream's `provider` field in the policy; it defaults to `vllm`
because the convention has no well-known value for a self-hosted vLLM server and allows a custom one.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry import context as otel_context
from opentelemetry import propagate
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, set_span_in_context

from gateway.request import Attempt, RequestRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from gateway.state import AppState
    from gateway.upstream.base import UpstreamClient

log = logging.getLogger("cohortgate.tracing")

_REQ_KEY = otel_context.create_key("cohortgate-request")
_SHADOW_LINKS = 4096  # primaries remembered for shadow-span links (mirrors may finish after them)

# request body field -> span attribute (gen_ai.request.*)
_PARAM_ATTRS = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
}


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def configured() -> bool:
    """True when the standard OTEL_* variables ask for OTLP trace export."""
    if _truthy("OTEL_SDK_DISABLED"):
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def make_exporter() -> SpanExporter:
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf").strip().lower()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        except ImportError as exc:
            raise RuntimeError("OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the gRPC exporter: "
                               "pip install 'cohortgate[otlp-grpc]' (or use http/protobuf)") from exc
        return GrpcExporter()  # type: ignore[no-any-return]
    if protocol != "http/protobuf":
        raise RuntimeError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: use http/protobuf or grpc")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()  # endpoint, headers, timeout, compression from the OTEL_* variables


class _Req:
    """Per-request tracing state, stored in the request's OTel context."""

    __slots__ = ("rec", "span", "token", "headers", "client", "open_attempt", "linked")

    def __init__(self, rec: RequestRecord, span: Span) -> None:
        self.rec = rec
        self.span = span
        self.token: Any = None
        self.headers: dict[str, str] | None = None  # the dict sent upstream: re-injected per attempt
        self.client: UpstreamClient | None = None  # the last upstream attempted
        self.open_attempt: Span | None = None  # a streamed attempt's span, ended by finish()
        self.linked = False


class Tracing:
    def __init__(self, state: AppState | None, exporter: SpanExporter, service_name: str | None = None) -> None:
        # The SDK is imported here, not at module level: with tracing off the gateway never loads it.
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        self.state = state
        name = service_name or os.environ.get("OTEL_SERVICE_NAME") or "cohortgate"
        # A provider of our own (not the global one): several gateways may live in one process
        # (tests), and embedding applications keep their own global provider.
        self.provider = TracerProvider(resource=Resource.create({"service.name": name}))
        self.processor = BatchSpanProcessor(exporter)
        self.provider.add_span_processor(self.processor)
        self.tracer = self.provider.get_tracer("cohortgate.gateway")
        self.propagator = propagate.get_global_textmap()  # W3C tracecontext + baggage unless OTEL_PROPAGATORS
        self._primaries: OrderedDict[int, tuple[RequestRecord, Any]] = OrderedDict()

    @classmethod
    def from_env(cls, state: AppState) -> Tracing | None:
        if not configured():
            return None
        return cls(state, make_exporter())

    # ------------------------------------------------------------------ feature lifecycle
    async def start(self, state: AppState) -> None:
        self.state = state

    async def close(self) -> None:
        import asyncio

        # shutdown() flushes the queue and may block on the collector: keep it off the loop.
        await asyncio.to_thread(self.provider.shutdown)

    def _record_content(self) -> bool:
        st = self.state
        return bool(st is not None and st.runtime.policy.telemetry.record_content)

    # ------------------------------------------------------------------ request hooks
    def begin(self, rec: RequestRecord, headers: Any) -> None:
        parent = self.propagator.extract(headers)
        span = self.tracer.start_span(rec.operation or "request", context=parent, kind=SpanKind.SERVER)
        req = _Req(rec, span)
        ctx = otel_context.set_value(_REQ_KEY, req, set_span_in_context(span, parent))
        req.token = otel_context.attach(ctx)

    def inject(self, headers: dict[str, str]) -> None:
        req = otel_context.get_value(_REQ_KEY)
        if isinstance(req, _Req):
            req.headers = headers
        self.propagator.inject(headers)

    def attempt_span(self, rec: RequestRecord, client: UpstreamClient, a: Attempt) -> _AttemptSpan:
        return _AttemptSpan(self, rec, client, a)

    def finish(self, rec: RequestRecord) -> None:
        req = otel_context.get_value(_REQ_KEY)
        if not isinstance(req, _Req) or req.rec is not rec:
            log.warning("tracing: finish() for request %s without its begin() context", rec.request_id)
            return
        try:
            span = req.span
            span.update_name(f"{rec.operation} {rec.alias}" if rec.alias else rec.operation)
            span.set_attributes(self._root_attributes(rec, req.client))
            for name, score, passed, upstream in rec.evals:
                span.add_event("gen_ai.evaluation.result", {
                    "gen_ai.evaluation.name": name, "gen_ai.evaluation.score.value": float(score),
                    "gen_ai.evaluation.score.label": "pass" if passed else "fail", "cohortgate.upstream": upstream})
            if rec.error_type is not None:
                span.set_status(Status(StatusCode.ERROR, rec.error_type))
            if req.open_attempt is not None:
                _end_attempt(req.open_attempt, rec, None)
            if rec.mirrored:
                self._remember_primary(req)
            span.end()
        finally:
            otel_context.detach(req.token)

    def record_content(self, rec: RequestRecord, body: dict[str, Any], output: dict[str, Any] | None) -> None:
        """Put the prompt and completion on the current request's span, when the policy opts in.
        `body` is the client's request body, `output` the assistant message (or None)."""
        if not self._record_content():
            return
        req = otel_context.get_value(_REQ_KEY)
        if not isinstance(req, _Req) or req.rec is not rec:
            return
        attrs: dict[str, Any] = {}
        msgs = body.get("messages")
        if isinstance(msgs, list):
            attrs["gen_ai.input.messages"] = orjson.dumps(msgs).decode()
        elif "prompt" in body or "input" in body:
            attrs["gen_ai.input.messages"] = orjson.dumps(body.get("prompt", body.get("input"))).decode()
        if output is not None:
            attrs["gen_ai.output.messages"] = orjson.dumps([output]).decode()
        # OpenInference readers look for input.value / output.value
        if "gen_ai.input.messages" in attrs:
            attrs["input.value"] = attrs["gen_ai.input.messages"]
        if "gen_ai.output.messages" in attrs:
            attrs["output.value"] = attrs["gen_ai.output.messages"]
        if attrs:
            req.span.set_attributes(attrs)

    # ------------------------------------------------------------------ shadow calls
    @contextmanager
    def shadow_span(self, rec: RequestRecord, upstream_name: str) -> Iterator[Span]:
        """Span for one mirrored call of `rec` to `upstream_name`: a new trace, linked to the
        primary's span, current inside the block (so `state.inject_trace` propagates it). An
        exception leaving the block marks the span failed (error.type) and is re-raised."""
        primary = self._primary_context(rec)
        links = [Link(primary, {"cohortgate.link": "primary"})] if primary is not None else None
        client = self.state.runtime.upstreams.get(upstream_name) if self.state is not None else None
        model = client.spec.model if client is not None else upstream_name
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": rec.operation, "gen_ai.request.model": rec.alias,
            "cohortgate.shadow.role": "shadow", "cohortgate.shadow.pair_id": rec.request_id,
            "cohortgate.target": upstream_name, "cohortgate.cohort": rec.cohort, "cohortgate.route": rec.route_id,
            "openinference.span.kind": "LLM", "llm.model_name": model,
        }
        if client is not None:
            attrs["gen_ai.provider.name"] = client.spec.provider
            attrs.update(_server(client))
        # An empty parent context: the shadow is a root of its own trace, and the primary's
        # request state is not visible inside it.
        span = self.tracer.start_span(f"{rec.operation} {model}", context=otel_context.Context(),
                                      kind=SpanKind.CLIENT, links=links, attributes=attrs)
        token = otel_context.attach(set_span_in_context(span, otel_context.Context()))
        try:
            yield span
        except BaseException as exc:
            reason = getattr(exc, "reason", None) or type(exc).__name__
            span.set_attribute("error.type", str(reason))
            span.set_status(Status(StatusCode.ERROR, str(reason)))
            raise
        finally:
            otel_context.detach(token)
            span.end()

    def _remember_primary(self, req: _Req) -> None:
        if req.linked:
            return
        req.linked = True
        self._primaries[id(req.rec)] = (req.rec, req.span.get_span_context())
        while len(self._primaries) > _SHADOW_LINKS:
            self._primaries.popitem(last=False)

    def _primary_context(self, rec: RequestRecord) -> Any:
        req = otel_context.get_value(_REQ_KEY)
        if isinstance(req, _Req) and req.rec is rec:
            return req.span.get_span_context()
        hit = self._primaries.get(id(rec))
        if hit is not None and hit[0] is rec:  # identity check: ids of dead records are reused
            return hit[1]
        return None

    # ------------------------------------------------------------------ attributes
    def _root_attributes(self, rec: RequestRecord, client: UpstreamClient | None) -> dict[str, Any]:
        a: dict[str, Any] = {
            "gen_ai.operation.name": rec.operation,
            "gen_ai.request.stream": rec.stream,
            "openinference.span.kind": "LLM",
            "cohortgate.request_id": rec.request_id,
            "cohortgate.outcome": rec.outcome,
            "cohortgate.attempts": len(rec.attempts),
            "cohortgate.mirror": rec.mirrored,
            "http.response.status_code": rec.status,
        }
        if rec.alias:
            a["gen_ai.request.model"] = rec.alias
        _request_params(a, rec.request_params)
        if client is not None:
            a["gen_ai.provider.name"] = client.spec.provider
            a.update(_server(client))
        model = rec.response_model or rec.served_model
        if model:
            a["gen_ai.response.model"] = model
            a["llm.model_name"] = model
        _usage(a, rec)
        if rec.ttft_s is not None:
            a["gen_ai.response.time_to_first_chunk"] = rec.ttft_s
        if rec.error_type is not None:
            a["error.type"] = rec.error_type
        if rec.cohort:
            a["cohortgate.cohort"] = rec.cohort
            a["cohortgate.cohort.reason"] = rec.cohort_reason
            if rec.cohort_confidence is not None:
                a["cohortgate.cohort.confidence"] = rec.cohort_confidence
        if rec.route_id:
            a["cohortgate.route"] = rec.route_id
        if rec.served_by:
            a["cohortgate.target"] = rec.served_by
            a["cohortgate.target.model"] = rec.served_model
            a["cohortgate.canary_arm"] = rec.arm or "-"
        if rec.fallback_reason:
            a["cohortgate.fallback.reason"] = rec.fallback_reason
        if rec.key_name:
            a["cohortgate.caller"] = rec.key_name
        return a


def _server(client: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    addr = getattr(client, "address", None)
    if addr:
        out["server.address"] = addr
    port = getattr(client, "port", None)
    if port:
        out["server.port"] = int(port)
    return out


def _request_params(a: dict[str, Any], params: dict[str, Any]) -> None:
    for k, v in params.items():
        attr = _PARAM_ATTRS.get(k)
        if attr is not None and isinstance(v, int | float) and not isinstance(v, bool):
            a[attr] = v
        elif k == "stop" and v:
            a["gen_ai.request.stop_sequences"] = [v] if isinstance(v, str) else [str(s) for s in v]
        elif k == "n" and isinstance(v, int) and v != 1:
            a["gen_ai.request.choice.count"] = v


def _usage(a: dict[str, Any], rec: RequestRecord) -> None:
    tin, tout = rec.input_tokens, rec.output_tokens
    if isinstance(tin, int):
        a["gen_ai.usage.input_tokens"] = tin
        a["llm.token_count.prompt"] = tin
    if isinstance(tout, int):
        a["gen_ai.usage.output_tokens"] = tout
        a["llm.token_count.completion"] = tout
    if isinstance(tin, int) and isinstance(tout, int):
        a["llm.token_count.total"] = tin + tout
    if rec.finish_reasons:
        a["gen_ai.response.finish_reasons"] = [str(r) for r in rec.finish_reasons]


def _end_attempt(span: Span, rec: RequestRecord, exc: BaseException | None) -> None:
    if exc is None and rec.outcome in ("ok", "client_closed"):
        attrs: dict[str, Any] = {"cohortgate.attempt.outcome": "ok"}
        if rec.response_model:
            attrs["gen_ai.response.model"] = rec.response_model
        _usage(attrs, rec)
    else:
        reason = str(getattr(exc, "reason", None) or (type(exc).__name__ if exc is not None else rec.error_type))
        attrs = {"cohortgate.attempt.outcome": reason, "error.type": reason}
        status = getattr(exc, "status", None)
        if isinstance(status, int):
            attrs["http.response.status_code"] = status
        span.set_status(Status(StatusCode.ERROR, reason))
    span.set_attributes(attrs)
    span.end()


class _AttemptSpan:
    """CLIENT span around one upstream attempt (a plain class: cheaper than @contextmanager)."""

    __slots__ = ("t", "rec", "client", "a", "span", "req")

    def __init__(self, t: Tracing, rec: RequestRecord, client: UpstreamClient, a: Attempt) -> None:
        self.t, self.rec, self.client, self.a = t, rec, client, a
        self.span: Span | None = None
        self.req: _Req | None = None

    def __enter__(self) -> Span:
        rec, client = self.rec, self.client
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": rec.operation,
            "gen_ai.provider.name": client.spec.provider,
            "gen_ai.request.model": client.spec.model,
            "cohortgate.attempt": len(rec.attempts),
            "cohortgate.target": client.name,
            **_server(client),
        }
        span = self.t.tracer.start_span(f"{rec.operation} {client.spec.model}", kind=SpanKind.CLIENT,
                                        attributes=attrs)
        self.span = span
        req = otel_context.get_value(_REQ_KEY)
        if isinstance(req, _Req) and req.rec is rec:
            self.req = req
            req.client = client
            if req.headers is not None:
                # the upstream's parent is this attempt's span, not the request's
                self.t.propagator.inject(req.headers, context=set_span_in_context(span))
        return span

    def __exit__(self, et: Any, exc: BaseException | None, tb: Any) -> None:
        span = self.span
        if span is None:
            return
        if exc is None and self.rec.stream and self.req is not None:
            self.req.open_attempt = span  # the stream is still being relayed: finish() ends it
            return
        _end_attempt(span, self.rec, exc)
