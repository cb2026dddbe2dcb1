"""Walk a plan's fallback chain: the one place where fallback decisions are made.

`candidates()` orders the chain (healthy targets first, in policy order; targets that are
ejected or whose cohort circuit is open are skipped while any healthy one remains).
`run_attempts()` tries them within the route's attempt budget: a fallback-eligible failure
moves on, a 429 with a short Retry-After is retried on the same target once, a client error
(upstream 4xx) stops at once. Every attempt is recorded on the RequestRecord.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gateway.errors import GatewayError, NoHealthyTarget, UpstreamFailure, UpstreamRateLimited
from gateway.request import Attempt, RequestRecord
from gateway.routing import Plan
from gateway.runtime import Runtime
from gateway.upstream.base import UpstreamClient

T = TypeVar("T")
CircuitCheck = Callable[[str, str], bool]  # (cohort, upstream) -> allowed


def candidates(rt: Runtime, plan: Plan, cohort: str, circuit_allows: CircuitCheck | None) -> list[UpstreamClient]:
    now = time.monotonic()
    healthy: list[UpstreamClient] = []
    for name in plan.chain:
        client = rt.upstreams[name]
        if client.health.healthy(now) and (circuit_allows is None or circuit_allows(cohort, name)):
            healthy.append(client)
    if not healthy:
        raise NoHealthyTarget(
            f"No healthy upstream for route '{plan.route.id}' (tried {', '.join(plan.chain)}); retry later."
        )
    return healthy


async def run_attempts(rt: Runtime, plan: Plan, rec: RequestRecord,
                       attempt: Callable[[UpstreamClient, Attempt], Awaitable[T]],
                       circuit_allows: CircuitCheck | None = None,
                       on_failure: Callable[[UpstreamClient, GatewayError], None] | None = None) -> T:
    """Call `attempt(client, record)` along the chain until one returns. Raises the last error."""
    clients = candidates(rt, plan, rec.cohort, circuit_allows)
    budget = plan.route.retry.max_attempts
    retry_after_max = plan.route.retry.retry_after_max_s
    last: GatewayError | None = None
    i = 0
    retried_same = False
    while i < len(clients) and budget > 0:
        client = clients[i]
        budget -= 1
        a = Attempt(client.name, client.spec.model)
        rec.attempts.append(a)
        t0 = time.perf_counter()
        try:
            result = await attempt(client, a)
        except UpstreamFailure as exc:
            a.seconds = time.perf_counter() - t0
            a.outcome = exc.reason
            a.status = exc.status
            last = exc
            if on_failure is not None:
                on_failure(client, exc)
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
            a.seconds = time.perf_counter() - t0
            a.outcome = exc.reason
            a.status = exc.status
            raise
        a.seconds = time.perf_counter() - t0
        a.outcome = "ok"
        a.status = 200
        client.health.success()
        rec.served_by = client.name
        rec.served_model = client.spec.model
        return result
    assert last is not None
    raise last
