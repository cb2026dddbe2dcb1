"""Shared vocabulary of the merge methods: the per-tensor job, the `Method` interface, the exact
k-th-largest selection used for magnitude thresholds, and the seeded, chunk-invariant random
masks used by DARE and DELLA.

Engine contract: a method sees one output tensor at a time as flat fp32 chunks of whole rows.
`stats(job, chunks)` may stream over all chunks (any number of passes) to compute global
quantities (magnitude thresholds, norms, dot products); `apply(job, xs, state, offset)` then
maps the input chunks starting at flat element `offset` to the output chunk. Results never depend
on the chunk size: thresholds are exact, and random draws are keyed by (seed, tensor, model,
element block), not by processing order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Chunks = Callable[[], Iterator[tuple[int, list[torch.Tensor]]]]
RNG_BLOCK = 1 << 16


@dataclass(frozen=True)
class Param:
    kind: type
    default: Any = ...  # Ellipsis = required


@dataclass
class Job:
    """One output tensor. `inputs` order: the base first when `has_base`, then the other models."""

    name: str
    shape: tuple[int, ...]
    has_base: bool
    shared: dict[str, Any]
    per_model: list[dict[str, Any]]  # one dict per non-base input
    seed: int = 0
    model_ids: list[int] = field(default_factory=list)  # stable ids of the non-base inputs (RNG keys)

    @property
    def numel(self) -> int:
        return math.prod(self.shape) if self.shape else 1

    @property
    def row(self) -> int:
        return self.shape[-1] if len(self.shape) >= 1 else 1


class Method:
    """Interface; subclasses set the class attributes and implement `apply` (and `stats`)."""

    name: str = ""
    needs_base: bool = False  # True: the base model is required and is inputs[0]
    uses_base: bool = True  # False: a given base_model is not an input (linear, passthrough)
    min_models: int = 1  # non-base inputs
    max_models: int | None = None
    random: bool = False
    whole_tensor: bool = False  # True: `apply` needs the whole tensor in one chunk
    shared_params: dict[str, Param] = {}
    model_params: dict[str, Param] = {}

    def needs_whole(self, job: Job) -> bool:
        return self.whole_tensor

    def validate(self, job: Job) -> None:
        """Raise ValueError for parameter values the formula cannot use (run at plan time)."""

    def stats(self, job: Job, chunks: Chunks) -> Any:
        return None

    def apply(self, job: Job, xs: list[torch.Tensor], state: Any, offset: int) -> torch.Tensor:
        raise NotImplementedError


def one_chunk(xs: Sequence[torch.Tensor]) -> Chunks:
    """A `Chunks` source over whole in-memory tensors (used by the pure functions)."""
    flat = [x.reshape(-1) for x in xs]
    return lambda: iter([(0, flat)])


# ------------------------------------------------------------------ exact k-th largest
@dataclass
class _Bracket:
    """Values in [low, high] collected into a growing preallocated buffer; count above high."""

    high: float
    low: float
    buf: torch.Tensor
    used: int = 0
    above: int = 0

    def append(self, got: torch.Tensor) -> None:
        if self.used + got.numel() > self.buf.numel():
            grown = torch.empty(max(self.buf.numel() * 2, self.used + got.numel()), dtype=torch.float32)
            grown[: self.used] = self.buf[: self.used]
            self.buf = grown
        self.buf[self.used : self.used + got.numel()] = got
        self.used += got.numel()


def kth_largest(values: Callable[[], Iterator[torch.Tensor]], n: int, k: int) -> float:
    """The k-th largest (1-based) of `n` values streamed as 1-D fp32 chunks, exactly."""
    return kth_largest_many(lambda: ([c] for c in values()), n, [(0, k)])[0]


def kth_largest_many(values: Callable[[], Iterator[list[torch.Tensor]]], n: int,
                     queries: list[tuple[int, int]]) -> list[float]:
    """Exact k-th largest values of several streams of `n` values each, in two passes in all.

    `values()` yields, per chunk, one 1-D fp32 tensor per stream; `queries` are (stream, k)
    pairs (k 1-based). Instead of sorting (mergekit argsorts every tensor), a stratified random
    sample of each stream brackets each answer, one pass counts the values above each bracket
    and collects the few inside it, and `kthvalue` runs on those. A bracket that misses
    (adversarial data) is widened, finally to everything, so every result is exact."""
    for _, k in queries:
        if not 1 <= k <= n:
            raise ValueError(f"k={k} out of range for n={n}")
    if not queries:
        return []
    if n <= 1 << 16:
        whole = [torch.cat(list(parts)) for parts in zip(*values(), strict=False)]
        return [float(whole[s].kthvalue(n - k + 1).values) for s, k in queries]
    if n <= 1 << 20:  # small enough to keep: compute the values once for both passes
        cached = list(values())
        values = lambda: iter(cached)  # noqa: E731
    streams = sorted({s for s, _ in queries})
    m = min(1 << 14, max(1 << 10, n >> 4))
    stride = n // m
    g = torch.Generator().manual_seed(0x5EED)
    idx = torch.arange(m, dtype=torch.int64) * stride + torch.randint(0, stride, (m,), generator=g)
    # results that outlive a chunk go into preallocated buffers: small long-lived tensors
    # scattered between the chunk temporaries would fragment the malloc arenas (RSS growth)
    sample = {s: torch.empty(m, dtype=torch.float32) for s in streams}
    off = 0
    for chunk in values():
        size = chunk[0].numel()
        lo, hi = torch.searchsorted(idx, torch.tensor([off, off + size])).tolist()
        if hi > lo:
            for s in streams:
                torch.index_select(chunk[s], 0, idx[lo:hi] - off, out=sample[s][lo:hi])
        off += size
    results: dict[tuple[int, int], float] = {}
    margins = {q: 4.0 * math.sqrt(m * (q[1] / n) * (1 - q[1] / n)) + 16 for q in queries}
    for attempt in range(3):
        todo = [q for q in dict.fromkeys(queries) if q not in results]
        if not todo:
            break
        brackets: dict[tuple[int, int], _Bracket] = {}
        for q in todo:
            s, k = q
            pos = k / n * m
            hi_i, lo_i = math.floor(pos - margins[q]), math.ceil(pos + margins[q])
            hi_v = float(sample[s].kthvalue(m - hi_i).values) if hi_i >= 0 and attempt < 2 else math.inf
            lo_v = float(sample[s].kthvalue(m - lo_i).values) if lo_i < m and attempt < 2 else -math.inf
            cap = min(n, int(n * (2 * margins[q] / m) * 1.5) + 1024) if attempt < 2 else n
            brackets[q] = _Bracket(hi_v, lo_v, torch.empty(cap, dtype=torch.float32))
        for chunk in values():
            for q, b in brackets.items():
                c = chunk[q[0]]
                if b.high != math.inf:
                    high = c > b.high
                    b.above += int(torch.count_nonzero(high))
                    sel = (c >= b.low).logical_and_(high.logical_not_())
                else:
                    sel = c >= b.low
                b.append(c[sel])
        for q, b in brackets.items():
            cand = b.buf[: b.used]
            need = q[1] - b.above
            if 1 <= need <= cand.numel():
                results[q] = float(cand.kthvalue(cand.numel() - need + 1).values)
            else:
                margins[q] *= 8
    return [results[q] for q in queries]


# ------------------------------------------------------------------ seeded random numbers
def _block_seed(key: tuple[object, ...], block: int) -> int:
    h = hashlib.blake2b(repr((key, block)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def uniform(key: tuple[object, ...], offset: int, count: int) -> torch.Tensor:
    """U[0,1) fp32 values for elements [offset, offset+count) of the stream named `key`.

    The stream is cut in fixed blocks of RNG_BLOCK elements, each from its own PCG64 generator
    (numpy) seeded by a hash of (key, block index), so any chunking of a tensor sees the same
    numbers."""
    out = torch.empty(count, dtype=torch.float32)
    pos = 0
    while pos < count:
        el = offset + pos
        b, inner = divmod(el, RNG_BLOCK)
        block = np.random.Generator(np.random.PCG64(_block_seed(key, b))).random(RNG_BLOCK, dtype=np.float32)
        take = min(RNG_BLOCK - inner, count - pos)
        out[pos : pos + take] = torch.from_numpy(block[inner : inner + take])
        pos += take
    return out
