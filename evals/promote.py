"""Promotion: decide per cohort whether a merged candidate takes the cohort, and write the new
routing policy plus a decision table.

Contract:
  - refuses (PromotionRefused, nothing written) when provenance.json is missing or unreadable,
    when the candidate, the base or any source is absent from the run, or when the sources named
    do not cover every input source the provenance lists;
  - a cohort is promoted only if, on every gating evaluator the cohort has: the candidate's mean
    meets the absolute floor (default TaskCompletion >= 0.90, Groundedness >= 0.85), and against
    the base and every source the 95% lower bound of the paired per-row difference
    (candidate - baseline) is >= -margin (non-inferiority); its latency p99 and output tokens per
    request stay within the limits relative to the model currently serving the cohort; and the
    cohort has at least `min_rows` rows;
  - winners: the cohort gets a route [candidate at canary weight, incumbent at the rest], mirror
    {targets: [candidate], percent}, fallback to the incumbent first. A route shared with other
    cohorts is split (the new route is inserted before it; explicit routes win over catch-alls
    and, among equals, policy order wins). Losers keep their routes untouched.
The policy is handled as plain dicts (evals never imports gateway); `cohortgate policy check`
validates the result.
"""

from __future__ import annotations

import copy
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evals.runfile import RunError, latest_rows, read_meta, results_path
from evals.stats import mean, paired_diff_ci, percentile


class PromotionRefused(Exception):
    pass


@dataclass
class Gates:
    floors: dict[str, float] = field(default_factory=lambda: {"TaskCompletion": 0.90, "Groundedness": 0.85})
    margin: float = 0.05
    gate: list[str] | None = None  # None: every evaluator the cohort has
    max_latency_ratio: float | None = 1.5
    max_p99_ms: float | None = None
    max_token_ratio: float | None = 1.5
    min_rows: int = 10
    canary_weight: float = 10.0
    mirror_percent: float = 10.0
    mirror_holds_percent: float = 0.0  # >0: held cohorts' routes mirror this share to the candidate


@dataclass
class Decision:
    cohort: str
    promote: bool
    reasons: list[str]
    incumbent: str | None = None
    routes: list[str] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)


def load_provenance(path: Path | None) -> dict[str, Any]:
    if path is None:
        raise PromotionRefused(
            "no --provenance given: promotion needs the candidate's provenance.json (written by `cohortgate merge`)"
        )
    try:
        prov = json.loads(Path(path).read_text())
    except OSError as exc:
        raise PromotionRefused(f"{path}: cannot read the candidate's provenance ({exc.strerror or exc})") from None
    except json.JSONDecodeError as exc:
        raise PromotionRefused(f"{path}: provenance is not valid JSON ({exc})") from None
    if not isinstance(prov, dict) or not isinstance(prov.get("sources"), list) or not prov["sources"]:
        raise PromotionRefused(f"{path}: provenance lists no `sources`; cannot check the run covers them")
    return prov


def _stem(p: str) -> str:
    return Path(str(p).rstrip("/")).name


def resolve_baselines(
    prov: dict[str, Any], models: list[str], base: str | None, sources: list[str] | None, prov_path: Path
) -> tuple[str | None, list[str]]:
    inputs = [s for s in prov["sources"] if s.get("role") != "base"]
    has_base = any(s.get("role") == "base" for s in prov["sources"]) or prov.get("base_model")
    if base is None and has_base:
        base = _stem(prov.get("base_model") or next(s["path"] for s in prov["sources"] if s.get("role") == "base"))
    if sources is None:
        sources = [_stem(s.get("path", "")) for s in inputs]
    elif len(sources) < len(inputs):
        raise PromotionRefused(
            f"{prov_path} lists {len(inputs)} input sources but --sources names {len(sources)}: "
            "the run must compare the candidate with every source"
        )
    if has_base and base is None:
        raise PromotionRefused(f"{prov_path} has a base model; name its run model with --base")
    missing = [m for m in ([base] if base else []) + sources if m not in models]
    if missing:
        raise PromotionRefused(
            f"the run lacks baseline model(s) {', '.join(missing)} (run has: {', '.join(models)}); "
            "evaluate them in the same run, or map names with --base/--sources"
        )
    return base, sources


