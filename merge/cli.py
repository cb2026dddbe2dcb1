"""`cohortgate merge`: the command-line surface of the merge package.

    cohortgate merge CONFIG.yaml OUT_DIR [--dry-run] [--force] [--seed N] [--allow-...]
    cohortgate merge verify OUT_DIR [--sources]
    cohortgate merge lora-merge BASE_DIR ADAPTER_DIR OUT_DIR            (W + alpha/r·B·A, full model)
    cohortgate merge lora-combine ADAPTER... --out OUT_DIR --method cat|linear|ties|dare_linear|dare_ties|svd

A first argument that is not a sub-command is the config path (`run` is implied), so mergekit
users keep typing `CONFIG OUT`. Failures print one message naming the file/field/model and the
fix and exit 2 (bad input / refusal), 3 (verify mismatch) or 1; never a traceback. Importing this
module does not import torch (that happens inside the commands).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from merge.errors import MergeError


class _MergeGroup(click.Group):
    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                             list[str]]:
        if args and args[0] not in self.commands:
            return "run", self.commands["run"], args
        return super().resolve_command(ctx, args)


def _fail(exc: BaseException) -> NoReturn:
    code = exc.exit_code if isinstance(exc, MergeError) else 1
    click.echo(f"error: {exc}", err=True)
    sys.exit(code)


def _sigterm(*_: Any) -> None:
    raise KeyboardInterrupt("SIGTERM")


def _interrupted() -> NoReturn:
    """Cleanup already ran (the temp dir is gone); exit at once. A normal interpreter shutdown
    could meet native (torch) threads still winding down and abort instead of exiting 130."""
    click.echo("error: interrupted; nothing was written to the destination", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


_GC_EXIT_HOOK: list[bool] = []


def _freeze_gc_at_exit() -> None:
    if not _GC_EXIT_HOOK:
        import atexit

        atexit.register(gc.freeze)
        _GC_EXIT_HOOK.append(True)


def _parse_size(text: str) -> int:
    t = text.strip().upper().removesuffix("B")
    mult = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    if t and t[-1] in mult:
        return int(float(t[:-1]) * mult[t[-1]])
    return int(t)


@click.group(cls=_MergeGroup, invoke_without_command=False,
             context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False,
                               "help_option_names": ["-h", "--help"]})
def command() -> None:
    """Merge checkpoints from a mergekit YAML config, verify provenance, or merge LoRA adapters.

    CONFIG OUT_DIR without a sub-command runs the merge (same as `run CONFIG OUT_DIR`)."""


@command.command("run")
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Check everything and print the plan (bytes, memory); write nothing.")
@click.option("--force", is_flag=True, help="Replace OUT_DIR if it exists (only once the new one is complete).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random methods (DARE, DELLA).")
@click.option("--allow-config-mismatch", is_flag=True, help="Merge although non-shape config fields differ.")
@click.option("--allow-tokenizer-mismatch", is_flag=True, help="Merge embedding rows by id although tokenizers differ.")
@click.option("--allow-unrelated-base", is_flag=True, help="Skip the base-lineage check.")
@click.option("--allow-missing-tensors", is_flag=True,
              help="Copy tensors missing from some inputs from one that has them.")
@click.option("--out-shard-size", default="5GB", show_default=True, help="Maximum size of one output shard.")
@click.option("--chunk-elems", type=int, default=1 << 18, show_default=True, help="Elements per processing chunk.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--no-hash-cache", is_flag=True, help="Always re-hash source shards for provenance.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan / result summary as JSON.")
def run_command(config: Path, out_dir: Path, dry_run: bool, force: bool, seed: int, allow_config_mismatch: bool,
                allow_tokenizer_mismatch: bool, allow_unrelated_base: bool, allow_missing_tensors: bool,
                out_shard_size: str, chunk_elems: int, no_progress: bool, no_hash_cache: bool, as_json: bool) -> None:
    """Merge the models of CONFIG (mergekit YAML) into OUT_DIR."""
    signal.signal(signal.SIGTERM, _sigterm)
    # the merge makes no BLAS calls through numpy; without this, numpy's OpenBLAS starts a thread
    # per core at import, whose busy-waiting cost ~0.1 CPU-s per merge on the merge's cores
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    # importing torch allocates ~10^5 objects; cyclic GC passes over them cost ~0.3 CPU-s of
    # start-up, and the merge itself creates no garbage cycles worth collecting. The
    # interpreter's final collection at exit would walk them all again (~0.5 s): objects frozen
    # by an atexit hook are skipped by it.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    _freeze_gc_at_exit()
    try:
        from merge.config import load_config

        cfg = load_config(config)
        if not dry_run:
            from merge import prefetch

            prefetch.start(cfg, config)  # the disk reads the inputs while torch is imported

        from merge.plan import Options, build_plan
        from merge.run import dry_run as plan_summary
        from merge.run import execute

        opts = Options(seed=seed, allow_config_mismatch=allow_config_mismatch,
                       allow_tokenizer_mismatch=allow_tokenizer_mismatch, allow_unrelated_base=allow_unrelated_base,
                       allow_missing_tensors=allow_missing_tensors, out_shard_bytes=_parse_size(out_shard_size),
                       chunk_elems=chunk_elems)
        plan = build_plan(cfg, config, opts)
        if dry_run:
            summary = plan_summary(plan)
            if as_json:
                click.echo(json.dumps(summary, indent=2))
            else:
                _print_plan(summary, out_dir)
            return
        for w in plan.warnings:
            click.echo(f"warning: {w}", err=True)
        record = execute(plan, out_dir, force, progress=not no_progress, argv=sys.argv,
                         hash_cache=not no_hash_cache)
        if as_json:
            click.echo(json.dumps({"out": str(out_dir), "files": record["output"]["files"]}, indent=2))
        else:
            click.echo(f"wrote {out_dir} ({record['output']['tensors']} tensors, "
                       f"{record['output']['bytes'] / 1e6:.1f} MB) in {record['seconds']:.1f}s")
    except KeyboardInterrupt:
        _interrupted()
    except (MergeError, OSError) as exc:
        _fail(exc)
    except Exception as exc:  # an internal bug: still one line, with the type, exit 1
        _fail(RuntimeError(f"internal error ({type(exc).__name__}): {exc}"))
    finally:
        if gc_was_enabled:
            gc.enable()


def _print_plan(s: dict[str, Any], out_dir: Path) -> None:
    click.echo(f"plan: {s['method']} -> {out_dir}")
    for src in s["sources"]:
        lora = f" + LoRA {src['lora']}" if src["lora"] else ""
        click.echo(f"  source {src['path']}{lora}: {src['weight_bytes'] / 1e6:.1f} MB")
    if s["base_model"]:
        click.echo(f"  base model: {s['base_model']}")
    click.echo(f"  output tensors: {s['output_tensors']}")
    click.echo(f"  bytes to read:  {s['read_bytes'] / 1e6:.1f} MB")
    click.echo(f"  bytes to write: {s['write_bytes'] / 1e6:.1f} MB")
    click.echo(f"  peak memory (estimate): {s['peak_memory_bytes_estimate'] / 1e6:.0f} MB with {s['workers']} workers")
    click.echo(f"  tokenizer: {s['tokenizer'].get('mode')}")
    for w in s["warnings"]:
        click.echo(f"  warning: {w}")


@command.command("verify")
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--sources", is_flag=True, help="Also re-hash the source shards named in provenance.json.")
def verify_command(out_dir: Path, sources: bool) -> None:
    """Re-hash a merge output and compare it with its provenance.json."""
    from merge.errors import VerifyError
    from merge.provenance import verify

    try:
        problems = verify(out_dir, sources=sources)
        if problems:
            raise VerifyError(f"{out_dir}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
        click.echo(f"ok: {out_dir} matches its provenance.json")
    except MergeError as exc:
        _fail(exc)


@command.command("lora-merge")
@click.argument("base", type=click.Path(file_okay=False, path_type=Path))
@click.argument("adapter", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True)
@click.option("--dtype", default=None, help="Output dtype (default: the base model's).")
@click.option("--no-progress", is_flag=True)
def lora_merge_command(base: Path, adapter: Path, out_dir: Path, force: bool, dtype: str | None,
                       no_progress: bool) -> None:
    """Merge a PEFT LoRA adapter into its base model: W' = W + (alpha/r)·B·A."""
    signal.signal(signal.SIGTERM, _sigterm)
    try:
        from merge.lora import merge_adapter_into_base

        rec = merge_adapter_into_base(base, adapter, out_dir, force=force, dtype=dtype, progress=not no_progress)
        click.echo(f"wrote {out_dir} ({rec['output']['tensors']} tensors)")
    except KeyboardInterrupt:
        _interrupted()
    except (MergeError, OSError) as exc:
        _fail(exc)
    except Exception as exc:  # an internal bug: still one line, with the type, exit 1
        _fail(RuntimeError(f"internal error ({type(exc).__name__}): {exc}"))


