"""Prediction store: upsert, duplicate accounting, range and page queries, threads."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from pipeline.api.store import Incoming, PredictionStore, StoreError, validate_record
from pipeline.schema import now_ms

WS = 1_767_225_600_000
STEP = 300_000


def prediction(station: str, window_start: int, temperature: float = 10.0, **extra: Any) -> dict[str, Any]:
    return {
        "station_id": station,
        "window_start": window_start,
        "window_end": window_start + STEP,
        "model_version": 3,
        "predicted_temperature_c": temperature,
        "ray_start": 11,
        "ray_end": 12,
        **extra,
    }


@pytest.fixture
def store(tmp_path: Path) -> PredictionStore:
    s = PredictionStore(tmp_path / "api" / "predictions.db")
    yield s
    s.close()


def test_insert_stamps_api_time_and_kafka_time(store: PredictionStore) -> None:
    before = now_ms()
    result = store.upsert_many(
        [Incoming(prediction("a", WS, 7.5), kafka_time=before - 20, partition=1, offset=4)]
    )
    after = now_ms()
    assert (result.inserted, result.duplicates) == (1, 0)
    row = store.latest("a")
    assert row is not None
    assert before <= row["api_time"] <= after
    assert row["api_time"] == result.api_time
    assert row["prediction_kafka_time"] == before - 20
    assert row["predicted_temperature_c"] == 7.5
    assert (row["ray_start"], row["ray_end"]) == (11, 12)  # trace stamps of the payload survive
    assert (row["kafka_partition"], row["kafka_offset"], row["duplicates"]) == (1, 4, 0)


def test_duplicates_keep_the_first_delivery_and_are_counted(store: PredictionStore) -> None:
    store.upsert_many([Incoming(prediction("a", WS, 1.0), kafka_time=100, partition=0, offset=1)])
    first = store.latest("a")
    # Same key, different record (e.g. a replayed Spark batch): a duplicate, not a replay.
    result = store.upsert_many([Incoming(prediction("a", WS, 99.0), kafka_time=200, partition=0, offset=7)])
    assert (result.inserted, result.duplicates, result.replays, result.api_time) == (0, 1, 0, None)
    # The very same Kafka record again (API re-read after a crash): duplicate and replay.
    result = store.upsert_many([Incoming(prediction("a", WS, 1.0), kafka_time=100, partition=0, offset=1)])
    assert (result.duplicates, result.replays) == (1, 1)

    row = store.latest("a")
    assert row is not None and first is not None
    assert row["predicted_temperature_c"] == 1.0
    assert row["api_time"] == first["api_time"]
    assert row["prediction_kafka_time"] == 100
    assert (row["duplicates"], row["replays"]) == (2, 1)
    counters = store.counters()
    assert (counters["rows"], counters["duplicates"], counters["replays"]) == (1, 2, 1)


def test_duplicate_within_one_batch(store: PredictionStore) -> None:
    result = store.upsert_many(
        [
            Incoming(prediction("a", WS), partition=0, offset=1),
            Incoming(prediction("a", WS), partition=0, offset=2),
            Incoming(prediction("b", WS), partition=0, offset=3),
        ]
    )
    assert (result.inserted, result.duplicates) == (2, 1)
    assert store.stats()["rows"] == 2
    assert store.stats()["stations"] == 2


def test_range_query_is_half_open_and_ordered(store: PredictionStore) -> None:
    store.upsert_many([Incoming(prediction("a", WS + i * STEP, float(i))) for i in (3, 0, 2, 1, 4)])
    store.upsert_many([Incoming(prediction("b", WS))])
    rows = store.station_range("a", WS + STEP, WS + 4 * STEP)
    assert [r["window_start"] for r in rows] == [WS + STEP, WS + 2 * STEP, WS + 3 * STEP]
    assert [r["window_start"] for r in store.station_range("a", start=WS + 3 * STEP)] == [
        WS + 3 * STEP,
        WS + 4 * STEP,
    ]
    assert len(store.station_range("a", end=WS + STEP)) == 1
    assert len(store.station_range("a")) == 5
    assert len(store.station_range("a", limit=2)) == 2
    assert store.station_range("zzz") == []
    latest = store.latest("a")
    assert latest is not None and latest["window_start"] == WS + 4 * STEP


def test_page_and_prefix(store: PredictionStore) -> None:
    stations = ["bench-1", "bench-2", "bench_x", "live-1", "bench-10"]
    store.upsert_many([Incoming(prediction(s, WS + i * STEP)) for s in stations for i in range(2)])
    all_rows = store.page(limit=100)
    assert len(all_rows) == 10
    assert [(r["station_id"], r["window_start"]) for r in all_rows] == sorted(
        (s, WS + i * STEP) for s in stations for i in range(2)
    )
    page1 = store.page(limit=3, offset=0)
    page2 = store.page(limit=3, offset=3)
    assert [r["station_id"] for r in page1 + page2] == [r["station_id"] for r in all_rows[:6]]
    bench = store.page(limit=100, station_prefix="bench-")
    assert sorted({r["station_id"] for r in bench}) == ["bench-1", "bench-10", "bench-2"]
    assert store.count("bench-") == 6
    assert store.count("bench") == 8  # bench_x too: a prefix, not a pattern
    assert store.count("b%") == 0  # LIKE wildcards are literal
    assert store.count() == 10


def test_bad_records_are_refused_without_storing_anything(store: PredictionStore) -> None:
    with pytest.raises(StoreError):
        store.upsert_many([Incoming(prediction("a", WS)), Incoming({"station_id": "b"})])
    assert store.counters()["rows"] == 0
    assert store.latest("a") is None


def test_positions_are_stored_with_the_rows_and_only_move_forward(store: PredictionStore) -> None:
    assert store.positions("weather-predictions") == {}
    store.upsert_many([Incoming(prediction("a", WS))], positions=[("weather-predictions", 0, 10)])
    store.upsert_many([], positions=[("weather-predictions", 1, 4), ("weather-predictions", 0, 7)])
    assert store.positions("weather-predictions") == {0: 10, 1: 4}
    assert store.positions("other") == {}
    # A failed batch stores neither its rows nor its positions.
    with pytest.raises(StoreError):
        store.upsert_many([Incoming({"station_id": "x"})], positions=[("weather-predictions", 0, 99)])
    assert store.positions("weather-predictions")[0] == 10


def test_rejected_counter(store: PredictionStore) -> None:
    store.add_rejected(3)
    store.upsert_many([Incoming(prediction("a", WS))], rejected=2)
    assert store.stats()["rejected"] == 5


def test_validate_record() -> None:
    assert validate_record(b'{"station_id": "a", "window_start": 5}')[1] is None
    assert validate_record(b"") == (None, "empty")
    assert validate_record(b"{x") == (None, "malformed_json")
    assert validate_record(b"[]") == (None, "not_an_object")
    assert validate_record(b'{"station_id": "a", "window_start": NaN}') == (None, "non_finite_number")
    assert validate_record(b'{"station_id": "a", "window_start": "5"}')[1].startswith("bad_key:")
    assert validate_record(b'{"window_start": 5}')[1].startswith("bad_key:")


def test_persists_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    first = PredictionStore(path)
    first.upsert_many([Incoming(prediction("a", WS)), Incoming(prediction("a", WS))])
    first.close()
    second = PredictionStore(path)
    try:
        assert second.stats()["rows"] == 1
        assert second.stats()["duplicates"] == 1
        assert second.journal_mode() == "wal"
    finally:
        second.close()


def test_readers_in_threads_see_only_committed_batches(store: PredictionStore) -> None:
    batches, size = 40, 25
    seen_sizes: list[int] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                n = len(store.page(limit=10_000))
                seen_sizes.append(n)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    for b in range(batches):
        store.upsert_many([Incoming(prediction(f"s{b}", WS + i * STEP)) for i in range(size)])
    done.set()
    for t in readers:
        t.join()
    assert errors == []
    assert seen_sizes, "readers never ran"
    assert all(n % size == 0 for n in seen_sizes)  # never a half-written batch
    assert store.stats()["rows"] == batches * size


def test_closed_store_refuses_calls(tmp_path: Path) -> None:
    s = PredictionStore(tmp_path / "c.db")
    s.close()
    with pytest.raises(sqlite3.ProgrammingError):
        s.upsert_many([Incoming(prediction("a", WS))])
    with pytest.raises(sqlite3.ProgrammingError):
        s.latest("a")
