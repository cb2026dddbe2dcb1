"""`cohortgate policy explain`: what the gateway would do with a sample request, and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth import ANONYMOUS, Authenticator
from gateway.classify import Classifier, SemanticLike
from gateway.errors import GatewayError
from gateway.policy.schema import Policy
from gateway.request import OPERATIONS, ClientRequest
from gateway.routing import RouteTable


@dataclass
class Explanation:
    cohort: str
    reason: str
    confidence: float | None
    route: str
    chosen: str
    arm: str | None
    weights: dict[str, float]
    sticky_key: str | None
    fallback: list[str]
    mirror: dict[str, Any] | None
    caller: str

    def lines(self) -> list[str]:
        out = [
            f"caller:    {self.caller}",
            f"cohort:    {self.cohort}",
            f"  why:     {self.reason}"
            + (f" (confidence {self.confidence:.3f})" if self.confidence is not None else ""),
            f"route:     {self.route}",
            "targets:   " + ", ".join(f"{k} (weight {v:g})" for k, v in self.weights.items()),
            f"chosen:    {self.chosen}" + (f" [arm {self.arm}]" if self.arm else "")
            + (f" (sticky key {self.sticky_key!r})" if self.sticky_key is not None else " (weighted random)"),
            f"fallback:  {' -> '.join(self.fallback) if self.fallback else '(none)'}",
        ]
        if self.mirror:
            out.append(f"mirror:    {self.mirror['percent']:g}% to {', '.join(self.mirror['targets'])}")
        return out


def explain(policy: Policy, sample: dict[str, Any], semantic: SemanticLike | None = None) -> Explanation:
    """`sample` is either a request body, or {"body": ..., "headers": {...}, "path": ..., "api_key": ...}."""
    if "body" in sample and isinstance(sample["body"], dict):
        body, headers = sample["body"], sample.get("headers") or {}
        path = sample.get("path", "/v1/chat/completions")
        key = sample.get("api_key")
    else:
        body, headers, path, key = sample, {}, "/v1/chat/completions", None
    h = CIMultiDict({str(k): str(v) for k, v in headers.items()})
    if key:
        h["authorization"] = f"Bearer {key}"
    auth = Authenticator(policy.auth)
    caller = ANONYMOUS
    if not auth.open and "authorization" in h:
        caller = auth.authenticate(CIMultiDictProxy(h))
    op = OPERATIONS.get(path)
    if op is None:
        raise GatewayError(f"unknown path {path}; use one of {', '.join(OPERATIONS)}")
    alias = body.get("model")
    aliases = {m.name for m in policy.models}
    if alias not in aliases:
        raise GatewayError(f"model {alias!r} is not an alias in this policy ({', '.join(sorted(aliases))})")
    creq = ClientRequest(path=path[3:], operation=op, body=body, headers=CIMultiDictProxy(h), key_name=caller.name,
                         alias=str(alias), stream=bool(body.get("stream")))
    decision = Classifier(policy, semantic).classify(creq, detailed=True)
    plan = RouteTable(policy).plan(decision.cohort, creq.alias, creq)
    return Explanation(
        cohort=decision.cohort, reason=decision.reason, confidence=decision.confidence, route=plan.route.id,
        chosen=plan.chosen.upstream, arm=plan.chosen.arm,
        weights={t.upstream: t.weight for t in plan.route.targets}, sticky_key=plan.sticky_key,
        fallback=list(plan.chain[1:]),
        mirror=plan.route.mirror.model_dump() if plan.route.mirror else None, caller=caller.name,
    )
