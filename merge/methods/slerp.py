"""SLERP: spherical linear interpolation (Shoemake 1985, "Animating rotation with quaternion
curves"; used for model merging by mergekit).

Per tensor, with v0 = the base model's tensor and v1 = the other model's, flattened:
    cos Ω = (v0 · v1) / (‖v0‖ ‖v1‖)       (a norm ≤ 1e-8 counts as 1; clamped to [−1, 1])
    |cos Ω| > 0.9995:  θ = (1 − t) v0 + t v1                       (nearly colinear: lerp)
    otherwise:         θ = sin((1 − t)Ω)/sin Ω · v0 + sin(tΩ)/sin Ω · v1
t = 0 gives the base, t = 1 the other model; `t` may be a gradient over layers and filtered per
tensor name (mergekit syntax). Norms and the dot product are accumulated in float64 over
chunks, so big tensors never need to be held whole.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from merge.methods.base import Chunks, Job, Method, Param, one_chunk

DOT_THRESHOLD = 0.9995
EPS = 1e-8


def slerp_coefficients(t: float, dot: float, n0: float, n1: float) -> tuple[float, float]:
    n0 = n0 if n0 > EPS else 1.0
    n1 = n1 if n1 > EPS else 1.0
    cos = max(-1.0, min(1.0, dot / (n0 * n1)))
    if abs(cos) > DOT_THRESHOLD:
        return 1 - t, t
    omega = math.acos(cos)
    s = math.sin(omega)
    return math.sin((1 - t) * omega) / s, math.sin(t * omega) / s


def accumulate(chunks: Chunks) -> tuple[float, float, float]:
    dot = n0 = n1 = 0.0
    for _, xs in chunks():
        a, b = xs[0].double(), xs[1].double()
        dot += float(a @ b)
        n0 += float(a @ a)
        n1 += float(b @ b)
    return dot, math.sqrt(n0), math.sqrt(n1)


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    ca, cb = slerp_coefficients(t, *accumulate(one_chunk([v0, v1])))
    return v0 * ca + v1 * cb


class Slerp(Method):
    name = "slerp"
    needs_base = True
    min_models = 1
    max_models = 1
    shared_params = {"t": Param(float)}
    model_params: dict[str, Param] = {}

    def stats(self, job: Job, chunks: Chunks) -> Any:
        return slerp_coefficients(job.shared["t"], *accumulate(chunks))

    def apply(self, job: Job, xs: list[torch.Tensor], state: Any, offset: int) -> torch.Tensor:
        ca, cb = state
        out: torch.Tensor = xs[0] * ca + xs[1] * cb
        return out
