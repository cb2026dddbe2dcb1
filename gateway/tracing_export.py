"""OTLP trace export without the SDK's per-span objects: direct protobuf encoding, batched sending.

Contract: `BatchExporter.submit(item)` is all a request does (a list append; the item is the
request's tracing record, encoded later into all its spans, or one `SpanData` for a shadow call;
with `OTEL_BSP_MAX_QUEUE_SIZE` spans waiting, new items are dropped and counted, never waited on).
Items finished during one event-loop iteration are encoded together by one `call_soon` callback,
which runs once the request's task yields, normally after its response was handed to the
transport, so encoding does not delay the response it describes. A daemon thread wakes every
`OTEL_BSP_SCHEDULE_DELAY` ms (or when `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans are encoded), frames
them as one OTLP `ExportTraceServiceRequest` and sends it: `http/protobuf` POST (one kept-alive
connection, optional gzip), or gRPC (extra `otlp-grpc`). A failed export is logged and dropped
(no retry queue: the gateway's memory stays bounded when the collector is down).

Why not the SDK's Span + BatchSpanProcessor + OTLPSpanExporter: measured on this project's
benchmark machine, they cost about 150 us of CPU per request for our two spans on the request
path (attribute validation under a lock, per attribute) plus about 150 us in the export thread
(one protobuf object per attribute): more than the gateway's own work per request. Here a
traced request's hooks, encoding and export cost about 14.5% of the gateway's own
instructions per request (docs/observability.md has the measurements; the shutdown log line
reports the time per span of both export stages). The wire format is the same OTLP protobuf
(field numbers from opentelemetry-proto `trace/v1/trace.proto` and `common/v1/common.proto`; the
tests decode it with opentelemetry-proto). What many spans share (name, kind, and the attributes
cohort, route, models, outcome...) is encoded once per distinct combination (`Encoder.blocks`),
str/bool attributes once per distinct value, int attributes from per-key prefixes; the caches
are bounded. Encoding on the loop rather than in the export thread finds the records still in
cache and pays no GIL handoffs: it measured at a third of the CPU. Transport: tracing_send.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import struct
import threading
import time
from collections import deque
from typing import Any, Protocol

log = logging.getLogger("cohortgate.tracing")

SERVER, CLIENT = 2, 3  # Span.SpanKind
STATUS_ERROR = 2
_CACHE_MAX = 16384
_UNCACHED = frozenset({"cohortgate.request_id", "cohortgate.shadow.pair_id", "gen_ai.input.messages",
                       "gen_ai.output.messages", "input.value", "output.value", "cohortgate.cohort.confidence"})


_NO_ATTRS: dict[str, Any] = {}
# Ids are kept as bytes: the wire format wants them so, and bytes.hex() writes a traceparent about
# three times faster than formatting ints with "032x". They need uniqueness, not secrecy: a
# Mersenne twister seeded from os.urandom, as the SDK's generator is.
rand = random.Random()


def span_id() -> bytes:
    return (rand.getrandbits(64) or 1).to_bytes(8, "big")  # never all-zero (W3C)


class SpanData:
    """One finished span given attribute by attribute (shadow calls). A client request's own two
    or more spans skip this: `tracing_attrs.encode_request` writes them from the request's record
    with cached blocks."""

    __slots__ = ("trace_id", "span_id", "parent_id", "name", "kind", "start", "end", "attrs", "events", "links",
                 "status")

    def __init__(self, trace_id: bytes, span_id: bytes, parent_id: bytes | None, name: str, kind: int, start: int,
                 end: int) -> None:
        self.trace_id, self.span_id, self.parent_id = trace_id, span_id, parent_id
        self.name, self.kind, self.start, self.end = name, kind, start, end
        # shared empty defaults (most spans have no events or links): assign, never mutate them
        self.attrs: dict[str, Any] = _NO_ATTRS
        self.events: list[tuple[str, int, dict[str, Any]]] | tuple[()] = ()
        self.links: list[tuple[bytes, bytes, dict[str, Any]]] | tuple[()] = ()
        self.status: tuple[int, str] = (0, "")

    def encode(self, enc: Encoder) -> tuple[bytes, int]:
        return enc.span(self), 1


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


pack_double = struct.Struct("<d").pack
pack_u64 = struct.Struct("<Q").pack
# span start_time_unix_nano (field 7) and end (8), fixed64 with their tags: (0x39, start, 0x41, end)
pack_times = struct.Struct("<BQBQ").pack
_SMALL = [bytes((i,)) for i in range(0x80)]
_LENS = [_varint(i) for i in range(4096)]  # span bodies are a few hundred bytes: lengths by lookup


def lenb(n: int) -> bytes:
    """`n` as a varint (a length prefix)."""
    return _LENS[n] if n < 4096 else _varint(n)


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
    return (b"\x4a" + lenb(len(one) + 1) + one, b"\x4a" + lenb(len(two) + 2) + two)


def _kv(field: int, key: str, v: Any) -> bytes:
    return _ld(field, _ld(1, key.encode()) + _ld(2, _any(v)))


class Encoder:
    """Direct OTLP protobuf encoding with bounded caches of the parts that repeat across spans."""

    def __init__(self, resource: dict[str, Any], scope: str, version: str) -> None:
        self._cache: dict[tuple[str, Any], bytes] = {}
        self._keys: dict[str, bytes] = {}
        self._ints: dict[str, tuple[bytes, bytes]] = {}
        self._strs: dict[str, list[bytes]] = {}  # key -> per value length: the bytes before the value
        # key -> encoded name, kind, attributes and status shared by every span with that key
        self.blocks: dict[Any, bytes] = {}
        self._heads: dict[tuple[str, int], bytes] = {}  # (name, kind) -> encoded name + kind fields
        self._tokens: dict[tuple[int, int], bytes] = {}
        res = b"".join(_kv(1, k, v) for k, v in resource.items())
        self._resource = _ld(1, res)  # ResourceSpans.resource
        self._scope = _ld(1, _ld(1, scope.encode()) + _ld(2, version.encode()))  # ScopeSpans.scope

    def attrs(self, attrs: dict[str, Any]) -> bytes:
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
                av = b"\x21" + pack_double(v)
            elif t is str:
                vb = v.encode("utf-8", "replace")
                av = b"\x0a" + lenb(len(vb)) + vb
            elif v is None:
                continue
            else:
                av = _any(v)
            kb = keys.get(k)
            if kb is None:
                kb = keys[k] = _ld(1, k.encode())
            inner = kb + b"\x12" + lenb(len(av)) + av
            parts.append(b"\x4a" + lenb(len(inner)) + inner)
        return b"".join(parts)

    def str_attr(self, key: str, value: str) -> bytes:
        """One string attribute whose value is new for every span (a request id): what comes
        before the value's bytes is cached per key and value length."""
        vb = value.encode("utf-8", "replace")
        n = len(vb)
        pres = self._strs.get(key)
        if pres is None:
            pres = self._strs[key] = [b""] * 256
        pre = pres[n] if n < 256 else b""
        if not pre:
            kb = _ld(1, key.encode())
            av = 1 + len(lenb(n)) + n  # AnyValue{string_value (1)}
            kv = len(kb) + 1 + len(lenb(av)) + av  # KeyValue{key (1), value (2)}
            pre = b"\x4a" + lenb(kv) + kb + b"\x12" + lenb(av) + b"\x0a" + lenb(n)
            if n < 256:
                pres[n] = pre
        return pre + vb

    def tokens(self, tin: int, tout: int) -> bytes:
        """The five token-count attributes, one cached block per (input, output) pair."""
        key = (tin, tout)
        tb = self._tokens.get(key)
        if tb is None:
            if len(self._tokens) >= _CACHE_MAX:
                self._tokens.clear()
            tb = self._tokens[key] = self.attrs({
                "gen_ai.usage.input_tokens": tin, "llm.token_count.prompt": tin,
                "gen_ai.usage.output_tokens": tout, "llm.token_count.completion": tout,
                "llm.token_count.total": tin + tout})
        return tb

    def put_block(self, key: Any, name: str, kind: int, attrs: dict[str, Any], status: tuple[int, str]) -> bytes:
        """Encodes (and caches under `key`) what many spans share: name, kind, attributes, status."""
        if len(self.blocks) >= _CACHE_MAX:
            self.blocks.clear()
        b = self.blocks[key] = self._head(name, kind) + self.attrs(attrs) + self.status(*status)
        return b

    def _head(self, name: str, kind: int) -> bytes:
        head = self._heads.get((name, kind))
        if head is None:
            if len(self._heads) >= _CACHE_MAX:
                self._heads.clear()
            nb = name.encode("utf-8", "replace")
            head = self._heads[(name, kind)] = b"\x2a" + lenb(len(nb)) + nb + b"\x30" + _SMALL[kind]
        return head

    @staticmethod
    def status(code: int, msg: str) -> bytes:
        """Span.status (field 15: message 2, code 3); empty for UNSET."""
        if not code:
            return b""
        return _ld(15, (_ld(2, msg.encode("utf-8", "replace")) if msg else b"") + b"\x18" + _varint(code))

    @staticmethod
    def events(events: list[tuple[str, int, dict[str, Any]]] | tuple[()]) -> bytes:
        """Span.events (field 11; Event: time 1 (fixed64), name 2, attributes 3)."""
        return b"".join(_ld(11, b"\x09" + pack_u64(t) + _ld(2, name.encode())
                            + b"".join(_kv(3, k, v) for k, v in attrs.items() if v is not None))
                        for name, t, attrs in events)

    def span(self, s: SpanData) -> bytes:
        # trace_id 1, span_id 2, parent_span_id 4
        b = [b"\x0a\x10", s.trace_id, b"\x12\x08", s.span_id]
        if s.parent_id is not None:
            b += (b"\x22\x08", s.parent_id)
        b += (self._head(s.name, s.kind), pack_times(0x39, s.start, 0x41, s.end))
        if s.attrs:
            b.append(self.attrs(s.attrs))
        if s.events:
            b.append(self.events(s.events))
        for tid, sid, attrs in s.links:  # Link: trace_id 1, span_id 2, attributes 4
            b.append(_ld(13, _ld(1, tid) + _ld(2, sid)
                         + b"".join(_kv(4, k, v) for k, v in attrs.items())))
        b.append(self.status(*s.status))
        body = b"".join(b)
        return b"\x12" + lenb(len(body)) + body  # framed as ScopeSpans.spans (field 2)

    def request(self, spans: list[bytes]) -> bytes:
        """ExportTraceServiceRequest of framed spans (ScopeSpans.spans fields)."""
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


