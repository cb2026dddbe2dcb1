"""NuSLERP: mergekit's generalised SLERP of two models, optionally of their task vectors.

Two non-base models with weights w_0, w_1 give t = w_1 / (w_0 + w_1) (0.5 when the sum is 0).
Vectors u0, u1 are the two tensors, or their deltas from the base when a base is given; then
    cos Ω = (u0/‖u0‖) · (u1/‖u1‖)  (norms clamped ≥ 1e-7, cos clamped to [−1, 1])
    1 − cos²Ω ≤ 1e-16 (colinear): r = (1 − t) u0 + t u1
    otherwise:                    r = (sin((1 − t)Ω) u0 + sin(tΩ) u1) / sin Ω
    θ = r (no base)  or  θ = θ_base + r
The angle is taken over the whole tensor (nuslerp_flatten: true, the default), per row
(nuslerp_flatten: false), or per column (nuslerp_flatten: false, nuslerp_row_wise: true).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from merge.methods.base import Chunks, Job, Method, Param

EPS = 1e-8
NORM_EPS = 1e-7


def _coeffs(t: float, cos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cos = cos.clamp(-1, 1)
    colinear = (1 - cos * cos) <= EPS**2
    theta = torch.acos(torch.where(colinear, 0.0, cos))
    s = torch.sin(theta)
    s = torch.where(colinear, 1.0, s)
    ca = torch.where(colinear, 1 - t, torch.sin((1 - t) * theta) / s)
    cb = torch.where(colinear, t, torch.sin(t * theta) / s)
    return ca, cb


def nuslerp_vectors(t: float, u0: torch.Tensor, u1: torch.Tensor, dim: int | None) -> torch.Tensor:
    """dim None: whole tensor; otherwise the angle is taken along `dim`."""
    if dim is None:
        a, b = u0.reshape(-1).double(), u1.reshape(-1).double()
        na, nb = max(float(a.norm()), NORM_EPS), max(float(b.norm()), NORM_EPS)
        ca, cb = _coeffs(t, torch.tensor(float(a @ b) / (na * nb), dtype=torch.float64))
        return u0 * float(ca) + u1 * float(cb)
    na = u0.norm(dim=dim, keepdim=True).clamp(min=NORM_EPS)
    nb = u1.norm(dim=dim, keepdim=True).clamp(min=NORM_EPS)
    cos = ((u0 / na) * (u1 / nb)).sum(dim=dim, keepdim=True)
    ca, cb = _coeffs(t, cos)
    return u0 * ca + u1 * cb


def nuslerp_t(weights: list[float]) -> float:
    total = sum(weights)
    return 0.5 if abs(total) < 1e-6 else weights[1] / total


def nuslerp(tensors: list[torch.Tensor], weights: list[float], base: torch.Tensor | None = None,
            flatten: bool = True, row_wise: bool = False) -> torch.Tensor:
    t = nuslerp_t(weights)
    dim = None if flatten or tensors[0].dim() < 2 else (0 if row_wise else -1)
    if base is None:
        return nuslerp_vectors(t, tensors[0], tensors[1], dim)
    return base + nuslerp_vectors(t, tensors[0] - base, tensors[1] - base, dim)


class NuSlerp(Method):
    name = "nuslerp"
    needs_base = False  # optional base: used when `base_model` is set
    min_models = 2
    max_models = 2
    shared_params = {"nuslerp_flatten": Param(bool, True), "nuslerp_row_wise": Param(bool, False)}
    model_params = {"weight": Param(float)}

    def _split(self, job: Job, xs: list[torch.Tensor]) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
        return (xs[0], xs[1:]) if job.has_base else (None, xs)

    def stats(self, job: Job, chunks: Chunks) -> Any:
        if not (job.shared["nuslerp_flatten"] or len(job.shape) < 2):
            return None
        dot = n0 = n1 = 0.0
        for _, xs in chunks():
            base, (a, b) = self._split(job, [x.double() for x in xs])
            if base is not None:
                a, b = a - base, b - base
            dot += float(a @ b)
            n0 += float(a @ a)
            n1 += float(b @ b)
        na, nb = max(math.sqrt(n0), NORM_EPS), max(math.sqrt(n1), NORM_EPS)
        t = nuslerp_t([p["weight"] for p in job.per_model])
        ca, cb = _coeffs(t, torch.tensor(dot / (na * nb), dtype=torch.float64))
        return float(ca), float(cb)

    def needs_whole(self, job: Job) -> bool:
        return not job.shared["nuslerp_flatten"] and job.shared["nuslerp_row_wise"] and len(job.shape) >= 2

    def apply(self, job: Job, xs: list[torch.Tensor], state: Any, offset: int) -> torch.Tensor:
        base, (a, b) = self._split(job, xs)
        if base is not None:
            a, b = a - base, b - base
        if state is not None:
            r = a * state[0] + b * state[1]
        else:
            t = nuslerp_t([p["weight"] for p in job.per_model])
            if self.needs_whole(job):  # angle per column: the engine passed the whole tensor
                r = nuslerp_vectors(t, a.reshape(job.shape), b.reshape(job.shape), 0).reshape(-1)
            else:
                r = nuslerp_vectors(t, a.reshape(-1, job.row), b.reshape(-1, job.row), -1).reshape(-1)
        out: torch.Tensor = r if base is None else base + r
        return out
