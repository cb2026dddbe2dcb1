"""A real OTLP/HTTP trace receiver for tests: `POST /v1/traces` with protobuf (optionally gzip).

It decodes `ExportTraceServiceRequest` with opentelemetry-proto (the same message definitions a
collector uses), answers `ExportTraceServiceResponse`, and keeps the spans as plain dicts:
{name, kind, trace_id, span_id, parent_span_id, attributes, events, links, status, resource}.
Runs an aiohttp server on a 127.0.0.1 port in its own event-loop thread.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def any_value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which)


def attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def decode(body: bytes) -> list[dict[str, Any]]:
    req = ExportTraceServiceRequest()
    req.ParseFromString(body)
    out: list[dict[str, Any]] = []
    for rs in req.resource_spans:
        resource = attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append({
                    "name": s.name,
                    "kind": KINDS.get(s.kind, str(s.kind)),
                    "trace_id": s.trace_id.hex(),
                    "span_id": s.span_id.hex(),
                    "parent_span_id": s.parent_span_id.hex(),
                    "attributes": attrs(s.attributes),
                    "events": [{"name": e.name, "attributes": attrs(e.attributes)} for e in s.events],
                    "links": [{"trace_id": ln.trace_id.hex(), "span_id": ln.span_id.hex(),
                               "attributes": attrs(ln.attributes)} for ln in s.links],
                    "status": {"code": s.status.code, "message": s.status.message},
                    "start_ns": s.start_time_unix_nano,
                    "end_ns": s.end_time_unix_nano,
                    "resource": resource,
                    "scope": ss.scope.name,
                })
    return out


class OTLPReceiver:
    def __init__(self, port: int) -> None:
        self.port = port
        self.spans: list[dict[str, Any]] = []
        self.posts = 0
        self.content_types: set[str] = set()
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        # aiohttp already inflates a gzip/deflate request body; decode here only if it did not
        enc = request.headers.get("content-encoding", "")
        if enc == "gzip" and body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        elif enc == "deflate" and body[:1] == b"\x78":
            body = zlib.decompress(body)
        spans = decode(body)
        with self._lock:
            self.posts += 1
            self.content_types.add(request.headers.get("content-type", ""))
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
            self.spans.extend(spans)
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    def start(self) -> OTLPReceiver:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/custom/traces", self._traces)  # for OTEL_EXPORTER_OTLP_TRACES_ENDPOINT

        async def boot() -> None:
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        self._thread.start()
        asyncio.run_coroutine_threadsafe(boot(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float = 15.0) -> list[dict[str, Any]]:
        """Poll until pred(spans) holds (bounded); returns the spans either way for the assertion message."""
        deadline = time.monotonic() + timeout
        while True:
            spans = self.snapshot()
            if pred(spans) or time.monotonic() > deadline:
                return spans
            time.sleep(0.05)
