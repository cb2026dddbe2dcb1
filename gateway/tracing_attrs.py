"""Span attributes from a RequestRecord: the GenAI / OpenInference / cohortgate names.

`encode_request` runs when a request's spans are encoded (in a deferred callback on the event
loop, see tracing_batch.py), off the request's own code path. Attributes shared by many requests
(operation, models, cohort, route, outcome...) are encoded once per distinct combination; per
request only ids, times, the request id and token counts are. The full list of names is in
docs/observability.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.request import Attempt, RequestRecord
from gateway.tracing_export import CLIENT, SERVER, STATUS_ERROR, Encoder, compiled, lenb, pack_times, span_id

if TYPE_CHECKING:
    from gateway.tracing import _PyReq as _Req

# request body field -> span attribute
PARAM_ATTRS = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
}


def server_attrs(client: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    addr = getattr(client, "address", None)
    if addr:
        out["server.address"] = addr
    port = getattr(client, "port", None)
    if port:
        out["server.port"] = int(port)
    return out


def request_params(a: dict[str, Any], params: tuple[tuple[str, Any], ...]) -> None:
    for k, v in params:
        attr = PARAM_ATTRS.get(k)
        if attr is not None and isinstance(v, int | float) and not isinstance(v, bool):
            a[attr] = v
        elif k == "stop" and v:
            a["gen_ai.request.stop_sequences"] = [v] if isinstance(v, str) else [str(s) for s in v]
        elif k == "n" and isinstance(v, int) and v != 1:
            a["gen_ai.request.choice.count"] = v


def usage(a: dict[str, Any], rec: RequestRecord) -> None:
    tin, tout = rec.input_tokens, rec.output_tokens
    if isinstance(tin, int):
        a["gen_ai.usage.input_tokens"] = a["llm.token_count.prompt"] = tin
    if isinstance(tout, int):
        a["gen_ai.usage.output_tokens"] = a["llm.token_count.completion"] = tout
    if isinstance(tin, int) and isinstance(tout, int):
        a["llm.token_count.total"] = tin + tout


_UNHASHABLE = object()  # tags a repr in a cache key: no JSON value can equal it


def _hashable(params: tuple[tuple[str, Any], ...]) -> tuple[Any, ...]:
    """Request parameters as a cache key: lists as tuples; what still does not hash (a client's
    nested lists or objects) as its tagged repr."""
    out = []
    for k, v in params:
        key = tuple(v) if isinstance(v, list) else v
        try:
            hash(key)
        except TypeError:
            key = (_UNHASHABLE, repr(v))
        out.append((k, key))
    return tuple(out)


def encode_request(req: _Req, rec: RequestRecord, enc: Encoder) -> tuple[bytes, int]:
    """The request's SERVER span and one CLIENT span per upstream attempt, framed for the export
    request. What repeats across requests (name, operation, models, cohort, route, outcome,
    request parameters...) is a cached block per distinct combination; per request only the ids,
    times, request id and token counts are encoded, and everything is joined once.
    The reference for the compiled TraceState.encode (gateway/_spanenc_c/), which writes the same
    bytes."""
    tid, sid = req.trace_id, req.span_id
    blocks = enc.blocks
    out: list[bytes] = []
    attempts = rec.attempts
    last = len(attempts)
    if last:
        ids = req.attempt_ids
        for n, att in enumerate(attempts, 1):
            outcome, start, end = att.outcome, req.start, req.end
            if att.t0:  # on the request's clock: its start (wall time) plus the monotonic offset
                start += att.t0 - req.t0
            if outcome == "ok" and rec.stream and n == last:
                outcome = _stream_outcome(rec)  # the relayed stream's attempt: it ends with the request
            elif outcome == "pending":  # left by an exception no fallback handles (cancelled, internal)
                outcome = rec.error_type or rec.outcome  # ...and ended with the request
            elif att.t0:
                end = min(end, start + int(att.seconds * 1e9))
            served = outcome == "ok" and rec.served_by == att.upstream
            key = ("attempt", rec.operation, att.client, att.upstream, att.model, n, outcome, att.upstream_status,
                   rec.response_model if served else None)
            blk = blocks.get(key)
            if blk is None:
                blk = _attempt_block(enc, key, rec, att, n, outcome, served)
            if n > len(ids):  # an attempt the proxy did not announce (tools, tests): an id of its own
                ids.append(span_id())
            # ScopeSpans.spans(2) { trace_id, span_id, parent_span_id: 38 bytes; block; times: 18 }
            out += (b"\x12", lenb(56 + len(blk)), b"\x0a\x10", tid, b"\x12\x08", ids[n - 1], b"\x22\x08", sid,
                    blk, pack_times(0x39, start, 0x41, end))
    params = rec.request_params
    # request parameters and the classification reason usually repeat too (one client app, one rule)
    rkey = ("root", rec.operation, rec.alias, rec.stream, rec.outcome, last, rec.mirrored, rec.status,
            attempts[-1].client if attempts else None, rec.response_model, rec.served_model, rec.error_type,
            rec.cohort, rec.cohort_reason, rec.route_id, rec.served_by, rec.arm, rec.fallback_reason, rec.key_name,
            tuple(rec.finish_reasons), params)
    try:
        blk = blocks.get(rkey)
    except TypeError:  # a list-valued parameter (`stop`): hashable as a tuple
        rkey = rkey[:-1] + (_hashable(params),)
        blk = blocks.get(rkey)
    if blk is None:
        blk = _root_block(enc, rkey, rec, req)
    rid = enc.str_attr("cohortgate.request_id", rec.request_id)
    tin, tout = rec.input_tokens, rec.output_tokens
    if (type(tin) is int and type(tout) is int and req.parent_id is None and rec.ttft_s is None
            and rec.cohort_confidence is None and not req.content and not rec.evals):
        # the usual request span, framed with its length known: ids and tags 28 bytes, times 18
        tok = enc.tokens(tin, tout)  # one cached block for the five token attributes
        out += (b"\x12", lenb(46 + len(blk) + len(rid) + len(tok)), b"\x0a\x10", tid, b"\x12\x08", sid, blk,
                pack_times(0x39, req.start, 0x41, req.end), rid, tok)
        return b"".join(out), last + 1
    b = [b"\x0a\x10", tid, b"\x12\x08", sid, blk, pack_times(0x39, req.start, 0x41, req.end), rid]
    if req.parent_id is not None:
        b += (b"\x22\x08", req.parent_id)
    a: dict[str, Any] = {}
    if type(tin) is int and type(tout) is int:
        b.append(enc.tokens(tin, tout))
    else:
        usage(a, rec)
    _root_extras(enc, b, rec, req, a)
    out += (b"\x12", lenb(sum(map(len, b))))
    out += b
    return b"".join(out), last + 1


def _root_extras(enc: Encoder, b: list[bytes], rec: RequestRecord, req: _Req, a: dict[str, Any]) -> None:
    """The request span's less common per-request attributes and its evaluation events."""
    if rec.ttft_s is not None:
        a["gen_ai.response.time_to_first_chunk"] = rec.ttft_s
    if rec.cohort_confidence is not None:
        a["cohortgate.cohort.confidence"] = float(rec.cohort_confidence)
    if req.content:
        a.update(req.content)
    if a:
        b.append(enc.attrs(a))
    if rec.evals:
        b.append(enc.events([("gen_ai.evaluation.result", req.end, {
            "gen_ai.evaluation.name": name, "gen_ai.evaluation.score.value": float(score),
            "gen_ai.evaluation.score.label": "pass" if passed else "fail", "cohortgate.upstream": upstream})
            for name, score, passed, upstream in rec.evals]))


