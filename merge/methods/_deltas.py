"""The combination step shared by the task-vector methods (task arithmetic, TIES, DARE,
breadcrumbs, DELLA): weighted sum of (already sparsified) deltas, optional TIES sign consensus,
optional normalisation, scaling by lambda, added to the base.

    τ'_i = w_i · τ̂_i                                  (weighted, sparsified task vectors)
    consensus: γ = sgn(Σ_i τ'_i) (γ = +1 where the sum is 0),  m_i = [sgn(τ'_i) = γ]
    merged   = Σ_i m_i τ'_i,  divisor = Σ_i m_i w_i     (no consensus: m_i = 1)
    θ = θ_base + λ · merged / (divisor if normalize else 1)

The sign is elected on the *weighted* deltas (as mergekit does; with equal positive weights
this is exactly the TIES paper's γ = sgn(Σ τ̂_i)). An entry where every delta is zero has
divisor 0; it keeps the base value (merged = 0 there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where a function needs it: the numpy engine never does
    import torch


def combine(base: torch.Tensor, deltas: Sequence[torch.Tensor], weights: Sequence[float], *, consensus: bool,
            normalize: bool, lambda_: float) -> torch.Tensor:
    import torch

    if not deltas:
        return base.clone()
    weighted = [d * w if w != 1 else d for d, w in zip(deltas, weights, strict=False)]
    if consensus:
        total = weighted[0].clone()
        for wd in weighted[1:]:
            total.add_(wd)
        # γ = +1 where Σ = ±0, sgn(Σ) elsewhere (torch.sign gives 0 at ±0 and at NaN). The
        # [Σ = 0] mask comes from numpy: torch's bool kernels and float += bool promotion cost
        # ~5x its float ops on CPU; numpy's comparison is ~0.1 ns/element.
        elected = torch.sign(total)
        en = elected.numpy()
        np.add(en, np.equal(total.numpy(), 0), out=en)
        merged = torch.zeros_like(base)
        divisor = torch.zeros_like(base) if normalize else None
        p = total  # scratch from here on
        for wd, w in zip(weighted, weights, strict=False):
            # agreeing entries have wd·γ > 0; relu(wd·γ)·γ is wd there and 0 elsewhere
            torch.mul(wd, elected, out=p).relu_()
            merged.add_(p)
            if divisor is not None:
                # p ≥ 0 (or NaN), so sign(p) is exactly the float of [p > 0] (sign(NaN) = 0)
                divisor.add_(torch.sign(p, out=p), alpha=w)
        merged.mul_(elected)
        if divisor is not None:
            # entries no delta agrees with have merged = 0 and divisor 0: divide by 1 there
            if min(weights) > 0:  # divisors are 0 or ≥ min(w): clamping is exact and cheap
                divisor.clamp_(min=min(weights) / 2)
            else:
                divisor.add_(torch.from_numpy(np.equal(divisor.numpy(), 0)))
            merged.div_(divisor)
    else:
        merged = weighted[0].clone()
        for wd in weighted[1:]:
            merged.add_(wd)
        if normalize:
            s = float(sum(weights))
            if abs(s) < 1e-8:
                raise ValueError("weights sum to 0 with normalize: true (division by zero)")
            merged.div_(s)
    if lambda_ != 1:
        merged.mul_(lambda_)
    return base + merged


def check_weights(weights: Sequence[float], normalize: bool, consensus: bool) -> None:
    """Plan-time check: a normalised, consensus-free combination divides by Σ w_i."""
    if normalize and not consensus and abs(float(sum(weights))) < 1e-8:
        raise ValueError(f"weights {list(weights)} sum to 0 with normalize: true (division by zero); "
                         f"change the weights or set normalize: false")


def _sum(xs: list[np.ndarray]) -> np.ndarray:
    """x0 + x1 + ... left to right into a new array (torch: clone, then add_ each)."""
    out = np.add(xs[0], xs[1]) if len(xs) > 1 else xs[0].copy()
    for x in xs[2:]:
        out += x
    return out


_F0 = np.float32(0)  # a float32 zero: a Python 0 operand would be cast through a buffer per call


def combine_np(base: np.ndarray, deltas: list[np.ndarray], weights: Sequence[float], *, consensus: bool,
               normalize: bool, lambda_: float, out: np.ndarray) -> np.ndarray:
    """`combine` in numpy for the torch-free engine: the same float32 operations in the same
    order, so the result is bit-identical wherever it is not NaN (a NaN output stays NaN; NaN
    payloads may differ, which the engine's bfloat16 output erases). `deltas` may be modified;
    the result is written into `out`."""
    if not deltas:
        np.copyto(out, base)
        return out
    weighted = []
    for d, w in zip(deltas, weights, strict=False):
        if w != 1:
            d *= np.float32(w)
        weighted.append(d)
    if consensus:
        total = _sum(weighted)
        # torch: sign(Σ) (0 at ±0 and NaN) + [Σ = 0]; np.sign gives NaN at NaN, which only
        # turns outputs NaN that torch's path makes NaN too (a NaN Σ needs a NaN or ±inf δ)
        elected = np.sign(total)
        elected += np.equal(total, _F0)
        # torch starts merged and divisor at +0 and adds to them; the first addition is written
        # as such (+0 + x: a -0 becomes +0) instead of zero-filling first
        merged: np.ndarray | None = None
        divisor: np.ndarray | None = None
        p = total  # scratch from here on
        for wd, w in zip(weighted, weights, strict=False):
            np.multiply(wd, elected, out=p)
            np.maximum(p, _F0, out=p)  # relu: NaN stays NaN
            if merged is None:
                merged = np.add(p, _F0)
            else:
                merged += p
            if normalize:
                # torch adds sign(p)·w, i.e. w where p > 0 (sign(NaN) = 0): exactly 0 or w
                agree = np.greater(p, _F0)
                if divisor is None:
                    divisor = agree.astype(np.float32) if w == 1 else np.add(agree * np.float32(w), _F0)
                else:
                    divisor += agree if w == 1 else agree * np.float32(w)
        assert merged is not None
        merged *= elected
        if divisor is not None:
            if min(weights) > 0:
                np.maximum(divisor, np.float32(min(weights) / 2), out=divisor)
            else:
                divisor += np.equal(divisor, _F0)
            merged /= divisor
    else:
        merged = _sum(weighted)
        if normalize:
            merged /= np.float32(float(sum(weights)))
    if lambda_ != 1:
        merged *= np.float32(lambda_)
    np.add(base, merged, out=out)
    return out
