"""`cohortgate serve` and `cohortgate policy {check,explain,schema,hash-key}`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

serve_command = typer.Typer(add_completion=False, help="Run the gateway with a routing policy.")
policy_command = typer.Typer(add_completion=False, no_args_is_help=True,
                             help="Check, explain or export the schema of a routing policy.")


def _fail(msg: str, code: int = 2) -> None:
    typer.echo(msg, err=True)
    raise typer.Exit(code)


def _load(path: Path) -> object:
    from gateway.policy.loader import PolicyError, load_policy

    try:
        return load_policy(path)
    except PolicyError as exc:
        _fail(str(exc))
    raise AssertionError


@serve_command.callback(invoke_without_command=True)
def serve(
    policy: Annotated[Path, typer.Option("--policy", "-p", help="routing policy YAML")] = Path(
        "policies/default.yaml"),
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8080,
    workers: Annotated[int, typer.Option(help="worker processes sharing the port")] = 1,
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING, ERROR")] = "INFO",
) -> None:
    """Serve the OpenAI-compatible API on HOST:PORT, routing by the policy (hot-reloaded)."""
    from gateway.policy.schema import Policy

    pol = _load(policy)
    assert isinstance(pol, Policy)
    if workers < 1:
        _fail("--workers must be at least 1")
    typer.echo(f"cohortgate: policy {policy}")
    typer.echo("  upstreams: " + ", ".join(f"{n} -> {u.base_url} ({u.model})" for n, u in pol.upstreams.items()))
    typer.echo("  models:    " + ", ".join(m.name for m in pol.models))
    typer.echo("  cohorts:   " + ", ".join(c.name for c in pol.cohorts) + f" (default: {pol.default_cohort})")
    typer.echo("  routes:    " + ", ".join(r.id for r in pol.routes))
    open_auth = not pol.auth.keys and not pol.auth.keys_file_env
    typer.echo(f"  auth:      {'open (no caller keys)' if open_auth else 'api keys'}")
    typer.echo(f"listening on http://{host}:{port}/v1  ({workers} worker{'s' if workers > 1 else ''}); "
               "reloads the policy on change or SIGHUP")
    sys.stdout.flush()
    from gateway.server import serve as run

    try:
        code = run(str(policy), host, port, workers, log_level)
    except OSError as exc:
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", 1)
        return
    raise typer.Exit(code)


@policy_command.command("check")
def check(files: Annotated[list[Path], typer.Argument(help="policy files to validate")]) -> None:
    """Validate policy files; print a summary, or every problem with its line."""
    from gateway.policy.loader import PolicyError, load_policy

    bad = 0
    for f in files:
        try:
            pol = load_policy(f)
        except PolicyError as exc:
            typer.echo(str(exc), err=True)
            bad += 1
            continue
        typer.echo(f"{f}: ok ({len(pol.upstreams)} upstreams, {len(pol.models)} models, "
                   f"{len(pol.cohorts)} cohorts, {len(pol.routes)} routes)")
    if bad:
        raise typer.Exit(2)


@policy_command.command("explain")
def explain_cmd(
    file: Annotated[Path, typer.Argument(help="policy file")],
    request: Annotated[Path, typer.Option("--request", "-r", help="request JSON: a body, or "
                                          "{body, headers, path, api_key}")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show the cohort, route, chosen and fallback targets a request would get, and why."""
    from gateway.errors import GatewayError
    from gateway.explain import explain
    from gateway.policy.schema import Policy

    pol = _load(file)
    assert isinstance(pol, Policy)
    try:
        sample = json.loads(request.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        _fail(f"{request}: cannot read the request JSON: {exc}")
    semantic = None
    if pol.semantic is not None and pol.semantic.enabled:
        from gateway.semantic import build_semantic

        semantic = build_semantic(pol)
    try:
        ex = explain(pol, sample, semantic)
    except GatewayError as exc:
        _fail(f"{request}: {exc.message}")
        return
    if as_json:
        typer.echo(json.dumps(ex.__dict__, indent=2))
    else:
        typer.echo("\n".join(ex.lines()))


@policy_command.command("schema")
def schema(out: Annotated[Path | None, typer.Option("--out", "-o", help="write here instead of stdout")] = None
           ) -> None:
    """Print (or write) the policy's JSON Schema."""
    from gateway.policy.schema import Policy

    text = json.dumps(Policy.model_json_schema(), indent=2, sort_keys=True) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {out}")


@policy_command.command("hash-key")
def hash_key_cmd(key: Annotated[str, typer.Argument(help="a caller API key")]) -> None:
    """Print the sha256 digest to store in auth.keys[].sha256."""
    from gateway.auth import hash_key

    typer.echo(hash_key(key))
