"""Atomic output directory and a pre-laid-out sharded safetensors writer.

Contract:
- `AtomicDir(dest, force)`: everything is written into a hidden temp directory beside `dest`
  (`.NAME.partial-PID`); `commit()` fsyncs every file and the directory, then renames it onto
  `dest` (an existing `dest` is only replaced with `force=True`, and only at that moment).
  `abort()` (or an exception / SIGTERM reaching the caller) removes the temp dir; a SIGKILL
  leaves only the hidden temp dir, never a partial `dest`, and the next run removes temp dirs
  whose owning process is gone.
- `ShardedWriter(layout)`: the names, dtypes and shapes of all output tensors are known before
  the merge starts, so every shard's header and every tensor's byte offset is fixed up front.
  Worker threads `write(name, byte_offset_in_tensor, data)` in any order with `os.pwrite`; a
  hasher thread follows the completed prefix of each shard and computes its sha256 from the page
  cache while the merge is still running, so hashing overlaps compute.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merge import provenance
from merge.errors import DestinationError


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class AtomicDir:
    def __init__(self, dest: Path, force: bool) -> None:
        self.dest = dest.resolve() if dest.exists() else dest.absolute()
        self.force = force
        check_destination(self.dest, force)
        parent = self.dest.parent
        parent.mkdir(parents=True, exist_ok=True)
        for stale in parent.glob(f".{self.dest.name}.partial-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        self.tmp = parent / f".{self.dest.name}.partial-{os.getpid()}"
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self.done = False

    def commit(self) -> None:
        for f in self.tmp.rglob("*"):
            if f.is_file():
                fsync_path(f)
        fsync_path(self.tmp)
        old = None
        if self.dest.exists():
            check_destination(self.dest, self.force)
            old = self.dest.parent / f".{self.dest.name}.old-{os.getpid()}"
            os.rename(self.dest, old)
        os.rename(self.tmp, self.dest)
        fsync_path(self.dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        self.done = True

    def abort(self) -> None:
        if not self.done:
            shutil.rmtree(self.tmp, ignore_errors=True)


def check_destination(dest: Path, force: bool) -> None:
    if dest.exists() and not force:
        if dest.is_dir() and not any(dest.iterdir()):
            return
        raise DestinationError(f"{dest} already exists; refusing to overwrite it. Pass --force to replace it "
                               f"(the old directory is replaced only after the new one is complete)")
    if dest.exists() and not dest.is_dir():
        raise DestinationError(f"{dest} exists and is not a directory")


# ------------------------------------------------------------------ layout
@dataclass
class TensorSlot:
    name: str
    dtype: str  # safetensors code
    shape: tuple[int, ...]
    nbytes: int
    shard: int = 0
    offset: int = 0  # absolute offset in the shard file


@dataclass
class Shard:
    filename: str
    header: bytes = b""
    size: int = 0
    slots: list[TensorSlot] = field(default_factory=list)


def plan_layout(slots: list[TensorSlot], max_shard_bytes: int) -> list[Shard]:
    """Assign tensors (in order) to shards of at most `max_shard_bytes` of data, HF-style names."""
    groups: list[list[TensorSlot]] = [[]]
    used = 0
    for s in slots:
        if groups[-1] and used + s.nbytes > max_shard_bytes:
            groups.append([])
            used = 0
        groups[-1].append(s)
        used += s.nbytes
    n = len(groups)
    shards = []
    for i, group in enumerate(groups):
        fname = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        header_obj: dict[str, object] = {"__metadata__": {"format": "pt"}}
        pos = 0
        for s in group:
            header_obj[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [pos, pos + s.nbytes]}
            pos += s.nbytes
        raw = json.dumps(header_obj, separators=(",", ":")).encode()
        raw += b" " * ((8 - len(raw) % 8) % 8)
        header = struct.pack("<Q", len(raw)) + raw
        pos = len(header)
        for s in group:
            s.shard = i
            s.offset = pos
            pos += s.nbytes
        shards.append(Shard(fname, header, pos, group))
    return shards


_SYNC_FILE_RANGE: Any = None


def _start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start (not wait for) writeback of a finished range (Linux sync_file_range with
    SYNC_FILE_RANGE_WRITE), so the fsync before the final rename has little left to do."""
    global _SYNC_FILE_RANGE
    if _SYNC_FILE_RANGE is None:
        import ctypes
        import ctypes.util

        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fn = libc.sync_file_range
            fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
            _SYNC_FILE_RANGE = fn
        except (OSError, AttributeError):
            _SYNC_FILE_RANGE = False
    if _SYNC_FILE_RANGE:
        _SYNC_FILE_RANGE(fd, offset, nbytes, 2)  # SYNC_FILE_RANGE_WRITE


class ShardedWriter:
    """Positioned writes into pre-laid-out shards, with in-order sha256 by a follower thread."""

    def __init__(self, directory: Path, shards: list[Shard]) -> None:
        self.dir = directory
        self.shards = shards
        self.slots = {s.name: s for sh in shards for s in sh.slots}
        self.fds: list[int] = []
        self._done: list[dict[int, int]] = [{} for _ in shards]  # start -> end of completed ranges
        self._cond = threading.Condition()
        self._closed = False
        self.hashes: list[str | None] = [None] * len(shards)
        self.error: BaseException | None = None
        for sh in shards:
            fd = os.open(directory / sh.filename, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(fd, sh.size)
            os.pwrite(fd, sh.header, 0)
            self.fds.append(fd)
            self._done[len(self.fds) - 1][0] = len(sh.header)
        self._hasher = threading.Thread(target=self._hash_loop, name="merge-hasher", daemon=True)
        self._hasher.start()

    def write(self, name: str, byte_offset: int, data: memoryview) -> None:
        slot = self.slots[name]
        fd = self.fds[slot.shard]
        pos = slot.offset + byte_offset
        view = data
        while len(view):
            n = os.pwrite(fd, view, pos)
            view = view[n:]
            pos += n
        with self._cond:
            self._done[slot.shard][slot.offset + byte_offset] = pos
            self._cond.notify_all()

    def _hash_loop(self) -> None:
        try:
            buf = bytearray(provenance.HASH_BUF_BYTES)
            mv = memoryview(buf)
            for i, sh in enumerate(self.shards):
                h = hashlib.sha256()
                cursor = 0
                while cursor < sh.size:
                    with self._cond:
                        while cursor not in self._done[i] and not self._closed:
                            self._cond.wait(0.5)
                        if cursor not in self._done[i]:
                            return
                        end = self._done[i].pop(cursor)
                    while cursor < end:
                        n = os.preadv(self.fds[i], [mv[: min(len(buf), end - cursor)]], cursor)
                        h.update(mv[:n])
                        _start_writeback(self.fds[i], cursor, n)
                        cursor += n
                self.hashes[i] = h.hexdigest()
        except BaseException as exc:  # surfaced by finish()
            self.error = exc

    def finish(self) -> dict[str, str]:
        """Wait for the hashes of all shards (every byte must have been written)."""
        self._hasher.join()
        if self.error is not None:
            raise self.error
        missing = [sh.filename for sh, h in zip(self.shards, self.hashes, strict=False) if h is None]
        if missing:
            raise RuntimeError(f"internal error: shards not completely written: {missing}")
        self.close()
        return {sh.filename: h for sh, h in zip(self.shards, self.hashes, strict=False) if h is not None}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []

    def write_index(self) -> None:
        if len(self.shards) <= 1:
            return
        total = sum(s.nbytes for sh in self.shards for s in sh.slots)
        weight_map = {s.name: sh.filename for sh in self.shards for s in sh.slots}
        (self.dir / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
