"""`cohortgate eval run|report` and `cohortgate promote`.

Contract: every failure the user can fix (bad dataset line, bad --model spec, missing run
baseline, missing provenance) prints one message naming the file/field/model and exits 2;
no tracebacks. Heavy modules (numpy, torch via the embedding model) load only inside commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

eval_command = typer.Typer(
    name="eval", help="Run per-cohort evaluations and write reports.", no_args_is_help=True, add_completion=False
)


@eval_command.callback()
def _group() -> None:
    """Run per-cohort evaluations (`run`), write reports (`report`), check datasets (`validate`)."""


def _fail(msg: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(code)


def _thresholds(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for it in items:
        name, _, val = it.partition("=")
        try:
            out[name.strip()] = float(val)
        except ValueError:
            _fail(f"--threshold {it!r}: expected NAME=NUMBER, e.g. TaskCompletion=0.8")
    return out


@eval_command.command("run")
def run_cmd(
    out: Annotated[Path, typer.Option("--out", help="run directory (created; resumed when it exists)")],
    dataset: Annotated[Path | None, typer.Option("--dataset", help="cohort dataset JSONL")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="NAME=BASE_URL[:served_name], repeatable")] = None,
    shadow: Annotated[
        Path | None, typer.Option("--shadow", help="import a gateway shadow sink JSONL as the run")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=1024)] = 8,
    api_key_env: Annotated[
        str | None, typer.Option("--api-key-env", help="env var with the endpoints' API key")
    ] = None,
    evaluator: Annotated[list[str] | None, typer.Option("--evaluator", help="evaluator names (default: all)")] = None,
    threshold: Annotated[list[str] | None, typer.Option("--threshold", help="NAME=VALUE pass threshold")] = None,
    support: Annotated[str, typer.Option(help="claim support: embedding | lexical | judge")] = "embedding",
    judge: Annotated[str | None, typer.Option(help="judge endpoint BASE_URL:MODEL (support=judge)")] = None,
    retries: Annotated[int, typer.Option(min=0, max=20)] = 4,
    timeout: Annotated[float, typer.Option(help="seconds per request")] = 120.0,
    max_tokens: Annotated[int | None, typer.Option()] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Send every dataset row to every model, score each answer, append to RUN_DIR/results.jsonl."""
    from evals.dataset import DatasetError
    from evals.embedding import EmbeddingUnavailable
    from evals.judge import JudgeClient, JudgeError
    from evals.runfile import RunError

    try:
        if shadow is not None:
            from evals.shadow import import_shadow

            if dataset or model:
                _fail("--shadow imports a gateway sink; do not combine it with --dataset/--model")
            n = import_shadow(shadow, out, _thresholds(threshold or []))
            typer.echo(f"imported {n} shadow rows into {out}")
            return
        if dataset is None or not model:
            _fail("give --dataset FILE and at least one --model NAME=BASE_URL[:served_name] (or --shadow FILE)")
        from evals.runner import ModelSpec, RunConfig, run

        if support not in ("embedding", "lexical", "judge"):
            _fail(f"--support {support!r}: choose embedding, lexical or judge")
        jc = None
        if judge:
            from evals.runner import _SPEC

            m = _SPEC.match(judge)
            if not m or not m.group(2):
                _fail(f"--judge {judge!r}: expected BASE_URL:MODEL, e.g. http://127.0.0.1:8000/v1:judge-model")
            jc = JudgeClient(m.group(1), m.group(2), api_key_env)
        elif support == "judge":
            _fail("--support judge needs --judge BASE_URL:MODEL")
        cfg = RunConfig(
            dataset=dataset,
            models=[ModelSpec.parse(s) for s in model],
            out=out,
            concurrency=concurrency,
            api_key_env=api_key_env,
            evaluators=evaluator or None,
            thresholds=_thresholds(threshold or []),
            support=support,  # type: ignore[arg-type]  # checked against the three modes above
            judge=jc,
            max_retries=retries,
            timeout_s=timeout,
            max_tokens=max_tokens,
            progress=progress,
        )
        s = run(cfg)
    except (DatasetError, RunError, ValueError) as exc:
        _fail(str(exc))
    except (JudgeError, EmbeddingUnavailable) as exc:
        _fail(f"{exc} (the rows scored so far are kept; rerun the same command to resume)", 1)
    typer.echo(
        f"{s.done} scored ({s.errors} failed after retries), {s.skipped} already in {out}; "
        f"{s.elapsed_s:.1f}s, {s.rows_per_s:.1f} rows/s"
    )
    if s.errors:
        raise typer.Exit(1)


