"""TIES-merging (Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models",
arXiv:2306.01708).

    τ_i = θ_i − θ_base
    trim:  τ̂_i = τ_i · [|τ_i| ≥ v_i],  v_i = the k_i-th largest |τ_i|,  k_i = max(1, ⌊density_i · n⌋)
    elect: γ = sgn(Σ_i w_i τ̂_i)   (see merge.methods._deltas: sign elected on weighted deltas)
    merge: θ = θ_base + λ · Σ_i m_i w_i τ̂_i / Σ_i m_i w_i,  m_i = [sgn(w_i τ̂_i) = γ]  (disjoint mean)

density ≥ 1 keeps τ_i whole; density ≤ 0 drops it (mergekit also returns zeros there). The
threshold is exact (`kth_largest`, no full argsort); entries tied with the k-th largest
magnitude are all kept, so the kept count can exceed k only on exact ties, independent of
order and chunking (mergekit breaks ties by sort order). normalize defaults to true.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from merge.methods._deltas import combine, combine_np
from merge.methods.base import Chunks, Job, Method, NpChunks, NpKernel, Param, kth_largest_many, one_chunk
from merge.methods.task_arithmetic import GTA_SHARED

if TYPE_CHECKING:  # torch is imported where a function needs it: the numpy engine never does
    import torch

SELECT_BLOCK = 1 << 16


def _threshold_queries(n: int, densities: list[float]) -> tuple[list[float | None], list[tuple[int, int]]]:
    out: list[float | None] = []
    queries = []
    for i, d in enumerate(densities):
        if d >= 1:
            out.append(None)
        elif d <= 0 or n == 0:
            out.append(float("inf"))
        else:
            out.append(0.0)
            queries.append((i, max(1, int(d * n))))
    return out, queries


def magnitude_thresholds(chunks: Chunks, n: int, densities: list[float]) -> list[float | None]:
    """Trim threshold of each model's delta (inputs[0] is the base); None = keep all, +inf =
    drop all. One pair of streaming passes serves every model."""
    out, queries = _threshold_queries(n, densities)
    used = {q[0] for q in queries}

    def values():  # type: ignore[no-untyped-def]
        # in blocks of SELECT_BLOCK: the |δ| temporaries stay in the L2 cache
        for _, xs in chunks():
            size = xs[0].numel()
            for s in range(0, size, SELECT_BLOCK):
                b = xs[0][s : s + SELECT_BLOCK]
                yield [(x[s : s + SELECT_BLOCK] - b).abs_() if i in used else b for i, x in enumerate(xs[1:])]

    for (i, _), v in zip(queries, kth_largest_many(values, n, queries), strict=False):
        out[i] = v
    return out


def magnitude_thresholds_np(chunks: NpChunks, n: int, densities: list[float]) -> list[float | None]:
    """`magnitude_thresholds` over numpy chunks (the same |δ| values, so the same thresholds)."""
    out, queries = _threshold_queries(n, densities)
    used = {q[0] for q in queries}

    def values() -> Iterator[list[np.ndarray]]:
        for _, xs in chunks():
            size = len(xs[0])
            for s in range(0, size, SELECT_BLOCK):
                b = xs[0][s : s + SELECT_BLOCK]
                yield [np.abs(np.subtract(x[s : s + SELECT_BLOCK], b)) if i in used else b
                       for i, x in enumerate(xs[1:])]

    for (i, _), v in zip(queries, kth_largest_many(values, n, queries), strict=False):
        out[i] = v
    return out


def trim_np(delta: np.ndarray, threshold: float | None) -> np.ndarray:
    """`trim` in numpy, in place: hardshrink zeroes -λ ≤ δ ≤ λ (to +0) and keeps NaN.
    As arithmetic (a masked copy is ~10x slower): δ·[|δ| > λ] keeps NaN (NaN·0 = NaN) and every
    kept value; + 0 turns the -0 of zeroed negative values into hardshrink's +0."""
    if threshold is None or threshold <= 0:
        return delta
    if threshold == float("inf"):
        delta[...] = 0
        return delta
    delta *= np.greater(np.abs(delta), np.float32(below(threshold)))
    delta += np.float32(0)
    return delta


@functools.lru_cache(maxsize=4096)
def below(value: float) -> float:
    """The largest float32 below `value`, so that |x| > below(v) ⇔ |x| ≥ v for float32 x."""
    return float(np.nextafter(np.float32(value), np.float32(-1.0)))


def trim(delta: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Keep entries with |δ| ≥ threshold (one fused op: hardshrink keeps |x| > λ)."""
    import torch

    if threshold is None or threshold <= 0:
        return delta
    if threshold == float("inf"):
        return torch.zeros_like(delta)
    return torch.nn.functional.hardshrink(delta, below(threshold))


def ties(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float],
         densities: Sequence[float], lambda_: float = 1.0, normalize: bool = True) -> torch.Tensor:
    thr = magnitude_thresholds(one_chunk([base, *tensors]), base.numel(), list(densities))
    deltas = [trim(x - base, t) for x, t in zip(tensors, thr, strict=False)]
    return combine(base, deltas, weights, consensus=True, normalize=normalize, lambda_=lambda_)


class Ties(Method):
    elementwise = True
    name = "ties"
    needs_base = True
    shared_params = {**GTA_SHARED, "normalize": Param(bool, True)}
    model_params = {"weight": Param(float), "density": Param(float, 1.0)}

    def validate(self, job: Job) -> None:
        if job.shared["rescale"]:
            raise ValueError("rescale: true (L1-norm rescaling of trimmed deltas) is not supported for "
                             f"{self.name}; remove it")

    def stats(self, job: Job, chunks: Chunks) -> Any:
        return magnitude_thresholds(chunks, job.numel, [p["density"] for p in job.per_model])

    def apply(self, job: Job, xs: list[torch.Tensor], state: Any, offset: int) -> torch.Tensor:
        base = xs[0]
        deltas = [trim(x - base, t) for x, t in zip(xs[1:], state, strict=False)]
        return combine(base, deltas, [p["weight"] for p in job.per_model], consensus=True,
                       normalize=job.shared["normalize"], lambda_=job.shared["lambda"])

    def numpy_stats(self, job: Job, chunks: NpChunks) -> Any:
        return magnitude_thresholds_np(chunks, job.numel, [p["density"] for p in job.per_model])

    def numpy_kernel(self, job: Job, kinds: list[str], load: str | None) -> NpKernel | None:
        weights = [p["weight"] for p in job.per_model]
        normalize, lambda_ = job.shared["normalize"], job.shared["lambda"]

        def kernel(xs: list[np.ndarray], out: np.ndarray, tmp: np.ndarray, offset: int, state: Any) -> np.ndarray:
            base = xs[0]
            deltas = [trim_np(np.subtract(x, base), t) for x, t in zip(xs[1:], state, strict=False)]
            return combine_np(base, deltas, weights, consensus=True, normalize=normalize, lambda_=lambda_, out=out)

        return kernel
