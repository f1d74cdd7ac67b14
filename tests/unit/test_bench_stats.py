"""Statistics of the benchmark engine against inputs whose answers are known independently."""

from __future__ import annotations

import math
import random

import pytest

from weatherbench.stats import (
    LatencyHistogram,
    RateSearch,
    balance_score,
    fewest_sufficient,
    lag_trend,
    linear_trend,
    mean_ci,
    name_bottleneck,
    scaling_points,
)


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


@pytest.mark.parametrize("q", [50, 95, 99, 99.9, 100])
def test_histogram_percentiles_match_nearest_rank_within_three_digits(q: float) -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(3, 1.2) for _ in range(20_000)]  # ms, long tail
    histogram = LatencyHistogram().record_all(values)
    expected = nearest_rank(values, q)
    assert histogram.count == len(values)
    assert histogram.percentile(q) == pytest.approx(expected, rel=2e-3, abs=2e-3)


def test_histogram_keeps_negative_samples_and_ranks_them_first() -> None:
    values = [-40.0, -5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0]
    histogram = LatencyHistogram().record_all(values)
    summary = histogram.summary()
    assert summary["negative"] == 2
    assert histogram.min == -40.0
    assert histogram.percentile(10) == -40.0
    assert histogram.percentile(20) == -5.0
    assert histogram.percentile(50) == pytest.approx(nearest_rank(values, 50), rel=1e-3)
    assert summary["mean"] == pytest.approx(sum(values) / len(values), rel=1e-3)


def test_histogram_over_range_samples_are_counted_not_dropped() -> None:
    day_ms = 24 * 3600 * 1000
    histogram = LatencyHistogram().record_all([1.0, 2.0, 3.0 * day_ms])
    assert histogram.count == 3
    assert histogram.max == 3.0 * day_ms
    assert histogram.percentile(100) == 3.0 * day_ms


def test_histogram_encoding_round_trips() -> None:
    values = [float(v) for v in range(1, 1001)]
    histogram = LatencyHistogram().record_all(values)
    decoded = LatencyHistogram.decode(histogram.encode())
    assert decoded.count == 1000
    assert decoded.percentile(95) == histogram.percentile(95)


def test_empty_histogram_reports_nan_not_zero() -> None:
    summary = LatencyHistogram().summary()
    assert summary["count"] == 0
    assert math.isnan(summary["p95"])


def test_nan_sample_is_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        LatencyHistogram().record(float("nan"))


def test_linear_trend_recovers_a_known_slope_with_noise() -> None:
    rng = random.Random(3)
    points = [(t, 100 + 12.5 * t + rng.gauss(0, 5)) for t in range(60)]
    trend = linear_trend(points)
    assert trend.low < 12.5 < trend.high
    assert trend.slope == pytest.approx(12.5, abs=0.5)
    assert not trend.is_flat(tolerance=1.0)


def test_lag_trend_excludes_warm_up_and_sees_a_flat_series() -> None:
    rng = random.Random(5)
    # A warm-up backlog that drains, then a flat series: only the part after warm-up counts.
    points = [(t, 5000 - 400 * t) for t in range(10)] + [(t, 200 + rng.gauss(0, 20)) for t in range(10, 70)]
    assert not linear_trend(points).is_flat(tolerance=-1000)
    trend = lag_trend(points, after_s=10)
    assert trend.points == 60
    assert trend.is_flat(tolerance=1.0)


def test_trend_with_too_few_points_claims_nothing() -> None:
    assert not lag_trend([(0, 1), (1, 1)]).is_flat(tolerance=100)
    assert math.isnan(linear_trend([]).slope)


def test_balance_score() -> None:
    assert balance_score([100, 100, 100, 100]) == 100.0
    assert balance_score({0: 400, 1: 0, 2: 0, 3: 0}) == pytest.approx(25.0)
    assert balance_score([90, 110]) == pytest.approx(100 * 100 / 110)
    assert math.isnan(balance_score([]))


def test_mean_ci_matches_the_t_interval() -> None:
    values = [10.0, 12.0, 14.0]
    interval = mean_ci(values)
    # mean 12, sd 2, n 3: half width = t(0.975, 2) * 2 / sqrt(3), t = 4.302653
    assert interval.mean == 12.0
    assert interval.half_width == pytest.approx(4.302653 * 2 / math.sqrt(3), rel=1e-5)
    assert math.isnan(mean_ci([5.0]).half_width)
    assert mean_ci([float("nan"), 1.0, 3.0]).n == 2


def test_scaling_points_against_ideal() -> None:
    points = scaling_points([(4, 360.0), (1, 100.0), (2, 190.0)])
    assert [p.workers for p in points] == [1, 2, 4]
    assert points[1].speedup == pytest.approx(1.9)
    assert points[2].ideal == 4
    assert points[2].efficiency == pytest.approx(0.9)


def test_demand_is_the_fewest_sufficient_workers() -> None:
    assert fewest_sufficient({1: False, 2: True, 4: True, 8: True}) == 2
    assert fewest_sufficient({1: False, 2: False}) is None


def drive(search: RateSearch, capacity: float) -> float | None:
    while (rate := search.next_rate()) is not None:
        search.record(rate, rate <= capacity)
    return search.best_ok


def test_rate_search_brackets_the_capacity() -> None:
    search = RateSearch(low=10, high=1000, max_steps=12, resolution=0.05)
    best = drive(search, capacity=137.0)
    assert best is not None and best <= 137.0
    assert (search.lowest_failed - best) / best <= 0.05
    assert search.bounded_above


def test_rate_search_reports_a_lower_bound_when_high_holds() -> None:
    search = RateSearch(low=10, high=100, max_steps=6, resolution=0.1)
    assert drive(search, capacity=1e9) == 100
    assert not search.bounded_above
    assert len(search.history) == 2


def test_rate_search_halves_when_low_fails_and_respects_max_steps() -> None:
    search = RateSearch(low=80, high=800, max_steps=3, resolution=0.1)
    assert drive(search, capacity=15) is None  # 80, 40, 20 all fail: three probes only
    assert [rate for rate, _ in search.history] == [80, 40, 20]


def test_bottleneck_is_the_first_saturated_tier_in_pipeline_order() -> None:
    tier, reasons = name_bottleneck({"ray": ["ray lag grows 40 msg/s"], "spark": ["batch 12 s > 10 s"]})
    assert tier == "spark"
    assert reasons == ["batch 12 s > 10 s"]
    assert name_bottleneck({"cpu": ["cpu 97%"]}) == ("cpu", ["cpu 97%"])
    assert name_bottleneck({"spark": [], "ray": []}) == (None, [])
