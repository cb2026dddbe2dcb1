"""AppState: the one object that holds the gateway's mutable state.

It owns the current Runtime (swapped atomically by reload), metrics, and the optional features
(tracing, mirroring, inline gates, circuits, feedback). The proxy calls its hooks; each hook is
a cheap no-op when its feature is off, so the request path pays only for what the policy uses.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from gateway.metrics import Metrics
from gateway.request import ClientRequest, RequestRecord
from gateway.routing import Plan
from gateway.runtime import Runtime

log = logging.getLogger("cohortgate")


class AppState:
    def __init__(self, runtime: Runtime, policy_path: str | None) -> None:
        self.runtime = runtime
        self.policy_path = policy_path
        self.metrics = Metrics()
        self.features: list[Any] = []  # optional features with start()/close()
        self.tracing: Any = None
        self.mirror: Any = None
        self.gates: Any = None
        self.circuits: Any = None
        self.feedback: Any = None
        self.semantic_factory: Any = None  # policy -> semantic classifier (rebuilt on reload)
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ request hooks
    def begin(self, rec: RequestRecord, headers: Any) -> bool:
        """Start of a client request (before auth): tracing opens the root span here. True when
        the request is traced (sampled): its attempts get spans."""
        if self.tracing is not None:
            try:
                return bool(self.tracing.begin(rec, headers))
            except Exception:  # telemetry must never break serving
                log.exception("tracing begin failed for %s", rec.request_id)
        return False

    def before_attempts(self, rt: Runtime, plan: Plan, creq: ClientRequest, rec: RequestRecord) -> None:
        if self.mirror is not None and plan.route.mirror is not None:
            self.mirror.maybe_mirror(rt, plan, creq, rec)

    def inject_trace(self, headers: dict[str, str], rec: RequestRecord | None = None) -> None:
        """Trace context for a call upstream: of client request `rec`, else of the current shadow call."""
        if self.tracing is not None:
            self.tracing.inject(headers, rec)

    @property
    def circuit_allows(self) -> Any:
        return self.circuits.allows if self.circuits is not None else None

    def observe(self, rt: Runtime, rec: RequestRecord) -> None:
        """Called once per request after its response is complete."""
        try:
            self.metrics.record(rec)
            if self.circuits is not None and rec.route_id:
                route = rt.routes.by_id.get(rec.route_id)
                if route is not None and route.circuit is not None:
                    self.circuits.record(route, rec)
            if self.feedback is not None:
                self.feedback.remember(rec)
            if rec.mirrored and self.mirror is not None:
                self.mirror.primary_done(rec)
            if self.tracing is not None:
                self.tracing.finish(rec)
        except Exception:  # telemetry must never break serving
            log.exception("recording request %s failed", rec.request_id)

    # ------------------------------------------------------------------ lifecycle
    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run a background task and keep a reference until it ends (no fire-and-forget leaks)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        for f in self.features:
            await f.close()
        for c in self.runtime.upstreams.values():
            await c.close()
