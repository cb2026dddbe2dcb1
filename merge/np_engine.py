"""Torch-free execution of the plans whose every tensor has a numpy kernel (linear, task
arithmetic, TIES, DARE) and a bfloat16 output: the same float32 operations in the same order as
`merge.engine.Engine` with the torch kernels, so the output is byte-identical
(tests/merge/test_np_engine.py), without importing torch, which costs ~1.5 s of wall time
before the first tensor.

Why bfloat16 outputs only: every NaN becomes the one pattern 0xFFFF there, so NaN payloads,
which numpy and torch's kernels may propagate differently, cannot reach the output. Other plans
(float32/float16 outputs, LoRA sources, vocabulary remapping, methods without a numpy kernel)
run on the torch engine.

Per tensor, a worker reads chunks of whole rows (`os.preadv`, raw bytes), converts blocks to
float32 in preallocated per-thread buffers, runs the method's kernel, rounds to bfloat16 and
`pwrite`s the chunk. Methods with statistics (TIES thresholds) first stream over the same
blocks; tensors up to KEEP_RAW_ELEMS elements keep their raw bytes in a reused per-thread
buffer for that, so each input is read once. numpy releases the GIL inside each array
operation, so the workers use both cores.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import numpy as np

from merge.methods.base import WHOLE_SELECT, Method, NpChunks, NpKernel
from merge.npfloat import f32_to_bf16, to_f32
from merge.plan import Plan, TensorPlan
from merge.workers import Cancelled, WorkerPool
from merge.writer import ShardedWriter

# elements per compute block: float32 temporaries of a few blocks fit the L2 cache, and numpy's
# per-call overhead (under the GIL) stays small next to the work
COMPUTE_BLOCK = 1 << 17
# methods with statistics (TIES) read every input twice; tensors up to this many elements keep
# their raw bytes in memory between the two passes instead (3 bf16 inputs: 24 MB per worker)
KEEP_RAW_ELEMS = WHOLE_SELECT
_FLOAT_INPUTS = ("BF16", "F16", "F32")
_LOADS = (None, "bfloat16", "float16", "float32")


def kernel_for(plan: Plan, tp: TensorPlan) -> NpKernel | None:
    """The numpy kernel of one planned tensor, or None when it needs the torch engine."""
    m = tp.method
    stats_ok = type(m).stats is Method.stats or type(m).numpy_stats is not Method.numpy_stats
    if tp.out_dtype != "BF16" or plan.load_dtype not in _LOADS or not m.elementwise or not stats_ok or \
            m.needs_whole(tp.job) or tp.job.numel == 0:
        return None
    kinds = []
    for ref in tp.inputs:
        src = plan.sources[ref.source]
        if ref.row_map is not None or src.lora is not None:
            return None
        kinds.append(src.files.tensors[ref.name].dtype)
    if any(k not in _FLOAT_INPUTS for k in kinds):
        return None
    return m.numpy_kernel(tp.job, kinds, plan.load_dtype)


def supports(plan: Plan) -> bool:
    return bool(plan.tensors) and all(kernel_for(plan, tp) is not None for tp in plan.tensors)


class NumpyEngine(WorkerPool):
    def __init__(self, plan: Plan, writer: ShardedWriter, workers: int | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> None:
        super().__init__(plan, writer, workers, on_progress)
        self._local = threading.local()

    def _buffers(self, n_in: int) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
        """Per-thread float32 input blocks, output and scratch blocks, and a uint32 scratch."""
        bufs = getattr(self._local, "bufs", None)
        if bufs is None or len(bufs[0]) < n_in:
            bufs = ([np.empty(COMPUTE_BLOCK, np.float32) for _ in range(n_in)], np.empty(COMPUTE_BLOCK, np.float32),
                    np.empty(COMPUTE_BLOCK, np.float32), np.empty(COMPUTE_BLOCK, np.uint32))
            self._local.bufs = bufs
        return bufs

    def _keep_buffer(self, nbytes: int) -> np.ndarray:
        """A per-thread buffer for raw inputs kept between two passes, reused across tensors: a
        fresh 24 MB allocation per tensor was page-faulted and zeroed by the kernel each time."""
        buf = getattr(self._local, "keep", None)
        if buf is None or buf.size < nbytes:
            buf = self._local.keep = np.empty(nbytes, np.uint8)
        return buf[:nbytes]

    def process(self, tp: TensorPlan) -> None:
        kernel = kernel_for(self.plan, tp)
        if kernel is None:
            raise AssertionError(f"{tp.name}: no numpy kernel (supports() was not checked)")
        shape = tp.shape
        n_rows = shape[0] if len(shape) > 1 else 1
        row = tp.job.numel // n_rows
        per = max(1, self.plan.options.chunk_elems // max(row, 1))
        ranges = [(r0, min(n_rows, r0 + per)) for r0 in range(0, n_rows, per)]
        infos = [self.plan.sources[ref.source].files.tensors[ref.name] for ref in tp.inputs]
        files = [self.plan.sources[ref.source].files for ref in tp.inputs]
        xbufs, obuf, tbuf, ubuf = self._buffers(len(infos))
        load = self.plan.load_dtype

        def read(r0: int, r1: int, into: np.ndarray | None = None) -> list[np.ndarray]:
            """Rows [r0, r1) of every input; into: a uint8 buffer to hold them all, or None."""
            if self.stop.is_set():
                raise Cancelled()
            if into is None:
                return [f.read_rows_np(info, r0, r1) for f, info in zip(files, infos, strict=True)]
            out, pos = [], 0
            for f, info in zip(files, infos, strict=True):
                nbytes = (r1 - r0) * info.row_elems * info.itemsize
                out.append(f.read_rows_np(info, r0, r1, into[pos : pos + nbytes]))
                pos += nbytes
            return out

        def blocks(raws: list[np.ndarray]) -> Iterator[tuple[int, list[np.ndarray]]]:
            n = raws[0].size
            for s in range(0, n, COMPUTE_BLOCK):
                e = min(n, s + COMPUTE_BLOCK)
                yield s, [to_f32(raw[s:e], info.dtype, load, xb[: e - s])
                          for raw, info, xb in zip(raws, infos, xbufs, strict=False)]

        # overflow/invalid operations give inf/NaN exactly as torch's kernels, silently
        with np.errstate(all="ignore"):
            kept: list[list[np.ndarray]] | None = None
            state = None
            if type(tp.method).stats is not Method.stats:
                if tp.job.numel <= KEEP_RAW_ELEMS:
                    keep = self._keep_buffer(sum(i.nbytes for i in infos))
                    per_row_bytes = sum(i.row_elems * i.itemsize for i in infos)
                    kept = [read(r0, r1, keep[r0 * per_row_bytes : r1 * per_row_bytes]) for r0, r1 in ranges]

                def chunks() -> Iterator[tuple[int, list[np.ndarray]]]:
                    for i, (r0, r1) in enumerate(ranges):
                        for s, xs in blocks(kept[i] if kept is not None else read(r0, r1)):
                            yield r0 * row + s, xs

                source: NpChunks = chunks
                state = tp.method.numpy_stats(tp.job, source)
            for i, (r0, r1) in enumerate(ranges):
                raws = kept[i] if kept is not None else read(r0, r1)
                out = np.empty(raws[0].size, np.uint16)
                for s, xs in blocks(raws):
                    m = len(xs[0])
                    y = kernel(xs, obuf[:m], tbuf[:m], r0 * row + s, state)
                    f32_to_bf16(y, out[s : s + m], ubuf[:m])
                self.writer.write(tp.name, r0 * row * 2, memoryview(out).cast("B"))  # type: ignore[arg-type]
