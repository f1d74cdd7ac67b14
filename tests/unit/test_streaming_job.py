"""The streaming job's transformations on a static DataFrame: windows, feature and dead-letter records."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pyspark.sql import SparkSession

from pipeline import schema
from pipeline.streaming.job import deadletter_records, feature_records, parse_args, window_features
from pipeline.streaming.validation import split_valid

T0 = 1_795_745_520_000  # a multiple of 10 s


def observation(station: str, seq: int, event_time: int, **extra: Any) -> bytes:
    record = {
        "station_id": station,
        "seq": seq,
        "event_time": event_time,
        "ingestion_time": event_time + 5,
        "temperature_c": 10.0 + seq,
        "humidity_pct": 50.0 + seq,
        "pressure_hpa": 1000.0,
        "wind_speed_ms": 2.0 * seq,
        "precipitation_mm": 0.5,
        **extra,
    }
    return schema.encode(record)


@pytest.fixture(scope="module")
def records(spark: SparkSession) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    values = [
        observation("a", 0, T0 + 100, intended_time=T0 + 90),
        observation("a", 1, T0 + 9_999, intended_time=T0 + 9_990),
        observation("a", 2, T0 + 10_000),  # next window
        observation("b", 0, T0 + 5_000),
        b"not json",
        observation("b", 1, T0 + 6_000, humidity_pct=101.0),
    ]
    kafka_time = datetime.fromtimestamp((T0 + 20_000) / 1000, tz=UTC)
    rows = [(None, v, "weather-raw", 0, i, kafka_time, 1) for i, v in enumerate(values)]
    source = spark.createDataFrame(
        rows,
        "key binary, value binary, topic string, partition int, offset long, timestamp timestamp, "
        "timestampType int",
    )
    good, bad = split_valid(source)
    features = [
        (row["key"], json.loads(row["value"]))
        for row in feature_records(window_features(good, "10 seconds", "2 seconds")).collect()
    ]
    dead = [(row["key"], json.loads(row["value"])) for row in deadletter_records(bad).collect()]
    return features, dead  # type: ignore[return-value]


def test_one_feature_row_per_station_window(records) -> None:
    features, _dead = records
    by_key = dict(features)
    assert len(by_key) == len(features) == 3
    assert set(by_key) == {
        schema.window_key(s, w).decode() for s, w in [("a", T0), ("a", T0 + 10_000), ("b", T0)]
    }
    first = by_key[f"a|{T0}"]
    assert list(first) == list(schema.FEATURE_FIELDS)
    assert (first["window_start"], first["window_end"]) == (T0, T0 + 10_000)
    assert (first["count"], first["seq_min"], first["seq_max"]) == (2, 0, 1)
    assert first["temperature_mean"] == pytest.approx(10.5)
    assert (first["temperature_min"], first["temperature_max"]) == (10.0, 11.0)
    assert first["humidity_mean"] == pytest.approx(50.5)
    assert first["wind_speed_mean"] == pytest.approx(1.0)
    assert first["precipitation_sum"] == pytest.approx(1.0)
    assert first["ingestion_time_max"] == T0 + 9_999 + 5
    assert first["intended_time_max"] == T0 + 9_990
    assert first["kafka_time_max"] == T0 + 20_000
    # Batch query: current_timestamp() is "now", later than the Kafka stamps of the test rows.
    assert first["t2_max_ms"] > 0 and first["spark_time"] > T0
    # A window without open-loop stamps keeps the field, as null.
    assert "intended_time_max" in by_key[f"b|{T0}"] and by_key[f"b|{T0}"]["intended_time_max"] is None
    assert by_key[f"b|{T0}"]["count"] == 1  # the out-of-range record is not counted


def test_deadletter_records(records) -> None:
    _features, dead = records
    assert [key for key, _ in dead] == ["weather-raw|0|4", "weather-raw|0|5"]
    assert [value["reason"] for _, value in dead] == ["malformed_json", "out_of_range:humidity_pct"]
    first = dead[0][1]
    assert set(first) == {
        "reason",
        "raw",
        "raw_bytes",
        "source_topic",
        "partition",
        "offset",
        "kafka_time",
        "detected_time",
    }
    assert first["raw"] == "not json" and first["source_topic"] == "weather-raw" and first["offset"] == 4
    assert first["kafka_time"] == T0 + 20_000


def test_args() -> None:
    args = parse_args(["--config", "s.yaml"])
    assert args.input_topic is None and args.checkpoint_dir is None
    args = parse_args(["--config", "s.yaml", "--input-topic", "t", "--checkpoint-dir", "/tmp/c"])
    assert args.input_topic == "t" and str(args.checkpoint_dir) == "/tmp/c"
    with pytest.raises(SystemExit):
        parse_args([])
