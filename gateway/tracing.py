"""OpenTelemetry tracing: GenAI-convention spans for every client request, exported over OTLP.

Contract
- Off unless OTLP is configured by the standard variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or
  `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`
  turn it off): then `from_env` returns None, `AppState.tracing` stays None and the request path
  pays one `is None` test per hook, and the OpenTelemetry SDK is never imported.
- Protocol from `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`
  (default) or `grpc` (extra `otlp-grpc`). Service name `OTEL_SERVICE_NAME` (default `cohortgate`)
  and `OTEL_RESOURCE_ATTRIBUTES` through the SDK's Resource. Sampling: `OTEL_TRACES_SAMPLER`
  (`parentbased_always_on` default, `always_on/off`, `[parentbased_]traceidratio` with
  `OTEL_TRACES_SAMPLER_ARG`). Export is batched off the request path (tracing_batch.py,
  `OTEL_BSP_*` limits, bounded queue: spans past it are dropped, a request never waits).
- One SERVER span per client request, named `{gen_ai.operation.name} {gen_ai.request.model}`,
  continuing an incoming W3C `traceparent` (and passing `tracestate` on). Its state is the
  request record's `trace`, from `begin` on (a mirror links to it even after the request ended);
  an unrecorded request keeps only the trace context it passes upstream.
- One CLIENT span per upstream attempt (`{operation} {served model}`), child of the request span;
  the upstream receives this attempt's span in `traceparent`. A streamed attempt's span stays
  open until the stream ends, so it carries the usage and finish reasons of the relayed events.
- Shadow (mirrored) calls get a trace of their own with a span link to the primary request's
  span (a shadow is no part of what the caller waited for) and its pair id (the request id).
- Prompt and completion content are recorded only when the policy sets `telemetry.record_content`.

Names: OpenTelemetry GenAI semantic conventions (Development status; the semconv 1.37 names the
genai repo keeps), OpenInference (`llm.token_count.*`, `llm.model_name`, `openinference.span.kind`),
and ours under `cohortgate.`. `gen_ai.provider.name` is the upstream's `provider` in the policy,
default `vllm`: the convention has no well-known value for a self-hosted vLLM server and allows
a custom one. A request that never reached an upstream (auth, validation errors) has no provider.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import orjson

from gateway.request import Attempt, RequestRecord
from gateway.tracing_attrs import encode_request, server_attrs, usage
from gateway.tracing_batch import BatchExporter
from gateway.tracing_export import (
    CLIENT,
    STATUS_ERROR,
    Encoder,
    SpanData,
    compiled,
    new_ids,
    span_id,
    traceparent,
)
from gateway.tracing_send import make_sender

if TYPE_CHECKING:
    from gateway.state import AppState

log = logging.getLogger("cohortgate.tracing")

# the shadow call running in this task: its recorded span, or the context an unrecorded one passes on
_CUR: ContextVar[_Req | tuple[str, str | None] | None] = ContextVar("cohortgate_trace", default=None)

def configured() -> bool:
    """True when the standard OTEL_* variables ask for OTLP trace export."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


class Sampler:
    """The SDK's standard samplers by name; the ratio test is the SDK's (low 64 bits of the trace id)."""

    def __init__(self, name: str, arg: str | None) -> None:
        name = name.strip().lower() or "parentbased_always_on"
        self.parent_based = name.startswith("parentbased_")
        base = name.removeprefix("parentbased_")
        if base == "always_on":
            ratio = 1.0
        elif base == "always_off":
            ratio = 0.0
        elif base == "traceidratio":
            try:
                ratio = min(1.0, max(0.0, float(arg if arg is not None else 1.0)))
            except ValueError:
                ratio = 1.0
        else:
            raise RuntimeError(f"OTEL_TRACES_SAMPLER={name!r} is not supported: use always_on, always_off, "
                               "traceidratio or their parentbased_ forms")
        self.bound = round(ratio * (1 << 64))
        self.always = self.bound >= 1 << 64  # every root trace: no need to look at the id

    def root(self, trace_id: bytes) -> bool:
        return int.from_bytes(trace_id[8:], "big") < self.bound

    def decide(self, trace_id: bytes, parent_sampled: bool | None) -> bool:
        if parent_sampled is not None and self.parent_based:
            return parent_sampled
        return self.root(trace_id)


