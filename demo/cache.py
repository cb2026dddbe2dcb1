"""Where the demo keeps its cached artifacts, and how cache keys are made.

Contract: every cached artifact lives under `cache_root()` in a directory whose name ends with
a key derived from *all* of its inputs (source file hashes, data hashes, code version), so a
change in any input produces a new directory instead of silently reusing a stale one.
An artifact is complete only when its `.complete` stamp exists: the stamp is written last,
so an interrupted build is rebuilt, never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

# Bump when the code that produces an artifact changes meaning (invalidates every cache entry).
CODE_VERSION = "demo-1"

STAMP = ".complete"


def cache_root() -> Path:
    """`$COHORTGATE_CACHE`, else `~/.cache/cohortgate`."""
    root = os.environ.get("COHORTGATE_CACHE") or str(Path.home() / ".cache" / "cohortgate")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_dir(path: Path, patterns: tuple[str, ...] = ("*.safetensors", "*.json")) -> str:
    """Hash of a model/adapter directory: names and contents of its weight and config files."""
    h = hashlib.sha256()
    files = sorted({p for pat in patterns for p in path.glob(pat) if p.name != "provenance.json"})
    for p in files:
        h.update(p.name.encode())
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def key_of(obj: Any) -> str:
    """Short stable hash of a JSON-able description of an artifact's inputs."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def is_complete(path: Path) -> bool:
    return (path / STAMP).is_file()


def mark_complete(path: Path, info: dict[str, Any] | None = None) -> None:
    (path / STAMP).write_text(json.dumps(info or {}, indent=2, sort_keys=True) + "\n")


def fresh_dir(path: Path) -> Path:
    """An empty directory at path (a leftover from an interrupted build is removed)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
