"""Bad-record generator: every kind gets from schema.validate_raw exactly the reason it declares."""

from __future__ import annotations

import json

import pytest

from pipeline.producer.badrecords import (
    BAD_KINDS,
    FAR_LATE_MARGIN_MS,
    BadInputSpec,
    BadRecordGenerator,
)
from pipeline.schema import MAX_MESSAGE_BYTES, REASON_LATE, validate_raw

NOW = 1_795_745_520_000
LIMIT = 30 * 60_000
INDICES = range(60)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_every_kind_gets_the_reason_it_declares(kind: str) -> None:
    generator = BadRecordGenerator(seed=11, late_limit_ms=LIMIT)
    reasons = set()
    for index in INDICES:
        record = generator.make(kind, index, "bench-bad", NOW)
        assert record.kind == kind
        # The broker appends after the send: the reason holds for any receive time from then on.
        for received in (NOW, NOW + 60_000):
            _, rejection = validate_raw(record.payload, received_ms=received, late_limit_ms=LIMIT)
            assert str(rejection) == record.reason, (kind, index, record.payload[:200])
        reasons.add(record.reason)
    if kind in ("mistyped", "out_of_range"):
        assert len(reasons) >= 4, f"{kind} should vary the field it breaks: {reasons}"


def test_payloads_look_like_their_kind() -> None:
    generator = BadRecordGenerator(seed=3, late_limit_ms=LIMIT)
    for index in INDICES:
        oversize = generator.make("oversize", index, "b", NOW).payload
        assert MAX_MESSAGE_BYTES < len(oversize) <= MAX_MESSAGE_BYTES + 4_000
        # Oversize and far-late records are valid observations otherwise.
        assert validate_raw(json.dumps({**json.loads(oversize), "pad": ""}))[1] is None
        late = generator.make("late", index, "b", NOW)
        record, rejection = validate_raw(late.payload)
        assert rejection is None and record is not None
        assert NOW - record["event_time"] >= LIMIT + FAR_LATE_MARGIN_MS  # hours old


def test_truncated_records_are_encoded_observations_cut_short() -> None:
    generator = BadRecordGenerator(seed=3)
    head = b'{"station_id":"b","seq":'
    cuts = set()
    for index in INDICES:
        truncated = generator.make("truncated", index, "b", NOW).payload
        assert head.startswith(truncated) or truncated.startswith(head)
        cuts.add(len(truncated))
    assert len(cuts) > 10 and min(cuts) >= 1


def test_records_are_deterministic_per_seed() -> None:
    first = [BadRecordGenerator(5, LIMIT).make(k, i, "s", NOW) for k in BAD_KINDS for i in range(5)]
    again = [BadRecordGenerator(5, LIMIT).make(k, i, "s", NOW) for k in BAD_KINDS for i in range(5)]
    other = [BadRecordGenerator(6, LIMIT).make(k, i, "s", NOW) for k in BAD_KINDS for i in range(5)]
    assert first == again
    assert first != other


def test_unknown_kind_is_named() -> None:
    with pytest.raises(ValueError, match="unknown bad-record kind 'garbage'"):
        BadRecordGenerator().make("garbage", 0, "s", NOW)


def test_late_records_need_the_limit_they_must_exceed() -> None:
    record = BadRecordGenerator(late_limit_ms=0).make("late", 0, "s", NOW)
    assert record.reason == f"{REASON_LATE}:event_time"
    with pytest.raises(ValueError, match="far-late limit"):
        BadInputSpec(0.1, ("late",))
    assert BadInputSpec(0.1, ("malformed",)).kinds == ("malformed",)


@pytest.mark.parametrize(
    ("fraction", "kinds", "message"),
    [
        (0.0, BAD_KINDS, r"fraction must be in \(0, 0.5\]"),
        (0.6, BAD_KINDS, r"fraction must be in \(0, 0.5\]"),
        (0.1, ("malformed", "garbage"), "kinds must be some of"),
        (0.1, (), "kinds must be some of"),
    ],
)
def test_spec_rejects_impossible_mixes(fraction: float, kinds: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BadInputSpec(fraction, kinds, late_limit_ms=LIMIT)


def test_bad_share_of_the_stream_is_the_fraction_and_kinds_take_turns() -> None:
    spec = BadInputSpec(0.05, BAD_KINDS, late_limit_ms=LIMIT)
    bad = spec.due_after(1200)
    assert bad == 63 and bad / (1200 + bad) == pytest.approx(0.05, abs=0.001)
    assert [spec.due_after(n) for n in (0, 18, 19, 38)] == [0, 0, 1, 2]
    assert BadInputSpec(0.2, ("malformed",)).due_after(4) == 1
    half = BadInputSpec(0.5, ("malformed",))
    assert [half.due_after(n) for n in range(4)] == [0, 1, 2, 3]
    assert [spec.kind_of(i) for i in range(7)] == [*BAD_KINDS, BAD_KINDS[0]]
