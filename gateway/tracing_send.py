"""OTLP transport for encoded trace batches, configured by the standard OTEL_EXPORTER_OTLP_* variables.

`http/protobuf` (default): POST to `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, or to
`OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`, over one kept-alive connection, with `..._HEADERS`,
`..._TIMEOUT` (ms) and `..._COMPRESSION=gzip`. `grpc` (extra `otlp-grpc`): TraceService.Export.
A sender is used by one thread only (the exporter's). A failed export is logged, never raised.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import os
from urllib.parse import unquote, urlsplit

log = logging.getLogger("cohortgate.tracing")


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or os.environ.get(f"OTEL_EXPORTER_OTLP_{name}") \
        or default


def _headers() -> dict[str, str]:
    out: dict[str, str] = {}
    for item in _env("HEADERS").split(","):
        if "=" in item:
            k, v = item.split("=", 1)
            out[unquote(k.strip()).lower()] = unquote(v.strip())
    return out


def protocol() -> str:
    return _env("PROTOCOL", "http/protobuf").strip().lower()


class HTTPSender:
    """POST http/protobuf to the traces endpoint over one kept-alive connection."""

    def __init__(self) -> None:
        specific = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        url = specific or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318").rstrip("/") \
            + "/v1/traces"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RuntimeError(f"OTLP endpoint {url!r} is not an http(s) URL")
        self.url = url
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port or (443 if self._https else 80)
        self._path = parts.path or "/v1/traces"
        self._timeout = float(_env("TIMEOUT", "10000")) / 1000.0
        self._gzip = _env("COMPRESSION").strip().lower() == "gzip"
        self._headers = {"content-type": "application/x-protobuf", **_headers()}
        if self._gzip:
            self._headers["content-encoding"] = "gzip"
        self._conn: http.client.HTTPConnection | None = None

    def send(self, body: bytes) -> None:
        if self._gzip:
            body = gzip.compress(body, compresslevel=1)
        for attempt in (1, 2):  # one reconnect: the collector may have closed the idle connection
            try:
                if self._conn is None:
                    cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
                    self._conn = cls(self._host, self._port, timeout=self._timeout)
                self._conn.request("POST", self._path, body=body, headers=self._headers)
                resp = self._conn.getresponse()
                resp.read()
                if resp.status >= 300:
                    log.warning("OTLP export to %s answered %s", self.url, resp.status)
                return
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if attempt == 2:
                    log.warning("OTLP export to %s failed: %s", self.url, exc)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class GRPCSender:
    """OTLP/gRPC TraceService.Export (extra `otlp-grpc` provides grpcio)."""

    def __init__(self) -> None:
        try:
            import grpc
            from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
        except ImportError as exc:
            raise RuntimeError("OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs grpcio: pip install 'cohortgate[otlp-grpc]' "
                               "(or use http/protobuf)") from exc
        endpoint = _env("ENDPOINT", "http://localhost:4317")
        parts = urlsplit(endpoint if "://" in endpoint else "http://" + endpoint)
        target = f"{parts.hostname}:{parts.port or 4317}"
        insecure = parts.scheme == "http" or _env("INSECURE").lower() == "true"
        self._channel = grpc.insecure_channel(target) if insecure else grpc.secure_channel(
            target, grpc.ssl_channel_credentials())
        self._stub = trace_service_pb2_grpc.TraceServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._request = trace_service_pb2.ExportTraceServiceRequest
        self._metadata = list(_headers().items())
        self._timeout = float(_env("TIMEOUT", "10000")) / 1000.0
        self.url = target

    def send(self, body: bytes) -> None:
        try:
            self._stub.Export(self._request.FromString(body), metadata=self._metadata, timeout=self._timeout)
        except Exception as exc:  # grpc.RpcError and friends: log, drop the batch
            log.warning("OTLP/gRPC export to %s failed: %s", self.url, exc)

    def close(self) -> None:
        self._channel.close()


def make_sender() -> HTTPSender | GRPCSender:
    p = protocol()
    if p == "grpc":
        return GRPCSender()
    if p != "http/protobuf":
        raise RuntimeError(f"OTEL_EXPORTER_OTLP_PROTOCOL={p!r} is not supported: use http/protobuf or grpc")
    return HTTPSender()
