"""Bad raw records land in the dead-letter topic with their reason; good records keep flowing."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from pipeline.config import duration_ms
from pipeline.kafka_topics import read_topic
from pipeline.producer.loadgen import LoadSpec, run_open_loop
from pipeline.producer.observations import SyntheticSource
from pipeline.schema import MAX_MESSAGE_BYTES, now_ms, validate_raw

from .conftest import close_all_windows
from .test_02_flow import wait_served, windows_of

pytestmark = pytest.mark.integration


def bad_payloads(marker: str) -> list[str]:
    """One payload per kind of bad input; each carries `marker` near its start so it can be found again."""
    now = now_ms()
    good = {
        "marker": marker,
        "station_id": "dl-bad",
        "seq": 0,
        "event_time": now,
        "ingestion_time": now,
        "temperature_c": 10.0,
        "humidity_pct": 50.0,
        "pressure_hpa": 1010.0,
        "wind_speed_ms": 2.0,
        "precipitation_mm": 0.0,
    }

    def variant(**changes):
        record = dict(good)
        for key, value in changes.items():
            if value is ...:
                del record[key]
            else:
                record[key] = value
        return json.dumps(record)

    return [
        f'{{"marker": "{marker}", "station_id": "dl-bad", "seq": ',  # truncated
        f'["{marker}", 1, 2]',  # JSON, but not an object
        variant(temperature_c=...),
        variant(event_time=...),
        variant(seq="three"),
        variant(humidity_pct="damp"),
        variant(temperature_c="12.5"),
        variant(station_id=42),
        variant(temperature_c=81.0),
        variant(pressure_hpa=300.0),
        variant(precipitation_mm=-4.0),
        variant(padding="x" * (MAX_MESSAGE_BYTES + 10)),
    ]


def test_bad_records_are_dead_lettered_with_reasons_while_good_ones_flow(pipeline_stack, producer):
    config = pipeline_stack.config
    run_id = uuid.uuid4().hex[:10]
    markers = {}
    for i, _ in enumerate(bad_payloads("x")):
        marker = f"dl-{run_id}-{i:02d}"
        markers[marker] = bad_payloads(marker)[i]
    expected_reasons = {m: str(validate_raw(p)[1]) for m, p in markers.items()}
    assert "None" not in expected_reasons.values()

    # Bad records interleaved with a steady good flow.
    for payload in markers.values():
        producer.send_raw(payload.encode(), b"dl-bad")
    result = run_open_loop(
        producer, SyntheticSource(), LoadSpec(stations=3, rate=15, duration_s=10, station_prefix="dl")
    )
    for payload in markers.values():
        producer.send_raw(payload.encode(), b"dl-bad")
    assert producer.flush(30) == 0
    close_all_windows(pipeline_stack, producer, result.last_event_ms)

    deadline = time.monotonic() + 120
    found: dict[str, list[dict]] = {}
    while time.monotonic() < deadline:
        records = [
            json.loads(v)
            for _, _, _, v in read_topic(config.kafka.bootstrap_servers, config.kafka.deadletter_topic)
        ]
        found = {}
        for record in records:
            for marker in markers:
                if f'"{marker}"' in record["raw"]:
                    found.setdefault(marker, []).append(record)
        if len(found) == len(markers) and all(len(v) >= 2 for v in found.values()):
            break
        time.sleep(2)
    assert set(found) == set(markers), f"not dead-lettered: {sorted(set(markers) - set(found))}"
    for marker, records in found.items():
        assert len(records) == 2, f"{marker}: sent twice, dead-lettered {len(records)} times"
        assert {r["reason"] for r in records} == {expected_reasons[marker]}, marker
        assert all(r["source_topic"] == config.kafka.raw_topic for r in records)

    expected = windows_of(result.ledger, "dl", duration_ms(config.spark.window))
    rows = wait_served(config.api.url, "dl-0", set(expected))
    served = {(r["station_id"], r["window_start"]): r["count"] for r in rows}
    assert served == {key: len(seqs) for key, seqs in expected.items()}