def _covering(policy: dict[str, Any], cohort: str) -> list[dict[str, Any]]:
    routes = policy.get("routes") or []
    return [r for r in routes if cohort in (r.get("cohorts") or [])] or [
        r for r in routes if "*" in (r.get("cohorts") or [])
    ]


def _incumbent(route: dict[str, Any]) -> str:
    return str(max(route["targets"], key=lambda t: float(t.get("weight", 1.0)))["upstream"])


def decide(
    rows: list[dict[str, Any]], candidate: str, baselines: list[str], policy: dict[str, Any], gates: Gates
) -> list[Decision]:
    scores: dict[tuple[str, str, str], dict[str, float]] = defaultdict(dict)
    lat: dict[tuple[str, str], list[float]] = defaultdict(list)
    tok: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        c, m = str(r["cohort"]), str(r["model"])
        for e, s in (r.get("scores") or {}).items():
            scores[(c, m, e)][str(r["row_id"])] = float(s["score"])
        if not r.get("error"):
            lat[(c, m)].append(float(r["latency_ms"]))
            if (r.get("usage") or {}).get("output_tokens") is not None:
                tok[(c, m)].append(float(r["usage"]["output_tokens"]))
    declared = {c.get("name") for c in policy.get("cohorts") or []} | {policy.get("default_cohort", "out_of_domain")}
    out = []
    for cohort in sorted({str(r["cohort"]) for r in rows}):
        d = Decision(cohort, False, [])
        routes = _covering(policy, cohort)
        d.routes = [str(r["id"]) for r in routes]
        d.incumbent = _incumbent(routes[0]) if routes else None
        evs = sorted(e for (c, m, e) in scores if c == cohort and m == candidate)
        if gates.gate is not None:
            evs = [e for e in evs if e in gates.gate]
        n = max((len(scores[(cohort, candidate, e)]) for e in evs), default=0)
        if cohort not in declared:
            d.reasons.append("cohort is not declared in the policy")
        if not routes:
            d.reasons.append("no route serves this cohort in the policy")
        if d.incumbent == candidate:
            d.reasons.append("already routed to the candidate")
        if n < gates.min_rows:
            d.reasons.append(f"only {n} candidate rows (< {gates.min_rows})")
        for e in evs:
            cand = scores[(cohort, candidate, e)]
            cm = mean(list(cand.values()))
            floor = gates.floors.get(e)
            ok_floor = floor is None or cm >= floor
            d.checks.append(
                {"evaluator": e, "baseline": "(floor)", "candidate_mean": cm, "floor": floor, "ok": ok_floor}
            )
            if not ok_floor:
                d.reasons.append(f"{e} mean {cm:.3f} < floor {floor:.2f}")
            for b in baselines:
                bs = scores.get((cohort, b, e))
                if not bs:
                    d.reasons.append(f"run lacks {b} scores for {e}")
                    continue
                diff, lo, hi, k = paired_diff_ci(cand, bs)
                ok = k >= 2 and lo >= -gates.margin
                d.checks.append(
                    {
                        "evaluator": e,
                        "baseline": b,
                        "candidate_mean": cm,
                        "baseline_mean": mean(list(bs.values())),
                        "diff": diff,
                        "diff_ci": [lo, hi],
                        "n": k,
                        "ok": ok,
                    }
                )
                if not ok:
                    d.reasons.append(f"{e}: vs {b} diff {diff:+.3f}, 95% lower bound {lo:+.3f} < -{gates.margin:.2f}")
        ref = d.incumbent if d.incumbent and lat.get((cohort, d.incumbent)) else (baselines[0] if baselines else None)
        cl = percentile(lat.get((cohort, candidate), []), 99)
        if ref and lat.get((cohort, ref)) and gates.max_latency_ratio is not None:
            rl = percentile(lat[(cohort, ref)], 99)
            if cl > gates.max_latency_ratio * rl:
                d.reasons.append(f"latency p99 {cl:.0f} ms > {gates.max_latency_ratio}x {ref}'s {rl:.0f} ms")
        if gates.max_p99_ms is not None and cl > gates.max_p99_ms:
            d.reasons.append(f"latency p99 {cl:.0f} ms > limit {gates.max_p99_ms:.0f} ms")
        if ref and tok.get((cohort, ref)) and tok.get((cohort, candidate)) and gates.max_token_ratio is not None:
            ct, rt = mean(tok[(cohort, candidate)]), mean(tok[(cohort, ref)])
            if ct > gates.max_token_ratio * rt:
                d.reasons.append(f"output tokens/request {ct:.0f} > {gates.max_token_ratio}x {ref}'s {rt:.0f}")
        d.promote = not d.reasons
        if d.promote:
            d.reasons.append(
                f"non-inferior to {', '.join(baselines)} on {', '.join(evs) or 'no evaluator'}; within limits"
            )
        out.append(d)
    return out


