"""Statistics of the benchmark: histograms, trends, balance, confidence intervals, searches.

Pure functions and small classes over numbers, with no I/O, so each is
tested with known inputs:

* `LatencyHistogram`: every sample in an HdrHistogram (3 significant
  digits, 1 us .. 24 h), plus negative samples kept apart and reported
  (negative latency means clock trouble; it is never clamped to zero);
* `linear_trend` / `lag_trend`: least-squares slope with its 95% interval,
  the test for "consumer lag does not trend upward";
* `balance_score`: how evenly messages spread over partitions;
* `mean_ci`: Student-t confidence interval over repetitions;
* `scaling_points`: speed-up and efficiency against ideal linear scaling;
* `RateSearch`: the sustainable-throughput search; `fewest_sufficient`:
  the demand metric (fewest workers that sustain a load);
* `name_bottleneck`: the first saturated tier in pipeline order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram
from scipy import stats as scipy_stats

US_PER_MS = 1000
HIGHEST_US = 24 * 3600 * 1_000_000  # 24 h: anything longer is recorded as "over range"
SIGNIFICANT_DIGITS = 3
PERCENTILES = (50.0, 95.0, 99.0, 99.9)


def percentile_key(q: float) -> str:
    """50 -> "p50", 99.9 -> "p99.9"."""
    return f"p{q:g}"


class LatencyHistogram:
    """Full-resolution latency distribution in milliseconds.

    Non-negative samples go into an HdrHistogram in microseconds, so
    percentiles are exact to 3 significant digits whatever the sample count.
    Negative samples (a stage that ended before it began: clocks disagree)
    and samples over 24 h are kept apart, counted, and included in the
    percentiles by rank, so they are visible instead of clamped or dropped.
    """

    def __init__(self) -> None:
        self._hdr = HdrHistogram(1, HIGHEST_US, SIGNIFICANT_DIGITS)
        self.negatives: list[float] = []
        self.over_range: list[float] = []

    def record(self, value_ms: float) -> None:
        if math.isnan(value_ms):
            raise ValueError("latency sample is NaN")
        if value_ms < 0:
            self.negatives.append(value_ms)
            return
        micros = round(value_ms * US_PER_MS)
        if micros > HIGHEST_US or not self._hdr.record_value(micros):
            self.over_range.append(value_ms)

    def record_all(self, values_ms: Iterable[float]) -> LatencyHistogram:
        for value in values_ms:
            self.record(value)
        return self

    @property
    def count(self) -> int:
        return self._hdr.get_total_count() + len(self.negatives) + len(self.over_range)

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile in ms over all samples (negative ones included)."""
        n = self.count
        if n == 0:
            return math.nan
        rank = max(1, math.ceil(q / 100 * n))
        below = sorted(self.negatives)
        if rank <= len(below):
            return below[rank - 1]
        in_hdr = self._hdr.get_total_count()
        rank_in_hdr = rank - len(below)
        if rank_in_hdr > in_hdr:
            return sorted(self.over_range)[rank_in_hdr - in_hdr - 1]
        # The HDR percentile for exactly this rank within its own samples.
        return self._hdr.get_value_at_percentile(100.0 * rank_in_hdr / in_hdr) / US_PER_MS

    @property
    def min(self) -> float:
        if self.negatives:
            return min(self.negatives)
        if self._hdr.get_total_count():
            return self._hdr.get_min_value() / US_PER_MS
        return min(self.over_range) if self.over_range else math.nan

    @property
    def max(self) -> float:
        if self.over_range:
            return max(self.over_range)
        if self._hdr.get_total_count():
            return self._hdr.get_max_value() / US_PER_MS
        return max(self.negatives) if self.negatives else math.nan

    @property
    def mean(self) -> float:
        n = self.count
        if n == 0:
            return math.nan
        in_hdr = self._hdr.get_total_count()
        total = self._hdr.get_mean_value() * in_hdr / US_PER_MS if in_hdr else 0.0
        return (total + sum(self.negatives) + sum(self.over_range)) / n

    def summary(self) -> dict[str, float]:
        """count, min, mean, p50, p95, p99, p99.9, max and the count of negative samples."""
        result = {"count": float(self.count), "min": self.min, "mean": self.mean}
        for q in PERCENTILES:
            result[percentile_key(q)] = self.percentile(q)
        result["max"] = self.max
        result["negative"] = float(len(self.negatives))
        return result

    def encode(self) -> str:
        """The HDR part in the standard compressed base64 form (HistogramLogProcessor reads it)."""
        return self._hdr.encode().decode("ascii")

    # A step's outcome is handed between processes (one Airflow task per step) by pickle; the
    # HDR counts array is a ctypes type pickle cannot name, so it travels in its encoded form.
    def __getstate__(self) -> dict[str, object]:
        return {"hdr": self.encode(), "negatives": self.negatives, "over_range": self.over_range}

    def __setstate__(self, state: dict[str, object]) -> None:
        self._hdr = HdrHistogram.decode(str(state["hdr"]).encode("ascii"))
        self.negatives = list(state["negatives"])  # type: ignore[call-overload]
        self.over_range = list(state["over_range"])  # type: ignore[call-overload]

    @classmethod
    def decode(cls, encoded: str, negatives: Sequence[float] = ()) -> LatencyHistogram:
        histogram = cls()
        histogram._hdr = HdrHistogram.decode(encoded.encode("ascii"))
        histogram.negatives = list(negatives)
        return histogram


