"""A local OpenAI-compatible server with fault modes, for tests, benchmarks and the local default.

It answers /v1/chat/completions (JSON or SSE with a usage event on request), /v1/completions,
/v1/embeddings, /v1/models and /health. Answers are deterministic and name the server
(`[NAME] ...`), so a test can tell which upstream served a request. When the request offers
tools it calls the first one (arguments generated from its JSON Schema); when it asks for JSON
it answers schema-shaped JSON.

Faults, set at start (`--fault MODE --fault-rate P`) or at run time with
`POST /control {"fault": MODE, "rate": P, "retry_after": S, "delay": S}`:
  500, 503            error status with an OpenAI error body
  429                 rate limited, with Retry-After
  reset               close the connection without answering
  slow                wait `delay` seconds before answering
  malformed           200 with a body that is not JSON
  midstream_drop      (stream) send two events, then drop the connection
  stall               (stream) send one event, then stall for `delay` seconds
  no_done             (stream) end the stream cleanly but without [DONE]
  bad_json            answer plain text even when JSON was requested
  wrong_tool          call a tool that was not offered
  bad_args            call the offered tool with arguments that violate its schema
`GET /control/requests` returns the last requests seen (headers and bodies) for hygiene checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections import deque
from typing import Any

import orjson
from aiohttp import web

STREAM_FAULTS = {"midstream_drop", "stall", "no_done"}


class FakeState:
    def __init__(self, name: str, fault: str = "none", rate: float = 1.0, delay: float = 5.0,
                 retry_after: float = 0.1, chunks: int = 8, chunk_delay: float = 0.0, seed: int = 0) -> None:
        self.name = name
        self.fault = fault
        self.rate = rate
        self.delay = delay
        self.retry_after = retry_after
        self.chunks = chunks
        self.chunk_delay = chunk_delay
        self.rng = random.Random(seed)
        self.seen: deque[dict[str, Any]] = deque(maxlen=200)
        self.count = 0
        self.echo_auth = False  # a misbehaving upstream that quotes the key it got in its errors
        self.fault_budget = -1  # when >= 0: how many more requests get the fault, then it clears

    def active_fault(self) -> str:
        if self.fault == "none":
            return "none"
        if self.fault_budget == 0:
            self.fault = "none"
            return "none"
        fault = self.fault if self.rng.random() < self.rate else "none"
        if fault != "none" and self.fault_budget > 0:
            self.fault_budget -= 1
        return fault


def _dummy(schema: Any, depth: int = 0) -> Any:
    if not isinstance(schema, dict) or depth > 6:
        return "x"
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "string")
    if t == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: _dummy(v, depth + 1) for k, v in props.items()}
    if t == "array":
        return [_dummy(schema.get("items") or {}, depth + 1)]
    if t == "integer":
        return int(schema.get("minimum", 1))
    if t == "number":
        return float(schema.get("minimum", 1.5))
    if t == "boolean":
        return True
    if t == "null":
        return None
    return "ok"


def _last_user(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else orjson.dumps(c).decode()
    return ""


def _message(st: FakeState, body: dict[str, Any], fault: str) -> dict[str, Any]:
    tools = body.get("tools") or []
    rf = body.get("response_format") or {}
    if tools and body.get("tool_choice") != "none":
        fn = tools[0].get("function", {}) if isinstance(tools[0], dict) else {}
        name, args = fn.get("name", "tool"), _dummy(fn.get("parameters") or {})
        if fault == "wrong_tool":
            name = "not_an_offered_tool"
        if fault == "bad_args":
            args = {"__unexpected__": [1, 2, 3]} if not (fn.get("parameters") or {}).get("required") else {}
        call = {"id": "call_" + hashlib.md5(name.encode()).hexdigest()[:8], "type": "function",
                "function": {"name": name, "arguments": orjson.dumps(args).decode()}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    if rf.get("type") in ("json_object", "json_schema") and fault != "bad_json":
        schema = (rf.get("json_schema") or {}).get("schema") or {"type": "object", "properties": {
            "answer": {"type": "string"}}}
        content = orjson.dumps(_dummy(schema)).decode()
        return {"role": "assistant", "content": content}
    text = _last_user(body) or str(body.get("prompt", ""))
    if fault == "bad_json":
        return {"role": "assistant", "content": f"[{st.name}] Sure! Here it is: {{not json"}
    return {"role": "assistant", "content": f"[{st.name}] echo: {text[:200]}"}


def _usage(body: dict[str, Any], completion: str) -> dict[str, int]:
    p = sum(len(str(m.get("content") or "").split()) for m in body.get("messages") or [] if isinstance(m, dict))
    p = p or len(str(body.get("prompt", "")).split()) or 1
    c = max(1, len(completion.split()))
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def make_app(st: FakeState) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)

    async def pre(request: web.Request) -> tuple[dict[str, Any], str, web.StreamResponse | None]:
        raw = await request.read()
        st.count += 1
        try:
            body = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            return {}, "none", _error(400, "body is not JSON")
        st.seen.append({"path": request.path, "headers": {k.lower(): v for k, v in request.headers.items()},
                         "body": body})
        fault = st.active_fault()
        if fault == "500":
            quoted = f" (got {request.headers.get('authorization')})" if st.echo_auth else ""
            return body, fault, _error(500, "internal error (injected)" + quoted)
        if fault == "503":
            return body, fault, _error(503, "overloaded (injected)")
        if fault == "429":
            r = _error(429, "rate limited (injected)")
            r.headers["Retry-After"] = f"{st.retry_after:g}"
            return body, fault, r
        if fault == "reset":
            assert request.transport is not None
            request.transport.abort()
            raise asyncio.CancelledError
        if fault == "slow":
            await asyncio.sleep(st.delay)
        if fault == "malformed":
            return body, fault, web.Response(body=b'{"id": "x", "choices": [', content_type="application/json")
        return body, fault, None

    async def chat(request: web.Request) -> web.StreamResponse:
        body, fault, early = await pre(request)
        if early is not None:
            return early
        msg = _message(st, body, fault)
        model = body.get("model", st.name)
        created = int(time.time())
        if body.get("stream"):
            return await _stream(request, st, body, msg, model, created, fault)
        content = msg.get("content") or ""
        n = int(body.get("n") or 1)
        finish = "tool_calls" if msg.get("tool_calls") else "stop"
        choices = [{"index": i, "message": msg, "logprobs": None, "finish_reason": finish} for i in range(n)]
        out = {"id": f"chatcmpl-{st.count}", "object": "chat.completion", "created": created, "model": model,
               "choices": choices, "usage": _usage(body, content or "tool call")}
        return web.Response(body=orjson.dumps(out), content_type="application/json")

    async def completions(request: web.Request) -> web.StreamResponse:
        body, fault, early = await pre(request)
        if early is not None:
            return early
        text = f"[{st.name}] completion of: {str(body.get('prompt'))[:100]}"
        out = {"id": f"cmpl-{st.count}", "object": "text_completion", "created": int(time.time()),
               "model": body.get("model", st.name),
               "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": "stop"}],
               "usage": _usage(body, text)}
        if body.get("stream"):
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            chunk = {**out, "choices": [{"index": 0, "text": text, "finish_reason": "stop"}]}
            chunk.pop("usage")
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
            if (body.get("stream_options") or {}).get("include_usage"):
                await resp.write(b"data: " + orjson.dumps({**chunk, "choices": [], "usage": out["usage"]}) + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        return web.Response(body=orjson.dumps(out), content_type="application/json")

    async def embeddings(request: web.Request) -> web.StreamResponse:
        body, fault, early = await pre(request)
        if early is not None:
            return early
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = []
        for i, item in enumerate(items):
            h = hashlib.sha256(str(item).encode()).digest()
            data.append({"object": "embedding", "index": i, "embedding": [b / 255.0 for b in h[:8]]})
        toks = sum(len(str(x).split()) for x in items)
        out = {"object": "list", "data": data, "model": body.get("model", st.name),
               "usage": {"prompt_tokens": toks, "total_tokens": toks}}
        return web.Response(body=orjson.dumps(out), content_type="application/json")

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": st.name, "object": "model", "owned_by": "fake"}]})

    async def health(request: web.Request) -> web.Response:
        if st.fault in ("500", "503") and st.rate >= 1.0:
            return web.json_response({"status": "down"}, status=503)
        return web.json_response({"status": "ok"})

    async def control(request: web.Request) -> web.Response:
        cfg = await request.json()
        st.fault = cfg.get("fault", st.fault)
        st.rate = float(cfg.get("rate", st.rate))
        st.delay = float(cfg.get("delay", st.delay))
        st.retry_after = float(cfg.get("retry_after", st.retry_after))
        st.chunk_delay = float(cfg.get("chunk_delay", st.chunk_delay))
        st.fault_budget = int(cfg.get("budget", -1))
        if cfg.get("clear"):
            st.seen.clear()
            st.count = 0
        return web.json_response({"fault": st.fault, "rate": st.rate})

    async def seen(request: web.Request) -> web.Response:
        return web.json_response({"count": st.count, "requests": list(st.seen)})

    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_post("/control", control)
    app.router.add_get("/control/requests", seen)
    return app


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "server_error" if status >= 500 else "invalid_request_error",
                      "param": None, "code": status}}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def _stream(request: web.Request, st: FakeState, body: dict[str, Any], msg: dict[str, Any], model: str,
                  created: int, fault: str) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await resp.prepare(request)
    base = {"id": f"chatcmpl-{st.count}", "object": "chat.completion.chunk", "created": created, "model": model}

    def ev(delta: dict[str, Any], finish: str | None = None) -> bytes:
        c = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return b"data: " + orjson.dumps(c) + b"\n\n"

    await resp.write(ev({"role": "assistant", "content": ""}))
    if fault == "stall":
        await asyncio.sleep(st.delay)
    content = msg.get("content") or ""
    if msg.get("tool_calls"):
        call = msg["tool_calls"][0]
        await resp.write(ev({"tool_calls": [{"index": 0, **call}]}))
        finish = "tool_calls"
    else:
        words = content.split(" ")
        per = max(1, len(words) // max(1, st.chunks))
        for i in range(0, len(words), per):
            if fault == "midstream_drop" and i >= per:
                assert request.transport is not None
                request.transport.abort()
                return resp
            piece = " ".join(words[i:i + per]) + (" " if i + per < len(words) else "")
            await resp.write(ev({"content": piece}))
            if st.chunk_delay:
                await asyncio.sleep(st.chunk_delay)
        finish = "stop"
    await resp.write(ev({}, finish))
    if (body.get("stream_options") or {}).get("include_usage"):
        u = {**base, "choices": [], "usage": _usage(body, content or "tool call")}
        await resp.write(b"data: " + orjson.dumps(u) + b"\n\n")
    if fault != "no_done":
        await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def run(host: str, port: int, st: FakeState) -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    web.run_app(make_app(st), host=host, port=port, access_log=None, print=None)


def _command() -> Any:
    import typer

    app = typer.Typer(add_completion=False)

    @app.callback(invoke_without_command=True)
    def main(port: int = typer.Option(8001), host: str = typer.Option("127.0.0.1"),
             name: str = typer.Option("fake-model", help="served model name (appears in answers)"),
             fault: str = typer.Option("none"), fault_rate: float = typer.Option(1.0),
             delay: float = typer.Option(5.0), retry_after: float = typer.Option(0.1),
             chunks: int = typer.Option(8), chunk_delay: float = typer.Option(0.0),
             seed: int = typer.Option(0)) -> None:
        """Run the fake OpenAI-compatible upstream."""
        typer.echo(f"fake upstream {name} on http://{host}:{port}/v1 (fault {fault})")
        run(host, port, FakeState(name, fault, fault_rate, delay, retry_after, chunks, chunk_delay, seed))

    return app


command = _command()

if __name__ == "__main__":
    command()
