"""OTLP transport for encoded trace batches, configured by the standard OTEL_EXPORTER_OTLP_* variables.

`http/protobuf` (default): POST to `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, or to
`OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`, over one kept-alive connection, with `..._HEADERS`,
`..._TIMEOUT` (ms) and `..._COMPRESSION=gzip`. `grpc` (extra `otlp-grpc`): TraceService.Export.
A sender is used by one thread only (the exporter's). A failed export is logged, never raised.
"""

from __future__ import annotations

import gzip
import logging
import os
import socket
import ssl
from urllib.parse import unquote, urlsplit

import httptools

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


class _Response:
    """httptools callbacks for one response (keep-alive is only known at its end)."""

    __slots__ = ("parser", "done", "keep_alive")

    def __init__(self) -> None:
        self.parser: httptools.HttpResponseParser | None = None
        self.done = self.keep_alive = False

    def on_message_complete(self) -> None:
        assert self.parser is not None
        if self.parser.get_status_code() < 200:  # an informational answer: the real one follows
            return
        self.done = True
        self.keep_alive = self.parser.should_keep_alive()


class HTTPSender:
    """POST http/protobuf to the traces endpoint over one kept-alive connection.

    A plain socket and httptools' parser rather than http.client: every POST's Python runs with
    the GIL the event loop needs, and http.client's request building and email-parser header
    parsing cost about ten times this per POST (measured as CPU per exported span)."""

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
        path = parts.path or "/v1/traces"
        if parts.query:
            path += "?" + parts.query
        self._timeout = float(_env("TIMEOUT", "10000")) / 1000.0
        self._gzip = _env("COMPRESSION").strip().lower() == "gzip"
        headers = {"content-type": "application/x-protobuf", **_headers()}
        if self._gzip:
            headers["content-encoding"] = "gzip"
        host = f"[{self._host}]" if ":" in self._host else self._host
        if parts.port:
            host += f":{parts.port}"
        lines = [f"POST {path} HTTP/1.1", f"host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
        if any(c in line for line in lines for c in "\r\n\0"):
            raise RuntimeError("OTEL_EXPORTER_OTLP_HEADERS (or the endpoint) contains a line break: remove it")
        try:
            self._head = ("\r\n".join(lines) + "\r\ncontent-length: ").encode("latin-1")
        except UnicodeEncodeError as exc:
            raise RuntimeError("OTEL_EXPORTER_OTLP_HEADERS: HTTP header values must be latin-1 text "
                               "(percent-encode other bytes)") from exc
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self._host, self._port), timeout=self._timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._https:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self._host)
        return sock

    def send(self, body: bytes) -> None:
        if self._gzip:
            body = gzip.compress(body, compresslevel=1)
        head = self._head + str(len(body)).encode() + b"\r\n\r\n"
        for attempt in (1, 2):  # one reconnect: the collector may have closed the idle connection
            try:
                if self._sock is None:
                    self._sock = self._connect()
                self._sock.sendall(head)
                self._sock.sendall(body)
                status, keep_alive = self._response(self._sock)
                if not keep_alive:
                    self.close()
                if status >= 300:
                    log.warning("OTLP export to %s answered %s", self.url, status)
                return
            except (OSError, httptools.HttpParserError) as exc:
                self.close()
                if attempt == 2:
                    log.warning("OTLP export to %s failed: %s", self.url, exc)

    @staticmethod
    def _response(sock: socket.socket) -> tuple[int, bool]:
        r = _Response()
        parser = r.parser = httptools.HttpResponseParser(r)
        try:
            while not r.done:
                data = sock.recv(65536)
                if not data:
                    raise ConnectionResetError("the collector closed the connection before answering")
                parser.feed_data(data)
        finally:
            r.parser = None  # parser -> r's callbacks -> parser: no cycle left behind
        return parser.get_status_code(), r.keep_alive

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


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
