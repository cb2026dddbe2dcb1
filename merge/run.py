"""Orchestration of one merge: plan → (dry-run report | atomic execution + provenance).

Contract: `dry_run(plan)` reads nothing but headers and returns the plan summary: tensors,
bytes to read and write, and a peak-memory estimate. `execute(plan, out, force)` writes the HF
layout (config.json, tokenizer files, sharded safetensors + index, README.md model card,
provenance.json) into a temp dir beside `out` and renames it into place only when complete; any
exception (or Ctrl-C / SIGTERM turned into one by the CLI) removes the temp dir.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from merge import card, checks, provenance
from merge.methods.base import WHOLE_SELECT, Method
from merge.plan import Plan
from merge.st_io import ST_DTYPES
from merge.workers import WorkerPool
from merge.writer import AtomicDir, ShardedWriter, TensorSlot, check_destination, plan_layout

# Used only where /proc is unreadable: the RSS of Python + the engine's imports measured on the
# dev VM (numpy engine ≈ 45 MB, torch engine ≈ 320 MB); builds of numpy/OpenBLAS/torch differ.
RUNTIME_BASE_BYTES = 320 << 20
NUMPY_BASE_BYTES = 48 << 20
# Fixed costs beside the runtime: the source hasher and the output hasher each hold one read
# buffer while the workers run, and the progress/metadata steps allocate a little.
HASHERS = 2
MISC_BYTES = 8 << 20


def _workers() -> int:
    import os

    return max(1, min(4, (os.cpu_count() or 1) + 1))


def _uses_numpy_engine(plan: Plan) -> bool:
    from merge import np_engine

    return os.environ.get("COHORTGATE_MERGE_ENGINE", "auto") != "torch" and np_engine.supports(plan)


def estimate_peak(plan: Plan, workers: int) -> int:
    """Peak RSS estimate: the runtime plus, per worker, the largest working set of one tensor
    (its chunk of every input, the compute temporaries, and the buffers of magnitude selection)."""
    from merge import np_engine

    numpy_engine = _uses_numpy_engine(plan)
    worst = 0
    chunk = plan.options.chunk_elems
    for tp in plan.tensors:
        n = tp.job.numel
        rows = tp.shape[0] if len(tp.shape) > 1 else 1
        row = n // max(rows, 1)
        elems = n if tp.method.needs_whole(tp.job) else min(n, max(row, (chunk // max(row, 1)) * row))
        n_in = len(tp.inputs)
        if numpy_engine:
            # raw chunk reads (≤ 4 bytes/value) + the bf16 output chunk; fp32 blocks of every input,
            # output, scratch and the methods' few block-sized temporaries
            need = elems * (4 * n_in + 2) + np_engine.COMPUTE_BLOCK * 4 * (n_in + 8)
            if type(tp.method).stats is not Method.stats and n <= np_engine.KEEP_RAW_ELEMS:
                need += n * 4 * n_in  # raw inputs kept between the two passes
        else:
            # fp32 inputs + raw reads + deltas/masks/temporaries of the combination step
            need = elems * (4 * n_in + 2 * n_in + 4 * (n_in + 6))
        if type(tp.method).stats is not Method.stats:
            # magnitude selection copies |δ| of tensors up to WHOLE_SELECT elements (pooled
            # buffers, at most two workers at once), else keeps a bracket of ~5%
            need += (min(n, WHOLE_SELECT) * 4 + (n // 20) * 4) * (n_in - 1)
        worst = max(worst, need)
    base = _runtime_bytes(numpy_engine) + HASHERS * provenance.HASH_BUF_BYTES + MISC_BYTES
    # the lineage check runs (and frees its buffers) before the workers start
    return base + max(workers * worst, checks.lineage_check_bytes(plan))


def _runtime_bytes(numpy_engine: bool) -> int:
    """RSS of this interpreter once it has imported what the merge imports. The merge runs the
    same code, so this measures the runtime on this machine instead of assuming a constant:
    numpy's OpenBLAS and torch differ by several MB between builds and core counts."""
    import ctypes  # noqa: F401  (the workers load libc through it to tune malloc)

    from merge import card, np_engine, tokenizer, workers  # noqa: F401

    if not numpy_engine:
        _warm_torch()
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return NUMPY_BASE_BYTES if numpy_engine else RUNTIME_BASE_BYTES


