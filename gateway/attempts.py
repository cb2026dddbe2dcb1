"""Walk a plan's fallback chain: the one place where fallback decisions are made.

Order: the chain's targets in policy order, skipping those ejected by health tracking; an
upstream whose circuit is open for this cohort is skipped when its turn comes (checked lazily,
so a half-open circuit's probe slots are only spent on requests that really try it). Within the
route's attempt budget: a fallback-eligible failure moves on, a 429 with a short Retry-After is
retried on the same target once, a client error (upstream 4xx) stops at once. Every attempt is
recorded on the RequestRecord.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gateway.errors import GatewayError, NoHealthyTarget, UpstreamFailure, UpstreamRateLimited, upstream_status
from gateway.policy.schema import Route
from gateway.request import Attempt, RequestRecord
from gateway.routing import Plan
from gateway.runtime import Runtime
from gateway.upstream.base import UpstreamClient

T = TypeVar("T")
CircuitCheck = Callable[[Route, str, str], bool]  # (route, cohort, upstream) -> allowed


def healthy_chain(rt: Runtime, plan: Plan) -> list[UpstreamClient]:
    chain = rt.chains.get(plan.chain)
    if chain is None:
        chain = rt.chains[plan.chain] = tuple(rt.upstreams[n] for n in plan.chain)
    now = time.monotonic()
    return [c for c in chain if c.health.healthy(now)]


async def run_attempts(rt: Runtime, plan: Plan, rec: RequestRecord,
                       attempt: Callable[[UpstreamClient, Attempt], Awaitable[T]],
                       circuit_allows: CircuitCheck | None = None) -> T:
    """Call `attempt(client, record)` along the chain until one returns. Raises the last error."""
    clients = healthy_chain(rt, plan)
    if plan.route.circuit is None:
        circuit_allows = None  # no breaker on this route: skip the per-attempt check
    budget = plan.route.retry.max_attempts
    retry_after_max = plan.route.retry.retry_after_max_s
    last: GatewayError | None = None
    i = 0
    retried_same = False
    while i < len(clients) and budget > 0:
        client = clients[i]
        if not retried_same and circuit_allows is not None and not circuit_allows(plan.route, rec.cohort, client.name):
            rec.fallback_reason = rec.fallback_reason or "circuit_open"
            i += 1
            continue
        budget -= 1
        a = Attempt(client.name, client.spec.model, client=client, t0=time.perf_counter_ns())
        rec.attempts.append(a)
        try:
            result = await attempt(client, a)
        except UpstreamFailure as exc:
            a.seconds = (time.perf_counter_ns() - a.t0) / 1e9
            a.outcome = exc.reason
            a.status = exc.status
            a.upstream_status = upstream_status(exc)
            last = exc
            if isinstance(exc, UpstreamRateLimited):
                ra = exc.retry_after
                if ra is not None and ra <= retry_after_max and not retried_same and budget > 0:
                    retried_same = True
                    a.reason = "rate_limited_retry"
                    await asyncio.sleep(ra)
                    continue  # same target once more
            elif exc.reason != "eval_failed":
                client.health.failure()
            a.reason = exc.reason
            rec.fallback_reason = exc.reason
            retried_same = False
            i += 1
            continue
        except GatewayError as exc:
            a.seconds = (time.perf_counter_ns() - a.t0) / 1e9
            a.outcome = exc.reason
            a.status = exc.status
            a.upstream_status = upstream_status(exc)
            raise
        a.seconds = (time.perf_counter_ns() - a.t0) / 1e9
        a.outcome = "ok"
        a.status = 200
        client.health.success()
        rec.served_by = client.name
        rec.served_model = client.spec.model
        return result
    if last is not None:
        raise last
    raise NoHealthyTarget(
        f"No healthy upstream for route '{plan.route.id}' (chain {', '.join(plan.chain)}): every target is down "
        "or its circuit for this cohort is open; retry later.")
