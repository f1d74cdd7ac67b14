"""Message schema of the pipeline's topics and the rules a raw observation must pass.

The Spark job enforces these rules in SQL (pipeline.streaming.validation) and
the producer and tests use the Python form here; both read the same tables,
so a field or range is defined once. Timestamps are epoch milliseconds (UTC).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

# Weather fields of a raw observation with their physically plausible range.
# Values outside are rejected as out_of_range (sensor faults, unit mix-ups).
WEATHER_FIELDS: dict[str, tuple[float, float]] = {
    "temperature_c": (-90.0, 60.0),
    "humidity_pct": (0.0, 100.0),
    "pressure_hpa": (850.0, 1090.0),
    "wind_speed_ms": (0.0, 120.0),
    "precipitation_mm": (0.0, 500.0),
}

# Required non-weather fields: name -> kind ("string", "integer", "epoch_ms").
ID_FIELDS: dict[str, str] = {
    "station_id": "string",
    "seq": "integer",
    "event_time": "epoch_ms",
    "ingestion_time": "epoch_ms",
}

# Optional trace stamp set by the open-loop load generator.
OPTIONAL_STAMPS = ("intended_time",)

MAX_MESSAGE_BYTES = 10_000  # the guide's section 2.1 ceiling for one JSON message
MAX_STATION_ID_LENGTH = 64

# Dead-letter reasons, in the order they are checked (first failure wins).
REASON_MALFORMED = "malformed_json"
REASON_OVERSIZE = "oversize"
REASON_MISSING = "missing_field"
REASON_MISTYPED = "mistyped_field"
REASON_OUT_OF_RANGE = "out_of_range"
# Checked only when the receive time is known (the Spark job: the Kafka append time): a valid
# observation whose event time is older than that minus the far-late limit (config
# spark.late_limit) could never land in an open window.
REASON_LATE = "late"


@dataclass(frozen=True)
class Rejection:
    reason: str  # one of the REASON_* codes
    field: str | None = None

    def __str__(self) -> str:
        return f"{self.reason}:{self.field}" if self.field else self.reason


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_far_late(event_time_ms: int, received_ms: int, late_limit_ms: int) -> bool:
    """Older than its receive time minus the far-late limit (a record exactly at the limit is on time)."""
    return event_time_ms < received_ms - late_limit_ms


def validate_raw(
    payload: bytes | str, *, received_ms: int | None = None, late_limit_ms: int | None = None
) -> tuple[dict[str, Any] | None, Rejection | None]:
    """Parse and check one raw observation; return (record, None) or (None, why).

    With `received_ms` (when the pipeline received it: the Kafka append time) and
    `late_limit_ms` both given, a record that passes every other rule is also rejected
    as far-late when its event time is older than `received_ms - late_limit_ms`.
    """
    size = len(payload.encode() if isinstance(payload, str) else payload)
    if size > MAX_MESSAGE_BYTES:
        return None, Rejection(REASON_OVERSIZE)
    try:
        record = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None, Rejection(REASON_MALFORMED)
    if not isinstance(record, dict):
        return None, Rejection(REASON_MALFORMED)
    for name in (*ID_FIELDS, *WEATHER_FIELDS):
        if record.get(name) is None:
            return None, Rejection(REASON_MISSING, name)
    for name, kind in ID_FIELDS.items():
        value = record[name]
        ok = (
            isinstance(value, str) and 0 < len(value) <= MAX_STATION_ID_LENGTH
            if kind == "string"
            else isinstance(value, int) and not isinstance(value, bool) and value >= 0
        )
        if not ok:
            return None, Rejection(REASON_MISTYPED, name)
    for name in WEATHER_FIELDS:
        if not _is_number(record[name]):
            return None, Rejection(REASON_MISTYPED, name)
    for name, (low, high) in WEATHER_FIELDS.items():
        if not low <= float(record[name]) <= high:
            return None, Rejection(REASON_OUT_OF_RANGE, name)
    if received_ms is None or late_limit_ms is None:
        return record, None
    if is_far_late(record["event_time"], received_ms, late_limit_ms):
        return None, Rejection(REASON_LATE, "event_time")
    return record, None


def raw_key(station_id: str) -> bytes:
    """Partition key of raw observations: one station stays in one partition, in order."""
    return station_id.encode()


def window_key(station_id: str, window_start_ms: int) -> bytes:
    """Idempotent key of features and predictions: one per (station, window)."""
    return f"{station_id}|{window_start_ms}".encode()


def encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), allow_nan=False).encode()


# Fields of a weather-features row (written by the Spark job).
FEATURE_FIELDS = (
    "station_id",
    "window_start",  # epoch ms, inclusive
    "window_end",  # epoch ms, exclusive
    "count",
    "seq_min",
    "seq_max",
    "temperature_mean",
    "temperature_min",
    "temperature_max",
    "humidity_mean",
    "pressure_mean",
    "wind_speed_mean",
    "precipitation_sum",
    "ingestion_time_max",  # latest producer stamp in the window
    "intended_time_max",  # latest open-loop schedule stamp (null for live data)
    "kafka_time_max",  # latest broker append time of a raw record
    "t2_max_ms",  # worst Kafka -> Spark batch start delay within the window
    "spark_time",  # start of the micro-batch that emitted the row
)

# Fields a prediction adds to the feature row it was made from.
PREDICTION_FIELDS = (
    "model_version",
    "horizon_minutes",
    "predicted_temperature_c",
    "features_kafka_time",  # broker append time of the feature record
    "ray_start",
    "ray_end",
    "inference_ms",  # the model call's duration, fractional ms
    "actor_id",
)
