"""Bad input for the raw topics: deterministic payloads of each kind, with the reason the pipeline must give.

Owns the catalogue of bad-record kinds a workload can mix into its load
(`BAD_KINDS`), the payload of each (`BadRecordGenerator.make`, seeded, so a run
can be repeated byte for byte), the declaration of a mix (`BadInputSpec`: the bad
share of the stream and the kinds) and the log of what was sent
(`BadInputLedger`: each bad record's Kafka position from its delivery report, its
kind and the dead-letter reason it must get).

Every payload is built from the rules in pipeline.schema (field tables, ranges,
size limit, reason codes), and the reason it declares is the one
schema.validate_raw gives it; the unit tests check that for every kind, so the
generator and the rules cannot drift apart.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from pipeline.schema import (
    ID_FIELDS,
    MAX_MESSAGE_BYTES,
    REASON_LATE,
    REASON_MALFORMED,
    REASON_MISTYPED,
    REASON_OUT_OF_RANGE,
    REASON_OVERSIZE,
    WEATHER_FIELDS,
    Rejection,
    encode,
)

MALFORMED = "malformed"
TRUNCATED = "truncated"
MISTYPED = "mistyped"
OUT_OF_RANGE = "out_of_range"
OVERSIZE = "oversize"
LATE = "late"
BAD_KINDS = (MALFORMED, TRUNCATED, MISTYPED, OUT_OF_RANGE, OVERSIZE, LATE)
# The largest bad share of a stream a workload may declare: beyond it the "load" is mostly garbage
# and the good records, whose loss is what the test checks, become the minority.
MAX_BAD_FRACTION = 0.5

HOUR_MS = 3_600_000
# A far-late record is this much older than the pipeline's far-late limit: hours, so that a limit
# configured a little differently from the one the generator was told still rejects it.
FAR_LATE_MARGIN_MS = 2 * HOUR_MS
# Seq numbers of bad records start here, far above any good station's, so that a bad record the
# pipeline wrongly accepted can never be mistaken for a good one.
BAD_SEQ_BASE = 1_000_000_000


@dataclass(frozen=True)
class BadRecord:
    kind: str  # one of BAD_KINDS
    payload: bytes
    reason: str  # str(schema.Rejection) the dead-letter record must carry


@dataclass(frozen=True)
class SentBadRecord:
    """A bad record Kafka acknowledged: where it is, and what the pipeline must say about it."""

    kind: str
    reason: str
    topic: str
    partition: int
    offset: int

    @property
    def position(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)


@dataclass
class BadInputLedger:
    """What happened to the bad records of a load, filled from delivery reports."""

    sent: list[SentBadRecord] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (kind, delivery error)
    attempted: int = 0


@dataclass(frozen=True)
class BadInputSpec:
    """Bad records mixed into a load: their share of the stream, their kinds, the far-late limit."""

    fraction: float  # bad records / all records sent, in (0, MAX_BAD_FRACTION]
    kinds: tuple[str, ...] = BAD_KINDS  # taken in turn, so each kind gets an equal share
    late_limit_ms: int = 0  # the pipeline's far-late limit (config spark.late_limit_ms)
    seed: int = 7

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= MAX_BAD_FRACTION:
            raise ValueError(f"bad-input fraction must be in (0, {MAX_BAD_FRACTION:g}], got {self.fraction}")
        unknown = [kind for kind in self.kinds if kind not in BAD_KINDS]
        if not self.kinds or unknown:
            raise ValueError(f"bad-input kinds must be some of {', '.join(BAD_KINDS)}, got {self.kinds}")
        if LATE in self.kinds and self.late_limit_ms <= 0:
            raise ValueError("far-late bad records need the pipeline's far-late limit (late_limit_ms > 0)")

    def due_after(self, good_sent: int) -> int:
        """Bad records that are due once `good_sent` good ones are sent (a share `fraction` of all)."""
        # The small epsilon keeps exact multiples (fraction 0.2 after 4 good) from rounding down.
        return math.floor(good_sent * self.fraction / (1 - self.fraction) + 1e-9)

    def kind_of(self, index: int) -> str:
        return self.kinds[index % len(self.kinds)]


def _valid_record(rng: random.Random, station_id: str, seq: int, now_ms: int) -> dict[str, Any]:
    """An observation that passes every rule, with plausible weather inside each field's range."""
    record: dict[str, Any] = {
        "station_id": station_id,
        "seq": seq,
        "event_time": now_ms,
        "ingestion_time": now_ms,
    }
    for name, (low, high) in WEATHER_FIELDS.items():
        middle, half = (low + high) / 2, (high - low) / 4
        record[name] = round(rng.uniform(middle - half, middle + half), 2)
    return record


