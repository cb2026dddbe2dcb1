"""The proxy path for /v1/chat/completions, /v1/completions and /v1/embeddings.

One pass per request: read and parse the body once, authenticate, classify, plan, then walk
the fallback chain (attempts.py). Non-streamed answers may be rejected by inline eval gates,
which counts as a fallback-eligible failure; streamed answers are relayed (streaming.py) and
evaluated after the fact by the gates' observers. Whatever happens, the RequestRecord is handed
to the observers once, after the response is complete, off the response's critical path.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.attempts import run_attempts
from gateway.errors import Forbidden, GatewayError, InternalError
from gateway.gates import gates_for
from gateway.intake import build_request, parse_body, read_body
from gateway.request import Attempt, ClientRequest, RequestRecord
from gateway.routing import Plan
from gateway.runtime import Runtime
from gateway.streaming import Relay, open_first, relay, stream_headers, with_usage
from gateway.upstream.base import UpstreamClient, UpstreamResponse

if TYPE_CHECKING:
    from gateway.state import AppState

log = logging.getLogger("cohortgate.proxy")

_PARAMS = frozenset(("temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "n", "frequency_penalty",
                     "presence_penalty", "stop"))


# Request ids: a random per-process prefix plus a counter; unique without a syscall per request.
_ID_PREFIX = "req_" + os.urandom(6).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id(request: web.Request) -> str:
    rid = request.headers.get("x-request-id")
    if rid and len(rid) <= 128 and rid.isascii() and rid.isprintable():
        return rid
    return f"{_ID_PREFIX}{next(_ID_COUNTER):010x}"


def response_headers(rec: RequestRecord, debug: bool = False) -> dict[str, str]:
    """Who served the answer; with `debug`, also why (each header costs CPU on every response)."""
    h = {"x-request-id": rec.request_id}
    if rec.cohort:
        h["x-cohort"] = rec.cohort
        if debug:
            h["x-cohort-reason"] = rec.cohort_reason if rec.cohort_reason.isascii() else _ascii(rec.cohort_reason)
            if rec.cohort_confidence is not None:
                h["x-cohort-confidence"] = f"{rec.cohort_confidence:.3f}"
    if rec.route_id:
        h["x-route"] = rec.route_id
    if rec.served_by:
        h["x-upstream"] = rec.served_by
        h["x-upstream-model"] = rec.served_model
        if debug:
            h["x-canary-arm"] = rec.arm or "-"
    if len(rec.attempts) > 1:
        h["x-gateway-attempts"] = str(len(rec.attempts))
        if rec.fallback_reason:
            h["x-fallback-reason"] = rec.fallback_reason
    return h


def wants_debug(rt: Runtime, request: web.Request) -> bool:
    return rt.policy.server.debug_headers or request.headers.get("x-cohortgate-debug") == "1"


def _ascii(s: str) -> str:
    return s.encode("ascii", "replace").decode()


async def handle(state: AppState, request: web.Request, path: str, operation: str) -> web.StreamResponse:
    rec = RequestRecord(new_request_id(request), operation=operation)
    rt = state.runtime  # one snapshot for the whole request, even if a reload swaps it meanwhile
    # traced: this request's spans are recorded (tracing on and sampled); an unsampled request
    # only passes its traceparent on
    traced = state.begin(rec, request.headers)
    try:
        caller = rt.auth.authenticate(request.headers)
        rec.key_name = caller.name
        raw = await read_body(request, rt.policy.server.max_body_bytes)
        body = parse_body(raw, operation)
        creq = build_request(request, path, operation, body, caller, rt.aliases)
        rec.alias = creq.alias
        rec.stream = creq.stream
        if traced:
            if rt.policy.telemetry.record_content:
                state.tracing.record_content(rec, body)  # opted in by the policy: the prompt goes on the span
            rec.request_params = tuple([(k, v) for k, v in body.items() if k in _PARAMS])
        decision = rt.classifier.classify(creq)
        rec.cohort, rec.cohort_reason, rec.cohort_confidence = decision.cohort, decision.reason, decision.confidence
        if not caller.may_use_cohort(decision.cohort):
            raise Forbidden(f"Your API key may not send '{decision.cohort}' requests.", code="cohort_not_allowed")
        plan = rt.routes.plan(decision.cohort, creq.alias, creq)
        rec.route_id = plan.route.id
        state.before_attempts(rt, plan, creq, rec)
        if creq.stream:
            return await _stream(state, rt, request, plan, creq, rec, traced)
        resp = await _complete(state, rt, plan, creq, rec, traced)
        rec.status = 200
        debug = wants_debug(rt, request)
        headers = response_headers(rec, debug)
        headers["content-type"] = "application/json"
        if debug:
            headers["x-gateway-overhead-ms"] = f"{_overhead_ms(rec):.3f}"
        return web.Response(body=resp.raw, status=200, headers=headers)
    except GatewayError as err:
        return _error_response(rec, err, wants_debug(rt, request))
    except Exception:
        log.exception("internal error on request %s", rec.request_id)
        return _error_response(rec, InternalError("Internal gateway error; see the gateway log for request "
                                                  f"{rec.request_id}."), wants_debug(rt, request))
    finally:
        state.observe(rt, rec)


def _overhead_ms(rec: RequestRecord) -> float:
    return max(0.0, (rec.elapsed() - sum(a.seconds for a in rec.attempts)) * 1000.0)


def _error_response(rec: RequestRecord, err: GatewayError, debug: bool) -> web.Response:
    rec.status = getattr(err, "upstream_status", err.status)
    rec.outcome = "error"
    rec.error_type = err.reason
    headers = {**response_headers(rec, debug), "content-type": "application/json"}
    if err.retry_after is not None:
        headers["retry-after"] = str(max(1, int(err.retry_after + 0.999)))
    return web.Response(body=err.body(), status=rec.status, headers=headers)


def _upstream_headers(rec: RequestRecord, state: AppState) -> dict[str, str]:
    h = {"x-request-id": rec.request_id}
    state.inject_trace(h, rec)
    return h


async def _complete(state: AppState, rt: Runtime, plan: Plan, creq: ClientRequest,
                    rec: RequestRecord, traced: bool) -> UpstreamResponse:
    headers = _upstream_headers(rec, state)
    gates = state.gates

    async def attempt(client: UpstreamClient, a: Attempt) -> UpstreamResponse:
        if traced and len(rec.attempts) > 1:
            state.tracing.next_attempt(rec, headers)
        body = {**creq.body, "model": client.spec.model}
        resp = await client.complete(creq.path, body, headers)
        _take_usage(rec, resp.data)
        if gates is not None:
            gates.check(rt, plan, creq, rec, client, resp)
        return resp

    resp: UpstreamResponse = await run_attempts(rt, plan, rec, attempt, state.circuit_allows)
    rec.arm = _arm(plan, rec.served_by)
    if rec.mirrored or (traced and rt.policy.telemetry.record_content):
        choices = resp.data.get("choices")
        first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
        rec.output = first.get("message") or {"role": "assistant", "content": first.get("text")}
    return resp


def _take_usage(rec: RequestRecord, data: dict[str, Any]) -> None:
    usage = data.get("usage")
    if isinstance(usage, dict):
        rec.input_tokens = usage.get("prompt_tokens")
        rec.output_tokens = usage.get("completion_tokens")
    rec.response_model = str(data.get("model") or "")
    choices = data.get("choices")
    if isinstance(choices, list):
        rec.finish_reasons = [str(c["finish_reason"]) for c in choices
                              if isinstance(c, dict) and c.get("finish_reason")]


def _arm(plan: Plan, served_by: str) -> str:
    if served_by == plan.chosen.upstream:  # the common case
        return plan.chosen.arm or "primary"
    for t in plan.route.targets:
        if t.upstream == served_by:
            return t.arm or ("primary" if t is plan.chosen else "target")
    return "fallback"


async def _stream(state: AppState, rt: Runtime, request: web.Request, plan: Plan, creq: ClientRequest,
                  rec: RequestRecord, traced: bool) -> web.StreamResponse:
    headers = _upstream_headers(rec, state)
    body, injected = with_usage(creq.body)

    async def attempt(client: UpstreamClient, a: Attempt) -> tuple[Any, Any, bytes]:
        if traced and len(rec.attempts) > 1:
            state.tracing.next_attempt(rec, headers)
        return await open_first(client, creq.path, {**body, "model": client.spec.model}, headers)

    stream, it, first = await run_attempts(rt, plan, rec, attempt, state.circuit_allows)
    rec.arm = _arm(plan, rec.served_by)
    rec.status = 200
    response = web.StreamResponse(status=200, headers=stream_headers(response_headers(rec, wants_debug(rt, request))))
    await response.prepare(request)
    client = rt.upstreams[rec.served_by]
    gated = state.gates is not None and bool(gates_for(plan.route, creq))
    keep = rec.mirrored or (traced and rt.policy.telemetry.record_content)
    relay_state = Relay(rec, injected, collect=gated or keep)
    t0 = time.perf_counter()
    await relay(response, stream, it, first, relay_state, rec, client)
    rec.attempts[-1].seconds += time.perf_counter() - t0
    if relay_state.collect and rec.outcome == "ok":
        message = relay_state.message()
        if gated:
            state.gates.after_stream(plan.route, creq, rec, message)  # recorded only: no retroactive fallback
        if keep:
            rec.output = message
    return response
