"""Per-cohort circuit breaking on rolling error and eval-fail rates.

For every route with a `circuit` block, each (cohort, upstream) pair keeps a rolling window of
outcomes in fixed time buckets (O(1) per request, bounded memory). When the window holds at
least `min_requests` and the error rate or the eval-fail rate passes its threshold, the circuit
opens: that cohort skips the upstream and goes straight down its fallback chain. After `open_s`
it turns half-open and lets `half_open_probes` requests through; if they all succeed it closes,
one failure re-opens it. Other cohorts on the same upstream are not affected.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.policy.schema import Circuit, Route
from gateway.request import RequestRecord

log = logging.getLogger("cohortgate.circuits")
BUCKETS = 10


@dataclass
class Breaker:
    cfg: Circuit
    state: str = "closed"  # closed | open | half_open
    opened_at: float = 0.0
    probes_left: int = 0
    probe_failures: int = 0
    # ring of [bucket_start, total, errors, eval_fails]
    ring: list[list[float]] = field(default_factory=lambda: [[0.0, 0, 0, 0] for _ in range(BUCKETS)])

    def _bucket(self, now: float) -> list[float]:
        width = self.cfg.window_s / BUCKETS
        start = now - (now % width)
        b = self.ring[int(now / width) % BUCKETS]
        if b[0] != start:
            b[0], b[1], b[2], b[3] = start, 0, 0, 0
        return b

    def totals(self, now: float) -> tuple[float, float, float]:
        horizon = now - self.cfg.window_s
        t = e = f = 0.0
        for b in self.ring:
            if b[0] > horizon:
                t, e, f = t + b[1], e + b[2], f + b[3]
        return t, e, f

    def allows(self, now: float) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open":
            if now - self.opened_at < self.cfg.open_s:
                return False
            self.state = "half_open"
            self.probes_left = self.cfg.half_open_probes
            self.probe_failures = 0
        if self.probes_left > 0:
            self.probes_left -= 1
            return True
        return False  # half-open with every probe in flight: keep the rest on the fallback

    def record(self, now: float, error: bool, eval_failed: bool) -> str | None:
        """Returns the new state when it changed."""
        if self.state == "half_open":
            if error or eval_failed:
                self.state, self.opened_at = "open", now
                return "open"
            if self.probes_left == 0:
                self.state = "closed"
                self.ring = [[0.0, 0, 0, 0] for _ in range(BUCKETS)]
                return "closed"
            return None
        b = self._bucket(now)
        b[1] += 1
        b[2] += error
        b[3] += eval_failed
        if self.state == "closed":
            t, e, f = self.totals(now)
            if t >= self.cfg.min_requests and (e / t > self.cfg.max_error_rate or f / t > self.cfg.max_eval_fail_rate):
                self.state, self.opened_at = "open", now
                return "open"
        return None


class Circuits:
    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics
        self.breakers: dict[tuple[str, str, str], Breaker] = {}

    def _get(self, route: Route, cohort: str, upstream: str) -> Breaker | None:
        if route.circuit is None:
            return None
        key = (route.id, cohort, upstream)
        br = self.breakers.get(key)
        if br is None or br.cfg != route.circuit:
            br = self.breakers[key] = Breaker(route.circuit)
        return br

    def allows(self, route: Route, cohort: str, upstream: str) -> bool:
        br = self._get(route, cohort, upstream)
        if br is None:
            return True
        before = br.state
        ok = br.allows(time.monotonic())
        if br.state != before:
            self._publish(cohort, upstream, br.state)
        return ok

    def record(self, route: Route | None, rec: RequestRecord) -> None:
        if route is None or route.circuit is None:
            return
        now = time.monotonic()
        failed_evals = {up for name, _s, passed, up in rec.evals if not passed}
        for a in rec.attempts:
            br = self._get(route, rec.cohort, a.upstream)
            if br is None:
                continue
            error = a.outcome not in ("ok", "eval_failed", "rate_limited")
            eval_failed = a.outcome == "eval_failed" or (a.outcome == "ok" and a.upstream in failed_evals)
            if a.upstream == rec.served_by and rec.outcome == "stream_error":
                error = True
            changed = br.record(now, error, eval_failed)
            if changed:
                log.warning("circuit for cohort %s -> upstream %s is now %s", rec.cohort, a.upstream, changed)
                self._publish(rec.cohort, a.upstream, changed)

    def _publish(self, cohort: str, upstream: str, state: str) -> None:
        self.metrics.circuit.set((cohort, upstream), {"closed": 0.0, "half_open": 0.5, "open": 1.0}[state])

    def snapshot(self) -> dict[str, str]:
        return {f"{c}/{u}": b.state for (_r, c, u), b in self.breakers.items()}
