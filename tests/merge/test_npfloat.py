"""merge.npfloat against torch's CPU kernels, bit for bit: the torch-free engine's outputs are
only byte-identical to the torch engine's if these primitives are."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from merge.npfloat import (  # noqa: E402
    _round_f32,
    bf16_to_f32,
    f32_to_bf16,
    fma_scalar,
    product_exact,
    to_f32,
)

N = 1 << 18
# values at and around bf16 rounding ties, signed zeros, infinities, NaNs (quiet, signalling,
# negative), the largest finite float32, float32 and bf16 subnormals
SPECIAL_BITS = [0x3F808000, 0x3F818000, 0x3F80FFFF, 0x3F807FFF, 0xBF808000, 0x00000000, 0x80000000,
                0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF, 0x7F7FFFFF,
                0x7F7F8000, 0x00000001, 0x00008000, 0x80018000, 0x007FFFFF, 0x00400000]


def _bits(seed: int) -> np.ndarray:
    u = np.random.default_rng(seed).integers(0, 1 << 32, N, dtype=np.uint64).astype(np.uint32)
    u[: len(SPECIAL_BITS)] = SPECIAL_BITS
    return u


def _values(seed: int, spread: float = 8.0) -> np.ndarray:
    """float32 values over a wide range of magnitudes, with the special values in front."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(N) * np.exp2(rng.normal(0, spread, N))).astype(np.float32)
    x[: len(SPECIAL_BITS)] = np.array(SPECIAL_BITS, np.uint32).view(np.float32)
    return x


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype.itemsize == b.dtype.itemsize
    diff = np.flatnonzero(a.view(f"u{a.dtype.itemsize}") != b.view(f"u{b.dtype.itemsize}"))
    assert diff.size == 0, f"{diff.size} differ, first at {diff[:5]}: {a[diff[:5]]} vs {b[diff[:5]]}"


def _bf16_torch(x: np.ndarray) -> np.ndarray:
    return torch.from_numpy(x.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


@pytest.mark.parametrize("n", [N, 1, 7, 17, 1000])
def test_f32_to_bf16_is_torchs_rounding_with_nan(n: int) -> None:
    x = _bits(1)[:n].view(np.float32)
    got = f32_to_bf16(x, np.empty(n, np.uint16), np.empty(n, np.uint32))
    _same(got, _bf16_torch(x))


def test_bf16_to_f32_is_exact() -> None:
    raw = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    want = torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16).float().numpy()
    _same(bf16_to_f32(raw, np.empty(raw.size, np.float32)), want)


@pytest.mark.parametrize(("kind", "load"), [("F32", "bfloat16"), ("F16", "bfloat16"), ("BF16", "float16"),
                                            ("F32", "float16"), ("F32", None), ("F16", None), ("BF16", "float32")])
def test_to_f32_rounds_like_torch_load(kind: str, load: str | None) -> None:
    x = _values(2, spread=20)
    if kind == "BF16":
        raw = f32_to_bf16(x, np.empty(N, np.uint16), np.empty(N, np.uint32))
        t = torch.from_numpy(raw.view(np.int16)).view(torch.bfloat16)
    elif kind == "F16":
        with np.errstate(over="ignore"):
            raw = x.astype(np.float16)
        t = torch.from_numpy(raw)
    else:
        raw, t = x, torch.from_numpy(x)
    if load is not None:
        t = t.to(getattr(torch, load))
    got = to_f32(raw, kind, load, np.empty(N, np.float32))
    want = t.float().numpy()
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)  # NaN payloads never reach a bf16 output
    _same(got[~nan], want[~nan])


@pytest.mark.parametrize("c", [1.0, 0.5, 1 / 3, 0.1, -0.7, 1e-20, 3.5, 0.0, -1.0, 2.0**-16, 1 / 7])
@pytest.mark.parametrize("kind", ["F32", "BF16"])
def test_fma_scalar_is_torchs_fused_add(c: float, kind: str) -> None:
    acc = _values(3)
    x = _values(4)
    if kind == "BF16":
        x = bf16_to_f32(f32_to_bf16(x, np.empty(N, np.uint16), np.empty(N, np.uint32)), np.empty(N, np.float32))
    want = torch.from_numpy(acc.copy()).add_(torch.from_numpy(x), alpha=c).numpy()
    exact = product_exact(c, kind, None)
    for use_exact in {False, exact}:
        got = acc.copy()
        with np.errstate(all="ignore"):
            fma_scalar(got, x, c, use_exact, np.empty(N, np.float32))
        nan = np.isnan(want)
        assert np.array_equal(np.isnan(got), nan)
        _same(got[~nan], want[~nan])


def test_fma_scalar_double_rounding_cases_are_fixed() -> None:
    """a + c·x = 1 + 2^-23 + 2^-24 − 2^-70 lies just below a float32 midpoint: float64 rounds it
    onto the midpoint and then to even (up), the fused operation rounds it down."""
    c = 1 - 2.0**-23
    acc = np.array([1 + 2.0**-23, -(1 + 2.0**-23), 4 * (1 + 2.0**-23), 0.5], np.float32)
    x = np.array([2.0**-24 * (1 + 2.0**-23), -(2.0**-24) * (1 + 2.0**-23), 2.0**-22 * (1 + 2.0**-23), 1.0],
                 np.float32)
    want = torch.from_numpy(acc.copy()).add_(torch.from_numpy(x), alpha=c).numpy()
    naive = (acc.astype(np.float64) + x.astype(np.float64) * c).astype(np.float32)
    assert (naive != want)[:3].all()  # the cases do defeat plain float64
    got = acc.copy()
    fma_scalar(got, x, c, False, np.empty(x.size, np.float32))
    _same(got, want)


def test_round_f32_is_single_rounding() -> None:
    rng = np.random.default_rng(5)
    for d in list(rng.standard_normal(2000) * np.exp2(rng.integers(-160, 130, 2000))) + [3.0 * 2.0**-150]:
        with np.errstate(over="ignore"):
            assert _round_f32(Fraction(float(d))) == np.float32(d)  # float64 → float32 rounds once


def test_product_exact_only_claims_exact_products() -> None:
    assert product_exact(1.0, "F32", None) and product_exact(0.5, "BF16", None) and product_exact(0.0, "F32", None)
    assert not product_exact(0.5, "F32", None)  # float32 subnormal × 0.5 drops a bit
    assert not product_exact(1 / 3, "BF16", None) and not product_exact(2.0, "F32", None)
    assert product_exact(0.75, "BF16", None) and product_exact(0.75, "BF16", "float32")
    assert not product_exact(0.75, "F32", "float32") and product_exact(0.75, "F32", "bfloat16")
    # bf16 values times a 16-bit weight are exact in float32: check over all bf16 bit patterns
    raw = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    x = bf16_to_f32(raw, np.empty(raw.size, np.float32))
    c = float(np.float32(1 - 2.0**-15))
    assert product_exact(c, "BF16", None)
    finite = np.isfinite(x)
    prod = x[finite].astype(np.float64) * c
    assert np.array_equal(prod.astype(np.float32).astype(np.float64), prod)
