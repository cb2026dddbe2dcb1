"""Route selection: (cohort, model alias) -> route -> chosen target + ordered fallback chain.

Weighted choice is a bisect over cumulative weights. With a sticky key, the position in [0, 1)
comes from a stable hash of (route id, key) instead of the RNG, so one user's conversation keeps
landing on the same target, across processes and restarts, as long as the weights are unchanged.
The attempt plan is the chosen target followed by the fallback chain (duplicates removed);
targets ejected by health tracking or an open circuit move to the back rather than disappearing,
so a request is only refused when every target is known to be down.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass

from gateway.policy.schema import Policy, Route, Target
from gateway.request import ClientRequest


@dataclass(slots=True)  # not frozen: a frozen dataclass pays object.__setattr__ per field
class Plan:
    route: Route
    chosen: Target
    chain: tuple[str, ...]  # upstream names: chosen first, then fallbacks
    sticky_key: str | None


class CompiledRoute:
    __slots__ = ("route", "sticky", "_cum", "_total", "_plans")

    def __init__(self, route: Route) -> None:
        self.route = route
        self.sticky = route.sticky
        targets = [t for t in route.targets if t.weight > 0]
        cum = 0.0
        self._cum: list[float] = []
        for t in targets:
            cum += t.weight
            self._cum.append(cum)
        self._total = cum
        fallback = tuple(dict.fromkeys(route.fallback))
        # A plan without a sticky key depends only on its target: one per target, built once and
        # shared by every request (read-only).
        self._plans = [Plan(route, t, (t.upstream,) + tuple(f for f in fallback if f != t.upstream), None)
                       for t in targets]

    def plan(self, sticky_key: str | None) -> Plan:
        plans = self._plans
        if len(plans) == 1:
            p = plans[0]
        else:
            if sticky_key is not None:
                h = hashlib.blake2b(f"{self.route.id}\0{sticky_key}".encode(), digest_size=8).digest()
                x = int.from_bytes(h, "big") / 2**64 * self._total
            else:
                x = random.random() * self._total
            p = plans[min(bisect.bisect_right(self._cum, x), len(plans) - 1)]
        return p if sticky_key is None else Plan(p.route, p.chosen, p.chain, sticky_key)


class RouteTable:
    def __init__(self, policy: Policy) -> None:
        cohorts = [c.name for c in policy.cohorts] + [policy.default_cohort]
        aliases = [m.name for m in policy.models]
        compiled = {r.id: CompiledRoute(r) for r in policy.routes}
        self.by_id = {r.id: r for r in policy.routes}
        self._table: dict[tuple[str, str], CompiledRoute] = {}
        # Specific routes win over catch-alls; among equals, policy order wins.
        def specificity(r: Route) -> int:
            return (0 if "*" in r.cohorts else 2) + (0 if "*" in r.models else 1)

        ordered = sorted(policy.routes, key=lambda r: -specificity(r))
        for c in cohorts:
            for a in aliases:
                for r in ordered:
                    if ("*" in r.cohorts or c in r.cohorts) and ("*" in r.models or a in r.models):
                        self._table[(c, a)] = compiled[r.id]
                        break

    def plan(self, cohort: str, alias: str, req: ClientRequest | None) -> Plan:
        cr = self._table[(cohort, alias)]
        return cr.plan(sticky_key(cr.route, req) if cr.sticky is not None and req is not None else None)


def sticky_key(route: Route, req: ClientRequest) -> str | None:
    if route.sticky is None:
        return None
    src = route.sticky.key
    if src.startswith("header:"):
        return req.headers.get(src[7:])
    if src.startswith("metadata:"):
        md = req.body.get("metadata")
        v = md.get(src[9:]) if isinstance(md, dict) else None
        return str(v) if v is not None else None
    if src == "user":
        u = req.body.get("user")
        return str(u) if u is not None else None
    return req.key_name  # api_key