@eval_command.command("report")
def report_cmd(
    run: Annotated[Path, typer.Argument(help="run directory (or a run-row JSONL such as a shadow sink)")],
    out: Annotated[Path | None, typer.Option(help="where report.json/report.html go (default: RUN_DIR)")] = None,
    candidate: Annotated[str | None, typer.Option(help="model whose retention to compute")] = None,
    sources: Annotated[
        str | None, typer.Option(help="comma-separated source models (default: all but candidate/base)")
    ] = None,
    base: Annotated[str | None, typer.Option(help="base model (excluded from default sources)")] = None,
    quiet: Annotated[bool, typer.Option(help="write files without printing the tables")] = False,
) -> None:
    """Per cohort x model table (mean, pass rate, 95% CIs, latency, tokens, retention) + report.json/html."""
    from evals.report import build_report, print_report, write_report
    from evals.runfile import RunError

    try:
        rep = build_report(run, candidate, [s.strip() for s in sources.split(",")] if sources else None, base)
    except RunError as exc:
        _fail(str(exc))
    target = out or (run if run.is_dir() else run.parent)
    if not quiet:
        print_report(rep)
    jp, hp = write_report(rep, target)
    typer.echo(f"wrote {jp} and {hp}")


promote_command = typer.Typer(
    name="promote", add_completion=False, help="Write a routing policy promoting a candidate per cohort."
)


@promote_command.command()
def promote_cmd(
    run: Annotated[Path, typer.Option("--run", help="run directory with candidate, base and every source")],
    candidate: Annotated[str, typer.Option(help="run model name of the merged candidate")],
    policy: Annotated[Path, typer.Option(help="the current policy YAML")],
    out: Annotated[Path, typer.Option("--out", help="where the new policy YAML goes")],
    provenance: Annotated[Path | None, typer.Option(help="CANDIDATE_DIR/provenance.json (required)")] = None,
    base: Annotated[str | None, typer.Option(help="run model name of the base (default: from provenance)")] = None,
    sources: Annotated[
        str | None, typer.Option(help="comma-separated run names of the sources (default: provenance)")
    ] = None,
    floor: Annotated[list[str] | None, typer.Option(help="NAME=MIN absolute floor on the mean, repeatable")] = None,
    gate: Annotated[
        str | None, typer.Option(help="comma-separated gating evaluators (default: all in the run)")
    ] = None,
    margin: Annotated[
        float, typer.Option(help="non-inferiority margin on the paired-difference CI lower bound")
    ] = 0.05,
    max_latency_ratio: Annotated[float, typer.Option(help="candidate p99 <= ratio x the serving model's")] = 1.5,
    max_p99_ms: Annotated[float | None, typer.Option(help="absolute p99 latency limit")] = None,
    max_token_ratio: Annotated[
        float, typer.Option(help="candidate output tokens/request <= ratio x serving model's")
    ] = 1.5,
    min_rows: Annotated[int, typer.Option(help="minimum candidate rows per cohort")] = 10,
    canary_weight: Annotated[float, typer.Option(min=0.1, max=100.0, help="starting candidate weight (of 100)")] = 10.0,
    mirror_percent: Annotated[float, typer.Option(min=0.0, max=100.0)] = 10.0,
    mirror_holds: Annotated[float, typer.Option(min=0.0, max=100.0,
                                                help="% of held cohorts' traffic mirrored to the candidate")] = 0.0,
    check: Annotated[bool, typer.Option(help="validate the result with `cohortgate policy check`")] = True,
) -> None:
    """Promote the candidate only on the cohorts where it is non-inferior to the base and every source."""
    import subprocess
    import sys

    from evals.promote import Gates, PromotionRefused, promote, write_outputs

    gates = Gates(
        margin=margin,
        gate=[g.strip() for g in gate.split(",")] if gate else None,
        max_latency_ratio=max_latency_ratio,
        max_p99_ms=max_p99_ms,
        max_token_ratio=max_token_ratio,
        min_rows=min_rows,
        canary_weight=canary_weight,
        mirror_percent=mirror_percent,
        mirror_holds_percent=mirror_holds,
    )
    if floor:
        gates.floors.update(_thresholds(floor))
    try:
        res = promote(
            run,
            candidate,
            policy,
            base,
            [s.strip() for s in sources.split(",")] if sources else None,
            provenance,
            gates,
        )
    except PromotionRefused as exc:
        _fail(f"refusing to promote: {exc}")
    written, md = write_outputs(res, out, candidate, provenance)
    typer.echo(md.read_text())
    if check:
        r = subprocess.run(
            [sys.executable, "-m", "cohortgate.cli", "policy", "check", str(written)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if r.returncode != 0:
            _fail(f"the written policy {written} does not pass `cohortgate policy check`:\n{r.stdout}{r.stderr}", 1)
    typer.echo(f"wrote {written} and {md}")


@eval_command.command("validate")
def validate_cmd(
    dataset: Annotated[Path, typer.Argument(help="cohort dataset JSONL")],
) -> None:
    """Check a dataset without running it: every problem with its line, else rows per cohort and evaluator."""
    from collections import Counter

    from evals.dataset import DatasetError, load_dataset
    from evals.evaluators import build

    try:
        rows = load_dataset(dataset)
    except DatasetError as exc:
        _fail(str(exc))
    evs = build(support="lexical")
    per = Counter(r.cohort for r in rows)
    for cohort in sorted(per):
        cov = ", ".join(f"{e.name} {sum(1 for r in rows if r.cohort == cohort and e.applies(r))}" for e in evs)
        typer.echo(f"{cohort}: {per[cohort]} rows ({cov})")
    typer.echo(f"ok: {len(rows)} rows in {dataset}")
