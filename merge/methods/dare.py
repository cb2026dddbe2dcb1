"""DARE: Drop And REscale (Yu et al. 2024, "Language Models are Super Mario", arXiv:2311.03099).

    τ_i = θ_i − θ_base
    m_i ~ Bernoulli(density_i) elementwise   (drop probability p = 1 − density)
    τ̂_i = m_i · τ_i / density_i              (rescale: true, the default: 1/(1−p), as in the paper)
    dare_linear: θ = θ_base + λ · Σ_i w_i τ̂_i            (normalize default false)
    dare_ties:   same with TIES sign consensus (merge.methods._deltas), normalize default false

Randomness is seeded: the mask of tensor T, model i comes from the stream (seed, T, i), cut in
fixed blocks (`merge.methods.base.uniform`), so the output is reproducible and independent of
chunking. Deliberate difference: mergekit 0.1.5 rescales the kept deltas to the original L1
norm instead of by 1/(1−p) (see mergekit issue #245); ours is the paper's unbiased rescale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from merge.methods._deltas import check_weights, combine, combine_np
from merge.methods.base import Job, Method, NpKernel, Param, uniform, uniform_np
from merge.methods.task_arithmetic import GTA_SHARED

if TYPE_CHECKING:  # torch is imported where a function needs it: the numpy engine never does
    import torch


def dare_drop(delta: torch.Tensor, density: float, rescale: bool, key: tuple[object, ...],
              offset: int = 0) -> torch.Tensor:
    import torch

    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    u = uniform(key, offset, delta.numel())
    un = u.numpy()
    # keep = [u < density] compared in float32 as torch would, turned into 1.0/0.0 in place by
    # numpy (torch's bool kernels and float × bool promotion are ~5x slower); δ·1.0/δ·0.0 is
    # exactly what δ·keep gave, signed zeros included
    np.copyto(un, np.less(un, np.float32(density)))
    out = delta * u.reshape(delta.shape)
    if rescale:
        out.div_(density)
    return out


def dare_drop_np(delta: np.ndarray, density: float, rescale: bool, key: tuple[object, ...],
                 offset: int) -> np.ndarray:
    """`dare_drop` in numpy (the same draws and float32 operations), in place on `delta`."""
    if density >= 1:
        return delta
    if density <= 0:
        delta[...] = 0
        return delta
    delta *= np.less(uniform_np(key, offset, delta.size), np.float32(density))
    if rescale:
        delta /= np.float32(density)
    return delta


def dare(base: torch.Tensor, tensors: Sequence[torch.Tensor], weights: Sequence[float],
         densities: Sequence[float], *, consensus: bool, seed: int = 0, name: str = "", lambda_: float = 1.0,
         normalize: bool = False, rescale: bool = True) -> torch.Tensor:
    deltas = [dare_drop((x - base).reshape(-1), d, rescale, (seed, name, i)).reshape(base.shape)
              for i, (x, d) in enumerate(zip(tensors, densities, strict=False))]
    return combine(base, deltas, weights, consensus=consensus, normalize=normalize, lambda_=lambda_)


class Dare(Method):
    elementwise = True
    random = True
    needs_base = True
    shared_params = {**GTA_SHARED, "rescale": Param(bool, True)}
    model_params = {"weight": Param(float), "density": Param(float, 1.0)}

    def __init__(self, consensus: bool) -> None:
        self.consensus = consensus
        self.name = "dare_ties" if consensus else "dare_linear"

    def validate(self, job: Job) -> None:
        check_weights([p["weight"] for p in job.per_model], job.shared["normalize"], self.consensus)

    def apply(self, job: Job, xs: list[torch.Tensor], state: Any, offset: int) -> torch.Tensor:
        base = xs[0]
        deltas = [dare_drop(x - base, p["density"], job.shared["rescale"], (job.seed, job.name, mid), offset)
                  for x, p, mid in zip(xs[1:], job.per_model, job.model_ids, strict=False)]
        return combine(base, deltas, [p["weight"] for p in job.per_model], consensus=self.consensus,
                       normalize=job.shared["normalize"], lambda_=job.shared["lambda"])

    def numpy_kernel(self, job: Job, kinds: list[str], load: str | None) -> NpKernel | None:
        weights = [p["weight"] for p in job.per_model]
        drops = [(p["density"], (job.seed, job.name, mid)) for p, mid in zip(job.per_model, job.model_ids,
                                                                                strict=False)]
        rescale, normalize, lambda_ = job.shared["rescale"], job.shared["normalize"], job.shared["lambda"]

        def kernel(xs: list[np.ndarray], out: np.ndarray, tmp: np.ndarray, offset: int, state: Any) -> np.ndarray:
            base = xs[0]
            deltas = [dare_drop_np(np.subtract(x, base), d, rescale, key, offset)
                      for x, (d, key) in zip(xs[1:], drops, strict=False)]
            return combine_np(base, deltas, weights, consensus=self.consensus, normalize=normalize,
                              lambda_=lambda_, out=out)

        return kernel
