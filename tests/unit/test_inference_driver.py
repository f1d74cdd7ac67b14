"""Inference driver logic with fake Kafka clients and a fake pool (no broker, no Ray)."""

from __future__ import annotations

import json
from typing import Any, ClassVar

import pytest
from confluent_kafka import TIMESTAMP_LOG_APPEND_TIME, KafkaError, TopicPartition

from pipeline.config import StackConfig
from pipeline.inference.actors import build_predictions
from pipeline.inference.driver import (
    BadFeature,
    DriverMetrics,
    InferenceDriver,
    commit_positions,
    deadletter_record,
    parse_feature,
    reason_kind,
    summarize,
)
from pipeline.inference.pool import (
    CallRecord,
    InferenceAborted,
    InferResult,
    alive_worker_node_ids,
    split_ranges,
)
from pipeline.model import FEATURE_NAMES, TemperatureModel
from pipeline.schema import FEATURE_FIELDS, window_key

WS = 1_767_225_600_000


def feature(station: str = "st-1", window_start: int = WS, temperature: float = 11.0) -> dict[str, Any]:
    row: dict[str, Any] = {name: None for name in FEATURE_FIELDS}
    row.update(station_id=station, window_start=window_start, window_end=window_start + 300_000)
    row.update(temperature_mean=temperature, count=5, seq_min=0, seq_max=4)
    return row


class FakeMessage:
    def __init__(
        self,
        value: bytes | None,
        offset: int,
        partition: int = 0,
        topic: str = "weather-features",
        key: bytes | None = b"k",
        ts: int = 1_767_225_999_000,
        error: Any = None,
    ) -> None:
        self._value, self._offset, self._partition, self._topic = value, offset, partition, topic
        self._key, self._ts, self._error = key, ts, error

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def offset(self) -> int:
        return self._offset

    def partition(self) -> int:
        return self._partition

    def topic(self) -> str:
        return self._topic

    def timestamp(self) -> tuple[int, int]:
        return (TIMESTAMP_LOG_APPEND_TIME, self._ts)

    def error(self) -> Any:
        return self._error

    def latency(self) -> float:
        return 0.002