def _warm_torch() -> None:
    """Import torch and run the kinds of op the torch engine runs, on a tiny tensor: the first
    ops map more of libtorch's code and start its thread pool (~20 MB beyond the import)."""
    import torch

    from merge import engine  # noqa: F401

    x = torch.ones(4096, dtype=torch.bfloat16).float()
    d = (x * 0.5 + x).abs()
    torch.where(d > 0, d, torch.zeros_like(d)).to(torch.bfloat16)
    d.argsort(stable=True)
    torch.rand(4096, generator=torch.Generator().manual_seed(0))


def dry_run(plan: Plan) -> dict[str, Any]:
    workers = _workers()
    return {
        "method": plan.method.name,
        "sources": [{"path": str(s.path), "lora": str(s.lora.path) if s.lora else None,
                     "weight_bytes": s.files.total_bytes(), "tokenizer_sha256": s.tokenizer_hash}
                    for s in plan.sources],
        "base_model": str(plan.sources[plan.base].path) if plan.base is not None else None,
        "output_tensors": len(plan.tensors),
        "read_bytes": plan.read_bytes(),
        "write_bytes": plan.write_bytes(),
        "peak_memory_bytes_estimate": estimate_peak(plan, workers),
        "workers": workers,
        "tokenizer": {k: v for k, v in plan.tokenizer.items() if k not in ("rows",)},
        "warnings": plan.warnings,
    }


def _shard_files(plan: Plan) -> list[Path]:
    files: list[Path] = []
    for s in plan.sources:
        files += s.files.files
        if s.lora:
            files += s.lora.files.files
    return files


