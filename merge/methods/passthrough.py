"""Passthrough: copy one input tensor unchanged (optionally times `scale`); with `slices` it
builds "frankenmerges" by stacking layer ranges of different models (mergekit semantics).

    θ = scale · θ_source     (scale defaults to 1)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from merge.methods.base import Job, Method, Param

if TYPE_CHECKING:  # torch is imported by the torch engine only when it runs
    import torch


def passthrough(x: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    return x if scale is None else x * scale


class Passthrough(Method):
    name = "passthrough"
    uses_base = False
    max_models = 1
    shared_params: dict[str, Param] = {}
    model_params = {"scale": Param(float, None)}

    def apply(self, job: Job, xs: list[torch.Tensor], state: Any, offset: int) -> torch.Tensor:
        return passthrough(xs[0], job.per_model[0]["scale"])
