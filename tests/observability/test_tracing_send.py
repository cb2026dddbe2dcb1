"""The OTLP/HTTP sender against a scripted raw-socket collector: keep-alive reuse, reconnects
(answered `Connection: close`, or an idle connection the collector dropped), informational
answers, error statuses, and refused header values."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator

import pytest

from gateway.tracing_send import HTTPSender

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n"


class Collector:
    """Answers each request with the next scripted reply; `None` closes the connection after
    reading the request without answering, b"close" answers and then closes."""

    def __init__(self, replies: list[bytes | None]) -> None:
        self.replies = list(replies)
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body)
        self.connections = 0
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port = self.srv.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, buf = buf.split(b"\r\n\r\n", 1)
                n = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                             if line.lower().startswith(b"content-length")))
                while len(buf) < n:
                    buf += conn.recv(65536)
                self.requests.append((head, buf[:n]))
                buf = buf[n:]
                reply = self.replies.pop(0) if self.replies else OK
                if reply is None:
                    return
                if reply == b"close":
                    conn.sendall(OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
                    return
                conn.sendall(reply)

    def close(self) -> None:
        self.srv.close()


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Collector]]:
    made: list[Collector] = []

    def make(replies: list[bytes | None]) -> Collector:
        c = Collector(replies)
        made.append(c)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{c.port}")
        return c

    for var in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_HEADERS", "OTEL_EXPORTER_OTLP_COMPRESSION"):
        monkeypatch.delenv(var, raising=False)
    yield make  # type: ignore[misc]
    for c in made:
        c.close()


def test_posts_reuse_one_connection(collector, monkeypatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
    c = collector([])
    s = HTTPSender()
    for i in range(3):
        s.send(b"batch-%d" % i)
    s.close()
    assert c.connections == 1 and [b for _, b in c.requests] == [b"batch-0", b"batch-1", b"batch-2"]
    head = c.requests[0][0].lower()
    assert head.startswith(b"post /v1/traces http/1.1") and b"content-type: application/x-protobuf" in head
    assert b"x-tenant: acme" in head and f"host: 127.0.0.1:{c.port}".encode() in head


def test_reconnects_after_connection_close_and_after_a_dropped_idle_connection(collector) -> None:
    c = collector([b"close", OK, None, OK])
    s = HTTPSender()
    s.send(b"one")  # answered, then the collector closes: the next POST needs a new connection
    s.send(b"two")
    s.send(b"three")  # read but never answered (an idle connection dropped): sent again, once
    s.close()
    assert [b for _, b in c.requests] == [b"one", b"two", b"three", b"three"]
    assert c.connections == 3


def test_informational_answer_is_skipped_and_errors_are_logged(collector, caplog) -> None:
    c = collector([b"HTTP/1.1 100 Continue\r\n\r\n" + OK,
                   b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy", OK])
    s = HTTPSender()
    with caplog.at_level(logging.WARNING, "cohortgate.tracing"):
        s.send(b"a")
        s.send(b"b")
        s.send(b"c")
    s.close()
    assert [b for _, b in c.requests] == [b"a", b"b", b"c"] and c.connections == 1
    assert [r.getMessage() for r in caplog.records] == [f"OTLP export to {s.url} answered 503"]


def test_unreachable_collector_is_logged_not_raised(monkeypatch, caplog) -> None:
    port = socket.create_server(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free}")
    with caplog.at_level(logging.WARNING, "cohortgate.tracing"):
        HTTPSender().send(b"x")
    assert "failed" in caplog.records[-1].getMessage()


@pytest.mark.parametrize("value", ["a%0D%0Ainjected: 1", "caf%C3%A9%E2%82%AC"])
def test_header_values_that_cannot_be_sent_are_refused_at_start(collector, monkeypatch, value) -> None:
    collector([])
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"x-tenant={value}")
    with pytest.raises(RuntimeError, match="OTEL_EXPORTER_OTLP_HEADERS"):
        HTTPSender()