def _root_block(enc: Encoder, key: Any, rec: RequestRecord, req: _Req) -> bytes:
    name = f"{rec.operation} {rec.alias}" if rec.alias else rec.operation
    status = (STATUS_ERROR, rec.error_type) if rec.error_type is not None else (0, "")
    client = rec.attempts[-1].client if rec.attempts else None
    return enc.put_block(key, name, SERVER, root_fixed(rec, client), status)


def _attempt_block(enc: Encoder, key: Any, rec: RequestRecord, att: Attempt, n: int, outcome: str,
                   served: bool) -> bytes:
    c = att.client
    a: dict[str, Any] = {
        "gen_ai.operation.name": rec.operation,
        "gen_ai.request.model": att.model,
        "cohortgate.attempt": n,
        "cohortgate.attempt.outcome": outcome,
        "cohortgate.target": att.upstream,
    }
    if c is not None:
        a["gen_ai.provider.name"] = c.spec.provider
        a.update(server_attrs(c))
    if outcome != "ok":
        a["error.type"] = outcome
    elif served and rec.response_model:
        a["gen_ai.response.model"] = rec.response_model
    if att.upstream_status is not None:
        a["http.response.status_code"] = att.upstream_status
    return enc.put_block(key, f"{rec.operation} {att.model}", CLIENT, a,
                         (STATUS_ERROR, outcome) if outcome != "ok" else (0, ""))


def _stream_outcome(rec: RequestRecord) -> str:
    """The relayed stream's attempt: ok, unless the stream failed after its first event."""
    if rec.outcome in ("ok", "client_closed"):
        return "ok"
    return rec.error_type or rec.outcome


def root_fixed(rec: RequestRecord, client: Any) -> dict[str, Any]:
    """The request span's attributes that repeat across requests."""
    a: dict[str, Any] = {
        "gen_ai.operation.name": rec.operation,
        "gen_ai.request.stream": rec.stream,
        "openinference.span.kind": "LLM",
        "cohortgate.outcome": rec.outcome,
        "cohortgate.attempts": len(rec.attempts),
        "cohortgate.mirror": rec.mirrored,
        "http.response.status_code": rec.status,
    }
    if rec.alias:
        a["gen_ai.request.model"] = rec.alias
    if client is not None:
        a["gen_ai.provider.name"] = client.spec.provider
        a.update(server_attrs(client))
    model = rec.response_model or rec.served_model
    if model:
        a["gen_ai.response.model"] = a["llm.model_name"] = model
    if rec.finish_reasons:
        a["gen_ai.response.finish_reasons"] = [str(r) for r in rec.finish_reasons]
    if rec.error_type is not None:
        a["error.type"] = rec.error_type
    if rec.request_params:
        request_params(a, rec.request_params)
    if rec.cohort:
        a["cohortgate.cohort"] = rec.cohort
        a["cohortgate.cohort.reason"] = rec.cohort_reason
    if rec.route_id:
        a["cohortgate.route"] = rec.route_id
    if rec.served_by:
        a["cohortgate.target"] = rec.served_by
        a["cohortgate.target.model"] = rec.served_model
        a["cohortgate.canary_arm"] = rec.arm or "-"
    if rec.fallback_reason:
        a["cohortgate.fallback.reason"] = rec.fallback_reason
    if rec.key_name:
        a["cohortgate.caller"] = rec.key_name
    return a


# The compiled trace state (gateway/_spanenc_c/) encodes the usual request shapes itself, with the
# same bytes, and hands the others to encode_request; it shares the encoder's block cache and fills
# it with the builders above.
if compiled is not None:
    compiled.configure(_attempt_block, _root_block, _hashable, encode_request)
