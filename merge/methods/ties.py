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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from merge.methods._deltas import combine
from merge.methods.base import Chunks, Job, Method, Param, kth_largest_many, one_chunk
from merge.methods.task_arithmetic import GTA_SHARED

if TYPE_CHECKING:  # torch is imported where a function needs it: the numpy engine never does
    import torch

SELECT_BLOCK = 1 << 16


def magnitude_thresholds(chunks: Chunks, n: int, densities: list[float]) -> list[float | None]:
    """Trim threshold of each model's delta (inputs[0] is the base); None = keep all, +inf =
    drop all. One pair of streaming passes serves every model."""
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
