"""Series from Prometheus over a step: the declared queries and the alerts that fired.

With monitoring enabled, a step reads back what Prometheus scraped while it ran: each query of
include/prometheus/bench-queries.yml as a series (seconds since the step started) with its
mean and max, and, from the ALERTS series, every alert rule that fired during the step and for
how long (`alerts.firing.<AlertName>`, seconds; the component is the alert's severity). The
queries run once, after the step, over its whole time range: nothing polls during the load.
A Prometheus that does not answer is reported as the count of failed queries, not raised.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.stack.monitoring import PROMETHEUS_DIR, MonitoringError, PrometheusClient
from weatherbench.collectors.base import Collector
from weatherbench.metrics import Metric, Series, summary_metrics

log = logging.getLogger(__name__)
QUERIES_FILE = PROMETHEUS_DIR / "bench-queries.yml"
FIRING = 'ALERTS{alertstate="firing"}'


@dataclass(frozen=True)
class StepQuery:
    name: str
    expr: str
    unit: str
    component: str


def load_queries(path: Path = QUERIES_FILE) -> list[StepQuery]:
    entries = (yaml.safe_load(path.read_text()) or {}).get("queries") or []
    try:
        return [StepQuery(e["name"], e["expr"], str(e["unit"]), e["component"]) for e in entries]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: each query needs name, expr, unit and component ({exc})") from None


class PrometheusCollector(Collector):
    name = "prometheus"

    def __init__(self, client: PrometheusClient, queries: list[StepQuery], step_s: float) -> None:
        super().__init__()
        self.client = client
        self.queries = queries
        self.step_s = step_s
        self._series: list[Series] = []
        self._metrics: list[Metric] = []

    def stop(self) -> None:
        start, end = self.started_ms / 1000, time.time()
        failed = 0
        for query in self.queries:
            try:
                result = self.client.query_range(query.expr, start, end, self.step_s)
            except MonitoringError as exc:
                failed += 1
                log.warning("prometheus query %s failed: %s", query.name, exc)
                continue
            # One series per query (the expressions aggregate); an empty answer is no data.
            values = result[0]["values"] if result else []
            series = Series(query.name, query.unit)
            for stamp, text in values:
                value = float(text)
                if math.isfinite(value):
                    series.points.append((float(stamp) - start, value))
            self._series.append(series)
            self._metrics += summary_metrics(query.name, series.values(), query.unit, query.component)
        try:
            firing = self.client.query_range(FIRING, start, end, self.step_s)
        except MonitoringError as exc:
            failed += 1
            log.warning("prometheus alerts query failed: %s", exc)
            firing = []
        seconds: dict[tuple[str, str], float] = {}
        for entry in firing:
            key = (entry["metric"].get("alertname", "?"), entry["metric"].get("severity", ""))
            seconds[key] = seconds.get(key, 0.0) + len(entry["values"]) * self.step_s
        self._metrics += [
            Metric(f"alerts.firing.{alert}", value, "s", severity)
            for (alert, severity), value in seconds.items()
        ]
        self._metrics.append(Metric("prometheus.failed_queries", float(failed), "queries", "prometheus"))

    def metrics(self) -> list[Metric]:
        return list(self._metrics)

    def series(self) -> list[Series]:
        return list(self._series)
