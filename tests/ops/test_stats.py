"""The confidence bounds behind rollout decisions: known values and coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from guarita.ops import stats


def test_clopper_pearson_matches_the_beta_quantiles() -> None:
    b = stats.binomial_rate(3, 200, 0.05)
    assert b.estimate == pytest.approx(0.015)
    assert b.lower == pytest.approx(0.0041006, rel=1e-4)
    assert b.upper == pytest.approx(0.0383097, rel=1e-4)


def test_no_failures_has_a_zero_lower_bound_and_the_rule_of_three_upper() -> None:
    b = stats.binomial_rate(0, 300, 0.05)
    assert b.lower == 0.0
    assert b.upper == pytest.approx(1 - 0.05 ** (1 / 300))  # about 3/300
    assert stats.binomial_rate(0, 0, 0.05).upper == 1.0  # no data, no bound


def test_bounds_cover_the_true_value_at_least_as_often_as_promised() -> None:
    rng = np.random.default_rng(7)
    runs, alpha = 2000, 0.05
    misses = {"rate": 0, "difference": 0, "mean": 0, "p95": 0}
    true_p95 = 400 * math.exp(0.5 * 1.6448536)
    for _ in range(runs):
        k = int(rng.binomial(200, 0.01))
        misses["rate"] += stats.binomial_rate(k, 200, alpha).lower > 0.01
        k2 = int(rng.binomial(200, 0.01))
        misses["difference"] += stats.rate_difference(k, 200, k2, 200, alpha).lower > 0
        misses["mean"] += stats.mean(rng.normal(0.8, 0.1, 50), alpha).lower > 0.8
        latency = 400 * np.exp(0.5 * rng.standard_normal(200))
        misses["p95"] += stats.quantile(latency, 0.95, alpha).lower > true_p95
    # each one-sided bound misses at most alpha of the time (plus Monte Carlo noise)
    for name, count in misses.items():
        assert count / runs <= alpha + 0.015, name


def test_quantile_bounds_bracket_the_estimate() -> None:
    x = np.arange(1, 1001, dtype=float)
    b = stats.quantile(x, 0.95, 0.05)
    assert b.lower < b.estimate < b.upper
    assert 930 <= b.lower <= 950 <= b.upper <= 965
    tiny = stats.quantile([1.0, 2.0, 3.0], 0.95, 0.05)  # too few values to bound a p95 above
    assert tiny.upper == math.inf


def test_welch_difference_and_ratio_of_means() -> None:
    a, b = [0.9] * 10 + [0.8] * 10, [0.6] * 10 + [0.5] * 10
    d = stats.mean_difference(a, b, 0.05)
    assert d.estimate == pytest.approx(0.3)
    assert 0.25 < d.lower < 0.3 < d.upper < 0.35
    r = stats.ratio_of_means([0.9, 0.88, 0.92, 0.9], [0.9, 0.91, 0.89, 0.9], 0.05)
    assert r.estimate == pytest.approx(1.0)
    assert r.lower < 1.0 < r.upper


def test_figures_are_json_ready() -> None:
    figures = stats.quantile([1.0, 2.0], 0.95, 0.05).as_dict()
    assert figures["upper"] is None  # infinity is not JSON
    assert figures["n"] == 2


def test_importing_the_decision_engine_does_not_load_numpy_or_scipy() -> None:
    import subprocess
    import sys

    code = (
        "import sys, guarita.settings, guarita.ops.decide, guarita.ops.matrix\n"
        "assert 'numpy' not in sys.modules and 'scipy' not in sys.modules, 'loaded'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
