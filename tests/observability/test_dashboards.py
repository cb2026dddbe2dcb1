"""Every PromQL expression of every Grafana dashboard runs against a real Prometheus that scraped
a real gateway under load (fallbacks, eval-gate failures, streams, mirrored calls, feedback,
circuit breaking, policy reloads), and returns data.

Prometheus is the Debian package's binary with the config shipped in docker/prometheus/
prometheus.yml: only the scrape targets (the gateway job -> the test gateway, Prometheus' own job
-> itself, the other jobs -> a closed local port) and the intervals (1 s) are rewritten.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.helpers import PYTHON, ROOT, free_port, require_tool, running

pytestmark = pytest.mark.slow  # about 40 s: real Prometheus, load, scrapes

DASHBOARDS = sorted((ROOT / "docker" / "grafana" / "dashboards").glob("*.json"))
PROM_CONFIG = ROOT / "docker" / "prometheus" / "prometheus.yml"
RATE_INTERVAL = "1m"

POLICY = """
version: 1
upstreams:
  cand.v2: {{base_url: "{cand}", model: cand-served, timeouts: {{connect: 1, first_byte: 3, total: 5}}}}
  src: {{base_url: "{src}", model: src-served, timeouts: {{connect: 1, first_byte: 3, total: 5}}}}
  flaky: {{base_url: "{flaky}", model: flaky-served, timeouts: {{connect: 1, first_byte: 3, total: 5}},
          health: {{failures_to_eject: 50}}}}
  broken: {{base_url: "{broken}", model: broken-served, timeouts: {{connect: 1, first_byte: 3, total: 5}}}}
  shadow: {{base_url: "{shadow}", model: shadow-served, timeouts: {{connect: 1, first_byte: 3, total: 5}}}}
models:
  - name: m
cohorts:
  - name: billing
    rules: [{{keywords: [refund]}}]
  - name: tools
    rules: [{{has_tools: true}}]
  - name: broken
    rules: [{{header: {{name: x-cohort, equals: broken}}}}]
routes:
  - id: billing
    cohorts: [billing]
    targets: [{{upstream: cand.v2, weight: 50, arm: candidate}}, {{upstream: src, weight: 50, arm: source}}]
    fallback: [src]
    mirror: {{targets: [shadow], percent: 50}}
  - id: tools
    cohorts: [tools]
    targets: [{{upstream: flaky}}]
    fallback: [src]
    circuit: {{window_s: 60, min_requests: 5, max_error_rate: 0.2, open_s: 1, half_open_probes: 1}}
  - id: broken
    cohorts: [broken]
    targets: [{{upstream: broken}}]
  - id: default
    cohorts: ["*"]
    targets: [{{upstream: cand.v2, weight: 50, arm: candidate}}, {{upstream: src, weight: 50, arm: source}}]
    fallback: [src]
