"""Small statistics for reports and promotion, in pure Python (hand-checkable, no numpy).

wilson(k, n)        95% Wilson score interval for a pass rate (good at p near 0 or 1 and small n,
                    where the normal interval escapes [0, 1]).
mean_ci(xs)         mean with a 95% Student-t interval, clipped to [lo_bound, hi_bound];
                    fewer than 2 values gives the whole range (we know nothing).
paired_diff_ci      mean and t interval of per-row differences a - b on shared rows: the
                    non-inferiority test promotion uses (pairing removes row difficulty).
percentile(xs, q)   linear interpolation between order statistics (numpy's default).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054
_T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    11: 2.201,
    12: 2.179,
    13: 2.160,
    14: 2.145,
    15: 2.131,
    16: 2.120,
    17: 2.110,
    18: 2.101,
    19: 2.093,
    20: 2.086,
    21: 2.080,
    22: 2.074,
    23: 2.069,
    24: 2.064,
    25: 2.060,
    26: 2.056,
    27: 2.052,
    28: 2.048,
    29: 2.045,
    30: 2.042,
}


def t975(df: int) -> float:
    """Two-sided 95% Student-t critical value (table to 30 df, Cornish-Fisher expansion beyond)."""
    if df < 1:
        raise ValueError("t distribution needs df >= 1")
    if df in _T975:
        return _T975[df]
    z = Z95
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"wilson: k={k} outside 0..n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def mean_ci(xs: Sequence[float], lo_bound: float = 0.0, hi_bound: float = 1.0) -> tuple[float, float]:
    n = len(xs)
    if n < 2:
        return lo_bound, hi_bound
    m = mean(xs)
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    half = t975(n - 1) * math.sqrt(var / n)
    return max(lo_bound, m - half), min(hi_bound, m + half)


def paired_diff_ci(a: dict[str, float], b: dict[str, float]) -> tuple[float, float, float, int]:
    """(mean diff, lo, hi, n) of a[k] - b[k] over shared keys; bounds [-1, 1]."""
    keys = sorted(set(a) & set(b))
    d = [a[k] - b[k] for k in keys]
    lo, hi = mean_ci(d, -1.0, 1.0)
    return (mean(d) if d else float("nan")), lo, hi, len(d)


def percentile(xs: Sequence[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)
