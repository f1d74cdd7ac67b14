"""The report's rules on known numbers: target verdicts, regression noise bands, number formatting."""

from __future__ import annotations

import math

import pytest

from weatherbench.report.regressions import (
    HEADLINES,
    MAD_TO_SD,
    NOISE_SDS,
    THIN_BASELINE_FACTOR,
    Change,
    Headline,
    classify,
    noise_band,
)
from weatherbench.report.targets import GUIDE_TARGETS, Status, Target, format_value, worst_status


def target(name: str) -> Target:
    return next(t for t in GUIDE_TARGETS if t.name.startswith(name))


@pytest.mark.parametrize(
    ("value", "expected"),
    [(59_999, Status.PASS), (60_000, Status.WARN), (120_000, Status.WARN), (120_001, Status.CRITICAL)],
)
def test_lower_is_better_target_passes_below_warns_between_and_is_critical_past_the_threshold(
    value, expected
):
    assert target("End-to-end latency").judge(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_000, Status.PASS),
        (5_000, Status.PASS),
        (999, Status.WARN),
        (100, Status.WARN),
        (99, Status.CRITICAL),
    ],
)
def test_throughput_target_is_higher_is_better(value, expected):
    assert target("System throughput").judge(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.0, Status.PASS), (0.05, Status.WARN), (0.1, Status.WARN), (0.2, Status.CRITICAL)],
)
def test_loss_rate_target_of_zero_is_met_only_by_zero(value, expected):
    assert target("Message loss rate").judge(value) is expected


def test_nan_is_not_measured_and_not_measured_never_outranks_a_measured_status():
    assert target("End-to-end latency").judge(math.nan) is Status.NOT_MEASURED
    assert worst_status([Status.NOT_MEASURED, Status.PASS]) is Status.PASS
    assert worst_status([Status.PASS, Status.CRITICAL, Status.WARN]) is Status.CRITICAL
    assert worst_status([Status.NOT_MEASURED]) is Status.NOT_MEASURED


def test_the_targets_table_has_every_row_of_the_guides_section_10():
    names = [t.name for t in GUIDE_TARGETS]
    for row in (
        "End-to-end latency",
        "Producer latency",
        "Spark processing time",
        "Ray inference latency",
        "System throughput",
        "Kafka consumer lag, Spark",
        "Kafka consumer lag, Ray",
        "Spark batch time",
        "Ray actor startup",
        "CPU utilization",
        "Memory utilization",
        "Recovery time",
        "Message loss rate",
    ):
        assert any(name.startswith(row) for name in names), row
    assert len(names) == 13


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (32718.8, "ms", "32.7 s"),
        (40.03, "ms", "40 ms"),
        (0.068, "ms", "0.068 ms"),
        (53428, "messages", "53,428 msgs"),
        (6.3283, "ratio", "6.33x"),
        (92.81, "%", "92.8%"),
        (0.0, "%", "0%"),
        (math.nan, "ms", "n/a"),
    ],
)
def test_values_are_formatted_for_readers(value, unit, text):
    assert format_value(value, unit) == text


E2E = next(h for h in HEADLINES if h.metric == "latency.e2e.p95")
THROUGHPUT = next(h for h in HEADLINES if h.metric == "throughput.end_to_end")
LOST = next(h for h in HEADLINES if h.metric == "accounting.lost_messages")


def test_noise_is_the_largest_of_relative_threshold_robust_spread_and_floor():
    steady = [10_000.0, 10_100.0, 9_900.0, 10_050.0, 9_950.0]
    assert noise_band(steady, 0.2, 1_000) == pytest.approx(0.2 * 10_000)
    noisy = [10_000.0, 14_000.0, 6_000.0, 13_000.0, 7_000.0]
    mad = 3_000.0  # median 10,000; absolute deviations 0, 4000, 4000, 3000, 3000
    assert noise_band(noisy, 0.2, 1_000) == pytest.approx(NOISE_SDS * MAD_TO_SD * mad)
    assert noise_band([2.0, 2.1, 1.9], 0.2, 1_000) == 1_000
    # Fewer than three runs: no spread to measure, the relative threshold widens.
    assert noise_band([10_000.0, 10_000.0], 0.2, 0) == pytest.approx(0.2 * THIN_BASELINE_FACTOR * 10_000)


def test_a_value_worse_than_noise_and_every_baseline_run_is_a_regression():
    baseline = [10_000.0, 10_400.0, 9_700.0, 10_100.0, 9_900.0]
    change, median, noise = classify(13_000.0, baseline, E2E, 0.2)
    assert change is Change.REGRESSION
    assert median == 10_000.0
    assert 13_000.0 - median > noise


def test_a_change_inside_the_noise_or_inside_the_baseline_range_is_not_a_regression():
    baseline = [10_000.0, 10_400.0, 9_700.0, 10_100.0, 9_900.0]
    assert classify(11_500.0, baseline, E2E, 0.2)[0] is Change.STEADY
    # Past the noise band but not worse than the worst baseline run: still not flagged.
    wide = [10_000.0, 30_000.0, 9_000.0]
    assert classify(25_000.0, wide, Headline("x", "", "x", "ms", floor=0), 0.01)[0] is Change.STEADY


def test_higher_is_better_metrics_regress_downwards_and_improve_upwards():
    baseline = [1_000.0, 1_020.0, 980.0]
    assert classify(700.0, baseline, THROUGHPUT, 0.2)[0] is Change.REGRESSION
    assert classify(1_400.0, baseline, THROUGHPUT, 0.2)[0] is Change.IMPROVEMENT
    assert classify(1_010.0, baseline, THROUGHPUT, 0.2)[0] is Change.STEADY


def test_any_loss_after_lossless_runs_is_a_regression_and_no_history_is_no_baseline():
    assert classify(1.0, [0.0, 0.0, 0.0], LOST, 0.2)[0] is Change.REGRESSION
    assert classify(0.0, [0.0, 0.0, 0.0], LOST, 0.2)[0] is Change.STEADY
    assert classify(5.0, [], LOST, 0.2)[0] is Change.NO_BASELINE


def test_sub_millisecond_jitter_never_counts_for_inference_latency():
    inference = next(h for h in HEADLINES if h.metric == "latency.t5_inference.p95")
    assert classify(0.2, [0.06, 0.07, 0.065], inference, 0.2)[0] is Change.STEADY
    assert classify(3.0, [0.06, 0.07, 0.065], inference, 0.2)[0] is Change.REGRESSION
