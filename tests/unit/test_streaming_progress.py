"""Progress records of the streaming job: compaction of Spark's progress JSON and publishing."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import generate_latest

from pipeline.streaming.progress import (
    ProgressMetrics,
    ProgressPublisher,
    compact_progress,
    iso_to_ms,
    lag_records,
)

# Shape of StreamingQueryProgress.json for a Kafka source and a windowed aggregation (Spark 4.2).
PROGRESS: dict[str, Any] = {
    "id": "38a9e776-ad0c-4dfc-a189-c7785b5e3b5c",
    "runId": "0266d7db-61cc-40d5-8cd8-726fd6a12f81",
    "name": "features",
    "timestamp": "2026-11-27T02:16:14.000Z",
    "batchId": 2,
    "batchDuration": 9890,
    "numInputRows": 4,
    "inputRowsPerSecond": 0.3,
    "processedRowsPerSecond": 0.4044,
    "durationMs": {
        "addBatch": 8984,
        "getBatch": 1,
        "latestOffset": 57,
        "triggerExecution": 9890,
        "walCommit": 143,
    },
    "eventTime": {
        "avg": "2026-11-27T02:12:52.500Z",
        "max": "2026-11-27T02:13:15.002Z",
        "min": "2026-11-27T02:12:00.500Z",
        "watermark": "2026-11-27T02:12:53.002Z",
    },
    "stateOperators": [
        {
            "operatorName": "stateStoreSave",
            "numRowsTotal": 6,
            "numRowsUpdated": 4,
            "allUpdatesTimeMs": 69,
            "numRowsRemoved": 0,
            "allRemovalsTimeMs": 0,
            "commitTimeMs": 443,
            "memoryUsedBytes": 4512,
            "numRowsDroppedByWatermark": 1,
            "numShufflePartitions": 4,
            "numStateStoreInstances": 4,
            "customMetrics": {"loadedMapCacheHitCount": 32},
        }
    ],
    "sources": [
        {
            "description": "KafkaV2[Subscribe[weather-raw]]",
            "startOffset": {"weather-raw": {"0": 82, "1": 0}},
            "endOffset": {"weather-raw": {"0": 85, "1": 1}},
            "latestOffset": {"weather-raw": {"0": 90, "1": 1}},
            "numInputRows": 4,
            "inputRowsPerSecond": 0.3,
            "processedRowsPerSecond": 0.4044,
            "metrics": {
                "avgOffsetsBehindLatest": "2.5",
                "maxOffsetsBehindLatest": "5",
                "minOffsetsBehindLatest": "0",
                "unrelated": "x",
            },
        }
    ],
    "sink": {"description": "org.apache.spark.sql.kafka010.KafkaTable@1", "numOutputRows": 3},
}


def test_iso_to_ms() -> None:
    assert iso_to_ms("1970-01-01T00:00:01.500Z") == 1500
    assert iso_to_ms("2026-11-27T02:12:53.002Z") == 1795745573002
    assert iso_to_ms(None) is None


def test_compact_progress_keeps_benchmark_fields() -> None:
    record = compact_progress(PROGRESS, received_at_ms=123)
    assert record["event"] == "progress" and record["name"] == "features" and record["batchId"] == 2
    assert record["timestamp_ms"] == 1795745774000 and record["received_at_ms"] == 123
    assert record["numInputRows"] == 4 and record["processedRowsPerSecond"] == pytest.approx(0.4044)
    assert record["durationMs"]["triggerExecution"] == 9890
    assert record["watermark_ms"] == 1795745573002
    (operator,) = record["stateOperators"]
    assert operator["numRowsTotal"] == 6 and operator["numRowsDroppedByWatermark"] == 1
    assert operator["memoryUsedBytes"] == 4512 and operator["customMetrics"] == {"loadedMapCacheHitCount": 32}
    (source,) = record["sources"]
    assert source["endOffset"] == {"weather-raw": {"0": 85, "1": 1}}
    assert source["latestOffset"] == {"weather-raw": {"0": 90, "1": 1}}
    # Offsets-behind metrics arrive as text; they are numbers here, other metrics are dropped.
    assert source["metrics"] == {
        "avgOffsetsBehindLatest": 2.5,
        "maxOffsetsBehindLatest": 5,
        "minOffsetsBehindLatest": 0,
    }
    assert record["sink"]["numOutputRows"] == 3
    json.dumps(record, allow_nan=False)


def test_compact_progress_of_python_dict_form_and_nan_rates() -> None:
    progress = dict(PROGRESS)
    progress["inputRowsPerSecond"] = float("nan")
    source = dict(PROGRESS["sources"][0])
    source["startOffset"] = json.dumps(source["startOffset"])  # the Python API gives offsets as text
    source["metrics"] = {"avgOffsetsBehindLatest": "NaN"}
    progress["sources"] = [source]
    progress["eventTime"] = {}
    record = compact_progress(progress, received_at_ms=0)
    assert record["inputRowsPerSecond"] is None
    assert record["sources"][0]["startOffset"] == {"weather-raw": {"0": 82, "1": 0}}
    assert record["sources"][0]["metrics"] == {"avgOffsetsBehindLatest": None}
    assert record["watermark_ms"] is None
    json.dumps(record, allow_nan=False)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.flushed = 0

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any) -> None:
        self.sent.append((topic, key, value))
        on_delivery(None, None)

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        self.flushed += 1
        return 0


def test_publisher_writes_jsonl_and_kafka(tmp_path: Path) -> None:
    producer = FakeProducer()
    path = tmp_path / "logs" / "spark-progress.jsonl"
    publisher = ProgressPublisher("127.0.0.1:1", "progress-topic", path, producer=producer)
    query_id, run_id = uuid.uuid4(), uuid.uuid4()
    stamp = "2026-11-27T02:16:14.000Z"
    publisher.onQueryStarted(SimpleNamespace(id=query_id, runId=run_id, name="features", timestamp=stamp))
    publisher.onQueryProgress(SimpleNamespace(progress=SimpleNamespace(json=json.dumps(PROGRESS))))
    publisher.onQueryIdle(SimpleNamespace(id=query_id, runId=run_id, timestamp=stamp))
    publisher.onQueryTerminated(
        SimpleNamespace(id=query_id, runId=run_id, exception="boom", errorClassOnException=None)
    )
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["event"] for r in lines] == ["started", "progress", "idle", "terminated"]
    # Idle and terminated events carry no name in Spark; the publisher remembers it by query id.
    assert [r["name"] for r in lines] == ["features"] * 4
    assert lines[3]["exception"] == "boom"
    assert [(t, k) for t, k, _ in producer.sent] == [("progress-topic", b"features")] * 4
    assert [json.loads(v) for _, _, v in producer.sent] == lines
    assert producer.flushed == 1 and publisher.delivery_errors == 0


def test_publisher_survives_a_bad_event(tmp_path: Path) -> None:
    producer = FakeProducer()
    publisher = ProgressPublisher("127.0.0.1:1", "t", tmp_path / "p.jsonl", producer=producer)
    publisher.onQueryProgress(SimpleNamespace(progress=SimpleNamespace(json="not json")))  # must not raise
    assert producer.sent == [] and not (tmp_path / "p.jsonl").exists()


def sample(metrics: ProgressMetrics, name: str, query: str | None = "features") -> float | None:
    labels = {"query": query} if query else {}
    return metrics.registry.get_sample_value(name, labels)


def test_lag_is_latest_minus_end_offset_over_every_partition() -> None:
    record = compact_progress(PROGRESS, received_at_ms=1)
    assert lag_records(record) == (90 - 85) + (1 - 1)
    two_topics = dict(
        record,
        sources=[
            *record["sources"],
            {
                "endOffset": {"weather-raw-benchmark": {"0": 10}},
                "latestOffset": {"weather-raw-benchmark": {"0": 17, "1": 4}},
            },
        ],
    )
    # A partition the batch has not read yet counts from offset 0.
    assert lag_records(two_topics) == 5 + 7 + 4


def test_progress_metrics_follow_each_batch() -> None:
    metrics = ProgressMetrics(trigger_s=2.0)
    record = compact_progress(PROGRESS, received_at_ms=1_764_209_774_000)
    metrics.observe({"event": "started", "name": "features"})
    metrics.observe(record)
    metrics.observe(dict(record, numInputRows=6))
    assert sample(metrics, "weather_spark_trigger_interval_seconds", None) == 2.0
    assert sample(metrics, "weather_spark_lag_records") == 5
    assert sample(metrics, "weather_spark_batch_duration_seconds") == pytest.approx(9.89)
    assert sample(metrics, "weather_spark_batches_total") == 2
    assert sample(metrics, "weather_spark_input_rows_total") == 4 + 6
    assert sample(metrics, "weather_spark_state_rows") == 6
    assert sample(metrics, "weather_spark_state_memory_bytes") == 4512
    assert sample(metrics, "weather_spark_rows_dropped_by_watermark_total") == 2
    # Batch start 02:16:14.000 minus watermark 02:12:53.002.
    assert sample(metrics, "weather_spark_watermark_delay_seconds") == pytest.approx(200.998)
    assert sample(metrics, "weather_spark_last_progress_time_seconds") == 1_764_209_774
    metrics.observe({"event": "terminated", "name": "features"})
    assert sample(metrics, "weather_spark_query_active") == 0
    assert b'weather_spark_lag_records{query="features"} 5.0' in generate_latest(metrics.registry)


def test_publisher_feeds_the_metrics(tmp_path: Path) -> None:
    metrics = ProgressMetrics(trigger_s=10.0)
    sent: list[Any] = []
    producer = SimpleNamespace(produce=lambda *a, **k: sent.append(a), poll=lambda *_: 0, flush=lambda *_: 0)
    publisher = ProgressPublisher(
        "unused:1", "progress", tmp_path / "p.jsonl", producer=producer, metrics=metrics
    )
    publisher.publish(compact_progress(PROGRESS, received_at_ms=1))
    assert sample(metrics, "weather_spark_batches_total") == 1
    assert len(sent) == 1
