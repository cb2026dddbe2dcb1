"""Synthetic runs for report/promotion tests: known per-cohort means, shared row difficulty."""

from __future__ import annotations

import json
from pathlib import Path

N = 30
EVALS = {
    "billing_refund": ["TaskCompletion", "Groundedness"],
    "policy_exception": ["TaskCompletion", "Groundedness"],
    "tool_required": ["TaskCompletion", "ToolSelectionAccuracy"],
    "out_of_domain": ["TaskCompletion"],
}
# mean score per (cohort, model), same for every evaluator of the cohort
MEANS = {
    "billing_refund": {"base": 0.80, "billing-specialist": 0.94, "policy-specialist": 0.85, "candidate": 0.95},
    "policy_exception": {"base": 0.78, "billing-specialist": 0.80, "policy-specialist": 0.95, "candidate": 0.86},
    "tool_required": {"base": 0.90, "billing-specialist": 0.95, "policy-specialist": 0.90, "candidate": 0.96},
    "out_of_domain": {"base": 0.92, "billing-specialist": 0.90, "policy-specialist": 0.91, "candidate": 0.97},
}
LATENCY = {"base": 100.0, "billing-specialist": 110.0, "policy-specialist": 105.0, "candidate": 100.0}
SLOW = {("tool_required", "candidate"): 400.0}  # candidate too slow on tool_required
PROVENANCE = {
    "format": "cohortgate.provenance/1",
    "base_model": "/models/base",
    "sources": [
        {"path": "/models/base", "role": "base"},
        {"path": "/models/billing-specialist", "role": "input"},
        {"path": "/models/policy-specialist", "role": "input"},
    ],
}


def delta(i: int) -> float:
    return [-0.04, 0.0, 0.04][i % 3]  # row difficulty, shared by every model: means stay exact


def write_run(run: Path, drop_model: str | None = None) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    lines = []
    for cohort, by_model in MEANS.items():
        for model, mu in by_model.items():
            if model == drop_model:
                continue
            for i in range(N):
                s = min(1.0, max(0.0, mu + delta(i)))
                lat = SLOW.get((cohort, model), LATENCY[model]) + i
                lines.append(
                    {
                        "v": 1,
                        "row_id": f"{cohort}-{i:03d}",
                        "cohort": cohort,
                        "model": model,
                        "gen_ai.request.model": model,
                        "gen_ai.response.model": model,
                        "server.address": f"http://127.0.0.1:1/{model}",
                        "output": {"content": "x", "tool_calls": []},
                        "finish_reason": "stop",
                        "latency_ms": lat,
                        "attempts": 1,
                        "usage": {"input_tokens": 100 + i, "output_tokens": 40},
                        "error": None,
                        "scores": {
                            e: {"score": s, "passed": s >= 0.9, "reason": "synthetic", "threshold": 0.9}
                            for e in EVALS[cohort]
                        },
                        "ts": "2026-11-26T10:00:00.000Z",
                    }
                )
    (run / "results.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    models = {m: {"base_url": f"http://127.0.0.1:9000/{m}/v1", "served_model": m} for m in LATENCY if m != drop_model}
    (run / "run.json").write_text(json.dumps({"v": 1, "kind": "dataset", "models": models}))
    return run


def write_provenance(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / "provenance.json"
    p.write_text(json.dumps(PROVENANCE))
    return p
