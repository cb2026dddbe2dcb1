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

from collections.abc import Callable
from typing import Any

import torch

from merge.methods.base import one_chunk
from merge.methods.passthrough import Passthrough
from merge.plan import Plan, TensorPlan
from merge.st_io import ST_DTYPES
from merge.workers import Cancelled, WorkerPool
from merge.writer import ShardedWriter

# elementwise methods compute in blocks of this many elements: their dozen temporaries per input
# then stay in the L2 cache (~3x faster per op than 1 MB chunk-sized operands), while reads and
# writes keep the larger chunk size
COMPUTE_BLOCK = 1 << 16


def _torch_dtype(code: str) -> torch.dtype:
    return getattr(torch, ST_DTYPES[code][0])  # type: ignore[no-any-return]


class Engine(WorkerPool):
    def __init__(self, plan: Plan, writer: ShardedWriter, workers: int | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> None:
        super().__init__(plan, writer, workers, on_progress)
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
    def run(self, poll: Callable[[], None] | None = None) -> None:
        prev_threads = torch.get_num_threads()
        if self.workers > 1:
            torch.set_num_threads(1)
        try:
            super().run(poll)
        finally:
            torch.set_num_threads(prev_threads)


def _torch_dtype_name(name: str | None) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)


__all__ = ["Engine", "Cancelled"]
