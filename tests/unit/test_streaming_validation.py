"""Parity of the Spark SQL validation (pipeline.streaming.validation) with schema.validate_raw.

Every crafted payload goes through both; the dead-letter reason (or acceptance)
must be identical, and accepted rows must carry the same typed values. The
documented divergences are asserted separately so a change in them is noticed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pyspark.sql import DataFrame, SparkSession

from pipeline import schema
from pipeline.producer.badrecords import BAD_KINDS, BadRecordGenerator
from pipeline.streaming.validation import DEADLETTER_COLUMNS, GOOD_COLUMNS, MAX_RAW_CHARS, split_valid

BASE: dict[str, Any] = {
    "station_id": "st-001",
    "seq": 7,
    "event_time": 1_700_000_000_000,
    "ingestion_time": 1_700_000_000_050,
    "temperature_c": 12.5,
    "humidity_pct": 80,
    "pressure_hpa": 1013.2,
    "wind_speed_ms": 3.4,
    "precipitation_mm": 0.0,
}
FIELDS = (*schema.ID_FIELDS, *schema.WEATHER_FIELDS)


def js(record: Any, **dump: Any) -> bytes:
    return json.dumps(record, **dump).encode()


def variant(**changes: Any) -> dict[str, Any]:
    record = dict(BASE)
    record.update(changes)
    return record


def without(*names: str) -> dict[str, Any]:
    return {k: v for k, v in BASE.items() if k not in names}


def raw_base(**raw_values: str) -> bytes:
    """BASE with some values written as raw JSON text (for tokens json.dumps cannot produce)."""
    parts = []
    for key, value in BASE.items():
        parts.append(f'"{key}": {raw_values.get(key, json.dumps(value))}')
    return ("{" + ", ".join(parts) + "}").encode()


def payloads() -> list[bytes]:
    cases: list[bytes] = [
        # --- accepted
        js(BASE),
        js(BASE, indent=2),
        js(BASE, separators=(",", ":")),
        js(variant(intended_time=1_700_000_000_000)),
        js(variant(intended_time="not-a-number")),
        js(variant(extra={"nested": [1, {"deep": [True, None]}]}, tags=["a", "b"])),
        js(dict(reversed(list(BASE.items())))),
        js(
            variant(
                temperature_c=-90.0, humidity_pct=100, pressure_hpa=850, wind_speed_ms=0, precipitation_mm=500
            )
        ),
        js(variant(temperature_c=60, humidity_pct=0.0, pressure_hpa=1090.0, wind_speed_ms=120.0)),
        js(variant(seq=0, event_time=0, ingestion_time=0)),
        js(variant(station_id="x" * schema.MAX_STATION_ID_LENGTH)),
        js(variant(station_id="é" * schema.MAX_STATION_ID_LENGTH), ensure_ascii=False),
        js(
            variant(station_id="😀" * schema.MAX_STATION_ID_LENGTH)
        ),  # \ud83d\ude00 escapes: one code point each
        js(variant(station_id=" ")),
        js(variant(station_id='quote " and \\ backslash {[')),
        js(variant(station_id="}{][")),
        raw_base(seq="-0"),
        raw_base(temperature_c="1.25e1", humidity_pct="5E+1"),
        raw_base(pressure_hpa="1013.00000000000000000000001"),
        raw_base(temperature_c="60.0000000000000000001"),  # rounds to 60.0 in both
        raw_base(event_time=str(2**63 - 1)),
        b"\xef\xbb\xbf" + js(BASE),  # UTF-8 byte-order mark: json.loads(bytes) skips it
        b" \t\r\n" + js(BASE) + b" \n\t\r",
        js(variant(extra_nan=0)).replace(b'"extra_nan": 0', b'"extra_nan": NaN'),  # NaN outside our fields
        (js(BASE)[:-1] + b', "seq": 8}'),  # duplicate key: the last value wins
        (js(BASE)[:-1] + b', "temperature_c": 60}'),
        # --- oversize (and exactly at the limit)
        js(variant(pad="x" * schema.MAX_MESSAGE_BYTES)),
        b"{" + b" " * (schema.MAX_MESSAGE_BYTES + 1),
        # --- malformed
        b"",
        b" ",
        b"not json",
        b"null",
        b"42",
        b'"a string"',
        b"[1, 2]",
        js([BASE]),
        js(BASE)[:-1],
        js(BASE)[: len(js(BASE)) // 2],
        js(BASE) + b"x",
        js(BASE) + b" xyz",
        js(BASE) + b"}",
        js(BASE) + b"]",
        js(BASE) + b',"S"]',
        js(BASE) + js(BASE),
        js(BASE) + b", {}",
        js(BASE) + b' "tail"',
        js(BASE) + b' "unterminated',
        js(BASE) + b"\x00",
        js(variant(extra={"a": [1]})) + b"{}",
        b"{'station_id': 'a'}",
        js(BASE)[:-1] + b",}",
        raw_base(seq="01"),
        raw_base(temperature_c="1."),
        raw_base(temperature_c=".5"),
        raw_base(temperature_c="+1"),
        raw_base(temperature_c="-NaN"),
        raw_base(temperature_c="NaNx"),
        raw_base(temperature_c="True"),
        raw_base(station_id='"tab\there"'),
        raw_base(station_id='"bad \\x escape"'),
        b'{"station_id": "\xff\xfe"}',
        js(BASE).replace(b"st-001", b"st-\xc3\x28"),
        b"\x0b" + js(BASE),
        js(BASE).replace(b'"seq"', b"seq"),
        # --- missing (absent key or JSON null), in field order
        *[js(without(name)) for name in FIELDS],
        *[js(variant(**{name: None})) for name in FIELDS],
        js(without("precipitation_mm", "station_id")),
        js({}),
        js(BASE)[:-1] + b', "seq": null}',
        # --- mistyped
        js(variant(station_id=17)),
        js(variant(station_id="")),
        js(variant(station_id="x" * (schema.MAX_STATION_ID_LENGTH + 1))),
        js(variant(station_id=True)),
        js(variant(station_id=["a"])),
        js(variant(station_id={"id": "a"})),
        js(variant(seq=-1)),
        js(variant(seq=1.0)),
        js(variant(seq=1.5)),
        js(variant(seq="1")),
        js(variant(seq=True)),
        js(variant(seq=[1])),
        raw_base(seq="1e2"),
        raw_base(seq="1.0e0"),
        raw_base(seq="-0.0"),
        raw_base(seq="NaN"),
        raw_base(seq="Infinity"),
        js(variant(event_time=-5)),
        js(variant(event_time=1.7e12)),
        js(variant(ingestion_time="1700000000000")),
        js(variant(ingestion_time=False)),
        js(variant(temperature_c="12.5")),
        js(variant(temperature_c=True)),
        js(variant(humidity_pct=[50])),
        js(variant(pressure_hpa={"v": 1000})),
        js(variant(wind_speed_ms="NaN")),
        js(variant(precipitation_mm="")),
        js(variant(station_id="", seq=-1)),  # the first mistyped field wins
        js(variant(seq="x", temperature_c=1000)),  # mistyped beats out_of_range
        js({**without("precipitation_mm"), "seq": "x"}),  # missing beats mistyped
        # --- out of range
        *[js(variant(**{name: low - 0.001})) for name, (low, _high) in schema.WEATHER_FIELDS.items()],
        *[js(variant(**{name: high + 0.001})) for name, (_low, high) in schema.WEATHER_FIELDS.items()],
        js(variant(temperature_c=99, precipitation_mm=-1)),  # the first field wins
        raw_base(temperature_c="NaN"),
        raw_base(humidity_pct="Infinity"),
        raw_base(pressure_hpa="-Infinity"),
        raw_base(wind_speed_ms="  NaN  "),
        raw_base(temperature_c="1e400"),
        raw_base(temperature_c="-1e400"),
        raw_base(precipitation_mm="123456789012345678901234567890"),
        raw_base(precipitation_mm="-0.0000001"),
    ]
    return cases


KAFKA_TIME = datetime(2024, 1, 1, tzinfo=UTC)
KAFKA_TIME_MS = 1_704_067_200_000


def kafka_rows(values: list[bytes | None]) -> list[tuple[Any, ...]]:
    return [(None, value, "weather-raw", i % 3, i, KAFKA_TIME, 1) for i, value in enumerate(values)]


KAFKA_SCHEMA = (
    "key binary, value binary, topic string, partition int, offset long, "
    "timestamp timestamp, timestampType int"
)


# Payloads outside the parity set, appended after it in the same DataFrame.
HUGE = js(variant(pad="y" * (3 * schema.MAX_MESSAGE_BYTES)))
DIVERGENT = [
    js(variant(seq=2**64)),  # valid in Python (unbounded int), not a Spark long
    js(BASE).decode().encode("utf-16"),  # json.loads detects UTF-16; Kafka JSON is UTF-8
    raw_base(station_id='"\\ud800"'),  # lone surrogate escape
]
EXTRA: list[bytes | None] = [HUGE, *DIVERGENT, None]


@dataclass
class Split:
    values: list[bytes | None]
    good: dict[int, dict[str, Any]]
    bad: dict[int, dict[str, Any]]
    started_ms: int
    finished_ms: int

    @property
    def parity_offsets(self) -> range:
        return range(len(self.values) - len(EXTRA))

    def offset_of(self, payload: bytes | None) -> int:
        return len(self.values) - len(EXTRA) + EXTRA.index(payload)


@pytest.fixture(scope="module")
def split(spark: SparkSession) -> Split:
    """One DataFrame, two actions: keeps the module within seconds of the session start."""
    values: list[bytes | None] = [*payloads(), *EXTRA]
    source: DataFrame = spark.createDataFrame(kafka_rows(values), KAFKA_SCHEMA)
    good_df, bad_df = split_valid(source)
    assert tuple(good_df.columns) == GOOD_COLUMNS
    assert tuple(bad_df.columns) == DEADLETTER_COLUMNS
    started_ms = schema.now_ms()
    good = {row["offset"]: row.asDict() for row in good_df.collect()}
    bad = {row["offset"]: row.asDict() for row in bad_df.collect()}
    return Split(values, good, bad, started_ms, schema.now_ms())


def test_every_row_is_good_or_bad_once(split: Split) -> None:
    assert not set(split.good) & set(split.bad)
    assert set(split.good) | set(split.bad) == set(range(len(split.values)))


def test_reasons_match_validate_raw(split: Split) -> None:
    mismatches = []
    for offset in split.parity_offsets:
        value = split.values[offset]
        assert value is not None
        _record, rejection = schema.validate_raw(value)
        expected = None if rejection is None else str(rejection)
        actual = split.bad[offset]["reason"] if offset in split.bad else None
        if expected != actual:
            mismatches.append((value[:120], expected, actual))
    assert not mismatches, "\n".join(f"{v!r}: python={e} spark={a}" for v, e, a in mismatches)
    # The crafted set must exercise every reason code, or it proves little.
    codes = {split.bad[o]["reason"].split(":")[0] for o in split.parity_offsets if o in split.bad}
    assert codes == {
        schema.REASON_OVERSIZE,
        schema.REASON_MALFORMED,
        schema.REASON_MISSING,
        schema.REASON_MISTYPED,
        schema.REASON_OUT_OF_RANGE,
    }
    assert sum(1 for o in split.parity_offsets if o in split.good) >= 20


def test_good_rows_carry_python_values(split: Split) -> None:
    for offset, row in split.good.items():
        value = split.values[offset]
        assert value is not None
        record, rejection = schema.validate_raw(value)
        assert rejection is None and record is not None
        for name in schema.ID_FIELDS:
            assert row[name] == record[name], name
        for name in schema.WEATHER_FIELDS:
            assert row[name] == float(record[name]), name
        intended = record.get("intended_time")
        assert row["intended_time"] == (intended if isinstance(intended, int) else None)
        assert row["kafka_time"] == KAFKA_TIME_MS
        assert row["topic"] == "weather-raw" and row["partition"] == offset % 3


def test_deadletter_rows(split: Split) -> None:
    not_json = split.bad[split.values.index(b"not json")]
    assert not_json["reason"] == "malformed_json"
    assert not_json["raw"] == "not json" and not_json["raw_bytes"] == 8
    huge = split.bad[split.offset_of(HUGE)]
    assert huge["reason"] == "oversize"
    assert len(huge["raw"]) == MAX_RAW_CHARS and huge["raw_bytes"] == len(HUGE)
    invalid_utf8 = split.bad[split.values.index(b'{"station_id": "\xff\xfe"}')]
    assert invalid_utf8["raw"] == '{"station_id": "\ufffd\ufffd"}'  # made printable
    missing = split.bad[split.values.index(js(without("seq")))]
    assert missing["reason"] == "missing_field:seq" and json.loads(missing["raw"]) == without("seq")
    # detected_time is the executor's wall clock while validating.
    assert all(split.started_ms <= r["detected_time"] <= split.finished_ms for r in split.bad.values())
    for offset, row in split.bad.items():
        assert row["source_topic"] == "weather-raw" and row["offset"] == offset
        assert row["partition"] == offset % 3 and row["kafka_time"] == KAFKA_TIME_MS


def test_null_kafka_value_is_malformed(split: Split) -> None:
    row = split.bad[split.offset_of(None)]
    assert (row["reason"], row["raw"], row["raw_bytes"]) == ("malformed_json", None, 0)


def test_documented_divergences(split: Split) -> None:
    """Inputs no UTF-8 JSON producer emits, where Spark is stricter than json.loads (module docstring)."""
    assert [schema.validate_raw(v)[1] for v in DIVERGENT] == [None, None, None]
    reasons = [split.bad[split.offset_of(v)]["reason"] for v in DIVERGENT]
    assert reasons == ["mistyped_field:seq", "malformed_json", "malformed_json"]


# --- the far-late rule: Kafka append time per row, a late limit given to both forms.
LATE_LIMIT_MS = 60_000
HOUR_MS = 3_600_000


def at_ms(epoch_ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=epoch_ms)


def late_cases() -> list[tuple[bytes, int]]:
    """(payload, Kafka append time) around the far-late boundary, and bad input of every generated kind."""
    event = BASE["event_time"]
    cases = [
        (js(BASE), event),
        (js(BASE), event + LATE_LIMIT_MS),  # exactly at the limit: on time
        (js(BASE), event + LATE_LIMIT_MS + 1),
        (js(BASE), event + 10 * HOUR_MS),
        (js(BASE), event - HOUR_MS),  # from the future: not late
        (js(variant(event_time=0)), event),
        (js(variant(seq="x")), event + 10 * HOUR_MS),  # every other rule wins over lateness
        (js(variant(temperature_c=99.0)), event + 10 * HOUR_MS),
        (js(without("event_time")), event + 10 * HOUR_MS),
        (js(variant(pad="x" * schema.MAX_MESSAGE_BYTES)), event + 10 * HOUR_MS),
    ]
    generator = BadRecordGenerator(seed=1, late_limit_ms=LATE_LIMIT_MS)
    for kind in BAD_KINDS:
        for index in range(8):
            cases.append((generator.make(kind, index, "st-bad", event).payload, event + 1_000))
    return cases


@pytest.fixture(scope="module")
def late_split(spark: SparkSession) -> dict[int, str | None]:
    """Offset -> Spark's reason (None when accepted) for late_cases(), with the late limit."""
    rows = [
        (None, value, "weather-raw", 0, i, at_ms(kafka_ms), 1)
        for i, (value, kafka_ms) in enumerate(late_cases())
    ]
    good_df, bad_df = split_valid(spark.createDataFrame(rows, KAFKA_SCHEMA), late_limit_ms=LATE_LIMIT_MS)
    reasons: dict[int, str | None] = {row["offset"]: None for row in good_df.select("offset").collect()}
    reasons |= {row["offset"]: row["reason"] for row in bad_df.select("offset", "reason").collect()}
    return reasons


