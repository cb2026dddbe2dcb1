"""OTLP trace export without the SDK's per-span objects: direct protobuf encoding, batched sending.

Contract: `BatchExporter.submit(span)` is all a request does (a list append; with
`OTEL_BSP_MAX_QUEUE_SIZE` spans waiting, new ones are dropped and counted, never waited on).
Spans finished during one event-loop iteration are encoded together by one `call_soon` callback,
which runs once the request's task yields, normally after its response was handed to the
transport, so encoding does not delay the response it describes. A daemon thread wakes every
`OTEL_BSP_SCHEDULE_DELAY` ms (or when `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans are encoded), frames
them as one OTLP `ExportTraceServiceRequest` and sends it: `http/protobuf` POST (one kept-alive
connection, optional gzip), or gRPC (extra `otlp-grpc`). A failed export is logged and dropped (no retry queue: the
gateway's memory stays bounded when the collector is down).

Why not the SDK's Span + BatchSpanProcessor + OTLPSpanExporter: measured on this project's
benchmark machine, they cost about 150 us of CPU per request for our two spans on the request
path (attribute validation under a lock, per attribute) plus about 150 us in the export thread
(one protobuf object per attribute): more than the gateway's own work per request. Here a
traced request costs about 6.5% more instructions in its hooks and 13% more to encode and send its
two spans (docs/observability.md has the measurements; the shutdown log line reports the CPU per
span of both export stages). The wire format is the
same OTLP protobuf (field numbers from opentelemetry-proto `trace/v1/trace.proto` and
`common/v1/common.proto`; the tests decode it with opentelemetry-proto). Attributes shared by many
spans (cohort, route, models, outcome...) are encoded once per distinct combination (`fixed`),
str/bool attributes once per distinct value, int attributes from per-key prefixes; the caches
are bounded. Encoding on the loop rather than in the export thread finds the records still in
cache and pays no GIL handoffs: it measured at a third of the CPU. Transport: tracing_send.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("cohortgate.tracing")

SERVER, CLIENT = 2, 3  # Span.SpanKind
STATUS_ERROR = 2
_CACHE_MAX = 16384
_UNCACHED = frozenset({"cohortgate.request_id", "cohortgate.shadow.pair_id", "gen_ai.input.messages",
                       "gen_ai.output.messages", "input.value", "output.value", "cohortgate.cohort.confidence"})


_NO_ATTRS: dict[str, Any] = {}


class SpanData:
    """One finished span. `build(span)`, when set, fills name/attrs/fixed/events/status in the export
    thread. `fixed = (key, make)` names a block of attributes shared by many spans: `make()` runs,
    and its attributes are encoded, only the first time the encoder sees `key`."""

    __slots__ = ("trace_id", "span_id", "parent_id", "name", "kind", "start", "end", "attrs", "events", "links",
                 "status", "build", "fixed", "tokens")

    def __init__(self, trace_id: int, span_id: int, parent_id: int, name: str, kind: int, start: int, end: int,
                 build: Callable[[SpanData], None] | None = None) -> None:
        self.trace_id, self.span_id, self.parent_id = trace_id, span_id, parent_id
        self.name, self.kind, self.start, self.end = name, kind, start, end
        # shared empty defaults (most spans have no events or links): assign, never mutate them
        self.attrs: dict[str, Any] = _NO_ATTRS
        self.events: list[tuple[str, int, dict[str, Any]]] | tuple[()] = ()
        self.links: list[tuple[int, int, dict[str, Any]]] | tuple[()] = ()
        self.status: tuple[int, str] = (0, "")
        self.build = build
        # (key, make): attributes that repeat across spans; encoded once per distinct key
        self.fixed: tuple[Any, Callable[[], dict[str, Any]]] | None = None
        # (input, output) token counts: their five attributes are encoded as one cached block
        self.tokens: tuple[int, int] | None = None


# ------------------------------------------------------------------ protobuf wire format
def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_pack_double = struct.Struct("<d").pack
_pack_u64 = struct.Struct("<Q").pack
_SMALL = [bytes((i,)) for i in range(0x80)]


def _len(n: int) -> bytes:
    return _SMALL[n] if n < 0x80 else _varint(n)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _any(v: Any) -> bytes:
    """common.v1.AnyValue: string 1, bool 2, int 3, double 4, array 5 (ArrayValue.values = 1)."""
    if isinstance(v, str):
        return _ld(1, v.encode("utf-8", "replace"))
    if isinstance(v, bool):
        return b"\x10\x01" if v else b"\x10\x00"
    if isinstance(v, int):
        return b"\x18" + _varint(v & 0xFFFFFFFFFFFFFFFF)
    if isinstance(v, float):
        return b"\x21" + struct.pack("<d", v)
    if isinstance(v, list | tuple):
        return _ld(5, b"".join(_ld(1, _any(x)) for x in v))
    return _ld(1, str(v).encode("utf-8", "replace"))


def _int_prefixes(key: str) -> tuple[bytes, bytes]:
    """Span attribute KeyValue bytes for `key` = an int of one / two varint bytes, minus those bytes."""
    kb = _ld(1, key.encode())
    one = kb + b"\x12\x02\x18"  # value: AnyValue{int_value (3)} of 2 bytes
    two = kb + b"\x12\x03\x18"
    return (b"\x4a" + _len(len(one) + 1) + one, b"\x4a" + _len(len(two) + 2) + two)


def _kv(field: int, key: str, v: Any) -> bytes:
    return _ld(field, _ld(1, key.encode()) + _ld(2, _any(v)))


class Encoder:
    def __init__(self, resource: dict[str, Any], scope: str, version: str) -> None:
        self._cache: dict[tuple[str, Any], bytes] = {}
        self._keys: dict[str, bytes] = {}
        self._ints: dict[str, tuple[bytes, bytes]] = {}
        self._fixed: dict[Any, bytes] = {}
        self._heads: dict[tuple[str, int], bytes] = {}  # (name, kind) -> encoded name + kind fields
        self._tokens: dict[tuple[int, int], bytes] = {}
        res = b"".join(_kv(1, k, v) for k, v in resource.items())
        self._resource = _ld(1, res)  # ResourceSpans.resource
        self._scope = _ld(1, _ld(1, scope.encode()) + _ld(2, version.encode()))  # ScopeSpans.scope

    def _attrs(self, attrs: dict[str, Any]) -> bytes:
        """Span.attributes (field 9), inlined for the common value types. Whole KeyValues of
        str/bool values are cached (except per-request strings such as ids); otherwise only the
        key's encoding is (token counts, timings, ids)."""
        cache, keys, ints = self._cache, self._keys, self._ints
        parts = []
        for k, v in attrs.items():
            t = type(v)
            if (t is str and k not in _UNCACHED) or t is bool:
                b = cache.get((k, v))
                if b is None:
                    if len(cache) >= _CACHE_MAX:
                        cache.clear()
                    b = cache[(k, v)] = _kv(9, k, v)
                parts.append(b)
                continue
            if t is int and 0 <= v < 0x4000:  # token counts: the whole KeyValue but 1-2 bytes is per key
                pre = ints.get(k)
                if pre is None:
                    pre = ints[k] = _int_prefixes(k)
                if v < 0x80:
                    parts.append(pre[0] + _SMALL[v])
                else:
                    parts.append(pre[1] + bytes(((v & 0x7F) | 0x80, v >> 7)))
                continue
            if t is float:
                av = b"\x21" + _pack_double(v)
            elif t is str:
                vb = v.encode("utf-8", "replace")
                av = b"\x0a" + _len(len(vb)) + vb
            elif v is None:
                continue
            else:
                av = _any(v)
            kb = keys.get(k)
            if kb is None:
                kb = keys[k] = _ld(1, k.encode())
            inner = kb + b"\x12" + _len(len(av)) + av
            parts.append(b"\x4a" + _len(len(inner)) + inner)
        return b"".join(parts)

    def span(self, s: SpanData) -> bytes:
        # trace_id 1, span_id 2, parent_span_id 4, name 5, kind 6, start 7 and end 8 (fixed64)
        head = self._heads.get((s.name, s.kind))
        if head is None:
            if len(self._heads) >= _CACHE_MAX:
                self._heads.clear()
            name = s.name.encode("utf-8", "replace")
            head = self._heads[(s.name, s.kind)] = b"\x2a" + _len(len(name)) + name + b"\x30" + _SMALL[s.kind]
        b = [b"\x0a\x10", s.trace_id.to_bytes(16, "big"), b"\x12\x08", s.span_id.to_bytes(8, "big")]
        if s.parent_id:
            b += (b"\x22\x08", s.parent_id.to_bytes(8, "big"))
        b += (head, b"\x39", _pack_u64(s.start), b"\x41", _pack_u64(s.end))
        if s.fixed is not None:
            key, make = s.fixed
            fb = self._fixed.get(key)
            if fb is None:
                if len(self._fixed) >= _CACHE_MAX:
                    self._fixed.clear()
                fb = self._fixed[key] = self._attrs(make())
            b.append(fb)
        if s.attrs:
            b.append(self._attrs(s.attrs))
        if s.tokens is not None:
            tb = self._tokens.get(s.tokens)
            if tb is None:
                if len(self._tokens) >= _CACHE_MAX:
                    self._tokens.clear()
                tin, tout = s.tokens
                tb = self._tokens[s.tokens] = self._attrs({
                    "gen_ai.usage.input_tokens": tin, "llm.token_count.prompt": tin,
                    "gen_ai.usage.output_tokens": tout, "llm.token_count.completion": tout,
                    "llm.token_count.total": tin + tout})
            b.append(tb)
        for ev_name, t, attrs in s.events:  # Event: time 1 (fixed64), name 2, attributes 3
            b.append(_ld(11, b"\x09" + _pack_u64(t) + _ld(2, ev_name.encode())
                         + b"".join(_kv(3, k, v) for k, v in attrs.items() if v is not None)))
        for tid, sid, attrs in s.links:  # Link: trace_id 1, span_id 2, attributes 4
            b.append(_ld(13, _ld(1, tid.to_bytes(16, "big")) + _ld(2, sid.to_bytes(8, "big"))
                         + b"".join(_kv(4, k, v) for k, v in attrs.items())))
        code, msg = s.status
        if code:  # Status: message 2, code 3
            b.append(_ld(15, (_ld(2, msg.encode("utf-8", "replace")) if msg else b"") + b"\x18" + _varint(code)))
        body = b"".join(b)
        return b"\x12" + _len(len(body)) + body  # framed as ScopeSpans.spans (field 2)

    def request(self, spans: list[bytes]) -> bytes:
        """ExportTraceServiceRequest of spans framed by `span()`."""
        # one join: ExportTraceServiceRequest.resource_spans(1) { resource, scope_spans(2) { scope, spans } }
        ss_len = len(self._scope) + sum(map(len, spans))
        ss_head = b"\x12" + _varint(ss_len)
        rs_len = len(self._resource) + len(ss_head) + ss_len
        return b"".join([b"\x0a", _varint(rs_len), self._resource, ss_head, self._scope, *spans])


