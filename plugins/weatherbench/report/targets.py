"""The benchmark guide's targets (section 10 and the stage targets of section 1.1), judged on runs.

Each target has a threshold that passes and a critical threshold; values in
between warn. A target is judged on the worst value over the runs' verdict
steps (for a rate search, the step at the sustainable rate), and the row
says which run and step that value came from, so a reader can find it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from weatherbench.report.data import RunData


class Status(Enum):
    PASS = "pass"
    WARN = "warn"
    CRITICAL = "critical"
    NOT_MEASURED = "not measured"

    @property
    def rank(self) -> int:
        return {"pass": 0, "not measured": 0, "warn": 1, "critical": 2}[self.value]

    @property
    def label(self) -> str:
        return self.value.upper() if self is not Status.NOT_MEASURED else "n/a"


def worst_status(statuses: Sequence[Status]) -> Status:
    measured = [s for s in statuses if s is not Status.NOT_MEASURED]
    return max(measured, key=lambda s: s.rank) if measured else Status.NOT_MEASURED


@dataclass(frozen=True)
class Measured:
    value: float
    run_id: str
    where: str  # the step (or "all steps") the value comes from
    note: str = ""


@dataclass(frozen=True)
class Target:
    """One row of the guide's targets table."""

    name: str
    target_text: str
    critical_text: str
    higher_is_better: bool
    target: float
    critical: float
    unit: str
    measure: Callable[[Sequence[RunData]], Measured | None]

    def judge(self, value: float) -> Status:
        if math.isnan(value):
            return Status.NOT_MEASURED
        if self.higher_is_better:
            if value >= self.target:
                return Status.PASS
            return Status.CRITICAL if value < self.critical else Status.WARN
        # "0%" is met by exactly zero; every other target is a strict "<".
        meets = value <= 0 if self.target == 0 else value < self.target
        if meets:
            return Status.PASS
        return Status.CRITICAL if value > self.critical else Status.WARN


@dataclass(frozen=True)
class TargetResult:
    target: Target
    measured: Measured | None
    status: Status

    @property
    def measured_text(self) -> str:
        if self.measured is None:
            return "not measured"
        return format_value(self.measured.value, self.target.unit)


SHORT_UNITS = {"messages": "msgs", "predictions": "preds"}


def format_value(value: float, unit: str) -> str:
    """A number as a reader wants it: 3 significant figures, seconds above 10 s, thousands separated."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "never" if value > 0 else "-inf"
    if unit == "ms" and abs(value) >= 10_000:
        return f"{value / 1000:,.1f} s"
    if unit == "ratio":
        return f"{value:.2f}x"
    if unit == "%":
        return f"{value:.3g}%" if abs(value) < 1 else f"{value:,.1f}%"
    unit = SHORT_UNITS.get(unit, unit)
    suffix = f" {unit}" if unit else ""
    if abs(value) >= 1000:
        return f"{value:,.0f}{suffix}"
    if value == int(value):
        return f"{value:.0f}{suffix}"
    return f"{value:.3g}{suffix}"


def _worst_over_steps(metric: str, component: str = "", higher_is_better: bool = False):
    """A measure: the worst per-step value (mean over repetitions) over every run's verdict steps."""

    def measure(runs: Sequence[RunData]) -> Measured | None:
        found: list[Measured] = []
        for run in runs:
            for step in run.verdict_steps():
                value = run.value(metric, step.index, component)
                if not math.isnan(value):
                    found.append(Measured(value, run.run_id, step.label))
        if not found:
            return None
        pick = min if higher_is_better else max
        return pick(found, key=lambda m: m.value)

    return measure


def _sustainable_throughput(runs: Sequence[RunData]) -> Measured | None:
    searched = [(run.sustainable_rate, run) for run in runs if run.summary.get("search")]
    if searched:
        rate, run = max(searched, key=lambda pair: pair[0] or 0.0)
        note = "searched; no rate held" if rate is None else "highest rate held in a rate search"
        if run.summary["search"].get("lower_bound_only"):
            note = "every probed rate held: a lower bound"
        return Measured(rate or 0.0, run.run_id, "rate search", note)
    return None


def _batch_time_over_interval(runs: Sequence[RunData]) -> Measured | None:
    found: list[Measured] = []
    for run in runs:
        for step in run.verdict_steps():
            batch = run.value("spark.batch_duration.p95", step.index, "spark")
            interval = run.value("spark.trigger_interval", step.index, "spark")
            if not math.isnan(batch) and interval and not math.isnan(interval):
                found.append(
                    Measured(
                        batch / interval,
                        run.run_id,
                        step.label,
                        f"p95 {format_value(batch, 'ms')} vs trigger {format_value(interval, 'ms')}",
                    )
                )
    return max(found, key=lambda m: m.value) if found else None


