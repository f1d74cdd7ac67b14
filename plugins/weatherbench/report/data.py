"""One stored run, read back from the results store in the shape a report needs.

A report never re-measures anything: every number comes from the store's
metric rows, series and run summary, looked up here by metric, component,
step and repetition.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from weatherbench.store import MetricRow, ResultsStore, RunRecord, SeriesRow


@dataclass(frozen=True)
class StepInfo:
    """One step of a run, as the run summary describes it."""

    index: int
    label: str
    summary: dict[str, Any]

    @property
    def sustained(self) -> bool | None:
        return self.summary.get("sustained")

    @property
    def rate(self) -> float | None:
        return self.summary.get("rate")


@dataclass
class RunData:
    """A run's record, metrics, series and summary, with lookups by step."""

    record: RunRecord
    metric_rows: list[MetricRow]
    series_rows: list[SeriesRow]
    _by_key: dict[tuple[str, str], list[MetricRow]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        grouped: dict[tuple[str, str], list[MetricRow]] = defaultdict(list)
        for row in self.metric_rows:
            grouped[(row.metric, row.component)].append(row)
        self._by_key = dict(grouped)

    @classmethod
    def load(cls, store: ResultsStore, run_id: str) -> RunData:
        return cls(store.get_run(run_id), store.metrics(run_id), store.series(run_id))

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def test(self) -> str:
        return self.record.test

    @property
    def summary(self) -> dict[str, Any]:
        return self.record.summary or {}

    @property
    def steps(self) -> list[StepInfo]:
        """Measured steps in index order (a rate search's by rate), from the summary, else the metric rows."""
        described = self.summary.get("steps") or []
        if described:
            steps = [StepInfo(s["index"], s["label"], s) for s in described]
            if self.summary.get("search"):
                # A search probes rates out of order; a reader wants them ascending.
                steps.sort(key=lambda s: (s.rate is None, s.rate or 0.0, s.index))
            return steps
        seen = sorted({(r.step_index, r.step) for r in self.metric_rows if r.metric.startswith("latency.")})
        return [StepInfo(index, label, {}) for index, label in seen]

    def rows(self, metric: str, component: str | None = "") -> list[MetricRow]:
        """Rows of a metric; ``component=None`` means any component."""
        if component is not None:
            return self._by_key.get((metric, component), [])
        return [row for (name, _), rows in self._by_key.items() if name == metric for row in rows]

    def has(self, metric: str, component: str | None = "") -> bool:
        return any(not math.isnan(r.value) for r in self.rows(metric, component))

    def value(self, metric: str, step_index: int, component: str = "") -> float:
        """Mean over repetitions of one step; NaN when the step has no such metric."""
        values = [
            r.value
            for r in self.rows(metric, component)
            if r.step_index == step_index and not math.isnan(r.value)
        ]
        return sum(values) / len(values) if values else math.nan

    def components(self, metric: str) -> list[str]:
        return sorted({r.component for r in self.rows(metric, None)})

    def series(self, name: str, step_index: int, repetition: int = 0) -> SeriesRow | None:
        for row in self.series_rows:
            if row.name == name and row.step_index == step_index and row.repetition == repetition:
                return row
        return None

    @property
    def sustainable_rate(self) -> float | None:
        """The highest held rate of a rate search, or None when the run did not search."""
        search = self.summary.get("search")
        return search.get("sustainable_rate") if search else None

    def verdict_steps(self) -> list[StepInfo]:
        """The steps a target is judged on.

        A rate search drives the pipeline past its limit on purpose, so only
        the step at the sustainable rate counts; every other test counts all
        of its steps.
        """
        steps = self.steps
        rate = self.sustainable_rate
        if rate is not None:
            held = [s for s in steps if s.rate == rate]
            if held:
                return held
        return steps

    def headline_step(self) -> StepInfo | None:
        """The step a report details: the sustainable rate, else the last step that measured latency."""
        steps = self.verdict_steps()
        with_series = {row.step_index for row in self.series_rows}
        measured = [s for s in steps if not math.isnan(self.value("latency.e2e.p95", s.index))]
        candidates = measured or [s for s in steps if s.index in with_series] or steps
        return candidates[-1] if candidates else None