"""
TOOLS = [{"type": "function", "function": {"name": "lookup_order", "parameters": {
    "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]}}}]


def prometheus_config(gateway_port: int, prom_port: int, closed_port: int) -> dict[str, Any]:
    cfg = yaml.safe_load(PROM_CONFIG.read_text())
    cfg["global"].update({"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"})
    jobs = {j["job_name"] for j in cfg["scrape_configs"]}
    assert "cohortgate" in jobs, f"the shipped config has no cohortgate job: {jobs}"
    for job in cfg["scrape_configs"]:
        port = {"cohortgate": gateway_port, "prometheus": prom_port}.get(job["job_name"], closed_port)
        for sc in job.get("static_configs", []):
            sc["targets"] = [f"127.0.0.1:{port}" for _ in sc["targets"]]
    return cfg


def load(gw: str, proc: Any, policy_path: Path, policy_text: str) -> dict[str, int]:
    """A short mixed load; returns what was sent (for the sanity checks)."""
    msg = [{"role": "user", "content": "hello there"}]
    jobs: list[tuple[dict[str, Any], dict[str, str]]] = []
    for i in range(60):
        jobs.append(({"model": "m", "messages": [{"role": "user", "content": f"refund for order {i}"}],
                      "temperature": 0.2, "max_tokens": 64}, {}))
    for i in range(50):
        jobs.append(({"model": "m", "messages": [{"role": "user", "content": f"refund status {i} as JSON"}],
                      "response_format": {"type": "json_object"}}, {}))
    for i in range(30):
        jobs.append(({"model": "m", "stream": True, "messages": [{"role": "user", "content": f"refund story {i}"}]},
                     {}))
    for _ in range(40):
        jobs.append(({"model": "m", "messages": msg, "tools": TOOLS}, {}))
    for _ in range(40):
        jobs.append(({"model": "m", "messages": msg}, {}))
    for _ in range(10):
        jobs.append(({"model": "m", "messages": msg}, {"x-cohort": "broken"}))

    with httpx.Client(base_url=gw, timeout=15) as client:
        def send(job: tuple[dict[str, Any], dict[str, str]]) -> tuple[int, str]:
            body, headers = job
            if body.get("stream"):
                with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
                    for _ in r.iter_bytes():
                        pass
                    return r.status_code, r.headers.get("x-request-id", "")
            r = client.post("/v1/chat/completions", json=body, headers=headers)
            return r.status_code, r.headers.get("x-request-id", "")

        random.Random(7).shuffle(jobs)
        sent = {"ok": 0, "errors": 0, "feedback": 0}
        with ThreadPoolExecutor(4) as pool:
            # waves spread over several scrapes: every counter (feedback included) rises while
            # Prometheus watches, so rate() sees increases and not just a series appearing
            for wave in range(3):
                results = list(pool.map(send, jobs[wave::3]))
                ok_ids = [rid for status, rid in results if status == 200]
                sent["ok"] += len(ok_ids)
                sent["errors"] += sum(1 for status, _ in results if status != 200)
                for i, rid in enumerate(ok_ids[:40]):
                    sig = ("thumbs_down", "escalation", "thumbs_up")[i % 3]
                    r = client.post("/v1/feedback", json={"request_id": rid, "signal": sig})
                    assert r.status_code == 200, r.text
                    sent["feedback"] += 1
                time.sleep(1.5)
    # one accepted and one rejected policy reload
    os.kill(proc.pid, signal.SIGHUP)
    time.sleep(0.5)
    policy_path.write_text(policy_text.replace("version: 1", "version: 7"))
    os.kill(proc.pid, signal.SIGHUP)
    time.sleep(0.5)
    policy_path.write_text(policy_text)
    return sent


def exprs_of(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) for every target of every panel, rows' nested panels included."""
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p.get("title", "?"), t["expr"]))
            walk(p.get("panels", []))

    walk(dashboard.get("panels", []))
    return out


def prom_regex_escape(value: str) -> str:
    """Grafana's escaping of a multi-value variable for a Prometheus regex matcher: a backslash
    pair (one backslash once PromQL has read its string) before each regex metacharacter."""
    return re.sub(r"[$^*{}\[\]'+?.()|\\]", lambda m: "\\\\" + m.group(0), value)


def substitute(expr: str, values: dict[str, list[str]], raw: bool = False) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name == "__rate_interval" or name == "__interval":
            return RATE_INTERVAL
        if name == "__range":
            return "1h"
        if name in values:
            return "(" + "|".join(v if raw else prom_regex_escape(v) for v in values[name]) + ")"
        return m.group(0)  # "$1" in label_replace and the like

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def query(prom: str, expr: str) -> dict[str, Any]:
    r = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=10)
    return {"http": r.status_code, **r.json()}


