"""Collectors computed from recorded inputs: progress logs, inference stats, offsets."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from weatherbench.collectors.kafka import ProgressTail, group_lag, processed_offsets
from weatherbench.collectors.ray import RayCollector
from weatherbench.collectors.resources import ResourceSampler, directory_bytes
from weatherbench.collectors.spark import SparkCollector


def progress_event(
    batch: int, start_ms: int, duration_ms: int, rows: int, ends: dict, watermark_ms: int
) -> dict:
    return {
        "event": "progress",
        "name": "features",
        "batchId": batch,
        "timestamp_ms": start_ms,
        "numInputRows": rows,
        "processedRowsPerSecond": rows / (duration_ms / 1000),
        "durationMs": {
            "triggerExecution": duration_ms,
            "addBatch": duration_ms - 300,
            "walCommit": 100,
            "commitOffsets": 50,
        },
        "watermark_ms": watermark_ms,
        "stateOperators": [
            {"numRowsTotal": 10 * batch, "memoryUsedBytes": 1000 * batch, "numRowsDroppedByWatermark": 1}
        ],
        "sources": [{"endOffset": {"weather-raw-benchmark": {str(p): o for p, o in ends.items()}}}],
    }


def write_lines(path: Path, events: list[dict]) -> None:
    with path.open("a") as handle:
        for event in events:
            handle.write(json.dumps(event) + "\n")


def test_progress_tail_reads_only_new_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    write_lines(path, [progress_event(1, 0, 1000, 5, {0: 5}, 0)])
    tail = ProgressTail(path)
    tail.skip_to_end()
    write_lines(path, [progress_event(2, 2000, 1000, 7, {0: 12}, 0)])
    with path.open("a") as handle:
        handle.write('{"event": "progress", "na')  # a line still being written
    fresh = tail.read()
    assert [e["batchId"] for e in fresh] == [2]
    with path.open("a") as handle:
        handle.write('me": "deadletter"}\n')
    assert [e["name"] for e in tail.read()] == ["deadletter"]
    assert tail.latest_progress()["batchId"] == 2  # the dead-letter query's event is not Spark's main query
    assert processed_offsets(tail.latest_progress()) == {("weather-raw-benchmark", 0): 12}


def test_group_lag_counts_uncommitted_partitions_from_zero() -> None:
    ends = {("t", 0): 100, ("t", 1): 50, ("other", 0): 999}
    assert group_lag(ends, {("t", 0): 90}, "t") == 10 + 50


def test_spark_metrics_from_batches(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    path.write_text("")
    collector = SparkCollector(path, "http://127.0.0.1:9", tmp_path / "checkpoints", trigger_ms=2000)
    collector.start()
    # Batches start at 0, 2000 (on time), 7000 (3000 ms late: the previous one overran).
    write_lines(
        path,
        [
            progress_event(1, 0, 1500, 30, {0: 30}, watermark_ms=-4000),
            progress_event(2, 2000, 5000, 100, {0: 130}, watermark_ms=-1000),
            progress_event(3, 7000, 1000, 20, {0: 150}, watermark_ms=3000),
        ],
    )
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "offsets").write_bytes(b"x" * 1234)
    collector.stop()
    metrics = {m.name: m.value for m in collector.metrics()}
    assert metrics["spark.batches"] == 3
    assert metrics["spark.input_rows"] == 150
    assert metrics["spark.batches_over_interval"] == 1
    assert metrics["spark.batch_duration.max"] == pytest.approx(5000, rel=1e-3)
    assert metrics["spark.scheduling_delay.max"] == pytest.approx(3000, rel=1e-3)
    assert metrics["spark.watermark_delay.max"] == pytest.approx(4000, rel=1e-3)
    assert metrics["spark.checkpoint_write.p50"] == pytest.approx(150, rel=1e-3)
    assert metrics["spark.capacity"] == pytest.approx(150 / 7.5)
    assert metrics["spark.state_rows.max"] == 30
    assert metrics["spark.rows_dropped_by_watermark"] == 3
    assert metrics["spark.checkpoint.bytes"] == 1234
    # The driver's REST API is unreachable here: its metrics are missing, not zero.
    assert "spark.executors.task_time_ms" not in metrics
    assert collector.rest_error


def stats_line(
    time_ms: int, predictions: int, batches: int, mean_ms: float, actors: list[dict], **extra
) -> dict:
    return {
        "time_ms": time_ms,
        "interval_s": 5.0,
        "interval": {"predictions": predictions, "batches": batches, "timeouts": extra.get("timeouts", 0)},
        "predictions_per_s": predictions / 5.0,
        "call_latency_ms": {"p95": 3.0},
        "batch_latency_ms": {"count": batches, "mean": mean_ms},
        "actor_startup_ms": extra.get("startups", []),
        "pool": {
            "actors": len(actors),
            "alive_worker_nodes": 2,
            "actors_per_node": {"n1": 1, "n2": 1},
            "actor_rss_mb_max": 130.0,
            "actor_restarts": 0,
            "actor_stats": actors,
        },
    }


def test_ray_metrics_from_stats_lines(tmp_path: Path) -> None:
    path = tmp_path / "inference-stats.jsonl"
    path.write_text(json.dumps(stats_line(0, 999, 9, 1.0, [])) + "\n")  # before the step: ignored
    collector = RayCollector(path, dashboard_url=None)
    collector.start()
    a = {"actor_id": "a", "rows": 100, "startup_ms": 1500.0, "model_load_ms": 2.0}
    b = {"actor_id": "b", "rows": 40, "startup_ms": 1700.0, "model_load_ms": 3.0}
    write_lines(
        path,
        [
            stats_line(1000, 100, 10, 20.0, [a, b], startups=[1500.0, 1700.0]),
            stats_line(6000, 300, 20, 10.0, [{**a, "rows": 300}, {**b, "rows": 140}], timeouts=1),
        ],
    )
    collector.stop()
    metrics = {m.name: m.value for m in collector.metrics()}
    assert metrics["ray.predictions"] == 400
    assert metrics["ray.throughput"] == pytest.approx(400 / 10)
    # busy: 10 x 20 ms + 20 x 10 ms = 0.4 s
    assert metrics["ray.capacity"] == pytest.approx(400 / 0.4)
    assert metrics["ray.failure_rate"] == pytest.approx(100 * 1 / 30)
    assert metrics["ray.actor_startup.max"] == 1700.0
    assert metrics["ray.model_load.max"] == 3.0
    assert metrics["ray.per_actor_throughput.min"] == pytest.approx(100 / 10)
    assert metrics["ray.per_actor_throughput.max"] == pytest.approx(200 / 10)
    assert metrics["ray.nodes_with_actors"] == 2


def test_resource_sampler_measures_this_process(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f").write_bytes(b"y" * 5000)
    sampler = ResourceSampler(lambda: {}, {"data": tmp_path / "data"}, interval_s=0.1, disk_every=1)
    sampler.start()
    deadline_spin = sum(i * i for i in range(1_000_000))  # some CPU for the harness series
    import time

    time.sleep(0.5)
    sampler.stop()
    assert deadline_spin > 0
    metrics = {(m.name, m.component): m.value for m in sampler.metrics()}
    assert metrics[("resources.rss.max", "harness")] > 10  # MB: a Python interpreter at least
    assert metrics[("resources.cpu.max", "harness")] > 0
    assert metrics[("resources.disk.end", "data")] == pytest.approx(5000 / 1e6)
    assert 0 < metrics[("resources.machine.memory.mean", "")] <= 100
    assert directory_bytes(tmp_path / "missing") == 0
    assert not math.isnan(metrics[("resources.machine.cpu.mean", "")])
