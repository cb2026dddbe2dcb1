"""The `cohortgate` command: a lazy dispatcher over each package's own CLI.

Sub-commands are imported only when invoked, so `cohortgate serve` never imports torch
(merge), numpy (evals) or anything else the proxy does not need.

Each entry maps a command name to `module:attribute`, where the attribute is a click
command (a Typer app converted with `typer.main.get_command`, or a plain click command).
"""

from __future__ import annotations

import importlib
from typing import Any

import click

# name -> (module:attr, one-line help shown in `cohortgate --help` without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("gateway.cli:serve_command", "Run the gateway (OpenAI-compatible proxy) with a routing policy."),
    "policy": ("gateway.cli:policy_command", "Check, explain or export the schema of a routing policy."),
    "fake-upstream": (
        "gateway.fakeupstream:command",
        "Run a local OpenAI-compatible test server with fault modes.",
    ),
    "merge": ("merge.cli:command", "Merge checkpoints (mergekit YAML), dry-run or verify provenance."),
    "eval": ("evals.cli:eval_command", "Run per-cohort evaluations and write reports."),
    "promote": ("evals.cli:promote_command", "Write a routing policy promoting a candidate per cohort."),
    "demo": ("demo.cli:command", "The whole loop on real models: fine-tune, merge, eval, promote, serve."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        target, _ = entry
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise click.ClickException(
                f"`cohortgate {cmd_name}` needs a component that is not installed ({exc.name}). "
                f"Install the matching extra, e.g. pip install 'cohortgate[{_extra_for(cmd_name)}]'."
            ) from exc
        cmd: Any = getattr(module, attr)
        if not isinstance(cmd, click.Command):
            import typer.main

            cmd = typer.main.get_command(cmd)
        return cmd  # type: ignore[no-any-return]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in sorted(COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _extra_for(cmd_name: str) -> str:
    return {"merge": "merge", "eval": "eval", "promote": "eval", "demo": "demo"}.get(cmd_name, "dev")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cohortgate")
def cli() -> None:
    """cohortgate: route LLM traffic by cohort; merge and evaluate release candidates."""


def main() -> None:
    import typer

    try:
        cli(prog_name="cohortgate")
    except typer.Exit as exc:  # Typer's Exit is not click's: map it to the exit status here
        raise SystemExit(exc.exit_code) from None
    except typer.Abort:
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
