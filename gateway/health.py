"""Upstream health: passive ejection after consecutive failures, optional active probes.

A target with `failures_to_eject` consecutive fallback-eligible failures is ejected for
`cooldown_s`; after the cool-down it gets traffic again (a failure re-ejects it at once, a
success resets the count). Active probing (`probe_path`) marks a target up or down from a
background task, never from the request path.
"""

from __future__ import annotations

import time

from gateway.policy.schema import HealthCheck


class Health:
    __slots__ = ("cfg", "consecutive_failures", "ejected_until", "probe_ok", "total_failures", "total_ok")

    def __init__(self, cfg: HealthCheck) -> None:
        self.cfg = cfg
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.probe_ok = True
        self.total_failures = 0
        self.total_ok = 0

    def healthy(self, now: float | None = None) -> bool:
        if not self.probe_ok:
            return False
        return (now if now is not None else time.monotonic()) >= self.ejected_until

    def success(self) -> None:
        self.consecutive_failures = 0
        self.total_ok += 1

    def failure(self) -> None:
        self.total_failures += 1
        self.consecutive_failures += 1
        if self.consecutive_failures >= self.cfg.failures_to_eject:
            self.ejected_until = time.monotonic() + self.cfg.cooldown_s
            # half-open after the cool-down: one more failure ejects again
            self.consecutive_failures = self.cfg.failures_to_eject - 1

    def state(self) -> str:
        if not self.probe_ok:
            return "probe_failed"
        return "ejected" if time.monotonic() < self.ejected_until else "up"
