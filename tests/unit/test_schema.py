"""Raw observation rules: every rejection carries the reason a dead-letter record will show."""

import json

import pytest

from pipeline.schema import MAX_MESSAGE_BYTES, encode, validate_raw

GOOD = {
    "station_id": "st-0001",
    "seq": 0,
    "event_time": 1_795_740_300_000,
    "ingestion_time": 1_795_740_300_010,
    "temperature_c": 11.5,
    "humidity_pct": 70,
    "pressure_hpa": 1012.5,
    "wind_speed_ms": 3.0,
    "precipitation_mm": 0.0,
}


def with_(**changes):
    record = dict(GOOD)
    for key, value in changes.items():
        if value is ...:
            record.pop(key)
        else:
            record[key] = value
    return json.dumps(record)


def test_good_record_passes():
    record, why = validate_raw(encode(GOOD))
    assert why is None
    assert record["station_id"] == "st-0001"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("{not json", "malformed_json"),
        ("[1, 2, 3]", "malformed_json"),
        ('"just a string"', "malformed_json"),
        (with_(temperature_c=...), "missing_field:temperature_c"),
        (with_(station_id=None), "missing_field:station_id"),
        (with_(seq="7"), "mistyped_field:seq"),
        (with_(seq=-1), "mistyped_field:seq"),
        (with_(seq=True), "mistyped_field:seq"),
        (with_(event_time=1.5), "mistyped_field:event_time"),
        (with_(station_id=""), "mistyped_field:station_id"),
        (with_(humidity_pct="wet"), "mistyped_field:humidity_pct"),
        (with_(temperature_c="12.5"), "mistyped_field:temperature_c"),
        (with_(temperature_c=75.0), "out_of_range:temperature_c"),
        (with_(humidity_pct=100.5), "out_of_range:humidity_pct"),
        (with_(pressure_hpa=10.0), "out_of_range:pressure_hpa"),
        (with_(wind_speed_ms=-1), "out_of_range:wind_speed_ms"),
        (with_(note="x" * MAX_MESSAGE_BYTES), "oversize"),
    ],
)
def test_bad_records_name_their_reason(payload, reason):
    record, why = validate_raw(payload)
    assert record is None
    assert str(why) == reason


def test_range_bounds_are_inclusive():
    _, why = validate_raw(with_(humidity_pct=100, temperature_c=-90))
    assert why is None


def test_far_late_is_checked_only_given_the_receive_time_and_the_limit():
    event = GOOD["event_time"]
    payload = encode(GOOD)
    assert validate_raw(payload, received_ms=event + 10 * 3_600_000)[1] is None  # no limit: no rule
    assert validate_raw(payload, received_ms=event + 60_000, late_limit_ms=60_000)[1] is None  # at the limit
    record, why = validate_raw(payload, received_ms=event + 60_001, late_limit_ms=60_000)
    assert record is None and str(why) == "late:event_time"
    # Every other rule comes first: a bad field is reported as such, however old the record.
    _, why = validate_raw(with_(temperature_c=99.0), received_ms=event + 10**9, late_limit_ms=60_000)
    assert str(why) == "out_of_range:temperature_c"
    # An event time ahead of the receive time is not late.
    assert validate_raw(payload, received_ms=event - 60_000, late_limit_ms=0)[1] is None
