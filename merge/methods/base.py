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
def kth_largest(values: Callable[[], Iterator[torch.Tensor]], n: int, k: int) -> float:
    """The k-th largest (1-based) of `n` values streamed as 1-D fp32 chunks, exactly.

    Instead of sorting (mergekit argsorts every tensor), a seeded random sample brackets the
    answer, one pass counts the values above the bracket and collects the few inside it, and
    `kthvalue` runs on those. If the bracket misses (adversarial data) it is widened, finally to
    everything, so the result is always exact."""
    if not 1 <= k <= n:
        raise ValueError(f"k={k} out of range for n={n}")
    if n <= 1 << 16:
        x = torch.cat(list(values()))
        return float(x.kthvalue(n - k + 1).values)
    if n <= 1 << 20:  # small enough to keep: compute the values once for both passes
        cached = list(values())
        values = lambda: iter(cached)  # noqa: E731
    # stratified random sample (sorted by construction, no sort needed)
    m = min(1 << 14, max(1 << 10, n >> 4))
    stride = n // m
    g = torch.Generator().manual_seed(0x5EED)
    idx = torch.arange(m, dtype=torch.int64) * stride + torch.randint(0, stride, (m,), generator=g)
    parts, off = [], 0
    for c in values():
        lo, hi = torch.searchsorted(idx, torch.tensor([off, off + c.numel()])).tolist()
        if hi > lo:
            parts.append(c[idx[lo:hi] - off])
        off += c.numel()
    sample = torch.cat(parts)

    def sample_desc(r: int) -> float:  # value of descending rank r (0-based) in the sample
        return float(sample.kthvalue(m - r).values)

    q = k / n
    pos = q * m
    margin = 4.0 * math.sqrt(m * q * (1 - q)) + 16
    for attempt in range(3):
        hi_i, lo_i = math.floor(pos - margin), math.ceil(pos + margin)
        hi_v = sample_desc(hi_i) if hi_i >= 0 and attempt < 2 else math.inf
        lo_v = sample_desc(lo_i) if lo_i < m and attempt < 2 else -math.inf
        above = 0
        cands = []
        for c in values():
            if hi_v != math.inf:
                high = c > hi_v
                above += int(torch.count_nonzero(high))
                sel = (c >= lo_v).logical_and_(high.logical_not_())
            else:
                sel = c >= lo_v
            cands.append(c[sel])
        cand = torch.cat(cands)
        need = k - above
        if 1 <= need <= cand.numel():
            return float(cand.kthvalue(cand.numel() - need + 1).values)
        margin *= 8
    raise AssertionError("unreachable: the last attempt covers every value")


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