def label_values(prom: str, definition: str, values: dict[str, list[str]]) -> list[str]:
    m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\)\s*", definition)
    assert m, f"template query {definition!r} is not label_values(metric, label)"
    selector = substitute(m.group(1), values)
    r = httpx.get(f"{prom}/api/v1/label/{m.group(2)}/values", params={"match[]": selector}, timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "success", r.text
    return list(r.json()["data"])


def scalar_by(result: dict[str, Any], *labels: str) -> dict[tuple[str, ...], float]:
    return {tuple(s["metric"].get(lb, "") for lb in labels): float(s["value"][1]) for s in result["data"]["result"]}


def test_every_dashboard_query_returns_data(fake, tmp_path: Path) -> None:
    prometheus = require_tool("prometheus", "apt-get install -y prometheus")
    assert len(DASHBOARDS) >= 3, DASHBOARDS
    cand, src = fake("cand", "bad_json", rate=0.5), fake("src")
    flaky, broken, shadow = fake("flaky", "503", rate=0.5), fake("broken", "500"), fake("shadow")
    policy_text = POLICY.format(cand=cand.url, src=src.url, flaky=flaky.url, broken=broken.url, shadow=shadow.url)
    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(policy_text)
    gw_port, prom_port, closed = free_port(), free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(gw_port, prom_port, closed)))
    gw = f"http://127.0.0.1:{gw_port}"
    prom = f"http://127.0.0.1:{prom_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    with running([PYTHON, "-m", "cohortgate", "serve", "--policy", str(policy_path), "--port", str(gw_port),
                  "--log-level", "WARNING"], ready_url=gw + "/healthz", log=tmp_path / "gateway.log",
                 env=env) as gw_proc, \
         running([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                  f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                  "--storage.tsdb.retention.time=1h"], ready_url=prom + "/-/ready", log=tmp_path / "prometheus.log",
                 timeout=60):
        # the load starts once Prometheus scrapes the gateway, so the counters' rise is recorded
        deadline = time.monotonic() + 30
        while not query(prom, 'up{job="cohortgate"} == 1')["data"]["result"] and time.monotonic() < deadline:
            time.sleep(0.2)
        sent = load(gw, gw_proc, policy_path, policy_text)
        # wait (bounded) until Prometheus has scraped the end of the load, reloads included
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            fb = query(prom, "sum(cohortgate_feedback_total)")["data"]["result"]
            rl = query(prom, 'sum(cohortgate_policy_reloads_total{result="rejected"})')["data"]["result"]
            if fb and float(fb[0]["value"][1]) >= sent["feedback"] and rl:
                break
            time.sleep(0.5)
        time.sleep(2.5)  # two more scrapes, so every rate() has two samples past the load
        targets = httpx.get(prom + "/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        gw_target = [t for t in targets if t["labels"]["job"] == "cohortgate"]
        assert gw_target and gw_target[0]["health"] == "up", gw_target

        failures: list[str] = []
        checked = 0
        for path in DASHBOARDS:
            dash = json.loads(path.read_text())
            values: dict[str, list[str]] = {}
            for var in dash.get("templating", {}).get("list", []):
                if var.get("type") != "query":
                    continue
                definition = var.get("definition") or var["query"]["query"]
                found = label_values(prom, definition, values)
                checked += 1
                if not found:
                    failures.append(f"{path.name}: variable ${var['name']} ({definition}) has no values")
                values[var["name"]] = found or ["none"]
            exprs = exprs_of(dash)
            assert exprs, f"{path.name} has no PromQL"
            for title, expr in exprs:
                q = substitute(expr, values)
                res = query(prom, q)
                checked += 1
                if res.get("status") != "success":
                    failures.append(f"{path.name} / {title}: invalid: {res.get('error')}\n    {q}")
                elif not any(math.isfinite(float(r["value"][1])) for r in res["data"]["result"]):
                    failures.append(f"{path.name} / {title}: no data (or only NaN)\n    {q}")
        assert not failures, f"{len(failures)} of {checked} queries failed:\n" + "\n".join(failures)

        # the numbers the rollout dashboard shows are the load's, not just "some data"
        rollout = json.loads((ROOT / "docker/grafana/dashboards/cohortgate-rollout.json").read_text())
        summary = next(p for p in rollout["panels"] if p["type"] == "table")
        allv = {"cohort": [".*"], "model": [".*"]}
        share, eval_fail, fallback, thumbs = (query(prom, substitute(t["expr"], allv, raw=True))
                                            for t in summary["targets"][:4])
        billing_share = sum(v for (c, _m), v in scalar_by(share, "cohort", "model").items() if c == "billing")
        assert billing_share == pytest.approx(1.0, abs=1e-6), share
        assert scalar_by(eval_fail, "cohort", "model")[("billing", "cand.v2")] > 0  # bad JSON half the time
        assert scalar_by(fallback, "cohort", "model")[("tools", "flaky")] > 0
        assert max(scalar_by(thumbs, "cohort", "model").values()) > 0
        circuit = query(prom, 'max(cohortgate_circuit_open{cohort="tools",upstream="flaky"})')["data"]["result"]
        assert circuit, "the flaky upstream's circuit never changed state"
        mirror = scalar_by(query(prom, "sum by (result) (cohortgate_mirror_total)"), "result")
        assert mirror.get(("ok",), 0) > 0
        assert sent["errors"] >= 10  # the broken cohort
