"""Span attributes from a RequestRecord: the GenAI / OpenInference / cohortgate names.

Builders run when a span is encoded (tracing_export.py), off the request's own code path. Each
sets `span.fixed` (attributes shared by many requests: operation, models, cohort, route,
outcome..., encoded once per distinct combination) and `span.attrs` (per-request values: ids,
token counts, timings, parameters). The full list of names is in docs/observability.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.request import RequestRecord
from gateway.tracing_export import STATUS_ERROR, SpanData

if TYPE_CHECKING:
    from gateway.tracing import _AttemptSpan, _Req

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


def request_params(a: dict[str, Any], params: dict[str, Any]) -> None:
    for k, v in params.items():
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


class RootBuild:
    """Fills the request span from its RequestRecord, in the export thread. Attributes that
    repeat across requests (cohort, route, models, outcome...) form the `fixed` block, encoded
    once per distinct combination; the per-request ones (ids, tokens, timings) go to `attrs`."""

    __slots__ = ("rec", "req")

    def __init__(self, rec: RequestRecord, req: _Req) -> None:
        self.rec, self.req = rec, req

    def __call__(self, s: SpanData) -> None:
        rec = self.rec
        s.name = f"{rec.operation} {rec.alias}" if rec.alias else rec.operation
        # Request parameters and the classification reason usually repeat too (one client app, one
        # rule): they are part of the key (a list value, e.g. `stop`, as a tuple to be hashable).
        params = rec.request_params
        pkey = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items()) if params else ()
        s.fixed = (("root", rec.operation, rec.stream, rec.outcome, len(rec.attempts), rec.mirrored, rec.status,
                    rec.alias, self.req.client, rec.response_model, rec.served_model, rec.error_type, rec.cohort,
                    rec.cohort_reason, rec.route_id, rec.served_by, rec.arm, rec.fallback_reason, rec.key_name,
                    tuple(rec.finish_reasons), pkey), self.fixed)
        a = s.attrs = {"cohortgate.request_id": rec.request_id}
        tin, tout = rec.input_tokens, rec.output_tokens
        if type(tin) is int and type(tout) is int:
            s.tokens = (tin, tout)  # the usual case: one cached block for the five token attributes
        else:
            usage(a, rec)
        if rec.ttft_s is not None:
            a["gen_ai.response.time_to_first_chunk"] = rec.ttft_s
        if rec.cohort_confidence is not None:
            a["cohortgate.cohort.confidence"] = float(rec.cohort_confidence)
        if rec.error_type is not None:
            s.status = (STATUS_ERROR, rec.error_type)
        if self.req.content:
            a.update(self.req.content)
        if rec.evals:
            s.events = [("gen_ai.evaluation.result", s.end, {
                "gen_ai.evaluation.name": name, "gen_ai.evaluation.score.value": float(score),
                "gen_ai.evaluation.score.label": "pass" if passed else "fail", "cohortgate.upstream": upstream})
                for name, score, passed, upstream in rec.evals]

    def fixed(self) -> dict[str, Any]:
        rec, client = self.rec, self.req.client
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


def upstream_status(exc: BaseException) -> int | None:
    """The HTTP status the upstream answered, when it answered (not a timeout or reset)."""
    status = getattr(exc, "upstream_status", None)
    if isinstance(status, int):
        return status
    code = getattr(exc, "code", None)  # UpstreamUnavailable carries "upstream_<status>"
    if isinstance(code, str) and code.startswith("upstream_") and code[9:].isdigit():
        return int(code[9:])
    return None


class AttemptBuild:
    __slots__ = ("att", "outcome", "status")

    def __init__(self, att: _AttemptSpan, outcome: str, status: int | None) -> None:
        self.att, self.outcome, self.status = att, outcome, status

    def __call__(self, s: SpanData) -> None:
        rec, c = self.att.rec, self.att.client
        served = self.outcome == "ok" and rec.served_by == c.name
        s.fixed = (("attempt", rec.operation, c, self.att.n, self.outcome, self.status,
                    rec.response_model if served else None), self.fixed)
        if self.outcome != "ok":
            s.status = (STATUS_ERROR, self.outcome)

    def fixed(self) -> dict[str, Any]:
        att, rec, c = self.att, self.att.rec, self.att.client
        a: dict[str, Any] = {
            "gen_ai.operation.name": rec.operation,
            "gen_ai.provider.name": c.spec.provider,
            "gen_ai.request.model": c.spec.model,
            "cohortgate.attempt": att.n,
            "cohortgate.attempt.outcome": self.outcome,
            "cohortgate.target": c.name,
            **server_attrs(c),
        }
        if self.outcome == "ok":
            if rec.served_by == c.name and rec.response_model:
                a["gen_ai.response.model"] = rec.response_model
        else:
            a["error.type"] = self.outcome
        if self.status is not None:
            a["http.response.status_code"] = self.status
        return a
