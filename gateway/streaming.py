"""SSE relay with fallback before the commit point and a typed error event after it.

Until the first upstream event has been written to the client, any upstream failure moves to
the next target. After that, a failure (cut stream, stall past the read timeout, transport
error, stream ending without `data: [DONE]`) ends the client's stream with an OpenAI-style
`data: {"error": ...}` event and no `[DONE]`, never a hang.

Only whole SSE events are forwarded (a partial event is held until its blank line arrives),
which lets the relay read `usage` and `finish_reason` from the events it passes and, when the
gateway itself injected `stream_options.include_usage`, drop the usage-only event the client
did not ask for. Bytes are otherwise passed through unchanged.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.errors import GatewayError, UpstreamBadResponse
from gateway.request import RequestRecord
from gateway.upstream.base import UpstreamClient, UpstreamStream

DONE = b"data: [DONE]"


def with_usage(body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Ask the upstream for a usage event; returns (body, injected)."""
    so = body.get("stream_options")
    if isinstance(so, dict) and so.get("include_usage"):
        return body, False
    return {**body, "stream_options": {**(so if isinstance(so, dict) else {}), "include_usage": True}}, True


def error_event(err: GatewayError) -> bytes:
    return b"data: " + err.body() + b"\n\n"


class Relay:
    """Per-stream state: held partial event, usage seen, [DONE] seen, and (when `collect`) the
    assistant message assembled from the deltas, for after-stream gates and shadow pairs."""

    __slots__ = ("rec", "strip_usage", "buf", "done", "collect", "content", "tools")

    def __init__(self, rec: RequestRecord, strip_usage: bool, collect: bool = False) -> None:
        self.rec = rec
        self.strip_usage = strip_usage
        self.buf = b""
        self.done = False
        self.collect = collect
        self.content: list[str] = []
        self.tools: dict[int, dict[str, Any]] = {}

    def feed(self, chunk: bytes) -> bytes:
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        if self.buf:
            chunk = self.buf + chunk
        cut = chunk.rfind(b"\n\n")
        if cut < 0:
            self.buf = chunk
            return b""
        out, self.buf = chunk[: cut + 2], chunk[cut + 2 :]
        if self.collect or b'"usage"' in out or b'"finish_reason":"' in out or DONE in out:
            out = self._inspect(out)
        return out

    def _inspect(self, block: bytes) -> bytes:
        kept: list[bytes] = []
        dropped = False
        for event in block.split(b"\n\n"):
            if not event:
                continue
            if event.startswith(DONE):
                self.done = True
                kept.append(event)
                continue
            if event.startswith(b"data: ") and (self.collect or b'"usage"' in event or b'"finish_reason":"' in event):
                try:
                    obj = orjson.loads(event[6:])
                except orjson.JSONDecodeError:
                    kept.append(event)
                    continue
                if not isinstance(obj, dict):
                    kept.append(event)
                    continue
                usage = obj.get("usage")
                if isinstance(usage, dict):
                    self.rec.input_tokens = usage.get("prompt_tokens", self.rec.input_tokens)
                    self.rec.output_tokens = usage.get("completion_tokens", self.rec.output_tokens)
                for ch in obj.get("choices") or ():
                    if not isinstance(ch, dict):
                        continue
                    fr = ch.get("finish_reason")
                    if fr:
                        self.rec.finish_reasons.append(fr)
                    if self.collect and ch.get("index", 0) == 0:
                        self._collect(ch.get("delta") or ch)
                if not self.rec.response_model:
                    self.rec.response_model = str(obj.get("model") or "")
                if self.strip_usage and usage and not obj.get("choices"):
                    dropped = True
                    continue
            kept.append(event)
        if not dropped:
            return block
        return b"".join(e + b"\n\n" for e in kept)

    def _collect(self, delta: dict[str, Any]) -> None:
        piece = delta.get("content") if "content" in delta else delta.get("text")
        if isinstance(piece, str):
            self.content.append(piece)
        for tc in delta.get("tool_calls") or ():
            if not isinstance(tc, dict):
                continue
            slot = self.tools.setdefault(int(tc.get("index", 0)), {"id": None, "name": "", "arguments": ""})
            slot["id"] = tc.get("id") or slot["id"]
            fn = tc.get("function") or {}
            slot["name"] += fn.get("name") or ""
            slot["arguments"] += fn.get("arguments") or ""

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(self.content) if self.content else None}
        if self.tools:
            msg["tool_calls"] = [{"id": t["id"] or f"call_{i}", "type": "function",
                                  "function": {"name": t["name"], "arguments": t["arguments"]}}
                                 for i, t in sorted(self.tools.items())]
        return msg


async def open_first(client: UpstreamClient, path: str, body: dict[str, Any],
                     headers: dict[str, str]) -> tuple[UpstreamStream, Any, bytes]:
    """Open a stream and read its first bytes; any failure here is still fallback-eligible."""
    stream = await client.open_stream(path, body, headers)
    it = stream.__aiter__()
    try:
        first = await it.__anext__()
    except StopAsyncIteration:
        await stream.aclose()
        raise UpstreamBadResponse(f"upstream {client.name} closed the stream before sending anything") from None
    except BaseException:
        await stream.aclose()
        raise
    return stream, it, first


async def relay(response: web.StreamResponse, stream: UpstreamStream, it: Any,
                first: bytes, relay_state: Relay, rec: RequestRecord, client: UpstreamClient) -> None:
    """Write the committed stream to the client until [DONE], failure or client disconnect."""
    try:
        out = relay_state.feed(first)
        if out:
            await response.write(out)
        rec.ttft_s = rec.elapsed()
        try:
            async for chunk in it:
                out = relay_state.feed(chunk)
                if out:
                    await response.write(out)
            if relay_state.buf:  # a last event without its blank line
                tail = relay_state.feed(b"\n\n")
                if tail:
                    await response.write(tail)
            if not relay_state.done:
                raise UpstreamBadResponse(f"upstream {client.name} ended the stream without [DONE]")
        except GatewayError as err:
            rec.outcome = "stream_error"
            rec.error_type = err.reason
            client.health.failure()
            await response.write(error_event(err))
        await response.write_eof()
    except (ConnectionResetError, ConnectionError):
        rec.outcome = "client_closed"
    finally:
        await stream.aclose()


def stream_headers(base: dict[str, str]) -> dict[str, str]:
    return {**base, "content-type": "text/event-stream", "cache-control": "no-cache", "x-accel-buffering": "no"}

