"""Regression detection: a run's headline metrics against the recent history of the same test.

A value regresses when it is worse than the baseline (the median of the last
N finished runs of the same test and step) by more than the baseline's
noise, and also worse than every baseline value. The noise is the largest of

* a relative threshold (default 20% of the median; 1.5 times that with fewer than 3 runs),
* three robust standard deviations of the baseline (1.4826 x MAD, from 3 runs up),
* a per-metric absolute floor, so sub-millisecond jitter never counts.

Steps are matched by label (``rate=50``, ``spark_workers=2``), so a rate
search only matches where the same rate was probed; its sustainable rate is
compared as its own metric.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from weatherbench.report.data import RunData
from weatherbench.store import HistoryPoint, ResultsStore

DEFAULT_BASELINE_RUNS = 5
# Run-to-run spread of the quick profile on a 2-core machine is about +-20% (see the README).
DEFAULT_RELATIVE_THRESHOLD = 0.20
# Fewer than 3 baseline runs give no spread to measure: the relative threshold is widened instead.
THIN_BASELINE_RUNS = 3
THIN_BASELINE_FACTOR = 1.5
MAD_TO_SD = 1.4826
NOISE_SDS = 3.0


@dataclass(frozen=True)
class Headline:
    """A metric followed across runs."""

    metric: str
    component: str
    label: str
    unit: str
    higher_is_better: bool = False
    floor: float = 0.0  # smallest change that can count, in the metric's unit


HEADLINES: tuple[Headline, ...] = (
    Headline("latency.e2e.p95", "", "End-to-end latency p95", "ms", floor=1_000),
    Headline("latency.window_close.p95", "", "Window close to queryable p95", "ms", floor=1_000),
    Headline("latency.t1_producer.p95", "", "Producer latency (T1) p95", "ms", floor=5),
    Headline("latency.t5_inference.p95", "", "Ray inference (T5) p95", "ms", floor=1),
    Headline("spark.batch_duration.p95", "spark", "Spark batch time p95", "ms", floor=500),
    Headline("throughput.end_to_end", "", "End-to-end throughput", "msg/s", higher_is_better=True, floor=1),
    Headline("throughput.sustainable", "", "Sustainable throughput", "msg/s", higher_is_better=True, floor=1),
    Headline("lag.spark.max", "spark", "Spark consumer lag (max)", "messages", floor=100),
    Headline("lag.ray.max", "ray", "Ray consumer lag (max)", "messages", floor=50),
    Headline("spark.capacity", "spark", "Spark capacity", "rows/s", higher_is_better=True, floor=1),
    Headline("ray.capacity", "ray", "Ray capacity", "pred/s", higher_is_better=True, floor=1),
    Headline("resources.machine.cpu.mean", "", "Machine CPU (mean)", "%", floor=5),
    Headline("accounting.lost_messages", "", "Lost messages", "messages"),
)


class Change(Enum):
    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    STEADY = "within noise"
    NO_BASELINE = "no baseline"


@dataclass(frozen=True)
class Comparison:
    """One headline metric of one step against its baseline."""

    headline: Headline
    step: str
    value: float
    baseline: list[float]  # per-run values, newest first
    baseline_runs: list[str]
    median: float
    noise: float
    change: Change

    @property
    def relative_change(self) -> float:
        if not self.baseline or self.median == 0:
            return math.nan
        return (self.value - self.median) / abs(self.median)

    @property
    def worse_by(self) -> float:
        """How much worse than the median, in the metric's unit (negative when better)."""
        delta = self.value - self.median
        return -delta if self.headline.higher_is_better else delta


def noise_band(baseline: Sequence[float], relative: float, floor: float) -> float:
    median = statistics.median(baseline)
    if len(baseline) < THIN_BASELINE_RUNS:
        relative *= THIN_BASELINE_FACTOR
    noise = max(relative * abs(median), floor)
    if len(baseline) >= THIN_BASELINE_RUNS:
        mad = statistics.median(abs(v - median) for v in baseline)
        noise = max(noise, NOISE_SDS * MAD_TO_SD * mad)
    return noise


def classify(
    value: float, baseline: Sequence[float], headline: Headline, relative: float
) -> tuple[Change, float, float]:
    """(change, baseline median, noise) for one value against its baseline values."""
    if not baseline or math.isnan(value):
        return Change.NO_BASELINE, math.nan, math.nan
    median = statistics.median(baseline)
    noise = noise_band(baseline, relative, headline.floor)
    sign = -1.0 if headline.higher_is_better else 1.0
    worse = sign * (value - median)
    worse_than_all = all(sign * (value - b) > 0 for b in baseline)
    better_than_all = all(sign * (value - b) < 0 for b in baseline)
    if worse > noise and worse_than_all:
        return Change.REGRESSION, median, noise
    if -worse > noise and better_than_all:
        return Change.IMPROVEMENT, median, noise
    return Change.STEADY, median, noise


def _per_run(points: Sequence[HistoryPoint], step: str) -> dict[str, float]:
    """Mean over repetitions, per run, of one step's history points (newest run first)."""
    grouped: dict[str, list[float]] = defaultdict(list)
    for point in points:
        if point.step == step and not math.isnan(point.value):
            grouped[point.run_id].append(point.value)
    return {run_id: sum(vs) / len(vs) for run_id, vs in grouped.items()}


def detect_regressions(
    store: ResultsStore,
    run: RunData,
    baseline_runs: int = DEFAULT_BASELINE_RUNS,
    relative: float = DEFAULT_RELATIVE_THRESHOLD,
    baseline_run_ids: Sequence[str] | None = None,
) -> list[Comparison]:
    """Every headline metric of every step of ``run`` against the runs before it.

    ``baseline_run_ids`` pins the baseline to given runs (comparing two runs);
    otherwise the last ``baseline_runs`` finished, non-error runs of the same
    test that started before this one are used.
    """
    comparisons = []
    for headline in HEADLINES:
        if not run.has(headline.metric, headline.component):
            continue
        # Ask for more runs than needed: newer runs and error runs are dropped below.
        history = store.history(
            headline.metric, test=run.test, component=headline.component, limit=max(50, baseline_runs * 4)
        )
        eligible = [
            p
            for p in history
            if p.run_id != run.run_id
            and p.status != "error"
            and p.started_at < run.record.started_at
            and (baseline_run_ids is None or p.run_id in baseline_run_ids)
        ]
        steps = sorted({(r.step_index, r.step) for r in run.rows(headline.metric, headline.component)})
        for step_index, step in steps:
            value = run.value(headline.metric, step_index, headline.component)
            per_run = _per_run(eligible, step)
            limit = len(per_run) if baseline_run_ids is not None else baseline_runs
            chosen = list(per_run.items())[:limit]
            values = [v for _, v in chosen]
            change, median, noise = classify(value, values, headline, relative)
            comparisons.append(
                Comparison(headline, step, value, values, [r for r, _ in chosen], median, noise, change)
            )
    return comparisons


def regressions(comparisons: Sequence[Comparison]) -> list[Comparison]:
    return [c for c in comparisons if c.change is Change.REGRESSION]