def _route_id(base: str, taken: set[str]) -> str:
    rid = re.sub(r"[^A-Za-z0-9_.:\-]", "-", base)[:120]
    i, out = 2, rid
    while out in taken:
        out, i = f"{rid}-{i}", i + 1
    return out


def rewrite_policy(
    policy: dict[str, Any],
    decisions: list[Decision],
    candidate: str,
    cand_upstream: dict[str, Any] | None,
    gates: Gates,
) -> dict[str, Any]:
    new = copy.deepcopy(policy)
    winners = [d for d in decisions if d.promote]
    if winners and candidate not in new["upstreams"]:
        if cand_upstream is None:
            raise PromotionRefused(
                f"the policy has no upstream {candidate!r} and the run does not say where it is "
                f"served; add upstreams.{candidate} to the policy"
            )
        new["upstreams"][candidate] = cand_upstream
    taken = {str(r["id"]) for r in new["routes"]}
    for d in winners:
        for old in _covering(new, d.cohort):
            inc = _incumbent(old)
            route = copy.deepcopy(old)
            route["cohorts"] = [d.cohort]
            route["targets"] = [
                {"upstream": candidate, "weight": gates.canary_weight, "arm": "candidate"},
                {"upstream": inc, "weight": 100.0 - gates.canary_weight, "arm": "control"},
            ]
            route["fallback"] = [inc] + [f for f in old.get("fallback") or [] if f not in (inc, candidate)]
            route["mirror"] = {**(old.get("mirror") or {}), "targets": [candidate], "percent": gates.mirror_percent}
            at = next(i for i, r in enumerate(new["routes"]) if r is old)
            if old.get("cohorts") == [d.cohort]:
                new["routes"][at] = route
                continue
            route["id"] = _route_id(f"{d.cohort}-{candidate}-canary", taken)
            taken.add(route["id"])
            if d.cohort in old["cohorts"]:
                old["cohorts"] = [c for c in old["cohorts"] if c != d.cohort]
            new["routes"].insert(at, route)
    if gates.mirror_holds_percent > 0:
        _mirror_holds(new, [d for d in decisions if not d.promote], candidate, cand_upstream, gates)
    return new


