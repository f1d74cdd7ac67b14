"""Open-Meteo client over real HTTP against a local server that serves documented responses."""

import json

import pytest

from pipeline.producer.openmeteo import OpenMeteoClient, OpenMeteoError, Station
from tests.openmeteo_stub import FIXTURES, StubHandler, openmeteo_stub


@pytest.fixture(scope="module")
def stub_url():
    with openmeteo_stub() as url:
        yield url


def test_current_conditions_become_pipeline_fields(stub_url):
    client = OpenMeteoClient(base_url=stub_url)
    obs = client.current(Station("seattle", 47.6, -122.33))
    expected = json.loads((FIXTURES / "current_seattle.json").read_text())["current"]
    assert obs.station_id == "seattle"
    assert obs.event_time_ms == expected["time"] * 1000
    assert obs.values == {
        "temperature_c": expected["temperature_2m"],
        "humidity_pct": expected["relative_humidity_2m"],
        "pressure_hpa": expected["surface_pressure"],
        "wind_speed_ms": expected["wind_speed_10m"],
        "precipitation_mm": expected["precipitation"],
    }
    request = StubHandler.requests[-1]
    assert request["path"] == "/v1/forecast"
    assert request["wind_speed_unit"] == "ms"
    assert set(request["current"].split(",")) == {
        "temperature_2m",
        "relative_humidity_2m",
        "surface_pressure",
        "wind_speed_10m",
        "precipitation",
    }


def test_missing_variable_is_named(stub_url):
    client = OpenMeteoClient(base_url=stub_url)
    with pytest.raises(OpenMeteoError, match=r"berlin: current\.wind_speed_10m is missing"):
        client.current(Station("berlin", 52.52, 13.41))


def test_api_error_reason_is_passed_on(stub_url):
    client = OpenMeteoClient(base_url=stub_url)
    with pytest.raises(OpenMeteoError, match=r"HTTP 400.*Latitude must be in range"):
        client.current(Station("nowhere", 123.0, 0.0))


def test_unreachable_api_is_a_clear_error():
    client = OpenMeteoClient(base_url="http://127.0.0.1:9", timeout_s=2)
    with pytest.raises(OpenMeteoError, match="unreachable"):
        client.current(Station("seattle", 47.6, -122.33))
