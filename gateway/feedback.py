"""Feedback on served requests: POST /v1/feedback {request_id, signal, comment?}.

Every answered request is remembered (request id -> cohort, route, upstream, caller) in a
bounded, time-limited table, so a later thumbs-down or escalation is attributed to the cohort
and model that produced the answer (`cohortgate_feedback_total{signal,cohort,model}`). Unknown
or expired request ids get 404; a caller may only rate its own requests (others' ids look
unknown, so ids leak nothing). Comments are logged (one line, truncated), never used as labels.

The table lives in the worker process that served the request; with `--workers N` feedback
must reach the same worker (documented limitation), which holds for one worker per pod.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, NamedTuple

import orjson

from gateway.errors import InvalidRequest, NotFound
from gateway.request import RequestRecord

log = logging.getLogger("cohortgate.feedback")
SIGNALS = ("thumbs_up", "thumbs_down", "escalation", "reopened")
MAX_ENTRIES = 50_000


class Served(NamedTuple):
    cohort: str
    route: str
    model: str
    caller: str
    at: float


class FeedbackStore:
    def __init__(self, metrics: Any, ttl_s: float, max_entries: int = MAX_ENTRIES) -> None:
        self.metrics = metrics
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._served: OrderedDict[str, Served] = OrderedDict()

    def remember(self, rec: RequestRecord) -> None:
        if rec.status != 200 or not rec.served_by or self.max_entries == 0:
            return
        self._served[rec.request_id] = Served(rec.cohort, rec.route_id, rec.served_by, rec.key_name, time.monotonic())
        if len(self._served) > self.max_entries:
            self._served.popitem(last=False)

    def _expire(self, now: float) -> None:
        horizon = now - self.ttl_s
        while self._served:
            first = next(iter(self._served.values()))
            if first.at >= horizon:
                break
            self._served.popitem(last=False)

    def submit(self, raw: bytes, caller: str) -> dict[str, Any]:
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise InvalidRequest("Send a JSON object: {\"request_id\": ..., \"signal\": ...}.", code="invalid_json")
        rid, signal, comment = body.get("request_id"), body.get("signal"), body.get("comment")
        if not isinstance(rid, str) or not rid:
            raise InvalidRequest("'request_id' is required: the x-request-id of the answer being rated.",
                                 param="request_id")
        if signal not in SIGNALS:
            raise InvalidRequest(f"'signal' must be one of {', '.join(SIGNALS)}.", param="signal")
        if comment is not None and not isinstance(comment, str):
            raise InvalidRequest("'comment' must be a string.", param="comment")
        self._expire(time.monotonic())
        served = self._served.get(rid)
        if served is None or served.caller != caller:
            raise NotFound(f"No served request with id '{rid}' (unknown, expired, or not yours).",
                           param="request_id", code="request_not_found")
        self.metrics.feedback.inc((signal, served.cohort, served.model))
        log.info("feedback %s on %s (cohort %s, model %s)%s", signal, rid, served.cohort, served.model,
                 f": {comment[:200]!r}" if comment else "")
        return {"object": "feedback", "request_id": rid, "signal": signal, "cohort": served.cohort,
                "route": served.route, "model": served.model}
