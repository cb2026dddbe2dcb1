"""Traffic mirroring: a sampled share of a route's requests also goes to shadow upstreams.

Contract: a shadow never changes the primary response or its latency. The request path only
draws a random number and, when sampled, does one `put_nowait` on the route's bounded queue
(full queue -> the mirror is dropped and counted, never buffered without bound). Shadow calls
run in the route's own worker tasks (`mirror.concurrency`), each bounded by `mirror.timeout_s`,
streamed when the primary was streamed (so time to first token can be compared).

Each mirrored request yields a pair of run rows (primary and shadow, same `pair_id`) in the
format of evals/RUN_FORMAT.md, scored with the inline evaluators and appended to the policy's
`server.shadow_log` by one writer task (bounded queue, batched writes in a thread), so that
`cohortgate eval run --shadow` can judge a candidate on live traffic before it takes any.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import orjson

from evals.inline import EvalInputError, applicable, evaluate_inline
from gateway.policy.schema import Mirror as MirrorCfg
from gateway.request import ClientRequest, RequestRecord
from gateway.routing import Plan
from gateway.runtime import Runtime
from gateway.streaming import Relay, with_usage

log = logging.getLogger("cohortgate.mirror")


@dataclass(slots=True)
class Job:
    pair_id: str
    rt: Runtime
    creq: ClientRequest
    rec: RequestRecord
    cfg: MirrorCfg


class Lane:
    """One route's mirror queue and its workers."""

    def __init__(self, mirror: Mirror, cfg: MirrorCfg) -> None:
        self.cfg = cfg
        self.queue: asyncio.Queue[Job] = asyncio.Queue(maxsize=cfg.queue_size)
        self.workers = [mirror.state.spawn(mirror._worker(self)) for _ in range(cfg.concurrency)]

    def close(self) -> None:
        for w in self.workers:
            w.cancel()


