"""Confidence intervals and percentiles against known values."""

from __future__ import annotations

import pytest

from evals.stats import mean_ci, paired_diff_ci, percentile, t975, wilson


def test_wilson_known_values():
    # Reference values (e.g. statsmodels proportion_confint(method="wilson")).
    assert wilson(8, 10) == pytest.approx((0.49016, 0.94331), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.72247, 1.0), abs=1e-4)
    assert wilson(45, 50) == pytest.approx((0.78639, 0.95653), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(3, 2)


def test_t_interval_known_values():
    # mean 3, sd 1.5811, n 5: 3 +- 2.776 * 1.5811 / sqrt(5) = 3 +- 1.9632
    assert mean_ci([1, 2, 3, 4, 5], 0, 10) == pytest.approx((1.0368, 4.9632), abs=1e-3)
    assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert mean_ci([1.0]) == (0.0, 1.0)  # one value: we know nothing
    assert mean_ci([0, 1]) == (0.0, 1.0)  # clipped to the score range


def test_t_critical_values():
    assert t975(4) == 2.776
    assert t975(40) == pytest.approx(2.021, abs=2e-3)
    assert t975(60) == pytest.approx(2.000, abs=2e-3)
    assert t975(120) == pytest.approx(1.980, abs=2e-3)
    assert t975(100000) == pytest.approx(1.960, abs=1e-3)


def test_paired_diff():
    a = {"r1": 1.0, "r2": 0.8, "r3": 0.9, "only_a": 0.0}
    b = {"r1": 0.9, "r2": 0.8, "r3": 0.7}
    m, lo, hi, n = paired_diff_ci(a, b)
    assert n == 3 and m == pytest.approx(0.1)
    # diffs 0.1, 0, 0.2: sd 0.1, half = 4.303 * 0.1 / sqrt(3) = 0.24843
    assert (lo, hi) == pytest.approx((0.1 - 0.24843, 0.1 + 0.24843), abs=1e-4)


def test_percentiles_match_numpy_linear():
    xs = [15, 20, 35, 40, 50]
    assert percentile(xs, 50) == 35
    assert percentile(xs, 99) == pytest.approx(49.6)
    assert percentile(xs, 40) == pytest.approx(29.0)
    assert percentile([7.0], 99) == 7.0
