"""Prometheus metrics (prefix `cohortgate_`), bounded labels only.

Label values come from the policy (cohort, route, upstream names) or closed sets (outcome,
reason, evaluator, signal); request ids and free text never become labels. With several worker
processes, PROMETHEUS_MULTIPROC_DIR is set by `cohortgate serve` before this module is imported
and /metrics aggregates every worker's files.

Recording is a few dict lookups per request: label children are cached per label tuple.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from gateway.request import RequestRecord

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)
MULTIPROC = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True) if not MULTIPROC else None
        r: Any = self.registry if self.registry is not None else None
        kw: dict[str, Any] = {"registry": r} if r is not None else {}
        base = ["cohort", "route", "model"]
        self.requests = Counter("cohortgate_requests", "Client requests by outcome.", base + ["outcome"], **kw)
        self.duration = Histogram("cohortgate_request_duration_seconds", "Client request latency (to last byte).",
                                  base + ["outcome"], buckets=LATENCY_BUCKETS, **kw)
        self.ttft = Histogram("cohortgate_time_to_first_token_seconds", "Streamed requests: time to first event.",
                              base, buckets=LATENCY_BUCKETS, **kw)
        self.overhead = Histogram("cohortgate_overhead_seconds", "Time spent in the gateway itself (non-streamed).",
                                  ["route"], buckets=OVERHEAD_BUCKETS, **kw)
        self.tokens = Counter("cohortgate_tokens", "Tokens from upstream usage.", base + ["type"], **kw)
        self.tokens_per_request = Histogram("cohortgate_request_tokens", "Tokens per request (input+output).",
                                            base, buckets=TOKEN_BUCKETS, **kw)
        self.errors = Counter("cohortgate_errors", "Requests answered with an error, by error type.",
                              ["cohort", "route", "error_type"], **kw)
        self.fallbacks = Counter("cohortgate_fallbacks", "Moves to the next target, by reason.",
                                 ["cohort", "route", "from_model", "reason"], **kw)
        self.attempts = Counter("cohortgate_upstream_attempts", "Upstream attempts by outcome.",
                                ["upstream", "outcome"], **kw)
        self.evals = Counter("cohortgate_evals", "Inline evaluator results.",
                             ["evaluator", "cohort", "model", "result"], **kw)
        self.mirror = Counter("cohortgate_mirror", "Mirrored (shadow) requests by result.",
                              ["cohort", "target", "result"], **kw)
        self.feedback = Counter("cohortgate_feedback", "Feedback signals.", ["signal", "cohort", "model"], **kw)
        self.reloads = Counter("cohortgate_policy_reloads", "Policy reloads by result.", ["result"], **kw)
        gauge_kw = dict(kw)
        if MULTIPROC:
            gauge_kw["multiprocess_mode"] = "max"
        self.upstream_up = Gauge("cohortgate_upstream_healthy", "1 when the upstream takes traffic.",
                                 ["upstream"], **gauge_kw)
        self.circuit = Gauge("cohortgate_circuit_open", "1 when the cohort's circuit to the upstream is open "
                             "(0.5 half-open).", ["cohort", "upstream"], **gauge_kw)
        self._cache: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._cache.get(key)
        if child is None:
            child = metric.labels(*labels)
            self._cache[key] = child
        return child

    def record(self, rec: RequestRecord) -> None:
        model = rec.served_by or "none"
        cohort = rec.cohort or "unclassified"
        route = rec.route_id or "none"
        outcome = rec.outcome
        elapsed = rec.elapsed()
        self._child(self.requests, cohort, route, model, outcome).inc()
        self._child(self.duration, cohort, route, model, outcome).observe(elapsed)
        if rec.ttft_s is not None:
            self._child(self.ttft, cohort, route, model).observe(rec.ttft_s)
        if not rec.stream and rec.attempts:
            up = sum(a.seconds for a in rec.attempts)
            self._child(self.overhead, route).observe(max(0.0, elapsed - up))
        if rec.input_tokens is not None:
            self._child(self.tokens, cohort, route, model, "input").inc(rec.input_tokens)
        if rec.output_tokens is not None:
            self._child(self.tokens, cohort, route, model, "output").inc(rec.output_tokens)
        if rec.input_tokens is not None or rec.output_tokens is not None:
            self._child(self.tokens_per_request, cohort, route, model).observe(
                (rec.input_tokens or 0) + (rec.output_tokens or 0))
        if rec.error_type is not None:
            self._child(self.errors, cohort, route, rec.error_type).inc()
        for a in rec.attempts:
            self._child(self.attempts, a.upstream, a.outcome).inc()
            if a.reason and a.reason != "rate_limited_retry":
                self._child(self.fallbacks, cohort, route, a.upstream, a.reason).inc()
        for name, _score, passed, upstream in rec.evals:
            self._child(self.evals, name, cohort, upstream, "pass" if passed else "fail").inc()

    def exposition(self) -> tuple[bytes, str]:
        if MULTIPROC:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        assert self.registry is not None
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