class Spans(Protocol):
    """What the exporter queues: one span (`SpanData`) or a request's spans (`tracing._Req`)."""

    def encode(self, enc: Encoder) -> tuple[bytes, int]: ...  # (framed spans, how many)


class BatchExporter:
    """Spans are encoded on the event loop in one deferred callback per loop iteration (after the
    responses of that iteration went out, while their records are still in cache: measured at a
    third of the CPU of encoding in the export thread, which also pays GIL handoffs); the thread
    only batches the encoded bytes and sends them. Without a running loop (tools, tests) a span
    is encoded at once. Limits count spans; a request's spans are submitted as one item."""

    def __init__(self, encoder: Encoder, sender: Any) -> None:
        self.encoder = encoder
        self.sender = sender
        self.max_queue = _int_env("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self.batch = min(_int_env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), self.max_queue)
        self.delay = _int_env("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000.0
        self.loop: asyncio.AbstractEventLoop | None = None  # set by Tracing.start on the serving loop
        self.pending: list[Spans] = []  # finished this loop iteration, not yet encoded
        self.queue: deque[tuple[bytes, int]] = deque()  # encoded spans waiting for the export thread
        # spans encoded (written by the loop thread only) and exported (by the export thread only):
        # their difference is what waits, without a lock or a lost update between the threads
        self.encoded = 0
        self.exported = 0
        self.dropped = 0
        self.cpu_s = 0.0  # CPU time of the export thread (batching + send)
        self.encode_s = 0.0  # time in encode_pending (on the event loop, which does nothing else then)
        self._wake = threading.Event()
        self._stop = False
        self._force = False  # flush(): send the partial batch too
        self._thread = threading.Thread(target=self._run, name="cohortgate-otlp", daemon=True)
        self._thread.start()

    def submit(self, spans: Spans) -> bool:
        """Queues the item; False when the queue is full and it was dropped."""
        pending = self.pending
        if len(pending) + self.encoded - self.exported >= self.max_queue:
            self.dropped += 1
            return False
        pending.append(spans)
        if len(pending) == 1:
            if self.loop is not None and not self.loop.is_closed():
                self.loop.call_soon(self.encode_pending)
            else:
                self.encode_pending()
        return True

    def encode_pending(self) -> None:
        # perf_counter, not thread_time: this runs on the loop thread without blocking, so wall
        # time is its CPU time, and thread_time is a system call (two per request at low load)
        t0 = time.perf_counter()
        pending, q, encoder = self.pending, self.queue, self.encoder
        n = 0
        for s in pending:
            try:
                item = s.encode(encoder)
            except Exception:  # one bad span must not stop the exporter
                log.exception("encoding spans of %r failed", s)
                continue
            q.append(item)
            n += item[1]
        pending.clear()
        self.encoded += n
        if self.encoded - self.exported >= self.batch:
            self._wake.set()
        self.encode_s += time.perf_counter() - t0

    def _run(self) -> None:
        while not self._stop:
            woke = self._wake.wait(self.delay)
            self._wake.clear()
            force, self._force = self._force, False  # read after clear(): see flush()
            t0 = time.thread_time()
            # woken by a full batch: send full batches only; the spans encoded meanwhile wait
            # for the next one (else every full batch dragged a tail of tiny POSTs behind it)
            self._drain(full_only=woke and not force)
            self.cpu_s += time.thread_time() - t0
        self._drain(full_only=False)

    def _drain(self, full_only: bool) -> None:
        q = self.queue
        while q and (not full_only or self.encoded - self.exported >= self.batch):
            out: list[bytes] = []
            n = 0
            while q and n < self.batch:
                b, k = q.popleft()
                out.append(b)
                n += k
            self.sender.send(self.encoder.request(out))
            self.exported += n

    def flush(self, timeout: float = 10.0) -> None:
        """Export what is queued now (tests); returns when the queue is empty or after timeout."""
        self.encode_pending()
        deadline = time.monotonic() + timeout
        self._force = True  # before the wake-up: the thread reads it after clearing the event
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
                 "dropped %d", self.exported, 1e6 * self.encode_s / n, 1e6 * self.cpu_s / n, self.dropped)
        if self.dropped:
            log.warning("tracing dropped %d spans (queue full: raise OTEL_BSP_MAX_QUEUE_SIZE)", self.dropped)
