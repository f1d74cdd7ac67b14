"""The live producer polls Open-Meteo (here: the local stub) and publishes into the real raw topic."""

from __future__ import annotations

import json
import threading

import pytest

from pipeline.kafka_topics import read_topic
from pipeline.producer.__main__ import run_live
from pipeline.producer.openmeteo import OpenMeteoClient, Station
from pipeline.schema import validate_raw
from tests.openmeteo_stub import FIXTURES, openmeteo_stub

pytestmark = pytest.mark.integration


def test_live_polling_publishes_new_observations_once(pipeline_stack, producer):
    config = pipeline_stack.config
    stations = [Station("om-seattle", 47.6, -122.33), Station("om-broken", 123.0, 0.0)]
    stop = threading.Event()
    with openmeteo_stub() as url:
        # Two polls of an unchanged observation: one message. The broken station is skipped, not fatal.
        timer = threading.Timer(2.5, stop.set)
        timer.start()
        run_live(producer, OpenMeteoClient(url), stations, interval_s=1.0, stop=stop)
        timer.cancel()
    records = [
        json.loads(v)
        for _, _, key, v in read_topic(config.kafka.bootstrap_servers, config.kafka.raw_topic)
        if key and key.startswith(b"om-")
    ]
    expected = json.loads((FIXTURES / "current_seattle.json").read_text())["current"]
    assert len(records) == 1
    record = records[0]
    assert validate_raw(json.dumps(record))[1] is None
    assert record["station_id"] == "om-seattle"
    assert record["seq"] == 0
    assert record["event_time"] == expected["time"] * 1000
    assert record["temperature_c"] == expected["temperature_2m"]
