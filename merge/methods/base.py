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
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where a function needs it: the numpy engine never does
    import torch

Chunks = Callable[[], Iterator[tuple[int, list["torch.Tensor"]]]]
# numpy twin of `Method.apply` for one block: (float32 inputs, float32 out, float32 scratch,
# flat element offset of the block, the state from `numpy_stats`) -> out
NpKernel = Callable[[list[np.ndarray], np.ndarray, np.ndarray, int, Any], np.ndarray]
# numpy twin of `Chunks`: (flat offset, float32 array per input), each valid until the next one
NpChunks = Callable[[], Iterator[tuple[int, list[np.ndarray]]]]
RNG_BLOCK = 1 << 16
# streams up to this many values are selected in memory (4 bytes each per queried stream), by
# at most WHOLE_SELECT_SLOTS threads at once (peak RSS); the others take the streaming path.
# Released buffers are kept for the next tensor: fresh ones would be page-faulted and zeroed
# by the kernel every time (~10% of a TIES merge's CPU).
WHOLE_SELECT = 1 << 22
WHOLE_SELECT_SLOTS = 2
_select_pool: list[list[np.ndarray]] = [[] for _ in range(WHOLE_SELECT_SLOTS)]
_select_lock = threading.Lock()


def _take_select_buffers() -> list[np.ndarray] | None:
    with _select_lock:
        return _select_pool.pop() if _select_pool else None


def _give_select_buffers(bufs: list[np.ndarray]) -> None:
    with _select_lock:
        _select_pool.append(bufs)


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
    # True: output element j depends only on element j of the inputs (and `state`), so the
    # engine may call `apply` on any sub-range of a chunk (it uses cache-sized blocks)
    elementwise: bool = False
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

    def numpy_kernel(self, job: Job, kinds: list[str], load: str | None) -> NpKernel | None:
        """A torch-free twin of `apply` for this job, byte-identical to it (the same float32
        operations in the same order, `merge.npfloat`), used by `merge.np_engine`; None where
        there is none. Only for elementwise methods without `stats`. `kinds`: the inputs'
        safetensors dtypes, `load`: the config's dtype (both decide which products are exact).
        A method that overrides `stats` must override `numpy_stats` too to have one."""
        return None

    def numpy_stats(self, job: Job, chunks: NpChunks) -> Any:
        """`stats` over numpy chunks, with equal results (used with `numpy_kernel`)."""
        return None


def fma_kernel(first: float, coeffs: Sequence[float], kinds: list[str], load: str | None,
               divide_by: float | None = None) -> NpKernel:
    """numpy twin of `out = x0·first; out.add_(x_i, alpha=c_i) for i ≥ 1; out /= divide_by`, each
    add_ one fused multiply-add as torch does it (`merge.npfloat.fma_scalar`): the kernel of
    linear and of task arithmetic. `kinds`: the inputs' dtypes, `load`: the config's dtype."""
    from merge.npfloat import fma_scalar, product_exact

    a = np.float32(first)
    terms = [(c, product_exact(c, k, load)) for c, k in zip(coeffs, kinds[1:], strict=True)]
    d = None if divide_by is None else np.float32(divide_by)

    def kernel(xs: list[np.ndarray], out: np.ndarray, tmp: np.ndarray, offset: int, state: Any) -> np.ndarray:
        np.multiply(xs[0], a, out=out)
        for x, (c, exact) in zip(xs[1:], terms, strict=True):
            fma_scalar(out, x, c, exact, tmp)
        if d is not None:
            out /= d
        return out

    return kernel


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
    buf: np.ndarray
    used: int = 0
    above: int = 0

    def append(self, got: np.ndarray) -> None:
        if self.used + got.size > self.buf.size:
            grown = np.empty(max(self.buf.size * 2, self.used + got.size), dtype=np.float32)
            grown[: self.used] = self.buf[: self.used]
            self.buf = grown
        self.buf[self.used : self.used + got.size] = got
        self.used += got.size


def kth_largest(values: Callable[[], Iterator[torch.Tensor]], n: int, k: int) -> float:
    """The k-th largest (1-based) of `n` values streamed as 1-D fp32 chunks, exactly."""
    return kth_largest_many(lambda: ([c] for c in values()), n, [(0, k)])[0]


def _np(x: Any) -> np.ndarray:
    """A 1-D fp32 chunk as a numpy array (torch tensors share their memory)."""
    return x if isinstance(x, np.ndarray) else x.numpy()


