"""DELLA-merging with MagPrune (Deep et al. 2024, "DELLA-Merging: Reducing Interference in Model
Merging through Magnitude-Based Sampling", arXiv:2406.11617).

Per task vector τ_i = θ_i − θ_base, within each row (the last axis; a 1-D tensor is one row)
rank the entries by magnitude, r = 0 (smallest) … c−1 (largest), and keep entry j with
    p_j = (density − ε) + 2ε · r_j / (c − 1)          (p_j = density when c = 1)
so larger deltas are kept more often and the mean keep rate is `density`. Kept entries are
rescaled by 1/p_j (rescale: true, the default; the paper's unbiased rescale), then combined:
    della:         TIES sign consensus, normalize default true
    della_linear:  plain weighted sum, normalize default false
θ = θ_base + λ · combination. density ± ε must lie in (0, 1) (checked at plan time).
Draws are seeded per (seed, tensor, model, element block). Deliberate difference: mergekit
rescales the kept deltas to the original L1 norm instead of by 1/p_j. Equal magnitudes within
a row are ranked by position (stable sort).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from merge.methods._deltas import check_weights, combine
from merge.methods.base import Job, Method, Param, uniform
from merge.methods.task_arithmetic import GTA_SHARED


def keep_probabilities(delta: torch.Tensor, row: int, density: float, epsilon: float) -> torch.Tensor:
    rows = delta.reshape(-1, row)
    order = rows.abs().argsort(dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(row).expand_as(order).contiguous())
    if row == 1:
        frac = torch.full(rows.shape, 0.5)
    else:
        frac = ranks.to(torch.float32) / (row - 1)
    return ((density - epsilon) + frac * (2 * epsilon)).reshape(delta.shape)


def della_drop(delta: torch.Tensor, row: int, density: float, epsilon: float, rescale: bool,
               key: tuple[object, ...], offset: int = 0) -> torch.Tensor:
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    p = keep_probabilities(delta, row, density, epsilon)
    keep = uniform(key, offset, delta.numel()).reshape(delta.shape) < p
    out = delta * keep
    if rescale:
        out.div_(p)
    return out


def della(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float],
          densities: Sequence[float], epsilons: Sequence[float], *, consensus: bool, seed: int = 0,
          name: str = "", lambda_: float = 1.0, normalize: bool = True, rescale: bool = True) -> torch.Tensor:
    row = base.shape[-1] if base.dim() >= 1 else 1
    deltas = [della_drop((x - base).reshape(-1), row, d, e, rescale, (seed, name, i)).reshape(base.shape)
              for i, (x, d, e) in enumerate(zip(tensors, densities, epsilons, strict=False))]
    return combine(base, deltas, weights, consensus=consensus, normalize=normalize, lambda_=lambda_)


class Della(Method):
    random = True
    needs_base = True
    model_params = {"weight": Param(float), "density": Param(float, 1.0), "epsilon": Param(float, 0.15)}

    def __init__(self, consensus: bool) -> None:
        self.consensus = consensus
        self.name = "della" if consensus else "della_linear"
        self.shared_params = {**GTA_SHARED, "rescale": Param(bool, True), "normalize": Param(bool, consensus)}

    def validate(self, job: Job) -> None:
        for p in job.per_model:
            d, e = p["density"], p["epsilon"]
            if 0 < d < 1 and not (0 < d - e and d + e < 1):
                raise ValueError(f"density ± epsilon must lie in (0, 1); got density {d}, epsilon {e}")
        check_weights([p["weight"] for p in job.per_model], job.shared["normalize"], self.consensus)

    def apply(self, job: Job, xs: list[torch.Tensor], state: Any, offset: int) -> torch.Tensor:
        base = xs[0]
        deltas = [della_drop(x - base, job.row, p["density"], p["epsilon"], job.shared["rescale"],
                             (job.seed, job.name, mid), offset)
                  for x, p, mid in zip(xs[1:], job.per_model, job.model_ids, strict=False)]
        return combine(base, deltas, [p["weight"] for p in job.per_model], consensus=self.consensus,
                       normalize=job.shared["normalize"], lambda_=job.shared["lambda"])
