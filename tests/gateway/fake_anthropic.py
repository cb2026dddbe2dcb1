"""A local fake of Anthropic's Messages API (POST /v1/messages, JSON and SSE), for the litellm
upstream tests. It mimics the wire format litellm parses; it is not an Anthropic client mock."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


def make_app(seen: list[dict[str, Any]]) -> web.Application:
    app = web.Application()

    async def messages(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append({"path": request.path, "headers": {k.lower(): v for k, v in request.headers.items()},
                     "body": body})
        user = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
        if isinstance(user, list):
            user = " ".join(p.get("text", "") for p in user)
        text = f"[anthropic] echo: {user}"
        if not body.get("stream"):
            return web.json_response({
                "id": "msg_1", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": {"input_tokens": 7, "output_tokens": 5}})
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)

        async def ev(name: str, data: dict[str, Any]) -> None:
            await resp.write(f"event: {name}\n".encode() + b"data: " + orjson.dumps(data) + b"\n\n")

        await ev("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": body["model"], "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 7, "output_tokens": 1}}})
        await ev("content_block_start", {"type": "content_block_start", "index": 0,
                                         "content_block": {"type": "text", "text": ""}})
        for word in text.split(" "):
            await ev("content_block_delta", {"type": "content_block_delta", "index": 0,
                                             "delta": {"type": "text_delta", "text": word + " "}})
        await ev("content_block_stop", {"type": "content_block_stop", "index": 0})
        await ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                      "stop_sequence": None},
                                   "usage": {"output_tokens": 5}})
        await ev("message_stop", {"type": "message_stop"})
        await resp.write_eof()
        return resp

    app.router.add_post("/v1/messages", messages)
    return app