def _mirror_holds(policy: dict[str, Any], holds: list[Decision], candidate: str,
                  cand_upstream: dict[str, Any] | None, gates: Gates) -> None:
    """Held cohorts keep their targets; their routes shadow a slice to the candidate so it keeps
    being judged on live traffic (only routes that serve held cohorts alone, and have no mirror)."""
    held = {d.cohort for d in holds}
    if not held:
        return
    if candidate not in policy["upstreams"]:
        if cand_upstream is None:
            return
        policy["upstreams"][candidate] = cand_upstream
    for route in policy["routes"]:
        cohorts = set(route.get("cohorts") or [])
        if cohorts and cohorts <= held and not route.get("mirror"):
            route["mirror"] = {"targets": [candidate], "percent": gates.mirror_holds_percent}


def decision_markdown(decisions: list[Decision], candidate: str, baselines: list[str]) -> str:
    lines = [
        f"# Promotion of `{candidate}` (baselines: {', '.join(baselines)})",
        "",
        "| cohort | decision | serving now | route(s) | why |",
        "|---|---|---|---|---|",
    ]
    for d in decisions:
        why = "; ".join(d.reasons).replace("|", "/")
        lines.append(
            f"| {d.cohort} | {'**promote**' if d.promote else 'hold'} | {d.incumbent or '-'} | "
            f"{', '.join(d.routes) or '-'} | {why} |"
        )
    return "\n".join(lines) + "\n"


@dataclass
class PromoteResult:
    decisions: list[Decision]
    policy: dict[str, Any]
    baselines: list[str]


def promote(
    run: Path,
    candidate: str,
    policy_path: Path,
    base: str | None,
    sources: list[str] | None,
    provenance: Path | None,
    gates: Gates,
) -> PromoteResult:
    prov = load_provenance(provenance)
    try:
        rows = latest_rows(results_path(run))
    except RunError as exc:
        raise PromotionRefused(str(exc)) from None
    if not rows:
        raise PromotionRefused(f"{run}: the run has no results (run `cohortgate eval run --out {run}` first)")
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    if candidate not in models:
        raise PromotionRefused(f"candidate {candidate!r} is not in the run (models: {', '.join(models)})")
    b, srcs = resolve_baselines(prov, models, base, sources, provenance or Path("provenance.json"))
    baselines = list(dict.fromkeys(([b] if b else []) + srcs))
    try:
        policy = yaml.safe_load(policy_path.read_text())
    except OSError as exc:
        raise PromotionRefused(f"{policy_path}: cannot read the current policy ({exc.strerror or exc})") from None
    except yaml.YAMLError as exc:
        raise PromotionRefused(f"{policy_path}: not valid YAML ({exc})") from None
    if not isinstance(policy, dict) or not isinstance(policy.get("upstreams"), dict) or not policy.get("routes"):
        raise PromotionRefused(f"{policy_path}: not a routing policy (needs upstreams and routes)")
    decisions = decide(rows, candidate, baselines, policy, gates)
    meta = read_meta(run).get("models", {}).get(candidate)
    up = {"base_url": meta["base_url"], "model": meta["served_model"]} if meta and meta.get("base_url") else None
    return PromoteResult(decisions, rewrite_policy(policy, decisions, candidate, up, gates), baselines)


def write_outputs(res: PromoteResult, out: Path, candidate: str, provenance: Path | None) -> tuple[Path, Path]:
    won = [d.cohort for d in res.decisions if d.promote]
    header = (
        f"# Written by `cohortgate promote` for candidate {candidate} (provenance: {provenance}).\n"
        f"# Promoted cohorts: {', '.join(won) or 'none'}; decisions in {out.stem}.decisions.md\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(header + yaml.safe_dump(res.policy, sort_keys=False, allow_unicode=True))
    md = out.with_name(out.stem + ".decisions.md")
    md.write_text(decision_markdown(res.decisions, candidate, res.baselines))
    out.with_name(out.stem + ".decisions.json").write_text(
        json.dumps(
            {
                "candidate": candidate,
                "baselines": res.baselines,
                "provenance": str(provenance),
                "decisions": [d.__dict__ for d in res.decisions],
            },
            indent=2,
            default=float,
        )
    )
    return out, md