def parse_traceparent(value: str) -> tuple[bytes, bytes, bool] | None:
    """W3C traceparent `00-<32 hex>-<16 hex>-<2 hex>` -> (trace id, parent span id, sampled)."""
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff" or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    if parts[0] == "00" and len(parts) != 4:
        return None
    try:
        tid, sid, flags = bytes.fromhex(parts[1]), bytes.fromhex(parts[2]), int(parts[3][:2], 16)
    except ValueError:
        return None
    # fromhex skips spaces: a shorter result was not all hex; all-zero ids are invalid
    if len(tid) != 16 or len(sid) != 8 or not any(tid) or not any(sid):
        return None
    return tid, sid, bool(flags & 1)


class _PyReq:
    """A recorded (sampled) request's tracing state, kept on its RequestRecord as `rec.trace`
    from begin() on (a mirror still links to it after the request ended); once finished, the
    exporter's queue item for the request's spans (`encode`). A shadow call's state is the same
    class, current in the `_CUR` ContextVar during the call (rec None). `_Req` is this class or,
    when built, its compiled twin `gateway._spanenc.TraceState` (same fields and methods).

    The attempts' CLIENT spans need no state of their own: they are written from the request's
    `Attempt` records (client, start, duration, outcome); only their span ids live here, drawn
    before each attempt because the upstream receives them in `traceparent`."""

    __slots__ = ("rec", "trace_id", "span_id", "attempt_ids", "parent_id", "tracestate", "start", "t0", "end",
                 "content")

    def __init__(self, trace_id: bytes, span_id: bytes, attempt_id: bytes | None, parent_id: bytes | None,
                 tracestate: str | None) -> None:
        # set by finish(), cleared once encoded: rec.trace -> req -> rec is a cycle only meanwhile
        self.rec: RequestRecord | None = None
        self.trace_id, self.span_id, self.parent_id = trace_id, span_id, parent_id
        # of attempt 1, 2...: the first drawn with the trace's ids (a shadow call has no attempts)
        self.attempt_ids = [attempt_id] if attempt_id is not None else []
        self.tracestate = tracestate
        self.start = time.time_ns()
        self.t0 = time.perf_counter_ns()  # the same instant: the attempts' times are offsets from it
        self.end = 0
        self.content: dict[str, Any] | None = None

    def encode(self, enc: Encoder) -> tuple[bytes, int]:
        rec = self.rec
        self.rec = None  # encoded: no rec <-> req cycle from here on
        return encode_request(self, rec, enc)  # type: ignore[arg-type]

    def propagate(self, headers: dict[str, str], span_id: bytes) -> None:
        headers["traceparent"] = traceparent(self.trace_id, span_id, True)
        if self.tracestate:
            headers["tracestate"] = self.tracestate


if TYPE_CHECKING:
    _Req = _PyReq
elif compiled is not None:
    _Req = compiled.TraceState
    compiled.slots(RequestRecord, Attempt)  # the compiled encoder reads their fields straight from their slots
else:
    _Req = _PyReq


