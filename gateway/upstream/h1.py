"""A lean HTTP/1.1 client for upstream calls: a keep-alive pool per origin, llhttp parsing.

Why not aiohttp's client: on the proxy path it was the largest single cost after the server
itself (request/response objects, header multidicts, URL handling, a timer per read), about a
quarter of the instructions per proxied request (benchmarks/gateway_instructions.py). This
client writes a request in one `transport.write`, parses the answer with httptools (llhttp, the
parser Node and aiohttp use) straight into a few slots, and arms one timer per wait.

Semantics the gateway relies on:
- `connect` timeout: TCP (and TLS) connect; `read` timeout: the wait for the first response
  byte and between later reads; `total`: the whole exchange, streamed body included.
- At most `limit` connections per pool; callers beyond it wait (FIFO) within their deadline.
- Connections are reused while the server keeps them alive; a reused connection that the server
  closed before answering anything (the keep-alive race) is retried once on a fresh connection,
  and the other idle connections are dropped with it (a restarted server closes them all).
- Streamed bodies are buffered at most `HIGH_WATER` bytes ahead of the reader (reading pauses).
- Failures are the gateway's own errors: UpstreamTimeout (code upstream_connect_timeout,
  upstream_read_timeout, upstream_total_timeout), UpstreamUnavailable (connect/reset/closed),
  UpstreamBadResponse (not HTTP, or a body cut short).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator
from typing import Any

import httptools

from gateway.errors import GatewayError, UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable

HIGH_WATER = 1 << 20  # bytes of a streamed body buffered ahead of the reader


class _Conn(asyncio.Protocol):
    """One keep-alive connection; parser callbacks fill the current response's slots."""

    __slots__ = ("pool", "loop", "transport", "parser", "closed", "exc", "status", "headers", "headers_done",
                 "complete", "chunks", "buffered", "paused", "waiter", "got_bytes", "keep_alive", "pooled")

    def __init__(self, pool: H1Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.exc: GatewayError | None = None
        self.waiter: asyncio.Future[bool | None] | None = None
        self.pooled = False  # counted in pool.open (set once connected)
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.complete = False
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.paused = False
        self.got_bytes = False
        self.keep_alive = False

    # ------------------------------------------------------------------ asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamBadResponse(f"upstream {self.pool.name}: malformed HTTP response ({exc})"))
            return
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete and self.exc is None:
            self.exc = UpstreamUnavailable(f"upstream {self.pool.name}: connection closed "
                                           f"{'mid-response' if self.got_bytes else 'before a response'}")
        self.pool._lost(self)
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    # ------------------------------------------------------------------ httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # informational (100 Continue, 103 Early Hints): the answer follows
            self.headers = {}
            return
        self.status = status
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if not self.headers_done:
            return  # the end of an informational response
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()

    # ------------------------------------------------------------------ helpers
    def _fail(self, err: GatewayError) -> None:
        if self.exc is None:
            self.exc = err
        self.close()

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def take(self) -> bytes:
        """The body bytes received so far (resumes reading when it was paused)."""
        chunks = self.chunks
        self.chunks = []
        self.buffered = 0
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def wait(self, read_timeout: float, deadline: float) -> None:
        """Wait for the next data, end or failure; on a timeout close and raise UpstreamTimeout."""
        fut: asyncio.Future[bool | None] = self.loop.create_future()
        self.waiter = fut
        read_at = self.loop.time() + read_timeout
        total = deadline <= read_at
        handle = self.loop.call_at(deadline if total else read_at, _expire, fut, total)
        try:
            timed_out = await fut  # None: progress; True/False: the total/read timer fired
        finally:
            handle.cancel()
            self.waiter = None
        if timed_out is None:
            return
        self.close()
        if timed_out:
            raise UpstreamTimeout(f"upstream {self.pool.name}: total timeout exceeded", code="upstream_total_timeout")
        raise UpstreamTimeout(f"upstream {self.pool.name}: no data within the first-byte timeout",
                              code="upstream_read_timeout")


def _expire(fut: asyncio.Future[bool | None], total: bool) -> None:
    if not fut.done():
        fut.set_result(total)


class H1Response:
    """Status and headers of an answer; the body via `read()` or `async for chunk in resp`."""

    __slots__ = ("_conn", "status", "headers", "_read_timeout", "_deadline", "_released")

    def __init__(self, conn: _Conn, read_timeout: float, deadline: float) -> None:
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers
        self._read_timeout = read_timeout
        self._deadline = deadline
        self._released = False

    async def read(self) -> bytes:
        c = self._conn
        try:
            while not c.complete:
                if c.exc is not None:
                    raise c.exc
                await c.wait(self._read_timeout, self._deadline)
            return c.take()
        finally:
            self.release()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        c = self._conn
        try:
            while True:
                if c.chunks:
                    yield c.take()
                elif c.complete:
                    return
                elif c.exc is not None:
                    raise c.exc
                else:
                    await c.wait(self._read_timeout, self._deadline)
        finally:
            self.release()

    def release(self) -> None:
        """Back to the pool when the answer was read to its end on a keep-alive connection."""
        if self._released:
            return
        self._released = True
        c = self._conn
        c.pool.release(c, reuse=c.complete and c.keep_alive and not c.chunks and c.exc is None)


class H1Pool:
    """Keep-alive connections to one origin (scheme, host, port)."""

    def __init__(self, name: str, base_url: str, limit: int, connect_timeout: float,
                 read_timeout: float, total_timeout: float, headers: dict[str, str]) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported scheme in {base_url!r}")
        self.name = name
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.total_timeout = total_timeout
        host_header = parts.netloc.rsplit("@", 1)[-1]
        # The fixed part of every request head, encoded once.
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in {"host": host_header, **headers}.items())
        self.loop = asyncio.get_running_loop()
        self.idle: list[_Conn] = []
        self.open = 0  # connections open or connecting
        self.waiters: collections.deque[asyncio.Future[_Conn | None]] = collections.deque()
        self.closing = False

    # ------------------------------------------------------------------ requests
    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None, *, read_timeout: float | None = None,
                      total_timeout: float | None = None) -> H1Response:
        """Send a request (`path` is origin-relative) and return once the response headers are in."""
        rt = self.read_timeout if read_timeout is None else read_timeout
        deadline = self.loop.time() + (self.total_timeout if total_timeout is None else total_timeout)
        head = self._head(method, path, body, headers)
        conn, reused = await self._acquire(deadline)
        try:
            return await self._exchange(conn, head, body, rt, deadline)
        except UpstreamUnavailable:
            if not (reused and not conn.got_bytes) or self.closing:
                raise
        # the keep-alive race: the server closed this idle connection as we sent on it
        self._drop_idle()
        conn, _ = await self._acquire(deadline, fresh=True)
        return await self._exchange(conn, head, body, rt, deadline)

    def _head(self, method: str, path: str, body: bytes | None, headers: dict[str, str] | None) -> bytes:
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) if headers else ""
        length = f"content-length: {len(body)}\r\n" if body is not None else ""
        # "replace": a non-latin-1 character (a caller's tracestate, say) must not become a 500
        return f"{method} {path} HTTP/1.1\r\n{self._fixed}{extra}{length}\r\n".encode("latin-1", "replace")

    async def _exchange(self, conn: _Conn, head: bytes, body: bytes | None, read_timeout: float,
                        deadline: float) -> H1Response:
        assert conn.transport is not None
        conn.transport.write(head + body if body else head)
        try:
            while not conn.headers_done:
                if conn.exc is not None:
                    raise conn.exc
                await conn.wait(read_timeout, deadline)
        except BaseException:
            self.release(conn, reuse=False)
            raise
        return H1Response(conn, read_timeout, deadline)

    # ------------------------------------------------------------------ the pool
    async def _acquire(self, deadline: float, fresh: bool = False) -> tuple[_Conn, bool]:
        while True:
            if not fresh:
                while self.idle:
                    c = self.idle.pop()  # LIFO: the most recently used connection is the warmest
                    if not c.closed:
                        return c, True
            if self.open < self.limit:
                self.open += 1
                try:
                    return await self._connect(deadline), False
                except BaseException:
                    self.open -= 1
                    self._wake()
                    raise
            got = await self._wait_for_conn(deadline)
            if got is not None and not got.closed:
                return got, True

    async def _wait_for_conn(self, deadline: float) -> _Conn | None:
        fut: asyncio.Future[_Conn | None] = self.loop.create_future()
        self.waiters.append(fut)
        handle = self.loop.call_at(deadline, _expire_pool, fut)
        try:
            return await fut
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.name}: total timeout exceeded waiting for one of its "
                                  f"{self.limit} connections (raise max_connections?)",
                                  code="upstream_total_timeout") from None
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                handed = fut.result()
                if handed is not None:
                    self.release(handed, reuse=True)  # handed to us as we were cancelled: pass it on
                else:
                    self._wake()
            raise
        finally:
            handle.cancel()

    async def _connect(self, deadline: float) -> _Conn:
        timeout = min(self.connect_timeout, max(0.0, deadline - self.loop.time()))
        try:
            async with asyncio.timeout(timeout):
                _t, conn = await self.loop.create_connection(
                    lambda: _Conn(self), self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None)
        except TimeoutError:
            raise UpstreamTimeout(f"upstream {self.name}: connect timeout", code="upstream_connect_timeout") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamUnavailable(f"upstream {self.name}: connection failed ({type(exc).__name__})") from None
        if conn.closed:  # closed before we got it: connection_lost did not count it
            raise UpstreamUnavailable(f"upstream {self.name}: connection closed at once")
        conn.pooled = True
        return conn

    def release(self, c: _Conn, reuse: bool) -> None:
        if reuse and not c.closed and not self.closing:
            c._reset()
            while self.waiters:
                w = self.waiters.popleft()
                if not w.done():
                    w.set_result(c)
                    return
            self.idle.append(c)
            return
        c.close()  # connection_lost accounts for it

    def _lost(self, c: _Conn) -> None:
        """connection_lost (exactly once per connection): a slot is free for a waiter."""
        if not c.pooled:
            return  # still connecting: _acquire accounts for it
        self.open -= 1
        if c in self.idle:
            self.idle.remove(c)
        self._wake()

    def _wake(self) -> None:
        while self.waiters:
            w = self.waiters.popleft()
            if not w.done():
                w.set_result(None)
                return

    def _drop_idle(self) -> None:
        idle, self.idle = self.idle, []
        for c in idle:
            c.close()

    async def close(self) -> None:
        self.closing = True
        self._drop_idle()
        for w in self.waiters:
            if not w.done():
                w.set_exception(UpstreamUnavailable(f"upstream {self.name} is closing"))
        self.waiters.clear()


def _expire_pool(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())
