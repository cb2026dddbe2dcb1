"""The aiohttp application: OpenAI endpoints, health, readiness, metrics.

Why aiohttp and not an ASGI stack: the proxy path needs a server and a pooled client that stay
fast at high concurrency on one core; aiohttp's C-accelerated parser on uvloop serves and
proxies in one process with one event loop and no per-request framework overhead (see
benchmarks/). Handlers run in their own task context, so OpenTelemetry's ContextVars propagate.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import GatewayError, MethodNotAllowed, NotFound
from gateway.intake import read_body
from gateway.proxy import handle
from gateway.state import AppState

log = logging.getLogger("cohortgate.app")

STATE_KEY: web.AppKey[AppState] = web.AppKey("state", AppState)

PROXIED = {
    "/v1/chat/completions": ("/chat/completions", "chat"),
    "/v1/completions": ("/completions", "text_completion"),
    "/v1/embeddings": ("/embeddings", "embeddings"),
}


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _err(err: GatewayError) -> web.Response:
    return web.Response(body=err.body(), status=err.status, content_type="application/json")


def make_app(state: AppState, *, watch_policy: bool = True, extra_setup: Any = None) -> web.Application:
    # Body size is enforced by the proxy path (413 with an OpenAI error), not by aiohttp.
    app = web.Application(client_max_size=1 << 40, handler_args={"max_field_size": 65536})
    app[STATE_KEY] = state

    def proxied(path: str, operation: str) -> Any:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await handle(state, request, path, operation)

        return handler

    for route, (path, op) in PROXIED.items():
        app.router.add_post(route, proxied(path, op))

    async def models(request: web.Request) -> web.Response:
        rt = state.runtime
        try:
            caller = rt.auth.authenticate(request.headers)
        except GatewayError as err:
            return _err(err)
        created = int(state_started)
        data = [{"id": m.name, "object": "model", "created": created, "owned_by": "cohortgate",
                 "description": m.description}
                for m in rt.policy.models if caller.may_use_model(m.name)]
        return _json({"object": "list", "data": data})

    async def model_one(request: web.Request) -> web.Response:
        rt = state.runtime
        try:
            caller = rt.auth.authenticate(request.headers)
        except GatewayError as err:
            return _err(err)
        name = request.match_info["name"]
        if name not in rt.aliases or not caller.may_use_model(name):
            return _err(NotFound(f"The model '{name}' does not exist or you do not have access to it.",
                                 param="model", code="model_not_found"))
        return _json({"id": name, "object": "model", "created": int(state_started), "owned_by": "cohortgate"})

    async def feedback(request: web.Request) -> web.Response:
        try:
            caller = state.runtime.auth.authenticate(request.headers)
            raw = await read_body(request, 64 * 1024)
            if state.feedback is None:
                raise NotFound("Feedback is not enabled on this gateway.")
            return _json(state.feedback.submit(raw, caller.name))
        except GatewayError as err:
            return _err(err)

    async def healthz(request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        rt = state.runtime
        ups = {n: c.health.state() for n, c in rt.upstreams.items()}
        ready = any(s == "up" for s in ups.values())
        return _json({"status": "ready" if ready else "not_ready", "policy": rt.source, "upstreams": ups},
                     status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.Response:
        for name, c in state.runtime.upstreams.items():
            state.metrics.upstream_up.set((name,), 1 if c.health.state() == "up" else 0)
        body, ctype = state.metrics.exposition()
        return web.Response(body=body, headers={"content-type": ctype})

    async def not_found(request: web.Request) -> web.Response:
        if request.path in PROXIED or request.path in ("/v1/models", "/v1/feedback", "/healthz", "/readyz", "/metrics"):
            return _err(MethodNotAllowed(f"{request.method} is not allowed on {request.path}."))
        return _err(NotFound(f"Unknown path {request.path}. The gateway serves /v1/chat/completions, "
                             "/v1/completions, /v1/embeddings, /v1/models.", code="unknown_url"))

    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{name}", model_one)
    app.router.add_post("/v1/feedback", feedback)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    if extra_setup is not None:
        extra_setup(app, state)
    app.router.add_route("*", "/{tail:.*}", not_found)

    state_started = time.time()

    async def on_startup(app: web.Application) -> None:
        for c in state.runtime.upstreams.values():
            await c.start()
        for f in state.features:
            await f.start(state)
        state.spawn(_probe_loop(state))
        if watch_policy and state.policy_path:
            from gateway.reload import watch

            state.spawn(watch(state, semantic_factory=state.semantic_factory))
        tune_gc()

    async def on_cleanup(app: web.Application) -> None:
        await state.close()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def tune_gc() -> None:
    """The proxy path frees its objects by reference counting (no cycles per request), yet at the
    default threshold (700 net allocations) the cyclic GC ran every ~10 requests at high
    concurrency, scanning every in-flight request's objects: ~2.5% of the instructions per request
    (callgrind). A higher threshold lets short-lived objects die before any scan. Everything
    built at startup (policy models, compiled rules, modules) lives as long as the process: freeze
    it so full collections stop re-scanning it."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


async def _probe_loop(state: AppState) -> None:
    """Active health probes for upstreams that configure `health.probe_path`."""
    next_due: dict[str, float] = {}
    while True:
        now = time.monotonic()
        rt = state.runtime
        for name, c in rt.upstreams.items():
            hc = c.spec.health
            probe = getattr(c, "probe", None)
            if not hc.probe_path or probe is None or next_due.get(name, 0.0) > now:
                continue
            next_due[name] = now + hc.probe_interval_s
            ok = await probe()
            if c.health.probe_ok != ok:
                log.warning("upstream %s health probe %s", name, "recovered" if ok else "failed")
            c.health.probe_ok = ok
        await asyncio.sleep(0.5)