def test_late_rule_matches_validate_raw(late_split: dict[int, str | None]) -> None:
    cases = late_cases()
    assert set(late_split) == set(range(len(cases)))
    mismatches = []
    for offset, (value, kafka_ms) in enumerate(cases):
        _record, rejection = schema.validate_raw(value, received_ms=kafka_ms, late_limit_ms=LATE_LIMIT_MS)
        expected = None if rejection is None else str(rejection)
        if expected != late_split[offset]:
            mismatches.append((value[:100], kafka_ms, expected, late_split[offset]))
    assert not mismatches, "\n".join(f"{v!r} at {k}: python={e} spark={a}" for v, k, e, a in mismatches)
    assert [late_split[i] for i in range(4)] == [None, None, "late:event_time", "late:event_time"]


def test_generated_bad_input_gets_its_declared_reason_from_spark(late_split: dict[int, str | None]) -> None:
    generator = BadRecordGenerator(seed=1, late_limit_ms=LATE_LIMIT_MS)
    first = len(late_cases()) - 8 * len(BAD_KINDS)
    offset = first
    for kind in BAD_KINDS:
        for index in range(8):
            declared = generator.make(kind, index, "st-bad", BASE["event_time"]).reason
            assert late_split[offset] == declared, (kind, index)
            offset += 1