@dataclass(frozen=True)
class Trend:
    slope: float  # units per second
    low: float  # 95% interval of the slope
    high: float
    intercept: float
    points: int

    def is_flat(self, tolerance: float) -> bool:
        """No upward trend: the slope is not significantly above `tolerance` (units/s)."""
        if self.points < 3:
            return False  # too few points to claim anything
        return self.low <= tolerance


def linear_trend(points: Sequence[tuple[float, float]], confidence: float = 0.95) -> Trend:
    """Ordinary least squares of value on time, with a Student-t interval for the slope."""
    n = len(points)
    if n == 0:
        return Trend(math.nan, math.nan, math.nan, math.nan, 0)
    xs = [float(p[0]) for p in points]
    ys = [float(p[1]) for p in points]
    mean_x = sum(xs) / n
    mean_y = sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        return Trend(math.nan, math.nan, math.nan, mean_y, n)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    intercept = mean_y - slope * mean_x
    if n < 3:
        return Trend(slope, -math.inf, math.inf, intercept, n)
    residual = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    stderr = math.sqrt(residual / (n - 2) / sxx)
    half = scipy_stats.t.ppf(0.5 + confidence / 2, n - 2) * stderr
    return Trend(slope, slope - half, slope + half, intercept, n)


def lag_trend(points: Sequence[tuple[float, float]], after_s: float = 0.0) -> Trend:
    """Trend of a lag series (t seconds, lag messages) from `after_s` on (warm-up excluded)."""
    return linear_trend([p for p in points if p[0] >= after_s])


def balance_score(counts: Sequence[int] | Mapping[Any, int]) -> float:
    """Evenness of messages over partitions, in percent: 100 * mean / max.

    100 means every partition got the same count. With P partitions and all
    messages on one of them, the score is 100 / P. It reads as the share of
    ideal parallel throughput a consumer per partition would get, since the
    busiest partition paces them.
    """
    values = list(counts.values()) if isinstance(counts, Mapping) else list(counts)
    if not values or max(values) == 0:
        return math.nan
    return 100.0 * (sum(values) / len(values)) / max(values)


