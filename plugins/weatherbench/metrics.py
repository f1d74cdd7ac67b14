"""The unit of a benchmark result: one named value with its unit and component.

Collectors and experiments produce `Metric`s and named time series; the
results store keeps them one row per metric per step per repetition.
Names are dotted and stable (`latency.e2e.p95`, `lag.spark.max`) because
reports and trend queries look them up by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    unit: str
    component: str = ""

    @property
    def is_number(self) -> bool:
        return self.value is not None and not math.isnan(self.value)


@dataclass
class Series:
    """A time series: (seconds since the step's load started, value)."""

    name: str
    unit: str
    points: list[tuple[float, float]] = field(default_factory=list)

    def values(self) -> list[float]:
        return [v for _, v in self.points]


def summary_metrics(prefix: str, values: list[float], unit: str, component: str = "") -> list[Metric]:
    """mean and max of a sampled series as metrics (NaN when there are no samples)."""
    if not values:
        return [
            Metric(f"{prefix}.mean", math.nan, unit, component),
            Metric(f"{prefix}.max", math.nan, unit, component),
        ]
    return [
        Metric(f"{prefix}.mean", sum(values) / len(values), unit, component),
        Metric(f"{prefix}.max", max(values), unit, component),
    ]
