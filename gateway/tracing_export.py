"""OTLP span encoding without the SDK's per-span objects: direct protobuf, cached blocks.

Why not the SDK's Span + BatchSpanProcessor + OTLPSpanExporter: measured on this project's
benchmark machine, they cost about 150 us of CPU per request for our two spans on the request
path (attribute validation under a lock, per attribute) plus about 150 us in the export thread
(one protobuf object per attribute): more than the gateway's own work per request. Here a
traced request's hooks, encoding and export cost about 14.5% of the gateway's own
instructions per request in pure Python, and about 7.5% with the compiled fast path
(gateway/_spanenc_c/: ids, traceparent, the request's trace state and the encoding of its
spans; this module and tracing_attrs.py are its reference and fallback). docs/observability.md
has the measurements; the shutdown log line reports the time per span of both export stages.
The wire format is the same OTLP protobuf
(field numbers from opentelemetry-proto `trace/v1/trace.proto` and `common/v1/common.proto`; the
tests decode it with opentelemetry-proto). What many spans share (name, kind, and the attributes
cohort, route, models, outcome...) is encoded once per distinct combination (`Encoder.blocks`),
str/bool attributes once per distinct value, int attributes from per-key prefixes; the caches
are bounded. Batching and the export thread: tracing_batch.py; transport: tracing_send.py.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable
from typing import Any

SERVER, CLIENT = 2, 3  # Span.SpanKind
STATUS_ERROR = 2
_CACHE_MAX = 16384
_UNCACHED = frozenset({"cohortgate.request_id", "cohortgate.shadow.pair_id", "gen_ai.input.messages",
                       "gen_ai.output.messages", "input.value", "output.value", "cohortgate.cohort.confidence"})


_NO_ATTRS: dict[str, Any] = {}
_LOW64 = 0xFFFFFFFFFFFFFFFF
# Ids are kept as bytes: the wire format wants them so, and bytes.hex() writes a traceparent about
# three times faster than formatting ints with "032x". They need uniqueness, not secrecy: a
# Mersenne twister seeded from os.urandom, as the SDK's generator is (the compiled path draws
# them from getrandom(2) bytes).
_rand = random.Random()


def _span_id() -> bytes:
    return (_rand.getrandbits(64) or 1).to_bytes(8, "big")  # never all-zero (W3C)


def _ids() -> tuple[bytes, bytes, bytes]:
    """A new trace id, the request span's id and its first attempt's, in one draw."""
    x = _rand.getrandbits(256)
    if not (x >> 128 and x >> 64 & _LOW64 and x & _LOW64):  # all-zero ids are invalid (W3C)
        x |= 1 << 128 | 1 << 64 | 1
    b = x.to_bytes(32, "big")
    return b[:16], b[16:24], b[24:]


def _traceparent(trace_id: bytes, span_id: bytes, sampled: bool) -> str:
    return f"00-{trace_id.hex()}-{span_id.hex()}-{'01' if sampled else '00'}"


# The compiled fast path (gateway/_spanenc_c/, built at install when a C compiler is there) writes
# the same ids, traceparents and span bytes for a fraction of the CPU; COHORTGATE_PURE_PYTHON=1
# turns it off.
try:
    if os.environ.get("COHORTGATE_PURE_PYTHON", "").strip() not in ("", "0"):
        raise ImportError("COHORTGATE_PURE_PYTHON is set")
    from gateway import _spanenc
except ImportError:
    _spanenc = None  # type: ignore[assignment]
compiled = _spanenc

span_id: Callable[[], bytes] = compiled.span_id if compiled is not None else _span_id
new_ids: Callable[[], tuple[bytes, bytes, bytes]] = compiled.ids if compiled is not None else _ids
traceparent: Callable[[bytes, bytes, bool], str] = compiled.traceparent if compiled is not None else _traceparent


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
