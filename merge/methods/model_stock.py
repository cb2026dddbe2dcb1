"""Model Stock (Jang et al. 2024, "Model Stock: All we need is just a few fine-tuned models",
arXiv:2403.19522).

With base θ_0 and N ≥ 2 fine-tunes θ_i, offsets δ_i = θ_i − θ_0:
    cos θ = mean over pairs i<j of  (δ_i · δ_j) / max(‖δ_i‖ ‖δ_j‖, 1e-6)   (clamped to [−1, 1])
    t = N cos θ / (1 + (N − 1) cos θ)          (t = 0 where the denominator is ~0)
    θ = t · mean_i θ_i + (1 − t) · θ_0
The angle is taken over the whole tensor (filter_wise: false, the default) or per row
(filter_wise: true). Dot products are accumulated in float64 over chunks.
"""

from __future__ import annotations

from typing import Any

import torch

from merge.methods.base import Chunks, Job, Method, Param


def stock_t(cos: torch.Tensor, n: int) -> torch.Tensor:
    cos = cos.clamp(-1, 1)
    den = 1 + (n - 1) * cos
    singular = den.abs() < 1e-6
    return torch.where(singular, 0.0, n * cos / torch.where(singular, 1.0, den))


def _pair_cos(offsets: list[torch.Tensor], dim: int | None) -> torch.Tensor:
    cos = []
    for i in range(len(offsets)):
        for j in range(i + 1, len(offsets)):
            a, b = offsets[i], offsets[j]
            if dim is None:
                num, den = (a * b).sum(), a.norm() * b.norm()
            else:
                num, den = (a * b).sum(dim=dim), a.norm(dim=dim) * b.norm(dim=dim)
            cos.append((num / den.clamp(min=1e-6)).clamp(-1, 1))
    return torch.stack(cos).mean(dim=0)


def model_stock(base: torch.Tensor, tensors: list[torch.Tensor], filter_wise: bool = False) -> torch.Tensor:
    n = len(tensors)
    if n < 2:
        raise ValueError("model_stock needs at least two fine-tuned models besides the base")
    row_wise = filter_wise
    b = base.reshape(-1, base.shape[-1] if base.dim() >= 1 else 1) if row_wise else base.reshape(-1)
    xs = [x.reshape(b.shape) for x in tensors]
    cos = _pair_cos([x - b for x in xs], -1 if row_wise else None)
    t = stock_t(cos, n)
    if row_wise:
        t = t.unsqueeze(-1)
    avg = sum(xs[1:], xs[0].clone()) / n
    return (t * avg + (1 - t) * b).reshape(base.shape)


class ModelStock(Method):
    name = "model_stock"
    needs_base = True
    min_models = 2
    shared_params = {"filter_wise": Param(bool, False)}
    model_params: dict[str, Param] = {}

    def stats(self, job: Job, chunks: Chunks) -> Any:
        if job.shared["filter_wise"]:
            return None
        n = len(job.per_model)
        dots = torch.zeros(n, n, dtype=torch.float64)
        for _, xs in chunks():
            offs = torch.stack([x.double() - xs[0].double() for x in xs[1:]])
            dots += offs @ offs.T
        norms = dots.diagonal().sqrt()
        cos = []
        for i in range(n):
            for j in range(i + 1, n):
                cos.append((dots[i, j] / (norms[i] * norms[j]).clamp(min=1e-6)).clamp(-1, 1))
        return float(stock_t(torch.stack(cos).mean(), n))

    def apply(self, job: Job, xs: list[torch.Tensor], state: Any, offset: int) -> torch.Tensor:
        base, others = xs[0], xs[1:]
        if state is None:
            row = job.row
            return model_stock(base.reshape(-1, row), [x.reshape(-1, row) for x in others], True).reshape(-1)
        t = state
        avg = sum(others[1:], others[0].clone()) / len(others)
        out: torch.Tensor = avg * t + base * (1 - t)
        return out