class Events:
    """Shared, ordered log of what the fakes saw."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []


class FakeProducer:
    """Acks on flush; `fail_first` records fail their first delivery with a retriable error."""

    def __init__(self, events: Events, fail_first: int = 0, never_ack: bool = False) -> None:
        self.events = events
        self.queue: list[tuple[str, bytes, bytes, Any]] = []
        self.acked: list[tuple[str, bytes, bytes]] = []
        self.fail_first = fail_first
        self.never_ack = never_ack

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any) -> None:
        self.queue.append((topic, key, value, on_delivery))

    def __len__(self) -> int:
        return len(self.queue)

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float = 0) -> int:
        if self.never_ack:
            return len(self.queue)
        pending, self.queue = self.queue, []
        for topic, key, value, callback in pending:
            if self.fail_first > 0:
                self.fail_first -= 1
                callback(KafkaError(KafkaError._MSG_TIMED_OUT), FakeMessage(value, 0))
                continue
            self.acked.append((topic, key, value))
            callback(None, FakeMessage(value, 0))
        self.events.log.append(("flushed", len(self.acked)))
        return 0


class FakeConsumer:
    def __init__(self, events: Events, producer_ref: list[FakeProducer]) -> None:
        self.events = events
        self.producer_ref = producer_ref
        self.commits: list[list[TopicPartition]] = []

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert asynchronous is False
        # At commit time every produced record must already be acknowledged.
        producer = self.producer_ref[0]
        self.events.log.append(("commit", (len(producer.queue), len(producer.acked))))
        self.commits.append(offsets)


class FakePool:
    target_version = 1

    def __init__(self, fail_rows: set[str] | None = None) -> None:
        self.model = TemperatureModel(version=1, coefficients=[0.0] * len(FEATURE_NAMES), intercept=1.0)
        self.fail_rows = fail_rows or set()
        self.calls: list[list[dict[str, Any]]] = []

    def infer(self, rows: list[dict[str, Any]], should_abort: Any, tick: Any = None) -> InferResult:
        self.calls.append(rows)
        good = [r for r in rows if r["station_id"] not in self.fail_rows]
        bad = [(r, "inference_error:ValueError:boom") for r in rows if r["station_id"] in self.fail_rows]
        return InferResult(
            predictions=build_predictions(self.model, good, "actor-1"),
            failed=bad,
            calls=[CallRecord(rows=len(good), latency_ms=3.0, actor_ms=1.0)],
        )


def make_driver(producer: FakeProducer, pool: FakePool | None = None) -> tuple[InferenceDriver, FakeConsumer]:
    events = producer.events
    holder = [producer]
    consumer = FakeConsumer(events, holder)
    driver = InferenceDriver(StackConfig(), pool or FakePool(), consumer, lambda: holder[0], DriverMetrics())
    return driver, consumer


# ----------------------------------------------------------------------------- parse


def test_parse_feature_accepts_a_complete_row_and_fills_missing_trace_fields() -> None:
    row = {"station_id": "s", "window_start": WS, "window_end": WS + 300_000, "temperature_mean": 4, "x": 1}
    filled: set[str] = set()
    parsed = parse_feature(json.dumps(row).encode(), filled)
    assert parsed["temperature_mean"] == 4
    assert parsed["x"] == 1
    assert parsed["spark_time"] is None
    assert "spark_time" in filled
    assert "station_id" not in filled


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "bad_feature_row:empty"),
        (b"", "bad_feature_row:empty"),
        (b"{oops", "bad_feature_row:malformed_json"),
        (b"\xff\xfe", "bad_feature_row:malformed_json"),
        (b"[1]", "bad_feature_row:not_an_object"),
        (b'{"window_start": 1767225600000}', "bad_feature_row:missing_field:station_id"),
        (
            b'{"station_id": "s", "window_start": 1767225600000, "window_end": 1767225900000}',
            "bad_feature_row:missing_field:temperature_mean",
        ),
        (
            (
                b'{"station_id": 5, "window_start": 1767225600000, "window_end": 1767225900000, '
                b'"temperature_mean": 1}'
            ),
            "bad_feature_row:mistyped_field:station_id",
        ),
        (
            (
                b'{"station_id": "a|b", "window_start": 1767225600000, "window_end": 1767225900000, '
                b'"temperature_mean": 1}'
            ),
            "bad_feature_row:mistyped_field:station_id",
        ),
        (
            b'{"station_id": "s", "window_start": "x", "window_end": 1767225900000, "temperature_mean": 1}',
            "bad_feature_row:mistyped_field:window_start",
        ),
        (
            (
                b'{"station_id": "s", "window_start": 1767225600000, "window_end": 1767225600000, '
                b'"temperature_mean": 1}'
            ),
            "bad_feature_row:bad_window:window_end<=window_start",
        ),
        (
            (
                b'{"station_id": "s", "window_start": 1767225600000, "window_end": 1767225900000, '
                b'"temperature_mean": true}'
            ),
            "bad_feature_row:mistyped_field:temperature_mean",
        ),
        (
            (
                b'{"station_id": "s", "window_start": 1767225600000, "window_end": 1767225900000, '
                b'"temperature_mean": 99.5}'
            ),
            "bad_feature_row:out_of_range:temperature_mean",
        ),
        (
            (
                b'{"station_id": "s", "window_start": 1767225600000, "window_end": 1767225900000, '
                b'"temperature_mean": NaN}'
            ),
            "bad_feature_row:non_finite_number:NaN",
        ),
    ],
)
def test_parse_feature_rejects_with_a_reason(payload: bytes | None, reason: str) -> None:
    with pytest.raises(BadFeature) as info:
        parse_feature(payload)
    assert str(info.value) == reason


def test_deadletter_record_keeps_source_coordinates() -> None:
    message = FakeMessage(b"{oops", offset=41, partition=2, key=b"st|1")
    record = deadletter_record(message, "bad_feature_row:malformed_json")
    assert record["reason"] == "bad_feature_row:malformed_json"
    assert (record["source_topic"], record["source_partition"], record["source_offset"]) == (
        "weather-features",
        2,
        41,
    )
    assert record["payload"] == "{oops"
    assert record["key"] == "st|1"
    assert record["source_kafka_time"] == 1_767_225_999_000
    assert record["payload_truncated"] is False


def test_commit_positions_take_highest_offset_plus_one_per_partition() -> None:
    messages = [
        FakeMessage(b"", 5, 0),
        FakeMessage(b"", 9, 0),
        FakeMessage(b"", 3, 1),
        FakeMessage(b"", 7, 0),
    ]
    positions = commit_positions(messages)
    assert [(tp.topic, tp.partition, tp.offset) for tp in positions] == [
        ("weather-features", 0, 10),
        ("weather-features", 1, 4),
    ]


def test_split_ranges_cover_every_row_once() -> None:
    assert split_ranges(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert split_ranges(2, 5) == [(0, 1), (1, 2)]
    assert split_ranges(0, 3) == []
    assert split_ranges(7, 0) == [(0, 7)]


def test_alive_worker_nodes_exclude_head_and_dead_nodes() -> None:
    nodes = [
        {"NodeID": "head", "Alive": True, "Resources": {"node:__internal_head__": 1.0, "CPU": 0.0}},
        {"NodeID": "w2", "Alive": True, "Resources": {"CPU": 1.0}},
        {"NodeID": "w1", "Alive": True, "Resources": {"CPU": 1.0}},
        {"NodeID": "w3", "Alive": False, "Resources": {}},
    ]
    assert alive_worker_node_ids(nodes) == ["w1", "w2"]


def test_summarize_uses_exact_nearest_rank_percentiles() -> None:
    stats = summarize([float(v) for v in range(1, 101)])
    assert (stats["p50"], stats["p95"], stats["p99"], stats["max"], stats["count"]) == (50, 95, 99, 100, 100)
    assert summarize([])["p50"] is None


def test_reason_kind_drops_free_text() -> None:
    assert reason_kind("bad_feature_row:missing_field:station_id") == "bad_feature_row:missing_field"
    assert reason_kind("inference_error:ValueError:some text") == "inference_error:ValueError"


# ------------------------------------------------------------------------ batch flow


def test_batch_produces_keyed_predictions_and_commits_after_all_acks() -> None:
    events = Events()
    producer = FakeProducer(events)
    driver, consumer = make_driver(producer)
    rows = [feature("a", WS), feature("b", WS), feature("a", WS + 300_000)]
    messages = [
        FakeMessage(json.dumps(r).encode(), offset=10 + i, partition=i % 2) for i, r in enumerate(rows)
    ]
    messages.append(FakeMessage(b"not json", offset=13, partition=1))

    driver.process_batch(messages)

    predictions = [(k, json.loads(v)) for t, k, v in producer.acked if t == "weather-predictions"]
    deadletters = [json.loads(v) for t, _, v in producer.acked if t == "weather-deadletter"]
    assert [k for k, _ in predictions] == [
        window_key("a", WS),
        window_key("b", WS),
        window_key("a", WS + 300_000),
    ]
    for _, p in predictions:
        assert p["features_kafka_time"] == 1_767_225_999_000
        assert p["predicted_temperature_c"] == pytest.approx(p["temperature_mean"] + 1.0)
    assert [d["reason"] for d in deadletters] == ["bad_feature_row:malformed_json"]
    assert deadletters[0]["source_offset"] == 13
    # Commit came after the flush, with nothing unacknowledged, and covers the bad message too.
    assert [e[0] for e in events.log] == ["flushed", "commit"]
    assert events.log[1][1] == (0, 4)
    assert [(tp.partition, tp.offset) for tp in consumer.commits[0]] == [(0, 13), (1, 14)]
    assert driver.metrics.totals["predictions"] == 3
    assert driver.metrics.totals["deadletters"] == 1


def test_failed_deliveries_are_produced_again_before_the_commit() -> None:
    events = Events()
    producer = FakeProducer(events, fail_first=2)
    driver, consumer = make_driver(producer)
    messages = [FakeMessage(json.dumps(feature(f"s{i}")).encode(), offset=i) for i in range(3)]

    driver.process_batch(messages)

    keys = sorted(k for t, k, _ in producer.acked if t == "weather-predictions")
    assert keys == sorted(window_key(f"s{i}", WS) for i in range(3))  # each exactly once
    assert [e[0] for e in events.log] == ["flushed", "flushed", "commit"]
    assert driver.metrics.totals["delivery_errors"] == 2
    assert len(consumer.commits) == 1


def test_rows_failing_inference_are_dead_lettered_and_others_predicted() -> None:
    events = Events()
    producer = FakeProducer(events)
    driver, _ = make_driver(producer, FakePool(fail_rows={"bad"}))
    messages = [FakeMessage(json.dumps(feature(s)).encode(), offset=i) for i, s in enumerate(["ok", "bad"])]
    driver.process_batch(messages)
    topics = [t for t, _, _ in producer.acked]
    assert topics == ["weather-predictions", "weather-deadletter"]
    dead = json.loads(producer.acked[1][2])
    assert dead["reason"] == "inference_error:ValueError:boom"
    assert (dead["source_offset"], dead["key"]) == (1, "k")
    assert json.loads(dead["payload"])["station_id"] == "bad"


def test_no_commit_when_acks_never_arrive_and_stop_is_forced() -> None:
    events = Events()
    producer = FakeProducer(events, never_ack=True)
    driver, consumer = make_driver(producer)
    driver.request_stop()
    driver.request_stop()  # second signal: abandon the batch
    with pytest.raises(InferenceAborted):
        driver.process_batch([FakeMessage(json.dumps(feature()).encode(), offset=0)])
    assert consumer.commits == []


def test_stats_line_reports_interval_rates_and_latencies(tmp_path: Any) -> None:
    events = Events()
    producer = FakeProducer(events)
    driver, _ = make_driver(producer)

    class Snap(FakePool):
        startup_ms: ClassVar[list[float]] = [1500.0]
        rollouts_done: ClassVar[list[tuple[int, float]]] = []

        def snapshot(self) -> dict[str, Any]:
            return {
                "actors": 2,
                "actors_starting": 0,
                "alive_worker_nodes": 2,
                "pool_resizes": 1,
                "actor_restarts": 0,
            }

    driver.pool = Snap()
    driver.stats_path = tmp_path / "logs" / "inference-stats.jsonl"
    driver.process_batch([FakeMessage(json.dumps(feature(f"s{i}")).encode(), offset=i) for i in range(4)])
    driver.write_stats()
    line = json.loads(driver.stats_path.read_text().splitlines()[-1])
    assert line["interval"]["predictions"] == 4
    assert line["totals"]["batches"] == 1
    assert line["call_latency_ms"]["p50"] == 3.0
    assert line["actor_compute_ms"]["max"] == 1.0
    assert line["actor_startup_ms"] == [1500.0]
    assert line["pool"]["actors"] == 2
    assert line["predictions_per_s"] > 0
    # The next line covers a new interval only.
    assert driver.stats_line()["interval"]["predictions"] == 0
