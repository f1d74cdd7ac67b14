"""Streaming query progress: one compact JSON record per micro-batch, to Kafka and a JSONL file.

Owns the measurement feed of the Spark stage. The Kafka source commits no
consumer-group offsets, so Spark's lag, batch durations, watermark and state
size are known only from StreamingQueryListener progress events. Each event is
reduced to the fields the benchmarks use (`compact_progress`, pure and unit
tested) and published to the progress topic (confluent_kafka producer) and
appended to <state_dir>/logs/spark-progress.jsonl (read by the stack runtime's
readiness check and by the report when Kafka is unavailable). The same records
feed Prometheus series (`ProgressMetrics`, served by the job on spark.metrics_port):
lag, batch time against the trigger interval, rows, state size, watermark delay.

Records: {"event": "progress" | "started" | "idle" | "terminated", "name", "id", "runId",
"received_at_ms", ...}. Progress records add batchId, timestamp (ISO, batch
start), timestamp_ms, numInputRows, inputRowsPerSecond, processedRowsPerSecond,
durationMs, eventTime (min/max/avg/watermark as ISO strings, watermark_ms),
stateOperators, sources (offsets per topic/partition and offsets-behind-latest
metrics) and sink.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Producer
from prometheus_client import CollectorRegistry, Counter, Gauge
from pyspark.sql.streaming import StreamingQueryListener
from pyspark.sql.streaming.listener import (
    QueryIdleEvent,
    QueryProgressEvent,
    QueryStartedEvent,
    QueryTerminatedEvent,
)

from pipeline.schema import now_ms

log = logging.getLogger(__name__)

STATE_OPERATOR_FIELDS = (
    "operatorName",
    "numRowsTotal",
    "numRowsUpdated",
    "numRowsRemoved",
    "memoryUsedBytes",
    "numRowsDroppedByWatermark",
    "numShufflePartitions",
    "numStateStoreInstances",
    "allUpdatesTimeMs",
    "allRemovalsTimeMs",
    "commitTimeMs",
)
SOURCE_METRICS = ("avgOffsetsBehindLatest", "maxOffsetsBehindLatest", "minOffsetsBehindLatest")


def iso_to_ms(stamp: str | None) -> int | None:
    """Spark's progress timestamps ("2024-01-01T00:00:10.000Z") as epoch ms."""
    if not stamp:
        return None
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


def _offsets(value: Any) -> Any:
    # Kafka source offsets arrive as JSON text ({"topic": {"0": 12}}); keep them as objects.
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _number(value: Any) -> Any:
    """Numbers as numbers: source metrics arrive as text ("12.0"); NaN (no input) becomes null."""
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                return value
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; Spark reports NaN rates for batches without input
    return value


def compact_progress(progress: dict[str, Any], received_at_ms: int) -> dict[str, Any]:
    """Reduce StreamingQueryProgress JSON (`progress.json`) to the benchmark fields."""
    event_time = dict(progress.get("eventTime") or {})
    record: dict[str, Any] = {
        "event": "progress",
        "name": progress.get("name"),
        "id": progress.get("id"),
        "runId": progress.get("runId"),
        "batchId": progress.get("batchId"),
        "timestamp": progress.get("timestamp"),
        "timestamp_ms": iso_to_ms(progress.get("timestamp")),
        "received_at_ms": received_at_ms,
        "batchDuration": progress.get("batchDuration"),
        "numInputRows": progress.get("numInputRows"),
        "inputRowsPerSecond": _number(progress.get("inputRowsPerSecond")),
        "processedRowsPerSecond": _number(progress.get("processedRowsPerSecond")),
        "durationMs": dict(progress.get("durationMs") or {}),
        "eventTime": event_time,
        "watermark_ms": iso_to_ms(event_time.get("watermark")),
        "stateOperators": [
            {key: op.get(key) for key in STATE_OPERATOR_FIELDS if key in op}
            | ({"customMetrics": op["customMetrics"]} if op.get("customMetrics") else {})
            for op in progress.get("stateOperators") or []
        ],
        "sources": [
            {
                "description": src.get("description"),
                "startOffset": _offsets(src.get("startOffset")),
                "endOffset": _offsets(src.get("endOffset")),
                "latestOffset": _offsets(src.get("latestOffset")),
                "numInputRows": src.get("numInputRows"),
                "inputRowsPerSecond": _number(src.get("inputRowsPerSecond")),
                "processedRowsPerSecond": _number(src.get("processedRowsPerSecond")),
                "metrics": {
                    key: _number(value)
                    for key, value in (src.get("metrics") or {}).items()
                    if key in SOURCE_METRICS
                },
            }
            for src in progress.get("sources") or []
        ],
        "sink": {
            "description": (progress.get("sink") or {}).get("description"),
            "numOutputRows": (progress.get("sink") or {}).get("numOutputRows"),
        },
    }
    return record


