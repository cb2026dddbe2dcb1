"""The live part of the demo: a short burst of realistic traffic through the gateway with the
official openai SDK (every cohort; some streamed, some with tools, some asking for JSON), a
couple of feedback signals, and a read-back of what the gateway recorded."""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evals.dataset import Row

ALIAS = "support-assistant"


@dataclass
class Sent:
    row_id: str
    expected: str
    cohort: str
    upstream: str
    arm: str
    streamed: bool
    status: str
    seconds: float
    request_id: str


def pick_rows(rows: list[Row], per_cohort: int) -> list[Row]:
    by: dict[str, list[Row]] = {}
    for r in rows:
        by.setdefault(r.cohort, []).append(r)
    out: list[Row] = []
    for cohort_rows in by.values():
        # prefer a mix: JSON-format rows first in billing, then plain ones
        cohort_rows = sorted(cohort_rows, key=lambda r: (r.response_format is None, r.id))
        out.extend(cohort_rows[:per_cohort])
    return out


def burst(base_url: str, rows: list[Row], max_tokens: int, api_key: str = "sk-demo", concurrency: int = 8
          ) -> list[Sent]:
    """Send every row through the gateway, `concurrency` at a time (vLLM batches them), in row order."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=300)
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        return list(pool.map(lambda ir: _send(client, ir[0], ir[1], max_tokens), enumerate(rows)))


def _send(client: Any, i: int, row: Row, max_tokens: int) -> Sent:
    body = row.request_body(ALIAS)
    body.pop("model")
    stream = i % 3 == 1 and not row.tools and not row.response_format
    # x-cohortgate-debug: the gateway adds why-headers (cohort reason, canary arm, overhead) to the answer
    extra = {"x-cohortgate-debug": "1"}
    t0 = time.monotonic()
    status = "ok"
    headers: Any = {}
    try:
        if stream:
            with client.chat.completions.with_streaming_response.create(
                    model=ALIAS, stream=True, max_tokens=max_tokens, temperature=0, extra_headers=extra,
                    stream_options={"include_usage": True}, user=f"user-{i % 5}", **body) as resp:
                headers = resp.headers
                for _ in resp.iter_lines():
                    pass
        else:
            raw = client.chat.completions.with_raw_response.create(
                model=ALIAS, max_tokens=max_tokens, temperature=0, user=f"user-{i % 5}", extra_headers=extra,
                **body)
            headers = raw.headers
            raw.parse()
    except Exception as exc:  # the burst reports failures instead of stopping the demo
        status = f"error: {type(exc).__name__}: {str(exc)[:120]}"
        response = getattr(exc, "response", None)
        if response is not None:
            headers = response.headers
    return Sent(row.id, row.cohort, headers.get("x-cohort", "-"), headers.get("x-upstream", "-"),
                headers.get("x-canary-arm", "-"), stream, status, round(time.monotonic() - t0, 2),
                headers.get("x-request-id", ""))


def send_feedback(gateway: str, sent: list[Sent]) -> int:
    """A thumbs-down and an escalation on the first two answered requests."""
    n = 0
    for s, signal in zip([s for s in sent if s.status == "ok"][:2], ("thumbs_down", "escalation"), strict=False):
        req = urllib.request.Request(gateway + "/v1/feedback", method="POST",
                                     data=json.dumps({"request_id": s.request_id, "signal": signal}).encode(),
                                     headers={"content-type": "application/json", "authorization": "Bearer sk-demo"})
        with urllib.request.urlopen(req, timeout=10) as r:
            n += r.status == 200
    return n


def traffic_by_cohort_and_model(metrics_text: str) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith("cohortgate_requests_total{"):
            continue
        labels, value = line.rsplit(" ", 1)
        kv = dict(part.split("=", 1) for part in labels[labels.index("{") + 1:-1].split(","))
        key = (kv["cohort"].strip('"'), kv["model"].strip('"'))
        out[key] = out.get(key, 0.0) + float(value)
    return out


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
