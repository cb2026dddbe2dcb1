"""Run directories: RUN_DIR/run.json (what was run) + RUN_DIR/results.jsonl (one run row per
dataset row x model, append-only). The row format is documented in evals/RUN_FORMAT.md; the
gateway's shadow sink writes the same rows.

Contract: `ResultsWriter` appends complete lines and fsyncs them in groups (every batch that
arrives while the previous fsync ran), so a kill loses at most the rows still in flight.
`read_rows` tolerates a torn last line (a kill mid-write) and `repair_tail` truncates it
before appending again, so the file never holds a line glued to a half-written one.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

RESULTS = "results.jsonl"
META = "run.json"
FORMAT_VERSION = 1


class RunError(Exception):
    """A run directory or file is unusable; the message names the file and the fix."""


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def results_path(run: Path) -> Path:
    """RUN_DIR/results.jsonl, or the file itself when given a JSONL (e.g. a shadow sink)."""
    return run if run.is_file() else run / RESULTS


def read_meta(run: Path) -> dict[str, Any]:
    p = run / META
    if run.is_file() or not p.exists():
        return {}
    try:
        return dict(orjson.loads(p.read_bytes()))
    except orjson.JSONDecodeError as exc:
        raise RunError(f"{p}: not valid JSON ({exc}); delete it to start the run afresh") from None


def write_meta(run: Path, meta: dict[str, Any]) -> None:
    tmp = run / (META + ".tmp")
    tmp.write_bytes(orjson.dumps(meta, option=orjson.OPT_INDENT_2))
    os.replace(tmp, run / META)


def json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded JSON) for every complete line of a JSONL file. A torn final line (no
    newline after it: its writer was killed mid-line) is skipped; any other bad line raises."""
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise RunError(f"{path}: cannot read: {exc.strerror or exc}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            if n == len(lines):
                continue
            raise RunError(f"{path}:{n}: not valid JSON; the file is corrupt at this line") from None
        yield n, obj


def read_rows(path: Path) -> Iterator[dict[str, Any]]:
    """Every complete run row; a torn final line is skipped, any other bad line raises."""
    if not path.exists():
        return
    for n, obj in json_lines(path):
        if not isinstance(obj, dict) or "row_id" not in obj or "model" not in obj:
            raise RunError(f"{path}:{n}: not a run row (needs row_id and model; see evals/RUN_FORMAT.md)")
        yield obj


def latest_rows(path: Path) -> list[dict[str, Any]]:
    """One row per (row_id, model, role): the last one written wins (a retried error replaces it)."""
    out: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in read_rows(path):
        out[(str(r["row_id"]), str(r["model"]), str(r.get("role", "")))] = r
    return list(out.values())


def repair_tail(path: Path) -> None:
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


@dataclass
class ResultsWriter:
    path: Path

    def __post_init__(self) -> None:
        repair_tail(self.path)
        self._f = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        self.written = 0

    def write_many(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        self._f.write(b"".join(orjson.dumps(r) + b"\n" for r in rows))
        self._f.flush()
        os.fsync(self._f.fileno())
        self.written += len(rows)

    def close(self) -> None:
        self._f.close()


def now_iso() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t * 1000) % 1000:03d}Z"
