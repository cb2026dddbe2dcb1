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
from merge.methods.base import Chunks, Job, Method, Param, kth_largest_many, one_chunk
from merge.methods.task_arithmetic import GTA_SHARED
from merge.methods.ties import trim

Band = tuple[float, float] | None  # (low, high) inclusive magnitude band; None = keep all


def bands(chunks: Chunks, n: int, params: list[tuple[float, float]]) -> list[Band]:
    """The kept magnitude band of each model's delta for (density, gamma) pairs; two streaming
    passes serve every model."""
    out: list[Band] = []
    queries: list[tuple[int, int]] = []
    for i, (density, gamma) in enumerate(params):
        target = int(density * n)
        if density >= 1:
            out.append(None)
        elif target <= 0 or n == 0:
            out.append((float("inf"), float("inf")))
        else:
            n_top = int(gamma * n)
            n_bot = max(0, n - target - n_top)
            out.append((0.0, 0.0))
            queries += [(i, n - n_bot), (i, n - n_bot - target + 1)]  # ascending ranks n_bot, n_bot+target−1
    used = {q[0] for q in queries}

    def values():  # type: ignore[no-untyped-def]
        for _, xs in chunks():
            yield [(x - xs[0]).abs_() if i in used else xs[0] for i, x in enumerate(xs[1:])]

    found = kth_largest_many(values, n, queries)
    for j in range(0, len(queries), 2):
        out[queries[j][0]] = (found[j], found[j + 1])
    return out


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
    found = bands(one_chunk([base, *tensors]), base.numel(), list(zip(densities, gammas, strict=False)))
    deltas = [apply_band(x - base, b) for x, b in zip(tensors, found, strict=False)]
    return combine(base, deltas, weights, consensus=consensus, normalize=normalize, lambda_=lambda_)


class Breadcrumbs(Method):
    elementwise = True
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
        return bands(chunks, job.numel, [(p["density"], p["gamma"]) for p in job.per_model])

    def apply(self, job: Job, xs: list[torch.Tensor], state: Any, offset: int) -> torch.Tensor:
        base = xs[0]
        deltas = [apply_band(x - base, b) for x, b in zip(xs[1:], state, strict=False)]
        return combine(base, deltas, [p["weight"] for p in job.per_model], consensus=self.consensus,
                       normalize=job.shared["normalize"], lambda_=job.shared["lambda"])