def execute(plan: Plan, out: Path, force: bool, progress: bool = True, argv: list[str] | None = None,
            hash_cache: bool = True) -> dict[str, Any]:
    check_destination(out, force)
    started = provenance.now()
    t0 = time.monotonic()
    slots = [TensorSlot(tp.name, tp.out_dtype, tp.shape, tp.out_nbytes) for tp in plan.tensors]
    shards = plan_layout(slots, plan.options.out_shard_bytes)
    atomic = AtomicDir(out, force)
    writer: ShardedWriter | None = None
    hasher: provenance.SourceHasher | None = None
    try:
        hasher = provenance.SourceHasher(_shard_files(plan), use_cache=hash_cache)
        writer = ShardedWriter(atomic.tmp, shards)
        total = plan.write_bytes()
        bar = _Progress(len(plan.tensors), total, enabled=progress)
        engine = _engine(plan, writer, bar.advance)
        with bar:
            engine.run(poll=bar.refresh)
        t_engine = time.monotonic()
        out_hashes = writer.finish()
        writer.write_index()
        _write_metadata(plan, atomic.tmp)
        files = dict(out_hashes)
        for f in sorted(atomic.tmp.iterdir()):
            if f.is_file() and f.name not in files and f.name not in ("README.md", provenance.PROVENANCE):
                files[f.name] = provenance.sha256_file(f)
        src_hashes = hasher.result()
        record = _record(plan, files, src_hashes, started, argv, time.monotonic() - t0)
        (atomic.tmp / "README.md").write_text(card.render(record, _config_yaml(plan)))
        record["output"]["files"]["README.md"] = provenance.sha256_file(atomic.tmp / "README.md")
        (atomic.tmp / provenance.PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")
        t_meta = time.monotonic()
        atomic.commit()
        if os.environ.get("COHORTGATE_MERGE_TIMINGS"):
            print(f"timings: engine {t_engine - t0:.2f}s, hashes+metadata {t_meta - t_engine:.2f}s, "
                  f"fsync+rename {time.monotonic() - t_meta:.2f}s", file=sys.stderr)
        return record
    except BaseException:
        if hasher is not None:
            hasher.stop()
        if writer is not None:
            writer.close()
        atomic.abort()
        raise


def _engine(plan: Plan, writer: ShardedWriter, on_progress: Callable[[int, int], None]) -> WorkerPool:
    """The torch-free engine where it covers every tensor (set COHORTGATE_MERGE_ENGINE=torch to
    force the torch one, e.g. to compare them), else the torch engine."""
    if _uses_numpy_engine(plan):
        from merge import np_engine

        return np_engine.NumpyEngine(plan, writer, on_progress=on_progress)
    from merge.engine import Engine

    return Engine(plan, writer, on_progress=on_progress)


def _config_yaml(plan: Plan) -> str:
    try:
        return plan.config_path.read_text()
    except OSError:
        return yaml.safe_dump(plan.cfg.model_dump(mode="json", exclude_none=True))


def _write_metadata(plan: Plan, d: Path) -> None:
    from merge.tokenizer import copy_tokenizer, write_union_tokenizer

    cfg = dict(plan.out_config)
    float_out = [tp.out_dtype for tp in plan.tensors if tp.out_dtype in ("F32", "BF16", "F16")]
    if float_out:
        name = ST_DTYPES[float_out[0]][0]
        keys = [k for k in ("torch_dtype", "dtype") if k in cfg] or ["torch_dtype"]
        for k in keys:
            cfg[k] = name
    (d / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tok_src = plan.sources[plan.tokenizer.get("source", 0)].path
    if plan.tokenizer.get("mode") == "union" and plan.tokenizer.get("extra_tokens"):
        write_union_tokenizer(tok_src, plan.tokenizer["extra_tokens"], d)
    else:
        copy_tokenizer(tok_src, d)
    gen = tok_src / "generation_config.json"
    if gen.exists():
        shutil.copy2(gen, d / "generation_config.json")


def _record(plan: Plan, files: dict[str, str], src_hashes: dict[str, tuple[str, bool]], started: str,
            argv: list[str] | None, seconds: float) -> dict[str, Any]:
    sources = []
    for i, s in enumerate(plan.sources):
        shards = {f.name: src_hashes[str(f)][0] for f in s.files.files}
        cfg_f = s.path / "config.json"
        entry: dict[str, Any] = {
            "path": str(s.path), "role": "base" if i == plan.base else "input", "shards": shards,
            "shard_hashes_from_cache": sorted(f.name for f in s.files.files if src_hashes[str(f)][1]),
            "config_sha256": provenance.file_sha(cfg_f), "tokenizer_sha256": s.tokenizer_hash,
            "lineage": s.lineage or None,
        }
        if s.lora:
            entry["lora"] = {"path": str(s.lora.path), "r": s.lora.r, "alpha": s.lora.alpha, "scale": s.lora.scale,
                             "shards": {f.name: src_hashes[str(f)][0] for f in s.lora.files.files}}
        sources.append(entry)
    lineage = []
    for s in plan.sources:
        for d in (s.lineage or {}).get("training_data", []) or []:
            if d not in lineage:
                lineage.append(d)
    shared_example = plan.tensors[0].job.shared if plan.tensors else {}
    return {
        "format": "cohortgate.provenance/1",
        "tool": provenance.TOOL,
        "started_at": started,
        "finished_at": provenance.now(),
        "seconds": round(seconds, 3),
        "command": argv or sys.argv,
        "method": {"name": plan.method.name, "random": plan.method.random, "seed": plan.options.seed,
                   "shared_parameters_first_tensor": shared_example},
        "config": json.loads(plan.cfg.model_dump_json(exclude_none=True)),
        "config_file_sha256": provenance.file_sha(plan.config_path),
        "options": {"dtype": plan.load_dtype, "out_dtype": plan.cfg.out_dtype, "compute_dtype": "float32",
                    "allow_config_mismatch": plan.options.allow_config_mismatch,
                    "allow_tokenizer_mismatch": plan.options.allow_tokenizer_mismatch,
                    "allow_unrelated_base": plan.options.allow_unrelated_base,
                    "allow_missing_tensors": plan.options.allow_missing_tensors},
        "base_model": str(plan.sources[plan.base].path) if plan.base is not None else None,
        "tokenizer": {k: v for k, v in plan.tokenizer.items() if k not in ("rows",)},
        "sources": sources,
        "lineage": lineage,
        "warnings": plan.warnings,
        "output": {"files": files, "tensors": len(plan.tensors), "bytes": plan.write_bytes()},
    }


class _Progress:
    """rich progress bar (tensors, bytes, ETA) on stderr; silent when disabled."""

    def __init__(self, tensors: int, total_bytes: int, enabled: bool) -> None:
        self.enabled = enabled
        self.done_t = 0
        self.done_b = 0
        self._p: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(TextColumn("merging"), BarColumn(), TextColumn("{task.fields[t]} tensors"),
                               DownloadColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                               transient=False)
            self._task = self._p.add_task("merge", total=total_bytes, t=f"0/{tensors}")
            self.tensors = tensors

    def advance(self, tensors: int, nbytes: int) -> None:
        self.done_t += tensors
        self.done_b += nbytes

    def refresh(self) -> None:
        if self._p is not None:
            self._p.update(self._task, completed=self.done_b, t=f"{self.done_t}/{self.tensors}")

    def __enter__(self) -> _Progress:
        if self._p is not None:
            self._p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self.refresh()
            self._p.stop()