# ------------------------------------------------------------------ batching
def _int_env(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


class BatchExporter:
    """Spans are encoded on the event loop in one deferred callback per loop iteration (after the
    responses of that iteration went out, while their records are still in cache: measured at a
    third of the CPU of encoding in the export thread, which also pays GIL handoffs); the thread
    only batches the encoded bytes and sends them. Without a running loop (tools, tests) a span
    is encoded at once."""

    def __init__(self, encoder: Encoder, sender: Any) -> None:
        self.encoder = encoder
        self.sender = sender
        self.max_queue = _int_env("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self.batch = min(_int_env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), self.max_queue)
        self.delay = _int_env("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000.0
        self.loop: asyncio.AbstractEventLoop | None = None  # set by Tracing.start on the serving loop
        self.pending: list[SpanData] = []  # finished this loop iteration, not yet encoded
        self.queue: deque[bytes] = deque()  # encoded spans waiting for the export thread
        self.dropped = 0
        self.exported = 0
        self.cpu_s = 0.0  # CPU time of the export thread (batching + send)
        self.encode_cpu_s = 0.0  # CPU time of encode_pending (on the event loop)
        self._wake = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="cohortgate-otlp", daemon=True)
        self._thread.start()

    def submit(self, span: SpanData) -> None:
        pending = self.pending
        if len(pending) + len(self.queue) >= self.max_queue:
            self.dropped += 1
            return
        pending.append(span)
        if len(pending) == 1:
            if self.loop is not None and not self.loop.is_closed():
                self.loop.call_soon(self.encode_pending)
            else:
                self.encode_pending()

    def encode_pending(self) -> None:
        t0 = time.thread_time()
        pending, q, encoder = self.pending, self.queue, self.encoder
        for s in pending:
            try:
                if s.build is not None:
                    s.build(s)
                q.append(encoder.span(s))
            except Exception:  # one bad span must not stop the exporter
                log.exception("encoding span %s failed", s.name)
        pending.clear()
        if len(q) >= self.batch:
            self._wake.set()
        self.encode_cpu_s += time.thread_time() - t0

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait(self.delay)
            self._wake.clear()
            t0 = time.thread_time()
            self._drain()
            self.cpu_s += time.thread_time() - t0
        self._drain()

    def _drain(self) -> None:
        q = self.queue
        while q:
            out: list[bytes] = []
            while q and len(out) < self.batch:
                out.append(q.popleft())
            self.sender.send(self.encoder.request(out))
            self.exported += len(out)

    def flush(self, timeout: float = 10.0) -> None:
        """Export what is queued now (tests); returns when the queue is empty or after timeout."""
        self.encode_pending()
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self.queue and time.monotonic() < deadline:
            time.sleep(0.01)

    def shutdown(self, timeout: float = 10.0) -> None:
        self.encode_pending()  # the loop is stopping: whatever is pending goes now
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)
        self.sender.close()
        n = max(1, self.exported)
        log.info("tracing exported %d spans (CPU per span: %.1f us encoding on the loop, %.1f us sending), "
                 "dropped %d", self.exported, 1e6 * self.encode_cpu_s / n, 1e6 * self.cpu_s / n, self.dropped)
        if self.dropped:
            log.warning("tracing dropped %d spans (queue full: raise OTEL_BSP_MAX_QUEUE_SIZE)", self.dropped)
