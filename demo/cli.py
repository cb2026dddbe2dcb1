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
    rows_per_cohort: Annotated[int | None, typer.Option(help="dataset rows per cohort (default: all; "
                                                             "--fast: 6)")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="max tokens per answer (default 256; --fast: 48)")] = None,
) -> None:
    """Base model -> LoRA specialists -> merge -> per-cohort eval -> promotion -> live gateway on vLLM."""
    from demo.pipeline import Options, run_demo

    opts = Options(fast=fast, serve=serve, port=port,
                   workdir=(workdir / ("fast" if fast else "full")).resolve(),
                   rows_per_cohort=rows_per_cohort if rows_per_cohort is not None else (6 if fast else None),
                   max_tokens=max_tokens or (48 if fast else 256))
    raise typer.Exit(run_demo(opts))
