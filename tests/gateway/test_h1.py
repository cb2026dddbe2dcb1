"""The upstream HTTP/1.1 client (gateway/upstream/h1.py) against a scripted server on 127.0.0.1:
keep-alive reuse, chunked bodies, Connection: close, the keep-alive race, the pool limit,
timeouts, cut and malformed answers, back-pressure, and cancellation without leaked slots."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gateway.errors import UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from gateway.upstream import h1
from gateway.upstream.h1 import H1Pool

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, Any]], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request (head + content-length body), or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + (await reader.readexactly(length) if length else b"")


def ok(body: bytes = b'{"ok":true}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        len(body), extra, body)


async def serve(handler: Handler, stats: dict[str, Any]) -> tuple[asyncio.AbstractServer, int]:
    stats.setdefault("connections", 0)
    stats.setdefault("open", 0)
    stats.setdefault("max_open", 0)

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats["connections"] += 1
        stats["open"] += 1
        stats["max_open"] = max(stats["max_open"], stats["open"])
        try:
            await handler(reader, writer, stats)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            stats["open"] -= 1
            writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@contextlib.asynccontextmanager
async def served(handler: Handler, stats: dict[str, Any], **pool_kw: Any) -> AsyncIterator[H1Pool]:
    """A scripted server and a pool to it; both closed at the end, also when an assertion fails."""
    server, port = await serve(handler, stats)
    p = pool(port, **pool_kw)
    try:
        yield p
    finally:
        await p.close()
        server.close()


def pool(port: int, **kw: Any) -> H1Pool:
    args: dict[str, Any] = {"limit": 8, "connect_timeout": 1.0, "read_timeout": 2.0, "total_timeout": 5.0, **kw}
    return H1Pool("up", f"http://127.0.0.1:{port}/v1", args["limit"], args["connect_timeout"], args["read_timeout"],
                  args["total_timeout"], {"content-type": "application/json"})


async def echo_keepalive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, Any]) -> None:
    while (req := await read_request(reader)) is not None:
        stats.setdefault("requests", []).append(req)
        await asyncio.sleep(stats.get("delay", 0.0))
        writer.write(ok())
        await writer.drain()


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def test_keep_alive_reuses_one_connection_and_sends_a_well_formed_request() -> None:
    async def main() -> None:
        stats: dict[str, Any] = {}
        async with served(echo_keepalive, stats) as p:
            for _ in range(5):
                r = await p.request("POST", "/v1/chat/completions", b'{"a":1}', {"x-request-id": "r1"})
                assert r.status == 200 and r.headers["content-type"] == "application/json"
                assert await r.read() == b'{"ok":true}'
            assert stats["connections"] == 1
            head = stats["requests"][0].decode()
            assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
            assert f"host: 127.0.0.1:{p.port}\r\n" in head and "x-request-id: r1\r\n" in head
            assert head.endswith('content-length: 7\r\n\r\n{"a":1}')

    run(main())


def test_chunked_body_is_decoded_read_whole_and_streamed() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, Any]) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for part in (b"data: one\n\n", b"data: two\n\n", b"data: [DONE]\n\n"):
                writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                await writer.drain()
                await asyncio.sleep(0.02)
            writer.write(b"0\r\n\r\n")

    async def main() -> None:
        stats: dict[str, Any] = {}
        async with served(chunked, stats) as p:
            r = await p.request("POST", "/x", b"{}")
            assert await r.read() == b"data: one\n\ndata: two\n\ndata: [DONE]\n\n"
            r = await p.request("POST", "/x", b"{}")
            chunks = [c async for c in r]
            assert b"".join(chunks) == b"data: one\n\ndata: two\n\ndata: [DONE]\n\n" and len(chunks) >= 2
            assert stats["connections"] == 1  # reused after a chunked answer read to its end

    run(main())


def test_connection_close_is_not_reused() -> None:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, Any]) -> None:
        if await read_request(reader) is not None:
            writer.write(ok(extra=b"connection: close\r\n"))
            await writer.drain()

    async def main() -> None:
        stats: dict[str, Any] = {}
        async with served(closing, stats) as p:
            for _ in range(3):
                assert await (await p.request("POST", "/x", b"{}")).read() == b'{"ok":true}'
            assert stats["connections"] == 3
            await asyncio.sleep(0.05)
            assert p.open == 0 and not p.idle

    run(main())


def test_keep_alive_race_is_retried_once_on_a_fresh_connection() -> None:
    """The server answers, then closes the idle connection without saying so (as a restarted
    server or a keep-alive timeout does); the next request must not fail because of it."""

    async def one_shot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, Any]) -> None:
        if await read_request(reader) is not None:
            writer.write(ok())
            await writer.drain()
            await asyncio.sleep(0.05)  # then drop the connection with no "connection: close"

    async def main() -> None:
        stats: dict[str, Any] = {}
        async with served(one_shot, stats) as p:
            assert await (await p.request("POST", "/x", b"{}")).read() == b'{"ok":true}'
            await asyncio.sleep(0.02)  # the close is still in flight when we send again
            assert await (await p.request("POST", "/x", b"{}")).read() == b'{"ok":true}'
            await asyncio.sleep(0.2)
            assert await (await p.request("POST", "/x", b"{}")).read() == b'{"ok":true}'
            assert stats["connections"] == 3

    run(main())


def test_pool_limit_queues_callers_and_every_request_is_answered() -> None:
    async def main() -> None:
        stats: dict[str, Any] = {"delay": 0.05}
        async with served(echo_keepalive, stats, limit=2) as p:

            async def one() -> bytes:
                return await (await p.request("POST", "/x", b"{}")).read()

            bodies = await asyncio.gather(*(one() for _ in range(12)))
            assert bodies == [b'{"ok":true}'] * 12
            assert stats["max_open"] <= 2 and p.open <= 2

    run(main())


def test_waiting_for_a_full_pool_respects_the_total_timeout() -> None:
    async def main() -> None:
        stats: dict[str, Any] = {"delay": 1.0}
        async with served(echo_keepalive, stats, limit=1, total_timeout=0.3) as p:
            first = asyncio.ensure_future(p.request("POST", "/x", b"{}", total_timeout=5.0))
            await asyncio.sleep(0.05)
            with pytest.raises(UpstreamTimeout) as e:
                await p.request("POST", "/x", b"{}")
            assert e.value.code == "upstream_total_timeout" and "max_connections" in e.value.message
            assert await (await first).read() == b'{"ok":true}'

    run(main())


def test_cancelled_waiter_does_not_leak_the_connection() -> None:
    async def main() -> None:
        stats: dict[str, Any] = {"delay": 0.1}
        async with served(echo_keepalive, stats, limit=1) as p:
            first = asyncio.ensure_future(p.request("POST", "/x", b"{}"))
            await asyncio.sleep(0.02)
            waiter = asyncio.ensure_future(p.request("POST", "/x", b"{}"))
            await asyncio.sleep(0.02)
            waiter.cancel()
            await (await first).read()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            # the only connection is free again: a new request gets it
            assert await (await p.request("POST", "/x", b"{}")).read() == b'{"ok":true}'
            assert p.open == 1 and stats["connections"] == 1

    run(main())


def test_read_and_total_timeouts() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, Any]) -> None:
        await read_request(reader)
        await asyncio.sleep(3)

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, Any]) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for _ in range(100):
            writer.write(b"3\r\nab\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)

    async def main() -> None:
        async with served(silent, {}, read_timeout=0.2) as p:
            with pytest.raises(UpstreamTimeout) as e:
                await p.request("POST", "/x", b"{}")
            assert e.value.code == "upstream_read_timeout"
        async with served(trickle, {}, read_timeout=1.0, total_timeout=0.4) as p:
            r = await p.request("POST", "/x", b"{}")
            got = []
            with pytest.raises(UpstreamTimeout) as e:
                async for c in r:
                    got.append(c)
            assert e.value.code == "upstream_total_timeout" and got  # data flowed, then the deadline hit

    run(main())


def test_cut_and_malformed_answers_and_refused_connections() -> None:
    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, Any]) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"partial\":")
        await writer.drain()

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, Any]) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)

    async def main() -> None:
        async with served(cut, {}) as p:
            r = await p.request("POST", "/x", b"{}")
            with pytest.raises(UpstreamUnavailable, match="mid-response"):
                await r.read()
        async with served(garbage, {}) as p:
            with pytest.raises(UpstreamBadResponse, match="malformed HTTP"):
                await p.request("POST", "/x", b"{}")
        p = pool(p.port)  # nothing listens there any more (the server above is closed)
        with pytest.raises(UpstreamUnavailable, match="connection failed"):
            await p.request("POST", "/x", b"{}")
        assert p.open == 0

    run(main())


def test_a_slow_reader_pauses_the_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h1, "HIGH_WATER", 64 * 1024)
    big = b"x" * (4 << 20)

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, Any]) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(big))
        writer.write(big)
        await writer.drain()
        await read_request(reader)  # keep the connection open (until the client closes it)

    async def main() -> None:
        async with served(flood, {}) as p:
            r = await p.request("POST", "/x", b"{}")
            conn = r._conn
            total = 0
            peak = 0
            async for chunk in r:
                total += len(chunk)
                peak = max(peak, len(chunk))
                await asyncio.sleep(0.002)
            assert total == len(big)
            assert peak < 2 << 20  # never the whole 4 MiB buffered ahead of the reader
            assert conn.closed is False and p.idle == [conn]  # read to the end: kept alive

    run(main())


def test_informational_responses_are_skipped() -> None:
    async def early_hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stats: dict[str, Any]) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(ok())
            await writer.drain()

    async def main() -> None:
        stats: dict[str, Any] = {}
        async with served(early_hints, stats) as p:
            for _ in range(2):
                r = await p.request("POST", "/x", b"{}")
                assert r.status == 200 and "link" not in r.headers
                assert await r.read() == b'{"ok":true}'
            assert stats["connections"] == 1

    run(main())