@command.command("lora-combine")
@click.argument("adapters", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--method", type=click.Choice(["cat", "linear", "ties", "dare_linear", "dare_ties", "svd"]),
              default="cat", show_default=True)
@click.option("--weights", default=None, help="Comma-separated weights (default 1 each).")
@click.option("--density", type=float, default=0.5, show_default=True, help="ties/dare density on ΔW.")
@click.option("--rank", type=int, default=None, help="Output rank for svd (default: the largest input rank).")
@click.option("--base", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write a full model (base + combined adapter) instead of an adapter directory.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True)
def lora_combine_command(adapters: tuple[Path, ...], out_dir: Path, method: str, weights: str | None, density: float,
                         rank: int | None, base: Path | None, seed: int, force: bool) -> None:
    """Combine PEFT LoRA adapters into one adapter (or a full model with --base)."""
    try:
        from merge.errors import ConfigError
        from merge.lora import combine_adapters

        try:
            w = [float(x) for x in weights.split(",")] if weights else [1.0] * len(adapters)
        except ValueError:
            raise ConfigError(f"--weights {weights!r}: expected comma-separated numbers") from None
        if len(w) != len(adapters):
            raise ConfigError(f"--weights has {len(w)} values for {len(adapters)} adapters")
        combine_adapters(list(adapters), w, method, out_dir, density=density, rank=rank, base=base, seed=seed,
                         force=force)
        click.echo(f"wrote {out_dir}")
    except (MergeError, OSError) as exc:
        _fail(exc)
    except Exception as exc:  # an internal bug: still one line, with the type, exit 1
        _fail(RuntimeError(f"internal error ({type(exc).__name__}): {exc}"))


if __name__ == "__main__":
    command()
