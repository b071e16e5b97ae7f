"""nnflash_agent.stats: summary statistics and the distribution-free CI of the median."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from nnflash_agent.stats import median_ci, percentile, summarize


def test_percentile_matches_numpy_linear():
    rng = random.Random(1)
    xs = sorted(rng.random() for _ in range(37))
    for q in (0, 1, 10, 50, 90, 99, 100):
        assert percentile(xs, q) == pytest.approx(np.percentile(xs, q))


def test_percentile_errors():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summary_fields_and_values():
    xs = [3.0, 1.0, 2.0, 5.0, 4.0]
    s = summarize(xs)
    assert s["latency_ms_median"] == 3.0
    assert s["latency_ms_mean"] == 3.0
    assert s["latency_ms_min"] == 1.0 and s["latency_ms_max"] == 5.0
    assert s["latency_ms_std"] == pytest.approx(np.std(xs, ddof=1))
    assert s["latency_ms_p90"] == pytest.approx(np.percentile(xs, 90))
    assert s["latency_ms_p99"] == pytest.approx(np.percentile(xs, 99))
    assert s["n_samples"] == 5


def test_single_sample():
    s = summarize([2.5])
    assert s["latency_ms_std"] == 0.0
    assert s["latency_ms_ci95"] == [2.5, 2.5]


def test_summary_rejects_empty():
    with pytest.raises(ValueError):
        summarize([])


def test_median_ci_known_ranks():
    # n = 10: P(B <= 1) = 11/1024 -> 2x = 0.0215 <= 0.05; P(B <= 2) = 56/1024 -> 0.109 > 0.05.
    xs = list(range(1, 11))
    lo, hi, cov = median_ci(xs)
    assert (lo, hi) == (2, 9)
    assert cov == pytest.approx(1 - 2 * 11 / 1024)
    # n = 6: only [min, max]; coverage 1 - 2/64.
    lo, hi, cov = median_ci(list(range(6)))
    assert (lo, hi) == (0, 5) and cov == pytest.approx(1 - 2 / 64)


def test_median_ci_small_n_reports_true_coverage():
    lo, hi, cov = median_ci([1.0, 2.0, 3.0])
    assert (lo, hi) == (1.0, 3.0)
    assert cov == pytest.approx(0.75) and cov < 0.95


def test_median_ci_coverage_at_least_95_for_n_ge_6_and_large_n_stable():
    for n in (6, 7, 20, 50, 200, 2000):
        lo, hi, cov = median_ci(sorted(range(n)))
        assert cov >= 0.95
        assert lo <= hi
    # Large n: rank approximately n/2 - 0.98 sqrt(n).
    n = 2000
    lo, hi, _ = median_ci(list(range(n)))
    expected = n / 2 - 1.96 * math.sqrt(n) / 2
    assert abs(lo - expected) < 3


def test_median_ci_empirical_coverage():
    rng = np.random.default_rng(0)
    hits = 0
    trials = 400
    for _ in range(trials):
        xs = sorted(rng.exponential(size=25))
        lo, hi, _ = median_ci(xs)
        hits += lo <= math.log(2) <= hi
    assert hits / trials > 0.92
