"""Micro-benchmark: cost of the gateway's inline evaluators per call (target p50 <= 200 us).

Typical payloads: a json_schema request with a 6-field object answer, and a 4-tool request
answered with one tool call. Bodies are re-decoded per iteration like the gateway does, so
the schema cache is keyed from fresh dicts. Writes benchmarks/results/evals-inline.json.
Run: .venv/bin/python benchmarks/evals_inline_bench.py [--n 20000]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import orjson

from evals.inline import applicable, evaluate_inline

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["ticket_id", "category", "priority", "refund_eligible", "amount", "summary"],
    "properties": {
        "ticket_id": {"type": "string"},
        "category": {"enum": ["billing", "bug", "account"]},
        "priority": {"type": "integer", "minimum": 1, "maximum": 4},
        "refund_eligible": {"type": "boolean"},
        "amount": {"type": "number"},
        "summary": {"type": "string", "maxLength": 400},
    },
}
JSON_REQ = {
    "model": "m",
    "messages": [{"role": "user", "content": "triage this ticket " * 20}],
    "response_format": {"type": "json_schema", "json_schema": {"name": "triage", "schema": SCHEMA}},
}
JSON_RESP = {
    "id": "x",
    "object": "chat.completion",
    "choices": [
        {
            "index": 0,
            "finish_reason": "stop",
            "message": {
                "role": "assistant",
                "content": json.dumps(
                    {
                        "ticket_id": "T-1",
                        "category": "billing",
                        "priority": 2,
                        "refund_eligible": True,
                        "amount": 49.0,
                        "summary": "Duplicate charge on the Team plan.",
                    }
                ),
            },
        }
    ],
    "usage": {"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140},
}


def _tool(name: str, props: dict) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": "x",
            "parameters": {"type": "object", "properties": props, "required": list(props)},
        },
    }


TOOLS = [
    _tool("lookup_invoice", {"invoice_id": {"type": "string", "pattern": "^INV-[0-9]+$"}}),
    _tool(
        "issue_refund",
        {"invoice_id": {"type": "string"}, "amount": {"type": "number", "minimum": 0}, "reason": {"type": "string"}},
    ),
    _tool("get_order_status", {"order_id": {"type": "string"}}),
    _tool("escalate_to_human", {"reason": {"type": "string"}, "priority": {"enum": ["low", "normal", "high"]}}),
]
TOOL_REQ = {
    "model": "m",
    "messages": [{"role": "user", "content": "refund INV-2041"}],
    "tools": TOOLS,
    "tool_choice": "required",
}
TOOL_RESP = {
    "choices": [
        {
            "index": 0,
            "finish_reason": "tool_calls",
            "message": {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {
                            "name": "issue_refund",
                            "arguments": json.dumps(
                                {"invoice_id": "INV-2041", "amount": 49.0, "reason": "duplicate charge"}
                            ),
                        },
                    }
                ],
            },
        }
    ]
}


def bench(name: str, req: dict, resp: dict, n: int) -> dict[str, float]:
    rb, sb = orjson.dumps(req), orjson.dumps(resp)
    times = []
    for _ in range(n):
        r, s = orjson.loads(rb), orjson.loads(sb)  # fresh dicts, outside the timed region
        t0 = time.perf_counter_ns()
        for ev in applicable(r):
            res = evaluate_inline(ev, r, s, 1.0)
        times.append((time.perf_counter_ns() - t0) / 1000)
        assert res.passed and res.name == name, res
    times.sort()
    return {
        "p50_us": round(statistics.median(times), 2),
        "p99_us": round(times[int(0.99 * n)], 2),
        "mean_us": round(statistics.fmean(times), 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "evals-inline.json"))
    a = ap.parse_args()
    result = {
        "benchmark": "evals_inline",
        "n": a.n,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "target_p50_us": 200,
        "JSONValidation": bench("JSONValidation", JSON_REQ, JSON_RESP, a.n),
        "ToolSelectionAccuracy": bench("ToolSelectionAccuracy", TOOL_REQ, TOOL_RESP, a.n),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