def kth_largest_many(values: Callable[[], Iterator[list[Any]]], n: int,
                     queries: list[tuple[int, int]]) -> list[float]:
    """Exact k-th largest values of several streams of `n` values each.

    `values()` yields, per chunk, one 1-D fp32 tensor or numpy array per stream; `queries` are (stream, k)
    pairs (k 1-based). Instead of sorting (mergekit argsorts every tensor):
    - n ≤ WHOLE_SELECT: one pass copies each queried stream into one buffer and numpy's
      introselect (`ndarray.partition`, ~1.5 ns/element, vs ~20 for torch.kthvalue) places
      every queried rank;
    - larger n (embeddings): a stratified random sample of each stream brackets each answer,
      one more pass counts the values above each bracket and collects the few inside it, and
      the selection runs on those. A bracket that misses (adversarial data) is widened,
      finally to everything, so every result is exact.
    The candidate pass uses numpy comparisons and boolean indexing, several times faster than
    torch's on CPU."""
    for _, k in queries:
        if not 1 <= k <= n:
            raise ValueError(f"k={k} out of range for n={n}")
    if not queries:
        return []
    streams = sorted({s for s, _ in queries})
    bufs = _take_select_buffers() if n <= WHOLE_SELECT else None
    pooled = bufs is not None
    if bufs is None and n <= 1 << 16:
        bufs = []  # small streams: fresh buffers cost nothing (and sampling needs n ≥ 1024)
    if bufs is not None:
        try:
            while len(bufs) < len(streams):
                bufs.append(np.empty(WHOLE_SELECT if pooled else n, dtype=np.float32))
            whole = {s: bufs[i][:n] for i, s in enumerate(streams)}
            off = 0
            for chunk in values():
                size = len(chunk[streams[0]])
                for s in streams:
                    whole[s][off : off + size] = _np(chunk[s])
                off += size
            for s in streams:
                whole[s].partition(sorted({n - k for t, k in queries if t == s}))
            return [float(whole[s][n - k]) for s, k in queries]
        finally:
            if pooled:
                _give_select_buffers(bufs)
    m = min(1 << 14, max(1 << 10, n >> 4))
    stride = n // m
    # the sample only brackets the answers (any sample gives the same, exact, results)
    g = np.random.Generator(np.random.PCG64(0x5EED))
    idx = np.arange(m, dtype=np.int64) * stride + g.integers(0, stride, m)
    # results that outlive a chunk go into preallocated buffers: small long-lived arrays
    # scattered between the chunk temporaries would fragment the malloc arenas (RSS growth)
    sample = {s: np.empty(m, dtype=np.float32) for s in streams}
    off = 0
    for chunk in values():
        size = len(chunk[0])
        lo, hi = (int(v) for v in np.searchsorted(idx, [off, off + size]))
        if hi > lo:
            for s in streams:
                np.take(_np(chunk[s]), idx[lo:hi] - off, out=sample[s][lo:hi])
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
            # the (m − i)-th smallest sample value (torch's kthvalue(m − i), 1-based)
            hi_v = float(np.partition(sample[s], m - hi_i - 1)[m - hi_i - 1]) if hi_i >= 0 and attempt < 2 \
                else math.inf
            lo_v = float(np.partition(sample[s], m - lo_i - 1)[m - lo_i - 1]) if lo_i < m and attempt < 2 \
                else -math.inf
            cap = min(n, int(n * (2 * margins[q] / m) * 1.5) + 1024) if attempt < 2 else n
            brackets[q] = _Bracket(hi_v, lo_v, np.empty(cap, dtype=np.float32))
        for chunk in values():
            for q, b in brackets.items():
                c = _np(chunk[q[0]])
                # bracket bounds are float32 values, so comparing in float32 is exact
                if b.high != math.inf:
                    high = np.greater(c, np.float32(b.high))
                    b.above += int(np.count_nonzero(high))
                    sel = np.greater_equal(c, np.float32(b.low))
                    sel &= ~high
                else:
                    sel = np.greater_equal(c, np.float32(b.low))
                b.append(c[sel])
        for q, b in brackets.items():
            cand = b.buf[: b.used]
            need = q[1] - b.above
            if 1 <= need <= cand.size:
                results[q] = float(np.partition(cand, cand.size - need)[cand.size - need])
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
    numbers. A block read from its start is generated straight into the result (numpy draws
    sequentially, so its first `take` numbers are those of the full block). The PCG64 draws
    are most of a DARE merge's CPU time: they are taken from the generator's raw 64-bit outputs
    (`_uniform_prefix`, the same numbers as `Generator.random`, ~40% cheaper)."""
    import torch

    return torch.from_numpy(uniform_np(key, offset, count))


def uniform_np(key: tuple[object, ...], offset: int, count: int) -> np.ndarray:
    """`uniform` as a numpy array (the same numbers; `uniform` wraps it)."""
    view = np.empty(count, dtype=np.float32)
    pos = 0
    while pos < count:
        el = offset + pos
        b, inner = divmod(el, RNG_BLOCK)
        take = min(RNG_BLOCK - inner, count - pos)
        _uniform_prefix(np.random.PCG64(_block_seed(key, b)), inner, take, view[pos : pos + take])
        pos += take
    return view


_F32_UNIT = np.float32(2.0**-24)


def _uniform_prefix(bits: np.random.PCG64, skip: int, take: int, out: np.ndarray) -> None:
    """Draws [skip, skip + take) of `Generator(bits).random(dtype=float32)` into `out`, from the
    bit generator's raw 64-bit outputs: numpy's float32 draw takes the next 32 bits (the low,
    then the high half of each 64-bit output), keeps the top 24 and scales them by 2^-24
    (exact). `random_raw` makes one 64-bit draw per two floats at ~half the cost of `random`
    (checked against `random` in tests/merge/test_np_engine.py)."""
    raw = bits.random_raw((skip + take + 1) // 2)
    u = raw.view(np.uint32)[skip : skip + take]
    np.right_shift(u, np.uint32(8), out=u)
    np.copyto(out, u, casting="unsafe")  # < 2^24: exact in float32
    out *= _F32_UNIT
