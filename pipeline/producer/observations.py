"""Where weather observations come from: synthetic, replayed real history, or Open-Meteo.

A source turns (station, event time) into the five weather fields of
pipeline.schema.WEATHER_FIELDS. Synthetic data follows a diurnal cycle with
per-station offsets and noise, so the model's forecasts are meaningful;
replay walks real hourly observations (vega_datasets' Seattle and San
Francisco temperatures) interpolated to the requested time.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipeline.model import DAY_MS, HOUR_MS


class ObservationSource(Protocol):
    name: str

    def observe(self, station_id: str, event_time_ms: int) -> dict[str, float]: ...


def _station_number(station_id: str) -> int:
    digits = "".join(ch for ch in station_id if ch.isdigit())
    return int(digits) if digits else sum(map(ord, station_id))


@dataclass
class SyntheticSource:
    """Plausible weather: daily temperature cycle, station climate offsets, bounded noise."""

    seed: int = 7
    name: str = "synthetic"

    def observe(self, station_id: str, event_time_ms: int) -> dict[str, float]:
        n = _station_number(station_id)
        rng = random.Random(f"{self.seed}|{station_id}|{event_time_ms}")  # str seeds are stable across runs
        hour = (event_time_ms % DAY_MS) / HOUR_MS
        base = 12.0 + (n % 17) - 8.0  # climate of the station
        diurnal = 6.0 * math.sin(2 * math.pi * (hour - 9.0) / 24.0)  # warmest mid-afternoon
        temperature = base + diurnal + rng.gauss(0, 0.4)
        humidity = min(100.0, max(5.0, 70.0 - 2.0 * diurnal + rng.gauss(0, 3)))
        return {
            "temperature_c": round(temperature, 2),
            "humidity_pct": round(humidity, 1),
            "pressure_hpa": round(1013.0 + (n % 11) - 5 + rng.gauss(0, 0.8), 1),
            "wind_speed_ms": round(abs(3.0 + rng.gauss(0, 1.5)), 2),
            "precipitation_mm": round(max(0.0, rng.gauss(-0.5, 0.4)), 2),
        }


def vega_data_file(name: str) -> Path:
    """Path of a data file shipped inside the vega_datasets package (no download)."""
    import vega_datasets

    path = Path(vega_datasets.__file__).parent / "_data" / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not shipped in the installed vega_datasets ({path})")
    return path


def load_hourly_temperatures(name: str) -> list[float]:
    """Hourly temperatures in Celsius from a vega_datasets CSV (the files are in Fahrenheit)."""
    with vega_data_file(name).open() as fh:
        return [round((float(row["temp"]) - 32.0) * 5.0 / 9.0, 2) for row in csv.DictReader(fh)]


class ReplaySource:
    """Replays real hourly temperatures, one city per station, looping over the year.

    Stations alternate between the Seattle and San Francisco series and are
    offset by a few days each, so many stations do not report identical values.
    Other fields are synthetic (the recorded series have temperature only).
    """

    name = "replay"

    def __init__(self, seed: int = 7) -> None:
        self.series = [
            load_hourly_temperatures("seattle-temps.csv"),
            load_hourly_temperatures("sf-temps.csv"),
        ]
        self.synthetic = SyntheticSource(seed=seed)

    def observe(self, station_id: str, event_time_ms: int) -> dict[str, float]:
        n = _station_number(station_id)
        series = self.series[n % len(self.series)]
        position = (event_time_ms / HOUR_MS + 24 * 3 * n) % len(series)
        low = int(position)
        frac = position - low
        temperature = series[low] * (1 - frac) + series[(low + 1) % len(series)] * frac
        values = self.synthetic.observe(station_id, event_time_ms)
        values["temperature_c"] = round(temperature, 2)
        return values


def make_source(kind: str, seed: int = 7) -> ObservationSource:
    if kind == "synthetic":
        return SyntheticSource(seed=seed)
    if kind == "replay":
        return ReplaySource(seed=seed)
    raise ValueError(f"unknown observation source {kind!r}; expected 'synthetic' or 'replay'")
