"""report.html: one self-contained page (inline CSS + inline SVG; no scripts, fonts or other
network assets) rendered from the report dict of evals/report.py.

Plots: per evaluator, grouped bars of the mean score per cohort and model with 95% CI whiskers;
retention per cohort and evaluator against a 1.0 line, the minimum in red; latency p50 bars
with p99 markers. The per-cohort table and the all-cohort aggregate sit side by side.
"""

from __future__ import annotations

from html import escape
from typing import Any

PALETTE = [
    "#2563eb",
    "#16a34a",
    "#9333ea",
    "#ea580c",
    "#0891b2",
    "#4b5563",
    "#ca8a04",
    "#db2777",
]  # red = highlight only
W, H, PAD_L, PAD_B, PAD_T = 760, 260, 48, 46, 24


def _color(models: list[str], m: str) -> str:
    return PALETTE[models.index(m) % len(PALETTE)]


def _axes(ymax: float, label: str, ticks: int = 5) -> list[str]:
    out = []
    for i in range(ticks + 1):
        v = ymax * i / ticks
        y = PAD_T + (H - PAD_T - PAD_B) * (1 - i / ticks)
        out.append(
            f'<line x1="{PAD_L}" x2="{W - 8}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e7eb"/>'
            f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{v:.2g}</text>'
        )
    out.append(f'<text x="12" y="{PAD_T - 8}" class="tick">{escape(label)}</text>')
    return out


def _y(v: float, ymax: float) -> float:
    return PAD_T + (H - PAD_T - PAD_B) * (1 - min(max(v, 0.0), ymax) / ymax)


def _grouped(
    groups: list[str],
    series: list[str],
    value: Any,
    ymax: float,
    label: str,
    colors: dict[str, str],
    title: str,
    ref: float | None = None,
) -> str:
    """value(group, series) -> None | (v, lo, hi, highlight)."""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
        f'class="plot" aria-label="{escape(title)}"><title>{escape(title)}</title>',
        *_axes(ymax, label),
    ]
    gw = (W - PAD_L - 16) / max(1, len(groups))
    bw = min(34.0, (gw - 14) / max(1, len(series)))
    for gi, g in enumerate(groups):
        x0 = PAD_L + 8 + gi * gw + (gw - bw * len(series)) / 2
        for si, s in enumerate(series):
            v = value(g, s)
            if v is None:
                continue
            val, lo, hi, hl = v
            x = x0 + si * bw
            y = _y(val, ymax)
            fill = "#dc2626" if hl else colors[s]
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{bw - 3:.1f}" '
                f'height="{_y(0, ymax) - y:.1f}" fill="{fill}"><title>{escape(g)} / {escape(s)}: '
                f"{val:.3f}</title></rect>"
            )
            if lo is not None and hi is not None:
                cx = x + (bw - 3) / 2
                parts.append(
                    f'<path d="M{cx:.1f},{_y(lo, ymax):.1f}V{_y(hi, ymax):.1f}M{cx - 4:.1f},{_y(lo, ymax):.1f}'
                    f'h8M{cx - 4:.1f},{_y(hi, ymax):.1f}h8" stroke="#111827" stroke-width="1.2" fill="none"/>'
                )
        parts.append(
            f'<text x="{PAD_L + 8 + gi * gw + gw / 2:.1f}" y="{H - PAD_B + 16}" text-anchor="middle" '
            f'class="lbl">{escape(g)}</text>'
        )
    if ref is not None:
        parts.append(
            f'<line x1="{PAD_L}" x2="{W - 8}" y1="{_y(ref, ymax):.1f}" y2="{_y(ref, ymax):.1f}" '
            'stroke="#111827" stroke-dasharray="5,4"/>'
        )
    lx = PAD_L
    for s in series:
        parts.append(
            f'<rect x="{lx}" y="{H - 18}" width="10" height="10" fill="{colors[s]}"/>'
            f'<text x="{lx + 14}" y="{H - 9}" class="tick">{escape(s)}</text>'
        )
        lx += 24 + 7 * len(s)
    parts.append("</svg>")
    return "".join(parts)


