"""Execution: stream every planned tensor through its method and into the output shards.

Contract: never more than a few chunks per worker in memory. A tensor is processed in chunks of
whole rows (about `chunk_elems` elements per input); methods that need global statistics
(magnitude thresholds, norms) stream over the chunks first (re-reading them, from the page cache
for big tensors) and then produce the output chunk by chunk. Several worker threads each take
the next tensor: reads (`os.preadv`), torch kernels and `os.pwrite` all release the GIL, so I/O
of one tensor overlaps compute of another; `posix_fadvise(WILLNEED)` asks the kernel to read
the next tensors ahead. Inputs are converted to the config's `dtype` (as mergekit loads them)
and computed in float32; outputs are cast to `out_dtype` (else `dtype`, else the input dtype).
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable
from typing import Any

import torch

from merge.methods.base import one_chunk
from merge.methods.passthrough import Passthrough
from merge.plan import Plan, TensorPlan
from merge.st_io import ST_DTYPES
from merge.writer import ShardedWriter

READ_AHEAD_TENSORS = 3
# elementwise methods compute in blocks of this many elements: their dozen temporaries per input
# then stay in the L2 cache (~3x faster per op than 1 MB chunk-sized operands), while reads and
# writes keep the larger chunk size
COMPUTE_BLOCK = 1 << 16


class Cancelled(Exception):
    pass


def _torch_dtype(code: str) -> torch.dtype:
    return getattr(torch, ST_DTYPES[code][0])  # type: ignore[no-any-return]


class Engine:
    def __init__(self, plan: Plan, writer: ShardedWriter, workers: int | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> None:
        self.plan = plan
        self.writer = writer
        cpus = os.cpu_count() or 1
        env = os.environ.get("COHORTGATE_MERGE_WORKERS")
        self.workers = workers or (int(env) if env else max(1, min(4, cpus + 1)))
        _tune_malloc()
        self.on_progress = on_progress
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self._next = 0
        self._lock = threading.Lock()
        self._load = _torch_dtype_name(plan.load_dtype)

    # ------------------------------------------------------------------ reading
    def _raw_rows(self, src_idx: int, name: str, r0: int, r1: int) -> torch.Tensor:
        files = self.plan.sources[src_idx].files
        return files.read_rows(files.tensors[name], r0, r1)

    def _float(self, raw: torch.Tensor) -> torch.Tensor:
        if self._load is not None and raw.dtype != self._load:
            raw = raw.to(self._load)
        return raw.float()

    def _lora_delta(self, src_idx: int, name: str, r0: int, r1: int) -> torch.Tensor | None:
        """s·B[r0:r1]·A for the rows being read (A is r×in, small; only B's rows are read)."""
        lora = self.plan.sources[src_idx].lora
        if lora is None or name not in lora.targets:
            return None
        a_name, b_name = lora.targets[name]
        a = lora.files.read(a_name).float()
        b = lora.files.read_rows(lora.files.tensors[b_name], r0, r1).float().reshape(r1 - r0, -1)
        return (b @ a).mul_(lora.scale).reshape(-1)

    def read_input(self, tp: TensorPlan, k: int, r0: int, r1: int) -> torch.Tensor:
        ref = tp.inputs[k]
        if ref.row_map is None:
            x = self._float(self._raw_rows(ref.source, ref.name, r0, r1))
            d = self._lora_delta(ref.source, ref.name, r0, r1)
            return x if d is None else x.add_(d)
        return self._read_remapped(tp, k, r0, r1)

    def _read_remapped(self, tp: TensorPlan, k: int, r0: int, r1: int) -> torch.Tensor:
        """Rows of a vocabulary tensor in output-token order; a row the source lacks is taken from
        the output tokenizer's source, else from the first input that has the token. Runs of
        consecutive source rows are read with one call."""
        row = tp.shape[1]
        out = torch.zeros((r1 - r0, row), dtype=torch.float32)
        order = [k] + [j for j in range(len(tp.inputs)) if tp.inputs[j].source == tp.fill_from[k]] + \
            list(range(len(tp.inputs)))
        picks: list[tuple[int, int]] = []  # (input index, source row) per output row; (-1, -1) = none
        for r in range(r0, r1):
            for j in order:
                src_row = tp.inputs[j].row_map[r]  # type: ignore[index]
                if src_row >= 0:
                    picks.append((j, src_row))
                    break
            else:
                picks.append((-1, -1))
        start = 0
        while start < len(picks):
            j, s0 = picks[start]
            end = start + 1
            while end < len(picks) and picks[end][0] == j and picks[end][1] == s0 + (end - start):
                end += 1
            if j >= 0:
                ref = tp.inputs[j]
                raw = self._raw_rows(ref.source, ref.name, s0, s0 + (end - start))
                out[start:end] = self._float(raw).reshape(end - start, row)
            start = end
        return out.reshape(-1)

    # ------------------------------------------------------------------ compute
    def _advise(self, index: int) -> None:
        for tp in self.plan.tensors[index: index + READ_AHEAD_TENSORS]:
            for ref in tp.inputs:
                files = self.plan.sources[ref.source].files
                files.advise(files.tensors[ref.name])

    def _apply_emit(self, tp: TensorPlan, xs: list[torch.Tensor], state: Any, offset: int) -> None:
        n = xs[0].numel()
        if not tp.method.elementwise or n <= COMPUTE_BLOCK:
            self._emit(tp, tp.method.apply(tp.job, xs, state, offset), offset)
            return
        out = torch.empty(n, dtype=_torch_dtype(tp.out_dtype))
        for s in range(0, n, COMPUTE_BLOCK):
            e = min(n, s + COMPUTE_BLOCK)
            out[s:e].copy_(tp.method.apply(tp.job, [x[s:e] for x in xs], state, offset + s))
        self._emit(tp, out, offset)

    def _emit(self, tp: TensorPlan, out: torch.Tensor, elem_offset: int) -> None:
        data = out.to(_torch_dtype(tp.out_dtype)).contiguous().view(torch.uint8)
        self.writer.write(tp.name, elem_offset * ST_DTYPES[tp.out_dtype][1],
                          memoryview(data.numpy()))  # type: ignore[arg-type]

    def process(self, tp: TensorPlan) -> None:
        shape = tp.shape
        n_rows = shape[0] if len(shape) > 1 else 1
        numel = tp.job.numel
        row = numel // n_rows if n_rows else 0
        if numel == 0:
            return
        if self._raw_copy(tp):
            return
        chunk = self.plan.options.chunk_elems
        per = n_rows if tp.method.needs_whole(tp.job) else max(1, chunk // max(row, 1))
        ranges = [(r, min(r + per, n_rows)) for r in range(0, n_rows, per)]
        n_in = len(tp.inputs)

        def load(r0: int, r1: int) -> list[torch.Tensor]:
            if self.stop.is_set():
                raise Cancelled()
            return [self.read_input(tp, k, r0, r1) for k in range(n_in)]

        if len(ranges) == 1:
            xs = load(0, n_rows)
            state = tp.method.stats(tp.job, one_chunk(xs))
            self._apply_emit(tp, xs, state, 0)
            return
        state = tp.method.stats(tp.job, lambda: ((r0 * row, load(r0, r1)) for r0, r1 in ranges))
        for r0, r1 in ranges:
            xs = load(r0, r1)
            self._apply_emit(tp, xs, state, r0 * row)

    def _raw_copy(self, tp: TensorPlan) -> bool:
        """Passthrough without scaling, conversion, LoRA or remapping: copy bytes in 64 MB pieces."""
        if not isinstance(tp.method, Passthrough) or tp.job.per_model[0].get("scale") is not None:
            return False
        ref = tp.inputs[0]
        src = self.plan.sources[ref.source]
        info = src.files.tensors[ref.name]
        if ref.row_map is not None or info.dtype != tp.out_dtype or (src.lora and ref.name in src.lora.targets):
            return False
        if self._load is not None and ST_DTYPES[info.dtype][0] != str(self._load).removeprefix("torch.") and \
                info.dtype in ("F32", "F16", "BF16"):
            return False
        per = max(1, (64 << 20) // max(1, info.row_elems * info.itemsize))
        for r0 in range(0, info.rows, per):
            r1 = min(info.rows, r0 + per)
            raw = src.files.read_rows(info, r0, r1).view(torch.uint8)
            self.writer.write(tp.name, r0 * info.row_elems * info.itemsize,
                              memoryview(raw.numpy()))  # type: ignore[arg-type]
        return True

    # ------------------------------------------------------------------ workers
    def _worker(self) -> None:
        try:
            while not self.stop.is_set():
                with self._lock:
                    i = self._next
                    self._next += 1
                if i >= len(self.plan.tensors):
                    return
                self._advise(i + 1)
                tp = self.plan.tensors[i]
                self.process(tp)
                _trim()
                if self.on_progress:
                    self.on_progress(1, tp.out_nbytes)
        except Cancelled:
            return
        except BaseException as exc:  # reported by run()
            with self._lock:
                self.errors.append(exc)
            self.stop.set()

    def run(self, poll: Callable[[], None] | None = None) -> None:
        prev_threads = torch.get_num_threads()
        if self.workers > 1:
            torch.set_num_threads(1)
        # the merge makes no reference cycles worth collecting, but allocates a tensor object per
        # operation: without this the cyclic GC re-scans torch's ~10^5 module objects (~5% CPU)
        gc_was_enabled = gc.isenabled()
        gc.freeze()
        gc.disable()
        self._advise(0)
        threads = [threading.Thread(target=self._worker, name=f"merge-worker-{i}", daemon=True)
                   for i in range(self.workers)]
        try:
            for th in threads:
                th.start()
            while any(th.is_alive() for th in threads):
                for th in threads:
                    th.join(timeout=0.1)
                if poll:
                    poll()
        except BaseException:
            self.stop.set()
            for th in threads:
                th.join()
            raise
        finally:
            torch.set_num_threads(prev_threads)
            gc.unfreeze()
            if gc_was_enabled:
                gc.enable()
        if self.errors:
            raise self.errors[0]


_LIBC: Any = None


def _trim() -> None:
    """Opt-in (COHORTGATE_MALLOC_TRIM=1): give freed arena memory back to the OS after each
    tensor (glibc malloc_trim also releases free pages inside the heap), so RSS follows the live
    working set. Off by default: the next tensor then page-faults and zeroes the same memory
    again, which cost 0.5-2 CPU-s per 470M-parameter merge for 3-20 MB less peak RSS (the
    fixed mmap threshold below already returns every large block on free)."""
    if _LIBC is not None and _TRIM_EACH_TENSOR:
        _LIBC.malloc_trim(0)


_TRIM_EACH_TENSOR = os.environ.get("COHORTGATE_MALLOC_TRIM", "0") == "1"


def _tune_malloc() -> None:
    """Fixed glibc malloc thresholds. By default glibc raises its mmap threshold to the size of
    the largest block freed so far (up to 32 MB) and keeps such blocks in per-thread arenas, so
    RSS ratchets up to ~workers × the largest temporary. With a fixed threshold, chunk-sized
    temporaries still come from (fast, reused) arena memory, and anything bigger is mmapped and
    returned to the OS on free."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name or os.environ.get("COHORTGATE_MALLOC_TUNE", "1") == "0":
        return
    global _LIBC
    try:
        libc = ctypes.CDLL(name)
        _LIBC = libc
        mmap_threshold = int(os.environ.get("COHORTGATE_MMAP_THRESHOLD", 8 << 20))
        libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD (also disables the dynamic adjustment)
        libc.mallopt(-1, 16 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _torch_dtype_name(name: str | None) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)


__all__ = ["Engine", "Cancelled"]