class Tracing:
    def __init__(self, state: AppState | None, sender: Any, service_name: str | None = None,
                 sampler: Sampler | None = None) -> None:
        # The SDK is imported only here (tracing on): its Resource reads OTEL_RESOURCE_ATTRIBUTES.
        from opentelemetry.sdk.resources import Resource

        from cohortgate import __version__

        self.state = state
        name = service_name or os.environ.get("OTEL_SERVICE_NAME") or "cohortgate"
        resource = dict(Resource.create({"service.name": name}).attributes)
        self.exporter = BatchExporter(Encoder(resource, "cohortgate.gateway", __version__), sender)
        self.sampler = sampler or Sampler(os.environ.get("OTEL_TRACES_SAMPLER", ""),
                                          os.environ.get("OTEL_TRACES_SAMPLER_ARG"))

    @classmethod
    def from_env(cls, state: AppState) -> Tracing | None:
        if not configured():
            return None
        return cls(state, make_sender())

    # ------------------------------------------------------------------ feature lifecycle
    async def start(self, state: AppState) -> None:
        import asyncio

        self.state = state
        self.exporter.loop = asyncio.get_running_loop()

    async def close(self) -> None:
        import asyncio

        self.exporter.encode_pending()
        self.exporter.loop = None
        # the last export may wait on the collector: keep it off the event loop
        await asyncio.to_thread(self.exporter.shutdown)

    def _record_content(self) -> bool:
        st = self.state
        return bool(st is not None and st.runtime.policy.telemetry.record_content)

    # ------------------------------------------------------------------ request hooks
    def begin(self, rec: RequestRecord, headers: Any) -> bool:
        """Starts the request's trace; returns whether it is sampled (recorded). Sets `rec.trace`:
        a `_Req` when sampled, else the (traceparent, tracestate) to pass upstream, the only
        thing an unrecorded request needs (no span state, nothing to end)."""
        tp = headers.get("traceparent")
        parent = parse_traceparent(tp) if tp else None
        if parent is None:  # a new trace: the root sampler decides (on the trace id's low 64 bits)
            trace_id, sid, aid = new_ids()  # with the request span's and first attempt's ids
            s = self.sampler
            if s.always or s.root(trace_id):
                rec.trace = _Req(trace_id, sid, aid, None, None)
                return True
            rec.trace = (traceparent(trace_id, sid, False), None)
            return False
        trace_id, parent_id, parent_sampled = parent
        if self.sampler.decide(trace_id, parent_sampled):
            rec.trace = _Req(trace_id, span_id(), span_id(), parent_id, headers.get("tracestate"))
            return True
        rec.trace = (traceparent(trace_id, span_id(), False), headers.get("tracestate"))
        return False

    def inject(self, headers: dict[str, str], rec: RequestRecord | None = None) -> None:
        """Trace context for a call upstream: of `rec` (a client request), else of the shadow call
        current in this task."""
        t = rec.trace if rec is not None else _CUR.get()
        if t is None:
            return
        if isinstance(t, tuple):  # unsampled: pass the context on
            headers["traceparent"] = t[0]
            if t[1]:
                headers["tracestate"] = t[1]
        elif rec is not None:  # recorded: the attempt's span is the upstream's parent (next_attempt)
            t.propagate(headers, t.attempt_ids[0])
        else:  # a shadow call: its span is the parent
            t.propagate(headers, t.span_id)

    def next_attempt(self, rec: RequestRecord, headers: dict[str, str]) -> None:
        """Before a recorded request's second and later attempts: a span id of their own, set as
        the parent in `headers` (the dict sent upstream; the first attempt's id was drawn in
        begin and set by inject)."""
        req = rec.trace
        if type(req) is _Req:
            sid = span_id()
            req.attempt_ids.append(sid)
            req.propagate(headers, sid)

    def finish(self, rec: RequestRecord) -> None:
        req = rec.trace
        if type(req) is not _Req or req.end:  # unsampled, or finished already
            return
        output = rec.output  # the proxy keeps the answer for mirrored requests
        if output is not None and (req.content is None or "gen_ai.output.messages" not in req.content):
            self.record_content(rec, None, output)
        req.end = time.time_ns()
        req.rec = rec
        if not self.exporter.submit(req):
            req.rec = None  # dropped (queue full): never encoded, so break the rec <-> req cycle here

    def record_content(self, rec: RequestRecord, body: dict[str, Any] | None,
                       output: dict[str, Any] | None = None) -> None:
        """Keep the prompt (the client's request body) and/or the completion (the assistant
        message) for the request's span, when the policy opts in (`telemetry.record_content`);
        a no-op otherwise. May be called twice (input first, output later). Without a call,
        the span still gets the output from `rec.output` when the proxy kept it."""
        req = rec.trace
        if type(req) is not _Req or not self._record_content():
            return
        c = req.content if req.content is not None else {}
        if body is not None:
            msgs = body.get("messages")
            if msgs is None:
                msgs = body.get("prompt", body.get("input"))
            if msgs is not None:
                c["gen_ai.input.messages"] = c["input.value"] = orjson.dumps(msgs).decode()
        if output is not None:
            c["gen_ai.output.messages"] = c["output.value"] = orjson.dumps([output]).decode()
        req.content = c

    # ------------------------------------------------------------------ shadow calls
    @contextmanager
    def shadow_span(self, rec: RequestRecord, upstream_name: str,
                    shadow: RequestRecord | None = None) -> Iterator[SpanData]:
        """Span for one mirrored call of `rec` to `upstream_name`: a new trace linked to the
        primary's span, current inside the block (so `state.inject_trace` sends it upstream),
        recorded when the primary was. Yields the span: the caller may add to `.attrs`. When
        `shadow` (the shadow call's own RequestRecord) is given, its usage, response model, time
        to first chunk and finish reasons are added at the end. An exception leaving the block
        marks the span failed (error.type = its `reason` or class name) and is re-raised."""
        primary = rec.trace  # a _Req when the request was recorded, a tuple when not
        client = self.state.runtime.upstreams.get(upstream_name) if self.state is not None else None
        model = client.spec.model if client is not None else upstream_name
        trace_id, sid, _ = new_ids()
        sampled = type(primary) is _Req or (primary is None and self.sampler.root(trace_id))
        req = _Req(trace_id, sid, None, None, None)
        span = SpanData(trace_id, req.span_id, None, f"{rec.operation} {model}", CLIENT, req.start, 0)
        span.attrs = {
            "gen_ai.operation.name": rec.operation, "gen_ai.request.model": model,
            "openinference.span.kind": "LLM", "llm.model_name": model,
            "cohortgate.shadow.role": "shadow", "cohortgate.shadow.pair_id": rec.request_id,
            "cohortgate.target": upstream_name, "cohortgate.cohort": rec.cohort or None,
            "cohortgate.route": rec.route_id or None, "cohortgate.request.model": rec.alias or None,
        }
        if client is not None:
            span.attrs["gen_ai.provider.name"] = client.spec.provider
            span.attrs.update(server_attrs(client))
        if type(primary) is _Req:
            span.links = [(primary.trace_id, primary.span_id, {"cohortgate.link": "primary"})]
        # current for inject(): the shadow's span is the upstream's parent, or, unrecorded, only passed on
        token = _CUR.set(req if sampled else (traceparent(trace_id, req.span_id, False), None))
        try:
            yield span
        except BaseException as exc:
            reason = str(getattr(exc, "reason", None) or type(exc).__name__)
            span.attrs["error.type"] = reason
            span.status = (STATUS_ERROR, reason)
            raise
        finally:
            _CUR.reset(token)
            span.end = time.time_ns()
            if shadow is not None:
                if shadow.response_model:
                    span.attrs["gen_ai.response.model"] = shadow.response_model
                usage(span.attrs, shadow)
                if shadow.ttft_s is not None:
                    span.attrs["gen_ai.response.time_to_first_chunk"] = shadow.ttft_s
                if shadow.finish_reasons:
                    span.attrs["gen_ai.response.finish_reasons"] = [str(r) for r in shadow.finish_reasons]
            if sampled:
                self.exporter.submit(span)