def lag_records(record: dict[str, Any]) -> int:
    """Records the query had not read yet when its batch ran: latest minus end offset, summed.

    Spark commits no consumer-group offsets, so this is the Spark stage's consumer lag.
    """
    lag = 0
    for source in record.get("sources") or []:
        latest, end = source.get("latestOffset"), source.get("endOffset")
        if not isinstance(latest, dict) or not isinstance(end, dict):
            continue
        for topic, partitions in latest.items():
            done = end.get(topic) or {}
            for partition, offset in partitions.items():
                lag += max(0, int(offset) - int(done.get(partition, 0)))
    return lag


class ProgressMetrics:
    """Prometheus series of the streaming queries, updated from each compact progress record."""

    def __init__(self, trigger_s: float, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["query"]

        def gauge(name: str, text: str) -> Gauge:
            return Gauge(f"weather_spark_{name}", text, labels, registry=self.registry)

        def counter(name: str, text: str) -> Counter:
            return Counter(f"weather_spark_{name}", text, labels, registry=self.registry)

        self.trigger = Gauge(
            "weather_spark_trigger_interval_seconds", "Micro-batch trigger interval", registry=self.registry
        )
        self.trigger.set(trigger_s)
        self.lag = gauge("lag_records", "Input records not yet read by the query (latest - end offset)")
        self.batch = gauge("batch_duration_seconds", "Duration of the last micro-batch (triggerExecution)")
        self.rate = gauge("processed_rows_per_second", "Rows processed per second in the last batch")
        self.state_rows = gauge("state_rows", "Rows in the query's state stores")
        self.state_bytes = gauge("state_memory_bytes", "Memory used by the query's state stores")
        self.watermark_delay = gauge("watermark_delay_seconds", "Batch start minus the event-time watermark")
        self.last_progress = gauge("last_progress_time_seconds", "Epoch seconds of the last progress event")
        self.active = gauge("query_active", "1 while the query runs")
        self.batches = counter("batches", "Micro-batches completed")
        self.input_rows = counter("input_rows", "Input rows read")
        self.dropped = counter("rows_dropped_by_watermark", "Rows dropped as later than the watermark")

    def observe(self, record: dict[str, Any]) -> None:
        query = record.get("name") or "unnamed"
        event = record.get("event")
        if event == "started":
            self.active.labels(query).set(1)
        elif event == "terminated":
            self.active.labels(query).set(0)
        if event in ("progress", "idle"):
            self.last_progress.labels(query).set(record.get("received_at_ms", 0) / 1000)
        if event != "progress":
            return
        self.active.labels(query).set(1)
        self.lag.labels(query).set(lag_records(record))
        self.batch.labels(query).set((record.get("durationMs") or {}).get("triggerExecution", 0) / 1000)
        self.rate.labels(query).set(record.get("processedRowsPerSecond") or 0)
        self.batches.labels(query).inc()
        self.input_rows.labels(query).inc(record.get("numInputRows") or 0)
        operators = record.get("stateOperators") or []
        self.state_rows.labels(query).set(sum(op.get("numRowsTotal") or 0 for op in operators))
        self.state_bytes.labels(query).set(sum(op.get("memoryUsedBytes") or 0 for op in operators))
        self.dropped.labels(query).inc(sum(op.get("numRowsDroppedByWatermark") or 0 for op in operators))
        watermark, started = record.get("watermark_ms"), record.get("timestamp_ms")
        if watermark and started:  # no watermark (0) before the first event time was seen
            self.watermark_delay.labels(query).set((started - watermark) / 1000)


class ProgressPublisher(StreamingQueryListener):
    """StreamingQueryListener that publishes compact progress to Kafka and a JSONL file.

    Callbacks run on py4j's callback thread; a failure to publish is logged and
    never raised back into Spark (it would only be printed by the JVM).
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        jsonl_path: Path,
        producer: Any = None,
        metrics: ProgressMetrics | None = None,
    ) -> None:
        """`producer` replaces the confluent_kafka Producer (tests)."""
        super().__init__()
        self.topic = topic
        self.metrics = metrics
        self.jsonl_path = jsonl_path
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._names: dict[str, str | None] = {}  # query id -> name (terminated events carry no name)
        self.delivery_errors = 0
        self._producer = producer or Producer(
            {
                "bootstrap.servers": bootstrap_servers,
                "client.id": "spark-progress-listener",
                "linger.ms": 20,
                # Progress is telemetry: never block the listener thread for long on a broker outage.
                "message.timeout.ms": 30_000,
                "queue.buffering.max.messages": 10_000,
            }
        )

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.delivery_errors += 1
            if self.delivery_errors in (1, 10, 100) or self.delivery_errors % 1000 == 0:
                log.warning("progress record not delivered (%d so far): %s", self.delivery_errors, err)

    def publish(self, record: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.observe(record)
        line = json.dumps(record, separators=(",", ":"), allow_nan=False, default=str)
        with self._lock:
            with self.jsonl_path.open("a") as handle:
                handle.write(line + "\n")
            try:
                self._producer.produce(
                    self.topic,
                    key=(record.get("name") or "").encode(),
                    value=line.encode(),
                    on_delivery=self._on_delivery,
                )
            except BufferError:
                self.delivery_errors += 1
                log.warning("progress producer queue full; record kept in %s only", self.jsonl_path)
            self._producer.poll(0)

    def _safely(self, build: Any) -> None:
        try:
            self.publish(build())
        except Exception:  # a listener error must not disturb the queries
            log.exception("could not publish a streaming progress record")

    def onQueryStarted(self, event: QueryStartedEvent) -> None:
        self._names[str(event.id)] = event.name
        self._safely(
            lambda: {
                "event": "started",
                "name": event.name,
                "id": str(event.id),
                "runId": str(event.runId),
                "timestamp": event.timestamp,
                "timestamp_ms": iso_to_ms(event.timestamp),
                "received_at_ms": now_ms(),
            }
        )

    def onQueryProgress(self, event: QueryProgressEvent) -> None:
        self._safely(lambda: compact_progress(json.loads(event.progress.json), now_ms()))

    def onQueryIdle(self, event: QueryIdleEvent) -> None:
        # Spark posts this instead of progress while no data arrives (at most every
        # spark.sql.streaming.noDataProgressEventInterval, 10 s): proof of life for readiness checks.
        self._safely(
            lambda: {
                "event": "idle",
                "name": self._names.get(str(event.id)),
                "id": str(event.id),
                "runId": str(event.runId),
                "timestamp": event.timestamp,
                "timestamp_ms": iso_to_ms(event.timestamp),
                "received_at_ms": now_ms(),
            }
        )

    def onQueryTerminated(self, event: QueryTerminatedEvent) -> None:
        self._safely(
            lambda: {
                "event": "terminated",
                "name": self._names.get(str(event.id)),
                "id": str(event.id),
                "runId": str(event.runId),
                "exception": event.exception,
                "errorClassOnException": event.errorClassOnException,
                "received_at_ms": now_ms(),
            }
        )
        self.flush(5.0)

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait for queued progress records; returns how many are still undelivered."""
        with self._lock:
            return self._producer.flush(timeout_s)
