"""provenance.json: where a merged checkpoint came from, and its verification.

Contract: `record(...)` describes every source (path, sha256 of each weight shard, config and
tokenizer hashes, declared training-data lineage or a warning that none is declared, LoRA
adapter and its shard hashes), the method and the full config and resolved options, the seed,
tool version, start/finish timestamps, and the sha256 of every output file the merge wrote.
`verify(out_dir)` re-hashes the output files (and, with `sources=True`, the sources still on
disk) and returns the list of mismatches.

Input shard hashes are computed in a background thread while the merge runs, and cached in
`$COHORTGATE_CACHE/sha256-cache.json` (default ~/.cache/cohortgate) keyed by path, size, inode
and mtime_ns — the same stat-validation git's index uses — so re-merging the same checkpoints
does not re-read them just to hash them. Each shard records whether its hash came from the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path

from merge import __version__
from merge.errors import VerifyError

PROVENANCE = "provenance.json"
_CACHE_LOCK = threading.Lock()


def cache_file() -> Path:
    root = Path(os.environ.get("COHORTGATE_CACHE", Path.home() / ".cache" / "cohortgate"))
    return root / "sha256-cache.json"


HASH_BUF_BYTES = 8 << 20  # read buffer of each hashing thread (bytearray zero-fills it: all resident)


def _stat_key(p: Path) -> str:
    st = p.stat()
    return f"{p.resolve()}|{st.st_size}|{st.st_ino}|{st.st_mtime_ns}"


def sha256_file(p: Path, stop: threading.Event | None = None) -> str:
    h = hashlib.sha256()
    buf = bytearray(HASH_BUF_BYTES)
    mv = memoryview(buf)
    with open(p, "rb", buffering=0) as fh:
        while n := fh.readinto(mv):
            h.update(mv[:n])
            if stop is not None and stop.is_set():
                raise InterruptedError("hashing stopped")
    return h.hexdigest()


def _load_cache() -> dict[str, str]:
    try:
        return dict(json.loads(cache_file().read_text()))
    except (OSError, json.JSONDecodeError):
        return {}


def _store_cache(new: dict[str, str]) -> None:
    with _CACHE_LOCK:
        try:
            cur = _load_cache()
            cur.update(new)
            f = cache_file()
            f.parent.mkdir(parents=True, exist_ok=True)
            tmp = f.with_name(f"{f.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(cur))
            os.replace(tmp, f)
        except OSError:
            pass  # the cache is an optimisation only


class SourceHasher:
    """Hash files in a background thread; `result()` waits and returns {path: (sha256, cached)}."""

    def __init__(self, files: list[Path], use_cache: bool = True) -> None:
        self.files = files
        self.use_cache = use_cache
        self.out: dict[str, tuple[str, bool]] = {}
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._th = threading.Thread(target=self._run, name="merge-source-hasher", daemon=True)
        self._th.start()

    def _run(self) -> None:
        try:
            cache = _load_cache() if self.use_cache else {}
            fresh: dict[str, str] = {}
            for f in self.files:
                key = _stat_key(f)
                if key in cache:
                    self.out[str(f)] = (cache[key], True)
                    continue
                h = sha256_file(f, self._stop)
                fresh[key] = h
                self.out[str(f)] = (h, False)
            if fresh and self.use_cache:
                _store_cache(fresh)
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self._stop.set()
        self._th.join()

    def result(self) -> dict[str, tuple[str, bool]]:
        self._th.join()
        if self.error is not None:
            raise self.error
        return self.out


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def file_sha(p: Path) -> str | None:
    return sha256_file(p) if p.exists() else None


def verify(out_dir: Path, sources: bool = False) -> list[str]:
    pf = out_dir / PROVENANCE
    if not pf.exists():
        raise VerifyError(f"{out_dir}: no {PROVENANCE} (not a cohortgate merge output)")
    try:
        rec = json.loads(pf.read_text())
    except json.JSONDecodeError as exc:
        raise VerifyError(f"{pf}: not valid JSON: {exc}") from None
    problems = []
    outputs: dict[str, str] = rec.get("output", {}).get("files", {})
    if not outputs:
        problems.append(f"{pf}: lists no output files")
    for name, want in outputs.items():
        f = out_dir / name
        if not f.exists():
            problems.append(f"{name}: missing")
        elif sha256_file(f) != want:
            problems.append(f"{name}: sha256 differs from {PROVENANCE} (modified after the merge)")
    listed = set(outputs) | {PROVENANCE}
    for f in sorted(out_dir.glob("*.safetensors")):
        if f.name not in listed:
            problems.append(f"{f.name}: weight file not listed in {PROVENANCE}")
    if sources:
        for s in rec.get("sources", []):
            for name, want in s.get("shards", {}).items():
                f = Path(s["path"]) / name
                if not f.exists():
                    problems.append(f"source {s['path']}/{name}: missing")
                elif sha256_file(f) != want:
                    problems.append(f"source {s['path']}/{name}: sha256 differs (the source changed since the merge)")
    return problems


TOOL = {"name": "cohortgate-merge", "version": __version__}
