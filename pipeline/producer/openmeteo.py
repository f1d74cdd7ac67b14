"""Open-Meteo client: current conditions for named stations, as pipeline observations.

Calls the public forecast endpoint (`/v1/forecast?current=...`) when it is
reachable. The base URL is configurable so tests and offline machines point it
at a local server that replays recorded responses (tests/fixtures/openmeteo).
Responses are validated; a station whose response is unusable raises
OpenMeteoError naming the station and the problem.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime

DEFAULT_BASE_URL = "https://api.open-meteo.com"

# Open-Meteo variable -> pipeline field.
CURRENT_VARIABLES = {
    "temperature_2m": "temperature_c",
    "relative_humidity_2m": "humidity_pct",
    "surface_pressure": "pressure_hpa",
    "wind_speed_10m": "wind_speed_ms",
    "precipitation": "precipitation_mm",
}


class OpenMeteoError(RuntimeError):
    """The API could not be reached or returned something unusable."""


@dataclass(frozen=True)
class Station:
    station_id: str
    latitude: float
    longitude: float


@dataclass(frozen=True)
class CurrentObservation:
    station_id: str
    event_time_ms: int  # the observation's valid time, from the response
    values: dict[str, float]


class OpenMeteoClient:
    def __init__(self, base_url: str = DEFAULT_BASE_URL, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def current_url(self, station: Station) -> str:
        query = urllib.parse.urlencode(
            {
                "latitude": f"{station.latitude:.4f}",
                "longitude": f"{station.longitude:.4f}",
                "current": ",".join(CURRENT_VARIABLES),
                "wind_speed_unit": "ms",
                "timezone": "GMT",
                "timeformat": "unixtime",
            }
        )
        return f"{self.base_url}/v1/forecast?{query}"

    def current(self, station: Station) -> CurrentObservation:
        url = self.current_url(station)
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            raise OpenMeteoError(f"{station.station_id}: HTTP {exc.code} from Open-Meteo: {detail}") from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise OpenMeteoError(
                f"{station.station_id}: Open-Meteo unreachable at {self.base_url}: {exc}"
            ) from None
        except ValueError:
            raise OpenMeteoError(f"{station.station_id}: Open-Meteo returned invalid JSON") from None
        return parse_current(station.station_id, body)


def parse_current(station_id: str, body: dict) -> CurrentObservation:
    current = body.get("current") if isinstance(body, dict) else None
    if not isinstance(current, dict):
        reason = body.get("reason") if isinstance(body, dict) else None
        raise OpenMeteoError(
            f"{station_id}: response has no 'current' block" + (f" ({reason})" if reason else "")
        )
    values: dict[str, float] = {}
    for variable, field_name in CURRENT_VARIABLES.items():
        value = current.get(variable)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise OpenMeteoError(f"{station_id}: current.{variable} is missing or not a number ({value!r})")
        values[field_name] = float(value)
    stamp = current.get("time")
    if isinstance(stamp, (int, float)):
        event_ms = int(stamp * 1000)
    elif isinstance(stamp, str):
        event_ms = int(datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp() * 1000)
    else:
        raise OpenMeteoError(f"{station_id}: current.time is missing")
    return CurrentObservation(station_id=station_id, event_time_ms=event_ms, values=values)
