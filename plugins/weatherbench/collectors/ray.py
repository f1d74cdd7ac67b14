"""Ray inference measurement: throughput, actors, placement, failures, model load, object store.

The inference driver appends a stats line every few seconds to
`<state>/logs/inference-stats.jsonl` (predictions per second, call latency
summary, pool: actors, actors per node, actor RSS, per-actor calls and
rows, actor start-up and model-load times, errors, timeouts, restarts).
This collector reads the lines written during the step. Inference latency
percentiles come from every prediction's own `ray_start`/`ray_end` stamps
(the T5 histogram of the experiment), not from these summaries.

Queue depth (requests waiting for an actor) is the inference consumer
group's lag on the features topic: the driver pulls a batch only when it
can dispatch it, so what waits, waits in Kafka. The Kafka collector
samples it every second as `lag.ray`.

Object store use comes from the Ray dashboard's node summary when the
dashboard runs.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from weatherbench.collectors.base import Collector
from weatherbench.metrics import Metric, Series

FAILURE_COUNTERS = (
    "timeouts",
    "actor_errors",
    "app_errors",
    "redispatches",
    "delivery_errors",
    "kafka_errors",
)


def object_store_used(dashboard_url: str, timeout_s: float = 5.0) -> float | None:
    """Bytes in use in the object stores of all nodes, or None if the dashboard does not say."""
    try:
        with urllib.request.urlopen(f"{dashboard_url}/nodes?view=summary", timeout=timeout_s) as response:
            body = json.loads(response.read())
    except Exception:
        return None
    nodes = (body.get("data") or {}).get("summary") or []
    used = 0.0
    seen = False
    for node in nodes:
        raylet = node.get("raylet") or {}
        value = raylet.get("objectStoreUsedMemory")
        if value is not None:
            used += float(value)
            seen = True
    return used if seen else None


class RayCollector(Collector):
    name = "ray"

    def __init__(self, stats_path: Path, dashboard_url: str | None) -> None:
        super().__init__()
        self.stats_path = stats_path
        self.dashboard_url = dashboard_url
        self._offset = 0
        self.lines: list[dict[str, Any]] = []
        self.object_store_bytes: float | None = None

    def start(self) -> None:
        super().start()
        self._offset = self.stats_path.stat().st_size if self.stats_path.exists() else 0

    def stop(self) -> None:
        if self.stats_path.exists():
            with self.stats_path.open("rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
            for line in data.splitlines():
                try:
                    self.lines.append(json.loads(line))
                except ValueError:
                    continue
        if self.dashboard_url:
            self.object_store_bytes = object_store_used(self.dashboard_url)

    @property
    def node_losses(self) -> list[dict[str, Any]]:
        """The actor pool's node losses seen during the step: actor, lost_ms, back_ms (None: not yet)."""
        latest: dict[tuple[Any, Any], dict[str, Any]] = {}
        for line in self.lines:  # later lines carry the same loss with its back_ms filled in
            for entry in (line.get("pool") or {}).get("node_loss_log") or []:
                latest[(entry.get("actor"), entry.get("lost_ms"))] = entry
        return sorted(latest.values(), key=lambda entry: entry.get("lost_ms") or 0)

    def series(self) -> list[Series]:
        rate = Series("ray.predictions_per_s", "pred/s")
        actors = Series("ray.actors", "actors")
        call_p95 = Series("ray.call_latency_p95", "ms")
        for line in self.lines:
            t = self.seconds_since_start(line["time_ms"])
            rate.points.append((t, float(line.get("predictions_per_s", 0.0))))
            actors.points.append((t, float((line.get("pool") or {}).get("actors", 0))))
            p95 = (line.get("call_latency_ms") or {}).get("p95")
            if p95 is not None:
                call_p95.points.append((t, float(p95)))
        return [rate, actors, call_p95]

    def metrics(self) -> list[Metric]:
        if not self.lines:
            return [Metric("ray.stats_lines", 0.0, "lines", "ray")]
        seconds = sum(float(line.get("interval_s", 0.0)) for line in self.lines)
        totals: dict[str, float] = {}
        for line in self.lines:
            for key, value in (line.get("interval") or {}).items():
                totals[key] = totals.get(key, 0.0) + float(value)
        pools = [line.get("pool") or {} for line in self.lines]
        last = pools[-1]
        startups = [float(v) for line in self.lines for v in line.get("actor_startup_ms", [])]
        per_actor = last.get("actor_stats") or []
        calls = totals.get("batches", 0.0)
        failures = sum(totals.get(key, 0.0) for key in FAILURE_COUNTERS)
        call_p95 = [
            float(p)
            for line in self.lines
            if (p := (line.get("call_latency_ms") or {}).get("p95")) is not None
        ]
        # Seconds the driver spent in batches (infer on all actors in parallel, produce, commit):
        # it handles one batch at a time, so this is the inference stage's busy time.
        busy_s = sum(
            float(summary.get("count") or 0) * float(summary.get("mean") or 0) / 1000
            for line in self.lines
            if (summary := line.get("batch_latency_ms") or {})
        )
        result = [
            # Predictions per second of busy time: the rate the stage could take if it never idled.
            Metric(
                "ray.capacity",
                totals.get("predictions", 0.0) / busy_s if busy_s else float("nan"),
                "pred/s",
                "ray",
            ),
            Metric("ray.stats_lines", float(len(self.lines)), "lines", "ray"),
            Metric("ray.predictions", totals.get("predictions", 0.0), "predictions", "ray"),
            Metric(
                "ray.throughput",
                totals.get("predictions", 0.0) / seconds if seconds else 0.0,
                "pred/s",
                "ray",
            ),
            Metric("ray.actors", float(last.get("actors", 0)), "actors", "ray"),
            Metric("ray.actors.max", float(max(p.get("actors", 0) for p in pools)), "actors", "ray"),
            Metric("ray.worker_nodes", float(last.get("alive_worker_nodes", 0)), "nodes", "ray"),
            Metric("ray.nodes_with_actors", float(len(last.get("actors_per_node") or {})), "nodes", "ray"),
            Metric(
                "ray.actor_rss.max", float(max(p.get("actor_rss_mb_max") or 0 for p in pools)), "MB", "ray"
            ),
            Metric("ray.actor_restarts", float(last.get("actor_restarts", 0)), "restarts", "ray"),
            Metric("ray.actor_node_losses", float(last.get("actor_node_losses", 0)), "actors", "ray"),
            Metric("ray.hedges", totals.get("hedges", 0.0), "calls", "ray"),
            Metric("ray.failures", failures, "calls", "ray"),
            Metric("ray.failure_rate", 100.0 * failures / calls if calls else 0.0, "%", "ray"),
            Metric(
                "ray.call_latency.p95.max_interval", max(call_p95) if call_p95 else float("nan"), "ms", "ray"
            ),
        ]
        if startups:
            result.append(Metric("ray.actor_startup.max", max(startups), "ms", "ray"))
        all_startups = [float(a["startup_ms"]) for a in per_actor if a.get("startup_ms") is not None]
        if all_startups:
            result.append(Metric("ray.actor_startup.pool_max", max(all_startups), "ms", "ray"))
        loads = [float(a["model_load_ms"]) for a in per_actor if a.get("model_load_ms") is not None]
        if loads:
            result.append(Metric("ray.model_load.max", max(loads), "ms", "ray"))
        if per_actor and seconds:
            first = {a["actor_id"]: a for a in (pools[0].get("actor_stats") or [])}
            rates = [
                (float(a.get("rows", 0)) - float(first.get(a["actor_id"], {}).get("rows", 0))) / seconds
                for a in per_actor
            ]
            result.append(Metric("ray.per_actor_throughput.min", min(rates), "pred/s", "ray"))
            result.append(Metric("ray.per_actor_throughput.max", max(rates), "pred/s", "ray"))
        if self.object_store_bytes is not None:
            result.append(Metric("ray.object_store.used", self.object_store_bytes, "bytes", "ray"))
        return result
