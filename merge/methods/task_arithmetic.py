"""Task arithmetic (Ilharco et al. 2023, "Editing models with task arithmetic", arXiv:2212.04089).

    τ_i = θ_i − θ_base
    θ = θ_base + λ · Σ_i w_i τ_i              (normalize: false, the default)
    θ = θ_base + λ · Σ_i w_i τ_i / Σ_i w_i    (normalize: true; Σ w_i = 0 is refused)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from merge.methods._deltas import check_weights
from merge.methods.base import Job, Method, NpKernel, Param, fma_kernel

if TYPE_CHECKING:  # torch is imported by the torch engine only when it runs
    import torch


def task_arithmetic(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float],
                    lambda_: float = 1.0, normalize: bool = False) -> torch.Tensor:
    """Evaluated in the equivalent affine form θ = (1 − Σ c_i)·θ_base + Σ c_i θ_i with
    c_i = λ w_i (/ Σ w) — one fused multiply-add per model instead of a subtraction, a scaling
    and an addition (this step is memory-bound)."""
    coeffs = affine_coefficients(weights, lambda_, normalize)
    out = base * (1.0 - sum(coeffs))
    for x, c in zip(tensors, coeffs, strict=True):
        out.add_(x, alpha=c)
    return out


def affine_coefficients(weights: Sequence[float], lambda_: float, normalize: bool) -> list[float]:
    total = float(sum(weights))
    if normalize:
        if abs(total) < 1e-8:
            raise ValueError(f"weights {list(weights)} sum to 0 with normalize: true (division by zero)")
        return [lambda_ * w / total for w in weights]
    return [lambda_ * w for w in weights]


GTA_SHARED = {"normalize": Param(bool, False), "lambda": Param(float, 1.0), "int8_mask": Param(bool, False),
              "rescale": Param(bool, False)}


class TaskArithmetic(Method):
    elementwise = True
    name = "task_arithmetic"
    needs_base = True
    shared_params = GTA_SHARED
    model_params = {"weight": Param(float)}

    def validate(self, job: Job) -> None:
        check_weights([p["weight"] for p in job.per_model], job.shared["normalize"], consensus=False)

    def apply(self, job: Job, xs: list[torch.Tensor], state: Any, offset: int) -> torch.Tensor:
        return task_arithmetic(xs[0], xs[1:], [p["weight"] for p in job.per_model], job.shared["lambda"],
                               job.shared["normalize"])

    def numpy_kernel(self, job: Job, kinds: list[str], load: str | None) -> NpKernel | None:
        # task_arithmetic(): out = base·(1 − Σc); out.add_(x_i, alpha=c_i)
        coeffs = affine_coefficients([p["weight"] for p in job.per_model], job.shared["lambda"],
                                     job.shared["normalize"])
        return fma_kernel(1.0 - sum(coeffs), coeffs, kinds, load)