def _loss_rate(runs: Sequence[RunData]) -> Measured | None:
    lost = expected = 0.0
    seen = False
    for run in runs:
        for row in run.rows("accounting.lost_messages"):
            lost += row.value
            seen = True
        expected += sum(r.value for r in run.rows("accounting.expected_messages"))
    if not seen or expected <= 0:
        return None
    where = "all steps" if len(runs) == 1 else f"all steps of {len(runs)} runs"
    return Measured(lost / expected * 100, runs[0].run_id, where, f"{lost:,.0f} of {expected:,.0f} lost")


def _recovery_time(runs: Sequence[RunData]) -> Measured | None:
    found = []
    for run in runs:
        for row in run.rows("fault.recovery_s", None):
            if not math.isnan(row.value):
                found.append(Measured(row.value, run.run_id, f"{row.step} ({row.component})"))
    return max(found, key=lambda m: m.value) if found else None


GUIDE_TARGETS: tuple[Target, ...] = (
    Target(
        "End-to-end latency (p95)",
        "< 1 min",
        "> 2 min",
        False,
        60_000,
        120_000,
        "ms",
        _worst_over_steps("latency.e2e.p95"),
    ),
    Target(
        "Producer latency (T1 p95)",
        "< 100 ms",
        "> 500 ms",
        False,
        100,
        500,
        "ms",
        _worst_over_steps("latency.t1_producer.p95"),
    ),
    Target(
        "Spark processing time (T3 p95)",
        "< 5 s",
        "> 10 s",
        False,
        5_000,
        10_000,
        "ms",
        _worst_over_steps("latency.t3_spark.p95"),
    ),
    Target(
        "Ray inference latency (T5 p95)",
        "< 100 ms",
        "> 500 ms",
        False,
        100,
        500,
        "ms",
        _worst_over_steps("latency.t5_inference.p95"),
    ),
    Target(
        "System throughput (sustainable)",
        ">= 1,000 msg/s",
        "< 100 msg/s",
        True,
        1_000,
        100,
        "msg/s",
        _sustainable_throughput,
    ),
    Target(
        "Kafka consumer lag, Spark (max)",
        "< 1,000 msgs",
        "> 10,000 msgs",
        False,
        1_000,
        10_000,
        "messages",
        _worst_over_steps("lag.spark.max", "spark"),
    ),
    Target(
        "Kafka consumer lag, Ray (max)",
        "< 500 msgs",
        "> 5,000 msgs",
        False,
        500,
        5_000,
        "messages",
        _worst_over_steps("lag.ray.max", "ray"),
    ),
    Target(
        "Spark batch time (p95 / trigger)",
        "< 1x interval",
        "> 2x interval",
        False,
        1.0,
        2.0,
        "ratio",
        _batch_time_over_interval,
    ),
    Target(
        "Ray actor startup (slowest)",
        "< 5 s",
        "> 10 s",
        False,
        5_000,
        10_000,
        "ms",
        _worst_over_steps("ray.actor_startup.pool_max", "ray"),
    ),
    Target(
        "CPU utilization (machine, mean)",
        "< 80%",
        "> 90%",
        False,
        80,
        90,
        "%",
        _worst_over_steps("resources.machine.cpu.mean"),
    ),
    Target(
        "Memory utilization (machine, max)",
        "< 85%",
        "> 90%",
        False,
        85,
        90,
        "%",
        _worst_over_steps("resources.machine.memory.max"),
    ),
    Target(
        "Recovery time (slowest fault)",
        "< 1 min",
        "> 5 min",
        False,
        60,
        300,
        "s",
        _recovery_time,
    ),
    Target(
        "Message loss rate",
        "0%",
        "> 0.1%",
        False,
        0.0,
        0.1,
        "%",
        _loss_rate,
    ),
)


def evaluate_targets(
    runs: Sequence[RunData], targets: Sequence[Target] = GUIDE_TARGETS
) -> list[TargetResult]:
    results = []
    for target in targets:
        measured = target.measure(runs)
        status = Status.NOT_MEASURED if measured is None else target.judge(measured.value)
        results.append(TargetResult(target, measured, status))
    return results


# The guide's section 1.1 stage targets (T1..T6 and end to end); no critical thresholds are given.
STAGE_TARGETS_MS: dict[str, tuple[str, float | None]] = {
    "t1_producer": ("T1 producer (fetch to Kafka ack)", 100),
    "producer_ack": ("Kafka produce to ack", None),
    "t2_kafka_spark": ("T2 Kafka to Spark", 500),
    "t3_spark": ("T3 Spark processing", 5_000),
    "window_close": ("Window close to queryable", None),
    "t4_kafka_ray": ("T4 Kafka to Ray", 200),
    "t5_inference": ("T5 Ray inference", 1_000),
    "t6_kafka_api": ("T6 Kafka to API", 100),
    "e2e": ("End to end", 60_000),
}
