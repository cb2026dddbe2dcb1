"""The worker loop shared by the torch engine (`merge.engine`) and the torch-free one
(`merge.np_engine`): threads take the next planned tensor, ask the kernel to read the following
ones ahead, and process it; the first error stops the others and is re-raised by `run`.
Nothing here imports torch.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable
from typing import Any

from merge.plan import Plan, TensorPlan
from merge.writer import ShardedWriter

READ_AHEAD_TENSORS = 3


class Cancelled(Exception):
    pass


def processing_order(sizes: list[int], workers: int) -> list[int]:
    """The order the workers take the planned tensors in (indices into the plan; `sizes`: the
    elements of each). The plan's order (input file, then byte offset) is the order the disk
    reads the inputs ahead, so it is kept, except for outsized tensors (over 8× the median: the
    embeddings): one with less than 2·(workers − 1) times its own size left after it moves
    earlier until that much is. lm_head, in the last shard, was otherwise merged by one worker
    while the others had nothing left (~0.5 s of a 470M-parameter TIES merge). Moving it costs no
    disk time: its reads wait for the read-ahead already queued in file order. Outputs do not
    depend on the order (every tensor's place in the output files is fixed by the plan)."""
    order = list(range(len(sizes)))
    if not sizes:
        return order
    median = sorted(sizes)[len(sizes) // 2]
    for i in sorted((k for k in range(len(sizes)) if sizes[k] > 8 * median), key=lambda k: -k):
        need = 2 * max(workers - 1, 0) * sizes[i]
        pos = order.index(i)
        after = sum(sizes[k] for k in order[pos + 1 :])
        if after >= need:
            continue
        order.pop(pos)
        j = pos
        while j > 0 and after < need:
            j -= 1
            after += sizes[order[j]]
        order.insert(j, i)
    return order


class WorkerPool:
    def __init__(self, plan: Plan, writer: ShardedWriter, workers: int | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> None:
        self.plan = plan
        self.writer = writer
        cpus = os.cpu_count() or 1
        env = os.environ.get("COHORTGATE_MERGE_WORKERS")
        self.workers = workers or (int(env) if env else max(1, min(4, cpus + 1)))
        self.on_progress = on_progress
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self._next = 0
        self._lock = threading.Lock()
        self.order = processing_order([tp.job.numel for tp in plan.tensors], self.workers)
        _tune_malloc()

    def process(self, tp: TensorPlan) -> None:
        raise NotImplementedError

    def after_tensor(self) -> None:
        _trim()

    def _advise(self, index: int) -> None:
        for i in self.order[index: index + READ_AHEAD_TENSORS]:
            for ref in self.plan.tensors[i].inputs:
                files = self.plan.sources[ref.source].files
                files.advise(files.tensors[ref.name])

    def _worker(self) -> None:
        try:
            while not self.stop.is_set():
                with self._lock:
                    i = self._next
                    self._next += 1
                if i >= len(self.order):
                    return
                self._advise(i + 1)
                tp = self.plan.tensors[self.order[i]]
                self.process(tp)
                self.after_tensor()
                if self.on_progress:
                    self.on_progress(1, tp.out_nbytes)
        except Cancelled:
            return
        except BaseException as exc:  # reported by run()
            with self._lock:
                self.errors.append(exc)
            self.stop.set()

    def run(self, poll: Callable[[], None] | None = None) -> None:
        # the merge makes no reference cycles worth collecting, but allocates an array object per
        # operation: without this the cyclic GC re-scans every imported module's objects (~5% CPU)
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
