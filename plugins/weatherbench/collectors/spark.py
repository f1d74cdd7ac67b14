"""Spark streaming measurement: micro-batch timing, state, watermark, checkpoint, executors.

From the streaming job's progress log (one line per completed micro-batch of
each query), for the batches that completed during the step:

* batch duration (`triggerExecution`), and its parts: `addBatch` (the
  work), `walCommit` + `commitOffsets` (checkpoint write time);
* scheduling delay: how late a batch started against the trigger schedule,
  i.e. max(0, start - (previous start + trigger interval)); processing
  delay: the batch duration; total delay: their sum. A batch that overruns
  its interval delays the next one, which is how Spark falls behind;
* state rows and state memory of the window aggregation, rows dropped as
  late by the watermark;
* watermark delay: batch start minus the watermark (how far event time
  trails the wall clock, which bounds window-close latency);
* input and processed rows per second.

From the driver's REST API (`/api/v1/applications/...`), as the difference
between the start and the end of the step: task time, executor CPU time,
GC time, shuffle read/write bytes, and executor memory at the end.
Checkpoint size is the bytes under the checkpoint directory.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from weatherbench.collectors.base import Collector
from weatherbench.collectors.kafka import SPARK_QUERY, ProgressTail, progress_tail
from weatherbench.collectors.resources import directory_bytes
from weatherbench.metrics import Metric, Series
from weatherbench.stats import LatencyHistogram


def rest(url: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def executor_totals(driver_ui: str) -> dict[str, float]:
    """Counters summed over the streaming application's executors (driver excluded)."""
    apps = rest(f"{driver_ui}/api/v1/applications")
    if not apps:
        return {}
    app_id = apps[0]["id"]
    executors = [
        e for e in rest(f"{driver_ui}/api/v1/applications/{app_id}/allexecutors") if e["id"] != "driver"
    ]
    stages = rest(f"{driver_ui}/api/v1/applications/{app_id}/stages?status=complete")
    return {
        "executors": float(sum(1 for e in executors if e.get("isActive"))),
        "task_time_ms": float(sum(e.get("totalDuration", 0) for e in executors)),
        "gc_time_ms": float(sum(e.get("totalGCTime", 0) for e in executors)),
        "shuffle_read_bytes": float(sum(e.get("totalShuffleRead", 0) for e in executors)),
        "shuffle_write_bytes": float(sum(e.get("totalShuffleWrite", 0) for e in executors)),
        "tasks": float(sum(e.get("totalTasks", 0) for e in executors)),
        "memory_used_bytes": float(sum(e.get("memoryUsed", 0) for e in executors if e.get("isActive"))),
        "jvm_heap_bytes": float(
            sum(
                (e.get("peakMemoryMetrics") or {}).get("JVMHeapMemory", 0)
                for e in executors
                if e.get("isActive")
            )
        ),
        "executor_cpu_ms": float(sum(s.get("executorCpuTime", 0) for s in stages)) / 1e6,
        "executor_run_ms": float(sum(s.get("executorRunTime", 0) for s in stages)),
    }


COUNTERS = (
    "task_time_ms",
    "gc_time_ms",
    "shuffle_read_bytes",
    "shuffle_write_bytes",
    "tasks",
    "executor_cpu_ms",
)


