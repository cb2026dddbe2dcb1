"""Inline eval gates: the route's evaluators judge each non-streamed primary answer.

Which gates run: the route's `eval_gates` when the policy lists them (each with its `when`),
else the defaults: JSONValidation when the request asks for JSON (response_format json_object /
json_schema) and ToolSelectionAccuracy when tools are offered. A failing score raises
EvalGateFailed, a fallback-eligible failure, so the caller gets the next target's answer; every
result is recorded on the RequestRecord (metrics, spans, circuit breaking).

Streamed answers cannot be taken back: they are evaluated after the stream from the relayed
events (`evaluate_after_stream`) and recorded, with no fallback.

The evaluators are evals.inline's, the same code the offline runner scores with.
"""

from __future__ import annotations

import logging
from typing import Any

from evals.inline import EvalInputError, applicable, evaluate_inline
from gateway.errors import EvalGateFailed
from gateway.policy.schema import EvalGate, Route
from gateway.request import ClientRequest, RequestRecord
from gateway.upstream.base import UpstreamClient, UpstreamResponse

log = logging.getLogger("cohortgate.gates")


def gates_for(route: Route, creq: ClientRequest) -> list[tuple[str, float]]:
    if creq.operation != "chat":
        return []
    body = creq.body
    if route.eval_gates is None:
        if "tools" not in body and "response_format" not in body:
            return []  # the common case, without building the applicable list
        return [(name, 1.0) for name in applicable(body)]
    kinds = set(applicable(body))
    out: list[tuple[str, float]] = []
    for g in route.eval_gates:
        if _applies(g, kinds):
            out.append((g.evaluator, g.threshold))
    return out


def _applies(g: EvalGate, kinds: set[str]) -> bool:
    if g.evaluator not in kinds:
        return False  # an evaluator that cannot judge this request (no JSON asked, no tools offered)
    if g.when == "json_requested":
        return "JSONValidation" in kinds
    if g.when == "tools_offered":
        return "ToolSelectionAccuracy" in kinds
    return True


def run_gates(gates: list[tuple[str, float]], body: dict[str, Any], data: dict[str, Any], rec: RequestRecord,
              upstream: str) -> tuple[str, float, str] | None:
    """Evaluate; record every result; return the first failure (name, score, reason) or None."""
    failure = None
    for name, threshold in gates:
        try:
            res = evaluate_inline(name, body, data, threshold)
        except EvalInputError as exc:
            log.debug("gate %s could not judge request %s: %s", name, rec.request_id, exc)
            continue
        rec.evals.append((name, res.score, res.passed, upstream))
        if not res.passed and failure is None:
            failure = (name, res.score, res.reason)
    return failure


class Gates:
    def check(self, rt: Any, plan: Any, creq: ClientRequest, rec: RequestRecord, client: UpstreamClient,
              resp: UpstreamResponse) -> None:
        gates = gates_for(plan.route, creq)
        if not gates:
            return
        failure = run_gates(gates, creq.body, resp.data, rec, client.name)
        if failure is not None:
            name, score, reason = failure
            raise EvalGateFailed(f"upstream {client.name}'s answer failed {name} (score {score:.2f}): {reason}",
                                 code=f"eval_gate_failed:{name}")

    def after_stream(self, route: Route, creq: ClientRequest, rec: RequestRecord, message: dict[str, Any]) -> None:
        gates = gates_for(route, creq)
        if gates and rec.served_by:
            data = {"choices": [{"index": 0, "message": message}]}
            run_gates(gates, creq.body, data, rec, rec.served_by)