# Wrong JSON types per field kind (ID_FIELDS kinds; "number" for the weather fields): each value
# fails its field's type rule and nothing else.
_WRONG_TYPES: dict[str, tuple[Any, ...]] = {
    "string": (42, True, ["st"], {"id": "st"}, ""),
    "integer": (3.0, 2.5, "7", True, -1),
    "epoch_ms": (1.7e12, "1700000000000", False, -5),
    "number": ("12.5", True, [1.0], {"value": 1.0}, "NaN"),
}


def _malformed(rng: random.Random, record: dict[str, Any], _late_limit_ms: int) -> tuple[bytes, Rejection]:
    """Text a JSON parser rejects, or JSON that is not one object."""
    text = encode(record).decode()
    forms = (
        f"not json: {text[:40]}",
        text.replace('"', "'"),  # single quotes
        text[:-1] + ",}",  # trailing comma
        f"[{text}]",  # an array, not an object
        text + " trailing",  # data after the object
        text.replace(":", "=", 1),
    )
    return forms[rng.randrange(len(forms))].encode(), Rejection(REASON_MALFORMED)


def _truncated(rng: random.Random, record: dict[str, Any], _late_limit_ms: int) -> tuple[bytes, Rejection]:
    """A valid message cut short: no proper prefix of one JSON object parses."""
    text = encode(record)
    return text[: rng.randrange(1, len(text))], Rejection(REASON_MALFORMED)


def _mistyped(rng: random.Random, record: dict[str, Any], _late_limit_ms: int) -> tuple[bytes, Rejection]:
    """One field, ID or weather, with a JSON type its rule refuses."""
    name = rng.choice([*ID_FIELDS, *WEATHER_FIELDS])
    wrong = _WRONG_TYPES[ID_FIELDS.get(name, "number")]
    return encode({**record, name: wrong[rng.randrange(len(wrong))]}), Rejection(REASON_MISTYPED, name)


def _out_of_range(rng: random.Random, record: dict[str, Any], _late_limit_ms: int) -> tuple[bytes, Rejection]:
    """One weather field 1 to 100 units outside its physical range, above or below."""
    name = rng.choice(list(WEATHER_FIELDS))
    low, high = WEATHER_FIELDS[name]
    beyond = round(rng.uniform(1.0, 100.0), 2)
    value = high + beyond if rng.random() < 0.5 else low - beyond
    return encode({**record, name: value}), Rejection(REASON_OUT_OF_RANGE, name)


def _oversize(rng: random.Random, record: dict[str, Any], _late_limit_ms: int) -> tuple[bytes, Rejection]:
    """A valid observation padded to 1..4,000 bytes over the message size limit."""
    envelope = len(encode({**record, "pad": ""}))
    pad = "x" * (MAX_MESSAGE_BYTES - envelope + rng.randint(1, 4_000))
    return encode({**record, "pad": pad}), Rejection(REASON_OVERSIZE)


def _late(rng: random.Random, record: dict[str, Any], late_limit_ms: int) -> tuple[bytes, Rejection]:
    """Valid in every field, but its event time is hours older than the far-late limit allows."""
    age = late_limit_ms + FAR_LATE_MARGIN_MS + rng.randrange(HOUR_MS)
    return encode({**record, "event_time": record["ingestion_time"] - age}), Rejection(
        REASON_LATE, "event_time"
    )


_BUILDERS = {
    MALFORMED: _malformed,
    TRUNCATED: _truncated,
    MISTYPED: _mistyped,
    OUT_OF_RANGE: _out_of_range,
    OVERSIZE: _oversize,
    LATE: _late,
}


class BadRecordGenerator:
    """Payloads of each kind, the same for the same (seed, kind, index, station, time)."""

    def __init__(self, seed: int = 7, late_limit_ms: int = 0) -> None:
        self.seed = seed
        self.late_limit_ms = late_limit_ms

    def make(self, kind: str, index: int, station_id: str, now_ms: int) -> BadRecord:
        """The `index`-th bad record of a load, of `kind`, from `station_id`, sent at about `now_ms`."""
        build = _BUILDERS.get(kind)
        if build is None:
            raise ValueError(f"unknown bad-record kind {kind!r}; expected one of {', '.join(BAD_KINDS)}")
        rng = random.Random(f"{self.seed}|{kind}|{index}|{station_id}")  # str seeds are stable across runs
        payload, rejection = build(
            rng, _valid_record(rng, station_id, BAD_SEQ_BASE + index, now_ms), self.late_limit_ms
        )
        return BadRecord(kind, payload, str(rejection))
