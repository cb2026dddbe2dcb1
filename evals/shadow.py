"""Import a gateway shadow sink (mirrored traffic) as a run.

The gateway writes one run row per side of a mirrored pair (role "primary" / "shadow", shared
pair_id) in the format of evals/RUN_FORMAT.md, optionally with a `request` object holding the
request fields the inline evaluators need (response_format, tools, tool_choice). Import
validates every line (errors name FILE:LINE), fills in any missing JSONValidation /
ToolSelectionAccuracy score from `request` + `output` with the same code the gateway gates
with (evals.inline), and writes RUN_DIR/results.jsonl + run.json (kind "shadow") atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from evals.inline import applicable, evaluate_inline
from evals.result import EvalInputError
from evals.runfile import FORMAT_VERSION, META, RESULTS, RunError, json_lines, now_iso, sha256_file

REQUIRED = ("row_id", "cohort", "model", "output", "latency_ms", "usage", "scores")
DEFAULT_INLINE_THRESHOLD = 1.0


def _response(output: dict[str, Any]) -> dict[str, Any]:
    calls = [
        {"id": f"c{i}", "type": "function", "function": {"name": c.get("name"), "arguments": c.get("arguments")}}
        for i, c in enumerate(output.get("tool_calls") or [])
    ]
    return {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": output.get("content"),
                    **({"tool_calls": calls} if calls else {}),
                },
            }
        ]
    }


def convert_line(obj: Any, where: str, thresholds: dict[str, float]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise RunError(f"{where}: a run row must be a JSON object")
    missing = [k for k in REQUIRED if k not in obj]
    if missing:
        raise RunError(f"{where}: missing {', '.join(missing)} (see evals/RUN_FORMAT.md)")
    if obj.get("role") not in (None, "primary", "shadow"):
        raise RunError(f"{where}: role must be primary or shadow")
    row = dict(obj)
    row.setdefault("v", FORMAT_VERSION)
    row.setdefault("error", None)
    scores = dict(row["scores"] or {})
    req, out = row.get("request"), row.get("output")
    if isinstance(req, dict) and row["error"]:  # a failed answer fails every gate that applied
        for name in applicable(req):
            th = thresholds.get(name, DEFAULT_INLINE_THRESHOLD)
            scores.setdefault(name, {"score": 0.0, "passed": False, "reason": "request failed", "threshold": th})
    elif isinstance(req, dict) and isinstance(out, dict):
        for name in applicable(req):
            if name not in scores:
                th = thresholds.get(name, DEFAULT_INLINE_THRESHOLD)
                try:
                    r = evaluate_inline(name, req, _response(out), th)
                except EvalInputError as exc:
                    raise RunError(f"{where}: cannot score {name}: {exc}") from None
                scores[name] = {**r.as_dict(), "threshold": th}
    row["scores"] = scores
    return row


def import_shadow(sink: Path, run: Path, thresholds: dict[str, float] | None = None) -> int:
    rows = [convert_line(obj, f"{sink}:{n}", thresholds or {}) for n, obj in json_lines(sink)]
    if not rows:
        raise RunError(f"{sink}: no shadow rows to import")
    run.mkdir(parents=True, exist_ok=True)
    tmp = run / (RESULTS + ".tmp")
    tmp.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    os.replace(tmp, run / RESULTS)
    models = {
        str(r["model"]): {"base_url": r.get("server.address"), "served_model": r.get("gen_ai.request.model")}
        for r in rows
    }
    meta = {
        "v": FORMAT_VERSION,
        "kind": "shadow",
        "source": str(sink),
        "source_sha256": sha256_file(sink),
        "models": models,
        "created": now_iso(),
    }
    (run / META).write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    return len(rows)