def coefficient_of_variation(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    mean = sum(values) / len(values)
    if mean == 0:
        return math.nan
    variance = sum((v - mean) ** 2 for v in values) / len(values)
    return math.sqrt(variance) / mean


@dataclass(frozen=True)
class Interval:
    mean: float
    half_width: float  # NaN with one sample: no interval can be claimed
    n: int
    confidence: float = 0.95

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and Student-t confidence half-width over repetitions (NaNs ignored)."""
    clean = [float(v) for v in values if v is not None and not math.isnan(v)]
    n = len(clean)
    if n == 0:
        return Interval(math.nan, math.nan, 0, confidence)
    mean = sum(clean) / n
    if n == 1:
        return Interval(mean, math.nan, 1, confidence)
    sd = math.sqrt(sum((v - mean) ** 2 for v in clean) / (n - 1))
    half = scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, half, n, confidence)


@dataclass(frozen=True)
class ScalingPoint:
    workers: int
    throughput: float
    speedup: float  # throughput / baseline throughput
    ideal: float  # workers / baseline workers
    efficiency: float  # speedup / ideal


def scaling_points(measured: Sequence[tuple[int, float]]) -> list[ScalingPoint]:
    """Speed-up and efficiency of each (workers, throughput) against ideal linear scaling.

    The baseline is the smallest worker count measured.
    """
    ordered = sorted(measured)
    if not ordered:
        return []
    base_workers, base_tp = ordered[0]
    points = []
    for workers, throughput in ordered:
        speedup = throughput / base_tp if base_tp else math.nan
        ideal = workers / base_workers
        points.append(ScalingPoint(workers, throughput, speedup, ideal, speedup / ideal))
    return points


def fewest_sufficient(outcomes: Mapping[int, bool]) -> int | None:
    """The demand metric: the fewest workers whose step sustained the load, or None."""
    sufficient = sorted(workers for workers, ok in outcomes.items() if ok)
    return sufficient[0] if sufficient else None


@dataclass
class RateSearch:
    """Search for the highest sustainable offered rate.

    Probes `low` first. If it holds, probes `high`; then bisects
    geometrically between the best rate that held and the lowest that failed,
    until they are within `resolution` (relative) or `max_steps` probes are
    spent. If `low` fails, it halves until a rate holds. The answer is the
    best rate that held, never a guess between probes.
    """

    low: float
    high: float
    max_steps: int
    resolution: float
    history: list[tuple[float, bool]] = field(default_factory=list)

    @property
    def best_ok(self) -> float | None:
        held = [rate for rate, ok in self.history if ok]
        return max(held) if held else None

    @property
    def lowest_failed(self) -> float | None:
        failed = [rate for rate, ok in self.history if not ok]
        return min(failed) if failed else None

    def next_rate(self) -> float | None:
        if len(self.history) >= self.max_steps:
            return None
        if not self.history:
            return self.low
        ok, failed = self.best_ok, self.lowest_failed
        if ok is None:
            return failed / 2 if failed is not None and failed / 2 >= 0.001 else None
        if failed is None:
            return self.high if ok < self.high else None  # `high` held: report "at least high"
        if (failed - ok) / ok <= self.resolution:
            return None
        return math.sqrt(ok * failed)

    def record(self, rate: float, sustained: bool) -> None:
        self.history.append((rate, sustained))

    @property
    def bounded_above(self) -> bool:
        """False when even the highest probe held: the result is a lower bound."""
        return self.lowest_failed is not None


# Pipeline order: the first tier that shows saturation is named the bottleneck,
# since every tier after it only sees what it lets through.
TIERS = ("producer", "kafka", "spark", "ray", "api", "cpu")


def name_bottleneck(signals: Mapping[str, Sequence[str]]) -> tuple[str | None, list[str]]:
    """(the first saturated tier in pipeline order, its reasons); (None, []) if none saturated.

    `signals` maps tier -> reasons it looks saturated (empty list: fine). The
    CPU tier is a machine-wide signal: it is named only when no pipeline tier
    is, and otherwise its reasons are appended as context.
    """
    for tier in TIERS[:-1]:
        reasons = list(signals.get(tier, ()))
        if reasons:
            return tier, reasons + [f"(also: {r})" for r in signals.get("cpu", ())]
    cpu = list(signals.get("cpu", ()))
    return ("cpu", cpu) if cpu else (None, [])
