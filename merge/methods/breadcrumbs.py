"""Model Breadcrumbs (Davari & Belilovsky 2024, "Model Breadcrumbs: Scaling Multi-Task Model
Merging with Sparse Masks", arXiv:2312.06795).

Per task vector τ_i = θ_i − θ_base with n entries, rank |τ_i| ascending and keep the band
    n_top = ⌊gamma·n⌋ largest dropped (outliers), target = ⌊density·n⌋ kept,
    n_bot = max(0, n − target − n_top) smallest dropped,
i.e. keep ascending ranks [n_bot, n_bot + target) — the same band mergekit 0.1.5 keeps.
    breadcrumbs:       θ = θ_base + λ · Σ_i w_i τ̂_i        (normalize default false)
    breadcrumbs_ties:  with TIES sign consensus (merge.methods._deltas)

Pitfall handled: with gamma·n < 1 the top set is empty and the band simply reaches the largest
entry (older mergekit sliced `[n_bot:-0]`, which kept nothing). The band edges are exact
thresholds (`kth_largest`); entries tied with an edge are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from merge.methods._deltas import check_weights, combine
from merge.methods.base import Chunks, Job, Method, Param, kth_largest, one_chunk
from merge.methods.task_arithmetic import GTA_SHARED
from merge.methods.ties import trim

Band = tuple[float, float] | None  # (low, high) inclusive magnitude band; None = keep all


def band(chunks: Chunks, n: int, index: int, density: float, gamma: float) -> Band:
    if density >= 1:
        return None
    target = int(density * n)
    if target <= 0 or n == 0:
        return (float("inf"), float("inf"))
    n_top = int(gamma * n)
    n_bot = max(0, n - target - n_top)

    def values():  # type: ignore[no-untyped-def]
        for _, xs in chunks():
            yield (xs[index] - xs[0]).abs_()

    low = kth_largest(values, n, n - n_bot)  # ascending rank n_bot (0-based)
    high = kth_largest(values, n, n - n_bot - target + 1)  # ascending rank n_bot + target − 1
    return (low, high)


def apply_band(delta: torch.Tensor, b: Band) -> torch.Tensor:
    """Keep entries with low ≤ |δ| ≤ high."""
    if b is None:
        return delta
    if b[0] == float("inf"):
        return torch.zeros_like(delta)
    kept = trim(delta, b[0])
    return kept - torch.nn.functional.hardshrink(kept, b[1])


def breadcrumbs(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float],
                densities: Sequence[float], gammas: Sequence[float], *, consensus: bool, lambda_: float = 1.0,
                normalize: bool = False) -> torch.Tensor:
    src = one_chunk([base, *tensors])
    bands = [band(src, base.numel(), i + 1, d, g) for i, (d, g) in enumerate(zip(densities, gammas))]
    deltas = [apply_band(x - base, b) for x, b in zip(tensors, bands)]
    return combine(base, deltas, weights, consensus=consensus, normalize=normalize, lambda_=lambda_)


class Breadcrumbs(Method):
    needs_base = True
    shared_params = GTA_SHARED
    model_params = {"weight": Param(float), "density": Param(float, 1.0), "gamma": Param(float, 0.01)}

    def __init__(self, consensus: bool) -> None:
        self.consensus = consensus
        self.name = "breadcrumbs_ties" if consensus else "breadcrumbs"

    def validate(self, job: Job) -> None:
        if job.shared["rescale"]:
            raise ValueError(f"rescale: true (L1-norm rescaling) is not supported for {self.name}; remove it")
        for p in job.per_model:
            if not 0 <= p["gamma"] <= 1:
                raise ValueError(f"gamma must be in [0, 1], got {p['gamma']}")
        check_weights([p["weight"] for p in job.per_model], job.shared["normalize"], self.consensus)

    def stats(self, job: Job, chunks: Chunks) -> Any:
        return [band(chunks, job.numel, i + 1, p["density"], p["gamma"]) for i, p in enumerate(job.per_model)]

    def apply(self, job: Job, xs: list[torch.Tensor], state: Any, offset: int) -> torch.Tensor:
        base = xs[0]
        deltas = [apply_band(x - base, b) for x, b in zip(xs[1:], state)]
        return combine(base, deltas, [p["weight"] for p in job.per_model], consensus=self.consensus,
                       normalize=job.shared["normalize"], lambda_=job.shared["lambda"])
