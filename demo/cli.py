"""`cohortgate demo [--fast] [--no-serve]`: see demo/pipeline.py for the stages."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

command = typer.Typer(add_completion=False, help="The whole loop on real models: fine-tune, merge, eval, "
                      "promote, serve.")


@command.callback(invoke_without_command=True)
def demo(
    fast: Annotated[bool, typer.Option("--fast", help="tiny local models and a slice of the data (CI)")] = False,
    serve: Annotated[bool, typer.Option("--serve/--no-serve", help="keep serving after the traffic burst")] = True,
    port: Annotated[int, typer.Option(help="gateway port")] = 8080,
    workdir: Annotated[Path, typer.Option(help="where the run's artifacts and logs go")] = Path("cohortgate-demo"),
    rows_per_cohort: Annotated[int | None, typer.Option(help="dataset rows per cohort (default 16, 0 = all 173 "
                                                             "rows; --fast: 6)")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="max tokens per answer (default 160; --fast: 48)")] = None,
    concurrency: Annotated[int, typer.Option(help="eval requests in flight (vLLM batches them)")] = 16,
) -> None:
    """Base model -> LoRA specialists -> merge -> per-cohort eval -> promotion -> live gateway on vLLM."""
    from demo.pipeline import Options, run_demo

    opts = Options(fast=fast, serve=serve, port=port,
                   workdir=(workdir / ("fast" if fast else "full")).resolve(),
                   rows_per_cohort=_rows(rows_per_cohort, fast), max_tokens=max_tokens or (48 if fast else 160),
                   concurrency=concurrency)
    raise typer.Exit(run_demo(opts))


def _rows(rows_per_cohort: int | None, fast: bool) -> int | None:
    """Rows per cohort: 16 by default keeps the full run within ~30 min on 2 cores (>= promote's 10-row
    minimum per cohort); 0 means the whole dataset."""
    if rows_per_cohort is None:
        return 6 if fast else 16
    return rows_per_cohort or None
