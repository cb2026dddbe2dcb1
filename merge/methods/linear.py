"""Linear merge / model soups (Wortsman et al. 2022, "Model soups", arXiv:2203.05482).

    θ = Σ_i w_i θ_i / Σ_i w_i      (normalize: true, the default)
    θ = Σ_i w_i θ_i                (normalize: false)

Weights summing to 0 with normalize are refused at plan time (mergekit divides by zero and
writes inf/NaN). A `base_model` is not an input unless it is listed under `models`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from merge.methods.base import Job, Method, NpKernel, Param, fma_kernel

if TYPE_CHECKING:  # torch is imported by the torch engine only when it runs
    import torch


def linear(tensors: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool = True) -> torch.Tensor:
    if len(tensors) != len(weights):
        raise ValueError("one weight per tensor")
    total = float(sum(weights))
    if normalize and abs(total) < 1e-8:
        raise ValueError(f"weights {list(weights)} sum to 0 with normalize: true (division by zero)")
    out = tensors[0] * weights[0]
    for x, w in zip(tensors[1:], weights[1:], strict=False):
        out.add_(x, alpha=w)
    if normalize:
        out.div_(total)
    return out


class Linear(Method):
    elementwise = True
    name = "linear"
    uses_base = False
    shared_params = {"normalize": Param(bool, True)}
    model_params = {"weight": Param(float)}

    def validate(self, job: Job) -> None:
        w = [p["weight"] for p in job.per_model]
        if job.shared["normalize"] and abs(sum(w)) < 1e-8:
            raise ValueError(f"weights {w} sum to 0 with normalize: true (division by zero); "
                             f"change the weights or set normalize: false")

    def apply(self, job: Job, xs: list[torch.Tensor], state: Any, offset: int) -> torch.Tensor:
        return linear(xs, [p["weight"] for p in job.per_model], job.shared["normalize"])

    def numpy_kernel(self, job: Job, kinds: list[str], load: str | None) -> NpKernel | None:
        # linear(): out = x0·w0; out.add_(x_i, alpha=w_i); out /= Σw
        w = [p["weight"] for p in job.per_model]
        return fma_kernel(w[0], w[1:], kinds, load, float(sum(w)) if job.shared["normalize"] else None)
