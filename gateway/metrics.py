"""Prometheus metrics (prefix `cohortgate_`), bounded labels only.

Label values come from the policy (cohort, route, upstream names) or closed sets (outcome,
reason, evaluator, signal); request ids and free text never become labels.

Why not prometheus_client's metric objects on the hot path: each `inc`/`observe` takes a lock
and several attribute hops, which cost more per request than the rest of the gateway's own
work. In a single process, counters and histograms here are plain dicts and lists updated in
place (the event loop is single-threaded), exposed at scrape time by a custom collector. With
several workers (`PROMETHEUS_MULTIPROC_DIR` set by `cohortgate serve --workers N`), they are
backed by prometheus_client's multiprocess values so /metrics aggregates every worker.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from gateway.request import RequestRecord

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536)


def _multiproc() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Counter:
    kind = "counter"

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name, self.doc, self.labelnames = name, doc, tuple(labels)
        self.values: dict[tuple[str, ...], list[float]] = {}  # one-element lists: cells callers may keep
        self._mp: Any = None
        self._mp_children: dict[tuple[str, ...], Any] = {}
        if _multiproc():
            import prometheus_client

            self._mp = prometheus_client.Counter(name, doc, self.labelnames, registry=None)

    def cell(self, labels: tuple[str, ...]) -> list[float]:
        c = self.values.get(labels)
        if c is None:
            c = self.values[labels] = [0.0]
        return c

    def inc(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        if self._mp is not None:
            child = self._mp_children.get(labels)
            if child is None:
                child = self._mp_children[labels] = self._mp.labels(*labels)
            child.inc(amount)
        c = self.values.get(labels)
        if c is None:
            c = self.values[labels] = [0.0]
        c[0] += amount

    def value(self, labels: tuple[str, ...]) -> float:
        c = self.values.get(labels)
        return c[0] if c is not None else 0.0

    def collect(self) -> Iterator[Any]:
        fam = CounterMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, v in self.values.items():
            fam.add_metric(labels, v[0])
        yield fam


class Gauge(Counter):
    kind = "gauge"

    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self.name, self.doc, self.labelnames = name, doc, tuple(labels)
        self.values = {}
        self._mp = None
        self._mp_children = {}
        if _multiproc():
            import prometheus_client

            self._mp = prometheus_client.Gauge(name, doc, self.labelnames, registry=None,
                                               multiprocess_mode="mostrecent")

    def set(self, labels: tuple[str, ...], value: float) -> None:
        if self._mp is not None:
            self._mp.labels(*labels).set(value)
        self.values[labels] = [value]

    def collect(self) -> Iterator[Any]:
        fam = GaugeMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, v in self.values.items():
            fam.add_metric(labels, v[0])
        yield fam


class Histogram:
    kind = "histogram"

    def __init__(self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]) -> None:
        self.name, self.doc, self.labelnames = name, doc, tuple(labels)
        self.bounds = tuple(float(b) for b in buckets)
        self.series: dict[tuple[str, ...], list[float]] = {}  # bucket counts..., +Inf count, sum
        self._mp: Any = None
        self._mp_children: dict[tuple[str, ...], Any] = {}
        if _multiproc():
            import prometheus_client

            self._mp = prometheus_client.Histogram(name, doc, self.labelnames, buckets=self.bounds, registry=None)

    def series_for(self, labels: tuple[str, ...]) -> list[float]:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [0.0] * (len(self.bounds) + 2)
        return s

    def observe(self, labels: tuple[str, ...], v: float) -> None:
        if self._mp is not None:
            child = self._mp_children.get(labels)
            if child is None:
                child = self._mp_children[labels] = self._mp.labels(*labels)
            child.observe(v)
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [0.0] * (len(self.bounds) + 2)
        s[bisect.bisect_left(self.bounds, v)] += 1
        s[-1] += v

    def collect(self) -> Iterator[Any]:
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labelnames)
        for labels, s in self.series.items():
            acc, buckets = 0.0, []
            for bound, n in zip(self.bounds, s, strict=False):
                acc += n
                buckets.append((_fmt(bound), acc))
            acc += s[len(self.bounds)]
            buckets.append(("+Inf", acc))
            fam.add_metric(labels, buckets, s[-1])
        yield fam


def _fmt(b: float) -> str:
    return str(int(b)) if b == int(b) and b >= 1 else repr(b)


class _Collector(Collector):
    def __init__(self, metrics: list[Any]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        for m in self.metrics:
            yield from m.collect()


class Metrics:
    def __init__(self) -> None:
        base = ("cohort", "route", "model")
        self.requests = Counter("cohortgate_requests", "Client requests by outcome.", base + ("outcome",))
        self.duration = Histogram("cohortgate_request_duration_seconds", "Client request latency (to last byte).",
                                  base + ("outcome",), LATENCY_BUCKETS)
        self.ttft = Histogram("cohortgate_time_to_first_token_seconds", "Streamed requests: time to first event.",
                              base, LATENCY_BUCKETS)
        self.overhead = Histogram("cohortgate_overhead_seconds", "Time spent in the gateway itself (non-streamed).",
                                  ("route",), OVERHEAD_BUCKETS)
        self.tokens = Counter("cohortgate_tokens", "Tokens from upstream usage.", base + ("type",))
        self.tokens_per_request = Histogram("cohortgate_request_tokens", "Tokens per request (input+output).",
                                            base, TOKEN_BUCKETS)
        self.errors = Counter("cohortgate_errors", "Requests answered with an error, by error type.",
                              ("cohort", "route", "error_type"))
        self.fallbacks = Counter("cohortgate_fallbacks", "Moves to the next target, by reason.",
                                 ("cohort", "route", "from_model", "reason"))
        # cohort: the denominator of a cohort's fallback-trigger rate per model (rollout dashboard)
        self.attempts = Counter("cohortgate_upstream_attempts", "Upstream attempts by outcome.",
                                ("cohort", "upstream", "outcome"))
        self.evals = Counter("cohortgate_evals", "Inline evaluator results.", ("evaluator", "cohort", "model",
                                                                                "result"))
        self.mirror = Counter("cohortgate_mirror", "Mirrored (shadow) requests by result.",
                              ("cohort", "target", "result"))
        self.feedback = Counter("cohortgate_feedback", "Feedback signals.", ("signal", "cohort", "model"))
        self.reloads = Counter("cohortgate_policy_reloads", "Policy reloads by result.", ("result",))
        self.upstream_up = Gauge("cohortgate_upstream_healthy", "1 when the upstream takes traffic.", ("upstream",))
        self.circuit = Gauge("cohortgate_circuit_open", "1 when the cohort's circuit to the upstream is open "
                             "(0.5 half-open).", ("cohort", "upstream"))
        self.all: list[Any] = [v for v in vars(self).values() if isinstance(v, Counter | Histogram)]
        self._mp = _multiproc()
        self._bundles: dict[tuple[str, ...], tuple[Any, ...]] = {}
        self._attempt_cells: dict[tuple[str, str], list[float]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self.all))

    def _bundle(self, key: tuple[str, str, str], outcome: str) -> tuple[Any, ...]:
        full = key + (outcome,)
        b = self._bundles.get(full)
        if b is None:
            b = self._bundles[full] = (self.requests.cell(full), self.duration.series_for(full),
                                       self.tokens.cell(key + ("input",)), self.tokens.cell(key + ("output",)),
                                       self.tokens_per_request.series_for(key),
                                       self.overhead.series_for((key[1],)))
        return b

    def record(self, rec: RequestRecord) -> None:
        if not self._mp and rec.error_type is None and len(rec.attempts) == 1 and rec.ttft_s is None \
                and not rec.evals:
            self._record_plain(rec)
            return
        model = rec.served_by or "none"
        cohort = rec.cohort or "unclassified"
        route = rec.route_id or "none"
        elapsed = rec.elapsed()
        key = (cohort, route, model)
        full = (cohort, route, model, rec.outcome)
        self.requests.inc(full)
        self.duration.observe(full, elapsed)
        if rec.ttft_s is not None:
            self.ttft.observe(key, rec.ttft_s)
        if not rec.stream and rec.attempts:
            up = 0.0
            for a in rec.attempts:
                up += a.seconds
            self.overhead.observe((route,), max(0.0, elapsed - up))
        tin, tout = rec.input_tokens, rec.output_tokens
        if tin is not None:
            self.tokens.inc(key + ("input",), tin)
        if tout is not None:
            self.tokens.inc(key + ("output",), tout)
        if tin is not None or tout is not None:
            self.tokens_per_request.observe(key, (tin or 0) + (tout or 0))
        if rec.error_type is not None:
            self.errors.inc((cohort, route, rec.error_type))
        for a in rec.attempts:
            self.attempts.inc((cohort, a.upstream, a.outcome))
            if a.reason and a.reason != "rate_limited_retry":
                self.fallbacks.inc((cohort, route, a.upstream, a.reason))
        for name, _score, passed, upstream in rec.evals:
            self.evals.inc((name, cohort, upstream, "pass" if passed else "fail"))

    def _record_plain(self, rec: RequestRecord) -> None:
        """The common case (one attempt, not streamed, no error, no evals) in a few list updates."""
        elapsed = rec.elapsed()
        req, dur, tin_c, tout_c, tpr, ovh = self._bundle((rec.cohort or "unclassified", rec.route_id or "none",
                                                          rec.served_by or "none"), rec.outcome)
        req[0] += 1
        dur[bisect.bisect_left(self.duration.bounds, elapsed)] += 1
        dur[-1] += elapsed
        a = rec.attempts[0]
        if not rec.stream:
            o = elapsed - a.seconds
            ovh[bisect.bisect_left(self.overhead.bounds, o)] += 1
            ovh[-1] += o
        tin, tout = rec.input_tokens, rec.output_tokens
        if tin is not None or tout is not None:
            tin_c[0] += tin or 0
            tout_c[0] += tout or 0
            t = (tin or 0) + (tout or 0)
            tpr[bisect.bisect_left(self.tokens_per_request.bounds, t)] += 1
            tpr[-1] += t
        att = self._attempt_cells.get((a.upstream, a.outcome))
        if att is None:
            att = self._attempt_cells[(a.upstream, a.outcome)] = self.attempts.cell((a.upstream, a.outcome))
        att[0] += 1

    def exposition(self) -> tuple[bytes, str]:
        if _multiproc():
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
