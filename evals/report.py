"""Aggregate a run into a per-cohort x model report: report.json, a rich terminal table, and
report.html (evals/html.py).

Contract: every number is per cohort x model first; the all-cohort aggregate is computed
alongside and always shown next to the per-cohort view, never alone. Per evaluator: mean
score with a 95% t interval and pass rate with a 95% Wilson interval; per cell: latency
p50/p99 (ms), mean input/output tokens per request, error count. Retention (when a candidate
is named) = candidate mean / best source mean per cohort and evaluator; the minimum over
cohorts is reported and highlighted, because a mean hides the worst cohort.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from evals.runfile import RunError, latest_rows, read_meta, results_path
from evals.stats import mean, mean_ci, percentile, wilson

ABBREV = {
    "TaskCompletion": "Task",
    "Groundedness": "Ground",
    "HallucinationScore": "NoHalluc",
    "JSONValidation": "JSON",
    "ToolSelectionAccuracy": "Tool",
}
EVAL_ORDER = ["TaskCompletion", "Groundedness", "HallucinationScore", "JSONValidation", "ToolSelectionAccuracy"]


def _cell(rows: list[dict[str, Any]]) -> dict[str, Any]:
    per_eval: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        for name, s in (r.get("scores") or {}).items():
            per_eval[name].append(s)
    evals: dict[str, Any] = {}
    for name, ss in per_eval.items():
        scores = [float(s["score"]) for s in ss]
        k = sum(1 for s in ss if s["passed"])
        evals[name] = {
            "n": len(ss),
            "mean": mean(scores),
            "mean_ci": list(mean_ci(scores)),
            "pass_rate": k / len(ss),
            "pass_ci": list(wilson(k, len(ss))),
        }
    lat = [float(r["latency_ms"]) for r in rows if not r.get("error")]
    tin = [u for r in rows if not r.get("error") and (u := (r.get("usage") or {}).get("input_tokens")) is not None]
    tout = [u for r in rows if not r.get("error") and (u := (r.get("usage") or {}).get("output_tokens")) is not None]
    return {
        "n": len(rows),
        "errors": sum(1 for r in rows if r.get("error")),
        "latency_ms": {"p50": percentile(lat, 50), "p99": percentile(lat, 99)},
        "tokens": {"input_mean": mean(tin) if tin else None, "output_mean": mean(tout) if tout else None},
        "evaluators": {k: evals[k] for k in sorted(evals, key=_order)},
    }


def _order(name: str) -> tuple[int, str]:
    return (EVAL_ORDER.index(name) if name in EVAL_ORDER else len(EVAL_ORDER), name)


def load_run(run: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    path = results_path(run)
    if not path.exists():
        raise RunError(f"{run}: no results.jsonl here; run `cohortgate eval run --out {run}` first")
    rows = latest_rows(path)
    if not rows:
        raise RunError(f"{path}: the run has no rows yet")
    return read_meta(run), rows


def build_report(
    run: Path, candidate: str | None = None, sources: list[str] | None = None, base: str | None = None
) -> dict[str, Any]:
    meta, rows = load_run(run)
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    cohorts = sorted({str(r["cohort"]) for r in rows})
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(str(r["cohort"]), str(r["model"]))].append(r)
        by_model[str(r["model"])].append(r)
    cells = [{"cohort": c, "model": m, **_cell(groups[(c, m)])} for c in cohorts for m in models if groups[(c, m)]]
    aggregate = [{"cohort": "(all cohorts)", "model": m, **_cell(by_model[m])} for m in models]
    evaluators = sorted({e for c in cells for e in c["evaluators"]}, key=_order)
    report: dict[str, Any] = {
        "run": str(run),
        "kind": meta.get("kind", "dataset"),
        "models": models,
        "cohorts": cohorts,
        "evaluators": evaluators,
        "cells": cells,
        "aggregate": aggregate,
        "retention": None,
    }
    if candidate:
        if candidate not in models:
            raise RunError(f"--candidate {candidate!r} is not in the run (models: {', '.join(models)})")
        srcs = sources or [m for m in models if m not in (candidate, base)]
        missing = [s for s in srcs if s not in models]
        if missing or not srcs:
            raise RunError(f"sources {missing or srcs} are not in the run (models: {', '.join(models)})")
        report["retention"] = retention(cells, candidate, srcs, evaluators)
    return report


def retention(cells: list[dict[str, Any]], candidate: str, sources: list[str], evaluators: list[str]) -> dict[str, Any]:
    idx = {(c["cohort"], c["model"]): c for c in cells}
    by_cohort: dict[str, dict[str, float | None]] = {}
    worst: dict[str, Any] | None = None
    for cohort in sorted({c["cohort"] for c in cells}):
        cand = idx.get((cohort, candidate))
        row: dict[str, float | None] = {}
        for e in evaluators:
            src = [
                idx[(cohort, s)]["evaluators"][e]["mean"]
                for s in sources
                if (cohort, s) in idx and e in idx[(cohort, s)]["evaluators"]
            ]
            if cand is None or e not in cand["evaluators"] or not src:
                continue
            best = max(src)
            # best source at 0: retention is undefined unless the candidate is also 0 (then 1)
            val = (
                cand["evaluators"][e]["mean"] / best
                if best > 0
                else (1.0 if cand["evaluators"][e]["mean"] == 0 else None)
            )
            row[e] = val
            if val is not None and (worst is None or val < worst["value"]):
                worst = {"cohort": cohort, "evaluator": e, "value": val}
        by_cohort[cohort] = row
    return {"candidate": candidate, "sources": sources, "by_cohort": by_cohort, "min": worst}


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    from evals.html import render_html

    out_dir.mkdir(parents=True, exist_ok=True)
    jp, hp = out_dir / "report.json", out_dir / "report.html"
    jp.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    hp.write_text(render_html(report), encoding="utf-8")
    return jp, hp


def _fmt(v: float | None, d: int = 2) -> str:
    return "-" if v is None or v != v else f"{v:.{d}f}"


def print_report(report: dict[str, Any]) -> None:
    """One narrow table per evaluator, then latency/tokens; each ends with the all-cohort rows
    below a rule, so the aggregate is always read beside the per-cohort numbers."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for e in report["evaluators"]:
        t = Table(title=f"{e}: per cohort x model (all cohorts below the line)", title_justify="left")
        for col in ("cohort", "model", "n", "mean", "95% CI", "pass", "95% CI "):
            t.add_column(col, justify="left" if col in ("cohort", "model") else "right")
        for group in (report["cells"], report["aggregate"]):
            for c in group:
                s = c["evaluators"].get(e)
                if s is None:
                    continue
                name = c["model"] + (f" ({c['errors']} err)" if c["errors"] else "")
                t.add_row(
                    c["cohort"],
                    name,
                    str(s["n"]),
                    f"{s['mean']:.3f}",
                    f"{s['mean_ci'][0]:.2f}-{s['mean_ci'][1]:.2f}",
                    f"{s['pass_rate']:.0%}",
                    f"{s['pass_ci'][0]:.0%}-{s['pass_ci'][1]:.0%}",
                )
            t.add_section()
        console.print(t)
    t = Table(title="latency and tokens per request", title_justify="left")
    for col in ("cohort", "model", "n", "errors", "p50 ms", "p99 ms", "tokens in", "tokens out"):
        t.add_column(col, justify="left" if col in ("cohort", "model") else "right")
    for group in (report["cells"], report["aggregate"]):
        for c in group:
            lat, tok = c["latency_ms"], c["tokens"]
            t.add_row(
                c["cohort"],
                c["model"],
                str(c["n"]),
                str(c["errors"]),
                _fmt(lat["p50"], 0),
                _fmt(lat["p99"], 0),
                _fmt(tok["input_mean"], 0),
                _fmt(tok["output_mean"], 0),
            )
        t.add_section()
    console.print(t)
    ret = report.get("retention")
    if ret:
        t = Table(title=f"retention = {ret['candidate']} / best of {', '.join(ret['sources'])}", title_justify="left")
        t.add_column("cohort")
        for e in report["evaluators"]:
            t.add_column(ABBREV.get(e, e), justify="right")
        mn = ret["min"] or {}
        for cohort, row in ret["by_cohort"].items():
            cells_ = []
            for e in report["evaluators"]:
                v = row.get(e)
                s = _fmt(v)
                if mn and cohort == mn["cohort"] and e == mn["evaluator"]:
                    s = f"[bold red]{s} (min)[/]"
                cells_.append(s)
            t.add_row(cohort, *cells_)
        console.print(t)
        if mn:
            console.print(f"[bold]minimum retention: {mn['value']:.2f}[/] ({mn['evaluator']} on {mn['cohort']})")
