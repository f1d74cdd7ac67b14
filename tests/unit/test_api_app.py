"""Serving API endpoints through FastAPI's TestClient, with and without a (fake) consumer."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_LOG_APPEND_TIME,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from fastapi.testclient import TestClient

from pipeline.api.app import create_app
from pipeline.api.consumer import PredictionConsumer
from pipeline.api.store import Incoming, PredictionStore
from pipeline.config import StackConfig

WS = 1_767_225_600_000
STEP = 300_000


def prediction(station: str, window_start: int, temperature: float = 10.0) -> dict[str, Any]:
    return {
        "station_id": station,
        "window_start": window_start,
        "window_end": window_start + STEP,
        "predicted_temperature_c": temperature,
        "model_version": 2,
        "ray_start": 5,
        "ray_end": 6,
        "features_kafka_time": 4,
    }


@pytest.fixture
def config(tmp_path: Path) -> StackConfig:
    cfg = StackConfig()
    cfg.state_dir = tmp_path
    return cfg


@pytest.fixture
def client(config: StackConfig) -> Iterator[TestClient]:
    app = create_app(config, start_consumer=False)
    with TestClient(app) as c:
        store: PredictionStore = app.state.store
        store.upsert_many(
            [Incoming(prediction("st-1", WS + i * STEP, 10.0 + i), kafka_time=WS + i) for i in range(4)]
            + [Incoming(prediction("st-2", WS)), Incoming(prediction("other", WS))]
        )
        store.upsert_many([Incoming(prediction("st-1", WS))])  # one duplicate
        yield c


def test_store_file_lives_under_the_state_dir(client: TestClient, config: StackConfig) -> None:
    assert (config.state_dir / "api" / "predictions.db").exists()


def test_health_without_consumer(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["consumer"]["state"] == "disabled"
    assert body["db"] == "ok"


def test_latest(client: TestClient) -> None:
    response = client.get("/stations/st-1/latest")
    assert response.status_code == 200
    body = response.json()
    assert body["window_start"] == WS + 3 * STEP
    assert body["predicted_temperature_c"] == 13.0
    assert body["prediction_kafka_time"] == WS + 3
    assert body["api_time"] > WS
    assert body["ray_start"] == 5


def test_latest_unknown_station_is_404_with_message(client: TestClient) -> None:
    response = client.get("/stations/nowhere/latest")
    assert response.status_code == 404
    assert response.json()["detail"] == "no predictions for station 'nowhere'"


def test_station_range(client: TestClient) -> None:
    response = client.get("/stations/st-1/predictions", params={"start": WS + STEP, "end": WS + 3 * STEP})
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert [i["window_start"] for i in body["items"]] == [WS + STEP, WS + 2 * STEP]
    everything = client.get("/stations/st-1/predictions").json()
    assert everything["count"] == 4
    assert everything["items"][0]["duplicates"] == 1


@pytest.mark.parametrize(
    ("url", "params", "parameter"),
    [
        ("/stations/st-1/predictions", {"start": "yesterday"}, "start"),
        ("/stations/st-1/predictions", {"end": "-5"}, "end"),
        ("/stations/st-1/predictions", {"start": WS + STEP, "end": WS}, "end"),
        ("/stations/st-1/predictions", {"limit": 0}, "limit"),
        ("/predictions", {"limit": 10_001}, "limit"),
        ("/predictions", {"offset": -1}, "offset"),
        ("/predictions", {"limit": "ten"}, "limit"),
        ("/predictions", {"station_prefix": ""}, "station_prefix"),
    ],
)
def test_bad_query_parameters_are_422_naming_the_parameter(
    client: TestClient, url: str, params: dict[str, Any], parameter: str
) -> None:
    response = client.get(url, params=params)
    assert response.status_code == 422
    body = response.json()
    assert f"'{parameter}'" in body["detail"]
    assert body["errors"][0]["parameter"] == parameter


def test_predictions_paging_and_prefix(client: TestClient) -> None:
    first = client.get("/predictions", params={"limit": 4}).json()
    assert first["total"] == 6
    assert len(first["items"]) == 4
    assert first["next_offset"] == 4
    second = client.get("/predictions", params={"limit": 4, "offset": 4}).json()
    assert len(second["items"]) == 2
    assert second["next_offset"] is None
    keys = [(i["station_id"], i["window_start"]) for i in first["items"] + second["items"]]
    assert keys == sorted(keys)
    assert len(set(keys)) == 6
    item = first["items"][0]
    for stamp in ("features_kafka_time", "ray_start", "ray_end", "prediction_kafka_time", "api_time"):
        assert stamp in item
    only_st = client.get("/predictions", params={"station_prefix": "st-"}).json()
    assert only_st["total"] == 5
    assert {i["station_id"] for i in only_st["items"]} == {"st-1", "st-2"}


def test_stats(client: TestClient) -> None:
    body = client.get("/stats").json()
    assert body["rows"] == 6
    assert body["duplicates"] == 1
    assert body["stations"] == 3
    assert body["last_api_time"] > WS
    assert body["consumer"]["state"] == "disabled"


def test_metrics(client: TestClient) -> None:
    client.get("/stations/st-1/latest")
    client.get("/stations/st-2/latest")
    text = client.get("/metrics").text
    assert "weather_api_predictions_rows_total 6.0" in text
    assert "weather_api_predictions_duplicates_total 1.0" in text
    # Request latency is labelled by route template, not by station.
    series = 'weather_api_request_seconds_count{method="GET",route="/stations/{station_id}/latest"'
    assert series + ',status="200"} 2.0' in text


# ------------------------------------------------------------------ with a consumer


class FakeMessage:
    def __init__(self, value: bytes, offset: int, partition: int = 0, ts: int = WS + 999) -> None:
        self._value, self._offset, self._partition, self._ts = value, offset, partition, ts

    def value(self) -> bytes:
        return self._value

    def offset(self) -> int:
        return self._offset

    def partition(self) -> int:
        return self._partition

    def topic(self) -> str:
        return "weather-predictions"

    def timestamp(self) -> tuple[int, int]:
        return (TIMESTAMP_LOG_APPEND_TIME, self._ts)

    def error(self) -> None:
        return None


class ScriptedConsumer:
    """Serves the given batches, then idles (or fails, to kill the thread)."""

    def __init__(self, batches: list[list[FakeMessage]], store_path: Path, fail_after: bool = False) -> None:
        self.batches = batches
        self.store_path = store_path
        self.fail_after = fail_after
        self.commits: list[tuple[list[tuple[int, int]], int]] = []
        self.assigned: list[tuple[int, int]] = []
        self.closed = False

    def subscribe(self, topics: list[str], on_assign: Any = None, on_revoke: Any = None) -> None:
        assert topics == ["weather-predictions"]
        if on_assign:
            on_assign(self, [TopicPartition("weather-predictions", 0)])

    def poll(self, timeout: float) -> FakeMessage | None:
        if self.batches:
            batch = self.batches[0]
            return batch.pop(0)
        if self.fail_after:
            raise KafkaException(KafkaError(KafkaError._FATAL, "broker gone for good", fatal=True))
        time.sleep(min(timeout, 0.05))
        return None

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        rest = self.batches.pop(0) if self.batches else []
        return rest

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert asynchronous is False
        # The DB transaction must be committed before the offsets: read it independently.
        with PredictionStore(self.store_path) as store:
            visible = store.counters()["rows"] + store.counters()["duplicates"]
        self.commits.append(([(tp.partition, tp.offset) for tp in offsets], visible))

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = [(tp.partition, tp.offset) for tp in partitions]

    def assignment(self) -> list[TopicPartition]:
        return []

    def close(self) -> None:
        self.closed = True


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_consumer_stores_then_commits_and_counts_duplicates(config: StackConfig) -> None:
    db = config.state_dir / "api" / "predictions.db"
    batch1 = [FakeMessage(json.dumps(prediction("a", WS + i * STEP)).encode(), offset=i) for i in range(3)]
    batch2 = [
        FakeMessage(json.dumps(prediction("a", WS)).encode(), offset=3),  # duplicate key
        FakeMessage(b"{broken", offset=4),  # rejected, still committed past
    ]
    fake = ScriptedConsumer([batch1, batch2], db)
    app = create_app(config, start_consumer=True, consumer_factory=lambda _conf: fake)
    with TestClient(app) as c:
        consumer: PredictionConsumer = app.state.consumer
        wait_for(lambda: consumer.status()["batches"] == 2)
        body = c.get("/stats").json()
        assert (body["rows"], body["duplicates"], body["rejected"]) == (3, 1, 1)
        assert body["consumer"]["rejected_reasons"] == {"malformed_json": 1}
        health = c.get("/health")
        assert health.status_code == 200
        assert health.json()["consumer"]["alive"] is True
        latest = c.get("/stations/a/latest").json()
        assert latest["prediction_kafka_time"] == WS + 999
        assert latest["api_time"] >= latest["prediction_kafka_time"]
        metrics = c.get("/metrics").text
        assert "weather_api_kafka_to_queryable_seconds_count 3.0" in metrics
    # Offsets committed after each batch, and each commit saw its batch already stored.
    assert fake.commits == [([(0, 3)], 3), ([(0, 5)], 4)]
    assert fake.closed  # the lifespan stopped the thread, which closed the consumer
    # A new database starts from the beginning of the topic, whatever the group committed.
    assert fake.assigned == [(0, OFFSET_BEGINNING)]

    # A restart resumes where the database's rows end (stored with them), not re-reading.
    again = ScriptedConsumer([], db)
    app = create_app(config, start_consumer=True, consumer_factory=lambda _conf: again)
    with TestClient(app) as c:
        wait_for(lambda: again.assigned != [])
        assert again.assigned == [(0, 5)]
        assert c.get("/stats").json()["rows"] == 3


def test_health_is_503_when_the_consumer_thread_dies(config: StackConfig) -> None:
    fake = ScriptedConsumer([], config.state_dir / "api" / "predictions.db", fail_after=True)
    app = create_app(config, start_consumer=True, consumer_factory=lambda _conf: fake)
    with TestClient(app) as c:
        wait_for(lambda: not app.state.consumer.is_alive())
        response = c.get("/health")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "unhealthy"
        assert "broker gone for good" in body["reason"]
        assert body["consumer"]["state"] == "failed"
        # Reads keep working from the store while the consumer is down.
        assert c.get("/stats").status_code == 200
