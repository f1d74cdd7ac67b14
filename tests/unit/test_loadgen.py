"""Open-loop schedule: intended times, station rotation, lateness reporting."""

import itertools
import json
import time

import pytest

from pipeline.producer.badrecords import BAD_KINDS, BadInputSpec
from pipeline.producer.loadgen import LoadSpec, bad_station_id, run_open_loop
from pipeline.producer.observations import ReplaySource, SyntheticSource
from pipeline.producer.producer import DeliveryLedger
from pipeline.schema import validate_raw


class FakeMessage:
    def __init__(self, partition, offset):
        self._partition, self._offset = partition, offset

    def topic(self):
        return "raw"

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset


class RecordingProducer:
    """Stands in for WeatherProducer: records what would be sent, acks everything."""

    def __init__(self, send_delay_s: float = 0.0, refuse_raw: int | None = None):
        self.ledger = DeliveryLedger()
        self.sent = []
        self.raw = []  # (payload, key) sent with send_raw
        self.send_delay_s = send_delay_s
        self.refuse_raw = refuse_raw  # index of a raw send the broker refuses

    def send_raw(self, payload, key, trace=None, on_result=None):
        assert trace is None  # bad records never enter the good-record ledger
        index = len(self.raw)
        self.raw.append((payload, key))
        error = "refused" if index == self.refuse_raw else None
        on_result(error, FakeMessage(partition=index % 4, offset=1000 + index))

    def send(self, station_id, event_time_ms, values, intended_time_ms=None):
        time.sleep(self.send_delay_s)
        seq = len(self.ledger.acked[station_id])
        self.sent.append((station_id, seq, event_time_ms, intended_time_ms, values))
        self.ledger.acked[station_id].append(seq)

    def poll(self, timeout_s=0):
        time.sleep(timeout_s)  # like Producer.poll with nothing to deliver

    def flush(self, timeout_s=0):
        return 0


def test_spec_rejects_impossible_values():
    with pytest.raises(ValueError, match="rate must be > 0"):
        LoadSpec(stations=1, rate=0, duration_s=1)
    with pytest.raises(ValueError, match="stations must be >= 1"):
        LoadSpec(stations=0, rate=1, duration_s=1)


def test_schedule_rotates_stations_at_the_offered_rate():
    producer = RecordingProducer()
    spec = LoadSpec(stations=3, rate=100, duration_s=0.3, station_prefix="t")
    result = run_open_loop(producer, SyntheticSource(), spec)
    assert result.sent == 30
    assert [s[0] for s in producer.sent[:4]] == ["t-0000", "t-0001", "t-0002", "t-0000"]
    intended = [s[3] for s in producer.sent]
    assert [b - a for a, b in itertools.pairwise(intended)] == [
        int((i + 1) * 10) - int(i * 10) for i in range(29)
    ]
    assert all(s[2] == s[3] for s in producer.sent)  # event time is the intended time
    assert result.ledger.acked_count == 30
    assert not result.fell_behind


def test_a_slow_sender_is_reported_behind_not_throttled():
    producer = RecordingProducer(send_delay_s=0.02)  # can do 50/s; offered 200/s
    spec = LoadSpec(stations=2, rate=200, duration_s=0.5)
    result = run_open_loop(producer, SyntheticSource(), spec)
    assert result.sent == 100  # every scheduled message is still sent
    assert result.fell_behind
    assert result.max_behind_ms > 500


@pytest.mark.parametrize("source", [SyntheticSource(), ReplaySource()])
def test_sources_produce_valid_observations(source):
    for i in range(50):
        values = source.observe(f"st-{i:04d}", 1_795_740_300_000 + i * 3_600_000)
        record = {"station_id": "x", "seq": 0, "event_time": 1, "ingestion_time": 1, **values}
        assert validate_raw(__import__("json").dumps(record))[1] is None


def test_bad_input_is_mixed_in_without_touching_the_good_stream():
    producer = RecordingProducer(refuse_raw=3)
    bad = BadInputSpec(0.2, BAD_KINDS, late_limit_ms=60_000)
    spec = LoadSpec(stations=3, rate=200, duration_s=0.2, station_prefix="t", bad_input=bad)
    result = run_open_loop(producer, SyntheticSource(), spec)
    # The good stream is the schedule it would be without bad input: every slot, gap-free seqs.
    assert result.sent == 40 and result.ledger.acked_count == 40
    assert [s[0] for s in producer.sent[:4]] == ["t-0000", "t-0001", "t-0002", "t-0000"]
    for station in ("t-0000", "t-0001", "t-0002"):
        assert result.ledger.acked[station] == list(range(len(result.ledger.acked[station])))
    # A fifth of everything sent is bad, the kinds take turns, and each is keyed like a good record.
    assert len(producer.raw) == bad.due_after(40) == 10
    keys = {key for _, key in producer.raw}
    assert keys <= {b"t-0000", b"t-0001", b"t-0002"} and len(keys) > 1
    ledger = result.bad_records
    assert ledger.attempted == 10
    assert ledger.failed == [(BAD_KINDS[3], "refused")]
    assert [r.kind for r in ledger.sent] == [BAD_KINDS[i % 6] for i in range(10) if i != 3]
    assert [r.position for r in ledger.sent][:2] == [("raw", 0, 1000), ("raw", 1, 1001)]
    for (payload, _key), index in zip(producer.raw, range(10), strict=True):
        if index == 3:
            continue
        record = next(r for r in ledger.sent if r.offset == 1000 + index)
        assert str(validate_raw(payload, received_ms=result.end_ms, late_limit_ms=60_000)[1]) == record.reason
    # Bad records name a station of their own, so one wrongly accepted can never pass for a good one.
    assert json.loads(producer.raw[5][0])["station_id"] == bad_station_id("t") == "t-bad"