class SparkCollector(Collector):
    name = "spark"

    def __init__(
        self, progress: Path | ProgressTail, driver_ui: str, checkpoint_dir: Path, trigger_ms: int
    ) -> None:
        super().__init__()
        self.tail = progress_tail(progress)
        self.driver_ui = driver_ui
        self.checkpoint_dir = checkpoint_dir
        self.trigger_ms = trigger_ms
        self.rest_before: dict[str, float] = {}
        self.rest_after: dict[str, float] = {}
        self.rest_error = ""
        self.batches: list[dict[str, Any]] = []

    def _rest(self) -> dict[str, float]:
        try:
            return executor_totals(self.driver_ui)
        except Exception as exc:  # the driver may be restarting; the metric is then missing, not wrong
            self.rest_error = f"{type(exc).__name__}: {exc}"
            return {}

    def start(self) -> None:
        super().start()
        self.tail.skip_to_end()
        self.rest_before = self._rest()

    def stop(self) -> None:
        self.tail.read()
        self.tail.close()
        self.batches = [
            e for e in self.tail.events if e.get("event") == "progress" and e.get("name") == SPARK_QUERY
        ]
        self.rest_after = self._rest()

    def series(self) -> list[Series]:
        duration = Series("spark.batch_duration", "ms")
        rows = Series("spark.state_rows", "rows")
        rate = Series("spark.processed_rows_per_s", "rows/s")
        for batch in self.batches:
            t = self.seconds_since_start(batch.get("timestamp_ms") or batch.get("received_at_ms") or 0)
            duration.points.append((t, float((batch.get("durationMs") or {}).get("triggerExecution", 0))))
            rows.points.append(
                (t, float(sum(op.get("numRowsTotal", 0) for op in batch.get("stateOperators", []))))
            )
            rate.points.append((t, float(batch.get("processedRowsPerSecond") or 0.0)))
        return [duration, rows, rate]

    def metrics(self) -> list[Metric]:
        result: list[Metric] = []
        hist: dict[str, LatencyHistogram] = {
            name: LatencyHistogram()
            for name in (
                "batch_duration",
                "add_batch",
                "checkpoint_write",
                "scheduling_delay",
                "total_delay",
                "watermark_delay",
            )
        }
        previous_start: int | None = None
        state_rows = state_memory = dropped = 0.0
        input_rows = 0
        for batch in self.batches:
            durations = batch.get("durationMs") or {}
            start = batch.get("timestamp_ms")
            processing = float(durations.get("triggerExecution", 0))
            hist["batch_duration"].record(processing)
            hist["add_batch"].record(float(durations.get("addBatch", 0)))
            hist["checkpoint_write"].record(
                float(durations.get("walCommit", 0)) + float(durations.get("commitOffsets", 0))
            )
            scheduling = 0.0
            if start is not None and previous_start is not None:
                scheduling = max(0.0, float(start - (previous_start + self.trigger_ms)))
            hist["scheduling_delay"].record(scheduling)
            hist["total_delay"].record(scheduling + processing)
            if start is not None and batch.get("watermark_ms"):
                hist["watermark_delay"].record(float(start - batch["watermark_ms"]))
            previous_start = start if start is not None else previous_start
            operators = batch.get("stateOperators", [])
            state_rows = max(state_rows, float(sum(op.get("numRowsTotal", 0) for op in operators)))
            state_memory = max(state_memory, float(sum(op.get("memoryUsedBytes", 0) for op in operators)))
            dropped += float(sum(op.get("numRowsDroppedByWatermark", 0) for op in operators))
            input_rows += int(batch.get("numInputRows") or 0)
        for name, histogram in hist.items():
            summary = histogram.summary()
            for key in ("p50", "p95", "max"):
                result.append(Metric(f"spark.{name}.{key}", summary[key], "ms", "spark"))
        batches = len(self.batches)
        over = sum(
            1
            for b in self.batches
            if (b.get("durationMs") or {}).get("triggerExecution", 0) > self.trigger_ms
        )
        busy_s = (
            sum(float((b.get("durationMs") or {}).get("triggerExecution", 0)) for b in self.batches) / 1000
        )
        result += [
            # Rows per second of busy batch time: the rate Spark could take if it never idled.
            Metric("spark.capacity", input_rows / busy_s if busy_s else float("nan"), "rows/s", "spark"),
            Metric("spark.batches", float(batches), "batches", "spark"),
            Metric("spark.batches_over_interval", float(over), "batches", "spark"),
            Metric("spark.trigger_interval", float(self.trigger_ms), "ms", "spark"),
            Metric("spark.input_rows", float(input_rows), "rows", "spark"),
            Metric("spark.state_rows.max", state_rows, "rows", "spark"),
            Metric("spark.state_memory.max", state_memory, "bytes", "spark"),
            Metric("spark.rows_dropped_by_watermark", dropped, "rows", "spark"),
            Metric("spark.checkpoint.bytes", float(directory_bytes(self.checkpoint_dir)), "bytes", "spark"),
        ]
        if self.rest_before and self.rest_after:
            for key in COUNTERS:
                unit = "bytes" if key.endswith("bytes") else ("tasks" if key == "tasks" else "ms")
                delta = self.rest_after.get(key, 0.0) - self.rest_before.get(key, 0.0)
                result.append(Metric(f"spark.executors.{key}", delta, unit, "spark"))
            result.append(
                Metric("spark.executors.count", self.rest_after.get("executors", 0.0), "executors", "spark")
            )
            result.append(
                Metric(
                    "spark.executors.memory_used",
                    self.rest_after.get("memory_used_bytes", 0.0),
                    "bytes",
                    "spark",
                )
            )
            result.append(
                Metric(
                    "spark.executors.jvm_heap_peak",
                    self.rest_after.get("jvm_heap_bytes", 0.0),
                    "bytes",
                    "spark",
                )
            )
        return result