def _table(cells: list[dict[str, Any]], evaluators: list[str], caption: str) -> str:
    head = "".join(f"<th>{escape(e)}<br><small>mean [95% CI] · pass [95% CI]</small></th>" for e in evaluators)
    rows = []
    for c in cells:
        tds = []
        for e in evaluators:
            s = c["evaluators"].get(e)
            tds.append(
                "<td>-</td>"
                if s is None
                else f"<td>{s['mean']:.2f} <small>[{s['mean_ci'][0]:.2f}, {s['mean_ci'][1]:.2f}]</small><br>"
                f"{s['pass_rate']:.0%} <small>[{s['pass_ci'][0]:.0%}, {s['pass_ci'][1]:.0%}]</small></td>"
            )
        lat, tok = c["latency_ms"], c["tokens"]

        def f(v: Any, d: int = 0) -> str:
            return "-" if v is None or v != v else f"{v:.{d}f}"

        err = f' <span class="err">{c["errors"]} err</span>' if c["errors"] else ""
        rows.append(
            f"<tr><td>{escape(c['cohort'])}</td><td>{escape(c['model'])}{err}</td><td>{c['n']}</td>"
            f"{''.join(tds)}<td>{f(lat['p50'])} / {f(lat['p99'])}</td>"
            f"<td>{f(tok['input_mean'])} / {f(tok['output_mean'])}</td></tr>"
        )
    return (
        f"<table><caption>{escape(caption)}</caption><thead><tr><th>cohort</th><th>model</th><th>n</th>{head}"
        f"<th>latency ms<br><small>p50 / p99</small></th><th>tokens/request<br><small>in / out</small></th></tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def render_html(report: dict[str, Any]) -> str:
    models, cohorts, evaluators = report["models"], report["cohorts"], report["evaluators"]
    colors = {m: _color(models, m) for m in models}
    idx = {(c["cohort"], c["model"]): c for c in report["cells"]}
    plots = []
    for e in evaluators:

        def val(g: str, s: str, e: str = e) -> Any:
            c = idx.get((g, s))
            if c is None or e not in c["evaluators"]:
                return None
            ev = c["evaluators"][e]
            return ev["mean"], ev["mean_ci"][0], ev["mean_ci"][1], False

        plots.append(
            f"<figure><figcaption>{escape(e)}: mean score per cohort (95% CI)</figcaption>"
            f"{_grouped(cohorts, models, val, 1.0, 'score', colors, e)}</figure>"
        )
    ret = report.get("retention")
    callout = ""
    if ret:
        mn = ret["min"]
        ecolors = {e: PALETTE[i % len(PALETTE)] for i, e in enumerate(evaluators)}

        def rval(g: str, e: str) -> Any:
            v = ret["by_cohort"].get(g, {}).get(e)
            return None if v is None else (v, None, None, bool(mn and mn["cohort"] == g and mn["evaluator"] == e))

        ymax = max([1.2] + [v for r in ret["by_cohort"].values() for v in r.values() if v is not None])
        plots.insert(
            0,
            f"<figure><figcaption>retention = {escape(ret['candidate'])} ÷ best source "
            f"({escape(', '.join(ret['sources']))}); dashed line = 1.0; red = minimum</figcaption>"
            f"{_grouped(cohorts, evaluators, rval, ymax, 'retention', ecolors, 'retention', ref=1.0)}"
            "</figure>",
        )
        if mn:
            callout = (
                f'<p class="callout">Minimum retention across cohorts: <b>{mn["value"]:.2f}</b> '
                f"({escape(mn['evaluator'])} on <b>{escape(mn['cohort'])}</b>).</p>"
            )
    lat_max = max(
        [1.0] + [c["latency_ms"]["p99"] for c in report["cells"] if c["latency_ms"]["p99"] == c["latency_ms"]["p99"]]
    )

    def lval(g: str, s: str) -> Any:
        c = idx.get((g, s))
        if c is None or c["latency_ms"]["p50"] != c["latency_ms"]["p50"]:
            return None
        return c["latency_ms"]["p50"], c["latency_ms"]["p50"], c["latency_ms"]["p99"], False

    plots.append(
        f"<figure><figcaption>latency p50 (bar) to p99 (whisker top), ms</figcaption>"
        f"{_grouped(cohorts, models, lval, lat_max * 1.1, 'ms', colors, 'latency')}</figure>"
    )
    css = (
        "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#111827}h1{font-size:20px}"
        "table{border-collapse:collapse;margin:8px 0;font-size:12px}td,th{border:1px solid #d1d5db;padding:4px 6px;"
        "text-align:right}td:first-child,td:nth-child(2){text-align:left}caption{font-weight:600;text-align:left}"
        "small{color:#6b7280}.side{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start}"
        ".tick{font-size:10px;fill:#374151}.lbl{font-size:11px;fill:#111827}figure{margin:16px 0}"
        "figcaption{font-weight:600;margin-bottom:4px}.callout{background:#fef2f2;border-left:4px solid #dc2626;"
        "padding:8px 12px}.err{color:#dc2626}"
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>cohortgate eval report</title>'
        f"<style>{css}</style></head><body><h1>cohortgate eval report</h1>"
        f"<p>run <code>{escape(report['run'])}</code> · models {escape(', '.join(models))} · "
        f"cohorts {escape(', '.join(cohorts))}</p>{callout}"
        f'<div class="side">{_table(report["cells"], evaluators, "per cohort × model")}'
        f"{_table(report['aggregate'], evaluators, 'all cohorts (beside the per-cohort view)')}</div>"
        f"{''.join(plots)}</body></html>"
    )
