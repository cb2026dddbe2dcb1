"""Batched OTLP export of encoded spans: a bounded queue, encoding on the loop, a sending thread.

Contract: `BatchExporter.submit(item)` is all a request does (a list append; the item is the
request's tracing record, encoded later into all its spans, or one `SpanData` for a shadow call;
with `OTEL_BSP_MAX_QUEUE_SIZE` spans waiting, new items are dropped and counted, never waited on).
Items finished within `ENCODE_DELAY_S` (5 ms) are encoded together by one `call_later` callback
on the loop, after their responses were handed to the transport, so encoding does not delay the
response it describes. A daemon thread wakes every
`OTEL_BSP_SCHEDULE_DELAY` ms (or when `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans are encoded), frames
them as one OTLP `ExportTraceServiceRequest` and sends it: `http/protobuf` POST (one kept-alive
connection, optional gzip), or gRPC (extra `otlp-grpc`). A failed export is logged and dropped
(no retry queue: the gateway's memory stays bounded when the collector is down). Encoding on the
loop rather than in the export thread finds the records still in cache and pays no GIL
handoffs: it measured at a third of the CPU. The encoding itself: tracing_export.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from typing import Any, Protocol

from gateway.tracing_export import Encoder

log = logging.getLogger("cohortgate.tracing")
# Finished requests wait this long to be encoded together: one callback per a few ms instead of one
# per loop iteration (at low concurrency, one per request: a scheduled callback and an extra turn of
# the loop for each), while each run stays short (at 6,000 requests/s, ~30 requests: ~0.1 ms).
ENCODE_DELAY_S = 0.005


def _int_env(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


class Spans(Protocol):
    """What the exporter queues: one span (`SpanData`) or a request's spans (`tracing._Req`)."""

    def encode(self, enc: Encoder) -> tuple[bytes, int]: ...  # (framed spans, how many)


class BatchExporter:
    """Spans are encoded on the event loop in one deferred callback per `ENCODE_DELAY_S` (after
    their responses went out; on the loop rather than in the export thread, which pays GIL
    handoffs and finds the records out of cache: measured at a third of the CPU); the thread
    only batches the encoded bytes and sends them. Without a running loop (tools, tests) a span
    is encoded at once. Limits count spans; a request's spans are submitted as one item."""

    def __init__(self, encoder: Encoder, sender: Any) -> None:
        self.encoder = encoder
        self.sender = sender
        self.max_queue = _int_env("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self.batch = min(_int_env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), self.max_queue)
        self.delay = _int_env("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000.0
        self.loop: asyncio.AbstractEventLoop | None = None  # set by Tracing.start on the serving loop
        self.pending: list[Spans] = []  # finished, not yet encoded (at most ENCODE_DELAY_S)
        self.queue: deque[tuple[bytes, int]] = deque()  # encoded spans waiting for the export thread
        # spans encoded (written by the loop thread only) and exported (by the export thread only):
        # their difference is what waits, without a lock or a lost update between the threads
        self.encoded = 0
        self.exported = 0
        self.dropped = 0
        self.cpu_s = 0.0  # CPU time of the export thread (batching + send)
        self.encode_s = 0.0  # time in encode_pending (on the event loop, which does nothing else then)
        self._wake = threading.Event()
        self._stop = False
        self._force = False  # flush(): send the partial batch too
        self._thread = threading.Thread(target=self._run, name="cohortgate-otlp", daemon=True)
        self._thread.start()

    def submit(self, spans: Spans) -> bool:
        """Queues the item; False when the queue is full and it was dropped."""
        pending = self.pending
        if len(pending) + self.encoded - self.exported >= self.max_queue:
            self.dropped += 1
            return False
        pending.append(spans)
        if len(pending) == 1:
            if self.loop is not None and not self.loop.is_closed():
                self.loop.call_later(ENCODE_DELAY_S, self.encode_pending)
            else:
                self.encode_pending()
        return True

    def encode_pending(self) -> None:
        # perf_counter, not thread_time: this runs on the loop thread without blocking, so wall
        # time is its CPU time, and thread_time is a system call (two per request at low load)
        t0 = time.perf_counter()
        pending, q, encoder = self.pending, self.queue, self.encoder
        n = 0
        for s in pending:
            try:
                item = s.encode(encoder)
            except Exception:  # one bad span must not stop the exporter
                log.exception("encoding spans of %r failed", s)
                continue
            q.append(item)
            n += item[1]
        pending.clear()
        self.encoded += n
        if self.encoded - self.exported >= self.batch:
            self._wake.set()
        self.encode_s += time.perf_counter() - t0

    def _run(self) -> None:
        while not self._stop:
            woke = self._wake.wait(self.delay)
            self._wake.clear()
            force, self._force = self._force, False  # read after clear(): see flush()
            t0 = time.thread_time()
            # woken by a full batch: send full batches only; the spans encoded meanwhile wait
            # for the next one (else every full batch dragged a tail of tiny POSTs behind it)
            self._drain(full_only=woke and not force)
            self.cpu_s += time.thread_time() - t0
        self._drain(full_only=False)

    def _drain(self, full_only: bool) -> None:
        q = self.queue
        while q and (not full_only or self.encoded - self.exported >= self.batch):
            out: list[bytes] = []
            n = 0
            while q and n < self.batch:
                b, k = q.popleft()
                out.append(b)
                n += k
            self.sender.send(self.encoder.request(out))
            self.exported += n

    def flush(self, timeout: float = 10.0) -> None:
        """Export what is queued now (tests); returns when the queue is empty or after timeout."""
        self.encode_pending()
        deadline = time.monotonic() + timeout
        self._force = True  # before the wake-up: the thread reads it after clearing the event
        self._wake.set()
        while self.queue and time.monotonic() < deadline:
            time.sleep(0.01)

    def shutdown(self, timeout: float = 10.0) -> None:
        self.encode_pending()  # the loop is stopping: whatever is pending goes now
        self._stop = True
        self._wake.set()
        self._thread.join(timeout)
        self.sender.close()
        n = max(1, self.exported)
        log.info("tracing exported %d spans (CPU per span: %.1f us encoding on the loop, %.1f us sending), "
                 "dropped %d", self.exported, 1e6 * self.encode_s / n, 1e6 * self.cpu_s / n, self.dropped)
        if self.dropped:
            log.warning("tracing dropped %d spans (queue full: raise OTEL_BSP_MAX_QUEUE_SIZE)", self.dropped)
