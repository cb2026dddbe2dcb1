"""Torch-free execution of the plans whose every tensor has a numpy kernel (linear, task
arithmetic) and a bfloat16 output: the same chunks, blocks and float32 operations as
`merge.engine.Engine`, so the output is byte-identical (tests/merge/test_np_engine.py), without
importing torch, which costs ~1.5 s of a ~5 s merge of three 470M-parameter models.

Why bfloat16 outputs only: every NaN becomes the one pattern 0xFFFF there, so NaN payloads,
which numpy and torch's kernels may propagate differently, cannot reach the output. Other plans
(float32/float16 outputs, LoRA sources, vocabulary remapping, methods with global statistics or
no numpy kernel) run on the torch engine.

Per tensor, a worker reads chunks of whole rows (`os.preadv`, raw bytes), converts 64K-element
blocks to float32 in preallocated per-thread buffers (they stay in the L2 cache), runs the
method's kernel, rounds to bfloat16 and `pwrite`s the chunk. numpy releases the GIL inside each
array operation, so two workers use both cores.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from merge.methods.base import Method, NpKernel
from merge.npfloat import f32_to_bf16, to_f32
from merge.plan import Plan, TensorPlan
from merge.workers import Cancelled, WorkerPool
from merge.writer import ShardedWriter

COMPUTE_BLOCK = 1 << 16  # as merge.engine.COMPUTE_BLOCK: temporaries stay in the L2 cache
_FLOAT_INPUTS = ("BF16", "F16", "F32")
_LOADS = (None, "bfloat16", "float16", "float32")


def kernel_for(plan: Plan, tp: TensorPlan) -> NpKernel | None:
    """The numpy kernel of one planned tensor, or None when it needs the torch engine."""
    m = tp.method
    if tp.out_dtype != "BF16" or plan.load_dtype not in _LOADS or not m.elementwise or \
            type(m).stats is not Method.stats or m.needs_whole(tp.job) or tp.job.numel == 0:
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

    def process(self, tp: TensorPlan) -> None:
        kernel = kernel_for(self.plan, tp)
        if kernel is None:
            raise AssertionError(f"{tp.name}: no numpy kernel (supports() was not checked)")
        shape = tp.shape
        n_rows = shape[0] if len(shape) > 1 else 1
        row = tp.job.numel // n_rows
        per = max(1, self.plan.options.chunk_elems // max(row, 1))
        infos = [self.plan.sources[ref.source].files.tensors[ref.name] for ref in tp.inputs]
        files = [self.plan.sources[ref.source].files for ref in tp.inputs]
        xbufs, obuf, tbuf, ubuf = self._buffers(len(infos))
        load = self.plan.load_dtype
        # overflow/invalid operations give inf/NaN exactly as torch's kernels, silently
        with np.errstate(all="ignore"):
            for r0 in range(0, n_rows, per):
                if self.stop.is_set():
                    raise Cancelled()
                r1 = min(n_rows, r0 + per)
                raws = [f.read_rows_np(info, r0, r1) for f, info in zip(files, infos, strict=True)]
                n = raws[0].size
                out = np.empty(n, np.uint16)
                for s in range(0, n, COMPUTE_BLOCK):
                    e = min(n, s + COMPUTE_BLOCK)
                    m = e - s
                    xs = [to_f32(raw[s:e], info.dtype, load, xb[:m])
                          for raw, info, xb in zip(raws, infos, xbufs, strict=False)]
                    f32_to_bf16(kernel(xs, obuf[:m], tbuf[:m]), out[s:e], ubuf[:m])
                self.writer.write(tp.name, r0 * row * 2, memoryview(out).cast("B"))  # type: ignore[arg-type]