class ShadowSink:
    """Append-only JSONL of run rows; one writer task, writes batched into a thread."""

    def __init__(self, path: str, metrics: Any, max_pending: int = 10_000) -> None:
        self.path = path
        self.metrics = metrics
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=max_pending)
        self.dropped = 0

    def put(self, row: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(row)
        except asyncio.QueueFull:
            self.dropped += 1

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        with open(self.path, "ab") as f:  # noqa: ASYNC230 - opened once; writes go to a thread below
            while True:
                rows = [await self.queue.get()]
                while not self.queue.empty() and len(rows) < 512:
                    rows.append(self.queue.get_nowait())
                data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
                await loop.run_in_executor(None, _append, f, data)


def _append(f: Any, data: bytes) -> None:
    f.write(data)
    f.flush()


class Mirror:
    def __init__(self, state: Any) -> None:
        self.state = state
        self.lanes: dict[str, Lane] = {}
        self.pending: dict[int, Job] = {}
        self.sink: ShadowSink | None = None
        self._sink_path: str | None = None

    # ------------------------------------------------------------------ request path (cheap)
    def maybe_mirror(self, rt: Runtime, plan: Plan, creq: ClientRequest, rec: RequestRecord) -> None:
        cfg = plan.route.mirror
        if cfg is None or cfg.percent <= 0 or random.random() * 100.0 >= cfg.percent:
            return
        lane = self.lanes.get(plan.route.id)
        if lane is None or lane.cfg != cfg:
            if lane is not None:
                lane.close()
            lane = self.lanes[plan.route.id] = Lane(self, cfg)
        job = Job("pair_" + uuid.uuid4().hex, rt, creq, rec, cfg)
        try:
            lane.queue.put_nowait(job)
        except asyncio.QueueFull:
            for t in cfg.targets:
                self.state.metrics.mirror.inc((rec.cohort, t, "dropped"))
            return
        rec.mirrored = True
        self.pending[id(rec)] = job
        self._ensure_sink(rt)

    def primary_done(self, rec: RequestRecord) -> None:
        """Called from AppState.observe once the primary answer is complete."""
        job = self.pending.pop(id(rec), None)
        if job is None or self.sink is None:
            return
        up = job.rt.upstreams.get(rec.served_by) if rec.served_by else None
        latency = sum(a.seconds for a in rec.attempts) * 1000.0 if rec.attempts else rec.elapsed() * 1000.0
        error = None if rec.status == 200 and rec.outcome == "ok" else {"type": rec.error_type or rec.outcome,
                                                                        "message": f"status {rec.status}"}
        self.sink.put(self._row(job, "primary", rec.served_by or "none", rec.served_model,
                                rec.response_model or None, up.spec.base_url if up else None, rec.output,
                                rec.finish_reasons[0] if rec.finish_reasons else None, latency,
                                rec.input_tokens, rec.output_tokens, error, rec.ttft_s))

    # ------------------------------------------------------------------ off the critical path
    def _ensure_sink(self, rt: Runtime) -> None:
        path = rt.policy.server.shadow_log
        if path and path != self._sink_path:
            self._sink_path = path
            self.sink = ShadowSink(path, self.state.metrics)
            self.state.spawn(self.sink.run())

    async def _worker(self, lane: Lane) -> None:
        while True:
            job = await lane.queue.get()
            for target in job.cfg.targets:
                try:
                    await self._shadow(job, target)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("mirror to %s failed unexpectedly", target)

    async def _shadow(self, job: Job, target: str) -> None:
        client = job.rt.upstreams.get(target)
        cohort = job.rec.cohort
        if client is None:
            return
        tracing = self.state.tracing
        shadow_rec = RequestRecord(job.rec.request_id)
        span = tracing.shadow_span(job.rec, target, shadow=shadow_rec) if tracing is not None else nullcontext()
        t0 = time.perf_counter()
        output: dict[str, Any] | None = None
        error = None
        finish = None
        try:
            with span:
                output, finish = await asyncio.wait_for(self._call(job, client, shadow_rec), job.cfg.timeout_s)
            self.state.metrics.mirror.inc((cohort, target, "ok"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.state.metrics.mirror.inc((cohort, target, "failed"))
            error = {"type": getattr(exc, "reason", type(exc).__name__),
                     "message": str(getattr(exc, "message", "")) or type(exc).__name__}
        if self.sink is not None:
            self.sink.put(self._row(job, "shadow", target, client.spec.model, shadow_rec.response_model or None,
                                    client.spec.base_url, output, finish, (time.perf_counter() - t0) * 1000.0,
                                    shadow_rec.input_tokens, shadow_rec.output_tokens, error, shadow_rec.ttft_s))

    async def _call(self, job: Job, client: Any, rec: RequestRecord) -> tuple[dict[str, Any] | None, str | None]:
        creq = job.creq
        headers = {"x-request-id": job.rec.request_id, "x-cohortgate-shadow": "1"}
        self.state.inject_trace(headers)  # the shadow span (current here) continues upstream
        if creq.stream:
            body, injected = with_usage(creq.body)
            stream = await client.open_stream(creq.path, {**body, "model": client.spec.model}, headers)
            relay = Relay(rec, injected, collect=True)
            try:
                async for chunk in stream:
                    relay.feed(chunk)
                    if rec.ttft_s is None:
                        rec.ttft_s = rec.elapsed()
            finally:
                await stream.aclose()
            return relay.message(), rec.finish_reasons[0] if rec.finish_reasons else None
        resp = await client.complete(creq.path, {**creq.body, "model": client.spec.model}, headers)
        choices = resp.data.get("choices") or [{}]
        first = choices[0] if isinstance(choices[0], dict) else {}
        usage = resp.data.get("usage") or {}
        rec.input_tokens, rec.output_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        rec.response_model = str(resp.data.get("model") or "")
        return first.get("message") or {"content": first.get("text")}, first.get("finish_reason")

    def _row(self, job: Job, role: str, model: str, served: str, response_model: str | None, address: str | None,
             message: dict[str, Any] | None, finish: str | None, latency_ms: float, tin: int | None,
             tout: int | None, error: dict[str, Any] | None, ttft_s: float | None) -> dict[str, Any]:
        record_content = job.rt.policy.telemetry.record_content
        body = job.creq.body
        scores: dict[str, Any] = {}
        output = None
        if message is not None:
            calls = [{"name": (c.get("function") or {}).get("name"), "arguments": (c.get("function") or {}).get(
                "arguments")} for c in message.get("tool_calls") or () if isinstance(c, dict)]
            output = {"content": message.get("content") if record_content else None, "tool_calls": calls}
            if job.creq.operation == "chat":
                response = {"choices": [{"index": 0, "message": message}]}
                for name in applicable(body):
                    try:
                        r = evaluate_inline(name, body, response, 1.0)
                    except EvalInputError:
                        continue
                    scores[name] = {"score": r.score, "passed": r.passed, "reason": r.reason, "threshold": 1.0}
        row: dict[str, Any] = {
            "v": 1, "row_id": job.rec.request_id, "pair_id": job.pair_id, "role": role, "cohort": job.rec.cohort,
            "model": model, "gen_ai.request.model": served, "gen_ai.response.model": response_model,
            "server.address": address, "output": output, "finish_reason": finish,
            "latency_ms": round(latency_ms, 3), "usage": {"input_tokens": tin, "output_tokens": tout},
            "error": error, "scores": scores, "ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        }
        if ttft_s is not None:
            row["ttft_ms"] = round(ttft_s * 1000.0, 3)
        if record_content:
            row["request"] = {k: body[k] for k in ("response_format", "tools", "tool_choice") if k in body}
        return row

    async def start(self, state: Any) -> None:
        return None

    async def close(self) -> None:
        for lane in self.lanes.values():
            lane.close()
