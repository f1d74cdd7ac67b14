"""Open-loop schedule: intended times, station rotation, lateness reporting."""

import itertools
import time

import pytest

from pipeline.producer.loadgen import LoadSpec, run_open_loop
from pipeline.producer.observations import ReplaySource, SyntheticSource
from pipeline.producer.producer import DeliveryLedger
from pipeline.schema import validate_raw


class RecordingProducer:
    """Stands in for WeatherProducer: records what would be sent, acks everything."""

    def __init__(self, send_delay_s: float = 0.0):
        self.ledger = DeliveryLedger()
        self.sent = []
        self.send_delay_s = send_delay_s

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
