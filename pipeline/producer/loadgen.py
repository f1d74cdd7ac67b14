"""Open-loop load generation: observations sent on a fixed schedule, never paced by the system.

Message i of a run is due at start + i / rate, for station i mod N, and
carries that due time as `intended_time` (and, for synthetic and replayed
data, as its event time). A sender that cannot keep up sends late rather than
less, and the lateness is reported: latency measured from `intended_time`
then includes the time the system made the generator wait, so a slow system
cannot hide behind coordinated omission.

A load may mix bad records into its stream (`LoadSpec.bad_input`): after each
good message, the bad records then due (pipeline.producer.badrecords) are sent
with send_raw, keyed like that good message so they spread over the same
partitions. They take no slot of the schedule and no seq of a good station, so
the good stream is exactly what it would be without them; each one's Kafka
position, kind and expected dead-letter reason go to `LoadResult.bad_records`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message

from pipeline.producer.badrecords import (
    BadInputLedger,
    BadInputSpec,
    BadRecord,
    BadRecordGenerator,
    SentBadRecord,
)
from pipeline.producer.observations import ObservationSource
from pipeline.producer.producer import DeliveryLedger, WeatherProducer
from pipeline.schema import now_ms, raw_key

# A message sent more than this after its intended time counts as "behind schedule".
BEHIND_THRESHOLD_MS = 100
# Station id of the watermark sentinel (see close_windows); consumers of results ignore it.
SENTINEL_STATION = "__watermark__"


@dataclass(frozen=True)
class LoadSpec:
    stations: int
    rate: float  # messages per second, all stations together
    duration_s: float
    station_prefix: str = "st"
    bad_input: BadInputSpec | None = None  # bad records mixed into the stream, besides the good ones

    def __post_init__(self) -> None:
        if self.stations < 1:
            raise ValueError(f"stations must be >= 1, got {self.stations}")
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0 messages/s, got {self.rate}")
        if self.duration_s <= 0:
            raise ValueError(f"duration must be > 0 s, got {self.duration_s}")

    def station_ids(self) -> list[str]:
        return [station_id(self.station_prefix, k) for k in range(self.stations)]

    @property
    def total_messages(self) -> int:
        return int(self.rate * self.duration_s)


def station_id(prefix: str, index: int) -> str:
    return f"{prefix}-{index:04d}"


def bad_station_id(prefix: str) -> str:
    """The station a load's bad records name: under the load's prefix, never one of its good stations."""
    return f"{prefix}-bad"


@dataclass
class LoadResult:
    spec: LoadSpec
    sent: int
    start_ms: int
    end_ms: int
    first_event_ms: int
    last_event_ms: int
    behind_count: int  # messages sent more than BEHIND_THRESHOLD_MS after intended
    max_behind_ms: int
    ledger: DeliveryLedger
    stopped_early: bool = False
    unacked_after_flush: int = 0
    lateness_ms: list[int] = field(default_factory=list, repr=False)
    bad_records: BadInputLedger = field(default_factory=BadInputLedger, repr=False)

    @property
    def offered_rate(self) -> float:
        return self.spec.rate

    @property
    def achieved_rate(self) -> float:
        """Acknowledged messages per second of sending time."""
        seconds = max(1e-3, (self.end_ms - self.start_ms) / 1000)
        return self.ledger.acked_count / seconds

    @property
    def fell_behind(self) -> bool:
        return self.behind_count > 0


class BadInputMixer:
    """Sends the bad records due after each good one and logs where Kafka put each of them."""

    def __init__(self, spec: BadInputSpec, station_prefix: str) -> None:
        self.spec = spec
        self.station_id = bad_station_id(station_prefix)
        self.generator = BadRecordGenerator(spec.seed, spec.late_limit_ms)
        self.ledger = BadInputLedger()

    def send_due(self, producer: WeatherProducer, good_sent: int, key_station: str) -> None:
        while (index := self.ledger.attempted) < self.spec.due_after(good_sent):
            record = self.generator.make(self.spec.kind_of(index), index, self.station_id, now_ms())
            producer.send_raw(record.payload, raw_key(key_station), on_result=self._recorder(record))
            self.ledger.attempted += 1

    def _recorder(self, record: BadRecord) -> Callable[[KafkaError | None, Message], None]:
        # Delivery reports run inside the producer's poll/flush, on the sending thread.
        def on_result(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.ledger.failed.append((record.kind, str(err)))
                return
            position = (msg.topic(), msg.partition(), msg.offset())
            self.ledger.sent.append(SentBadRecord(record.kind, record.reason, *position))

        return on_result


def run_open_loop(
    producer: WeatherProducer,
    source: ObservationSource,
    spec: LoadSpec,
    stop: threading.Event | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> LoadResult:
    """Send spec.total_messages on schedule (and the bad records mixed in), then wait for every ack."""
    stations = spec.station_ids()
    bad_input = BadInputMixer(spec.bad_input, spec.station_prefix) if spec.bad_input else None
    total = spec.total_messages
    interval_ms = 1000.0 / spec.rate
    start_ms = now_ms()
    behind = 0
    max_behind = 0
    lateness: list[int] = []
    sent = 0
    last_report = time.monotonic()
    for i in range(total):
        if stop is not None and stop.is_set():
            break
        intended = start_ms + int(i * interval_ms)
        # Wait inside poll(), not sleep(): delivery callbacks then run as acks arrive, so an
        # ack's measured latency does not include the time until the next send.
        while (wait_ms := intended - now_ms()) > 1:
            producer.poll(wait_ms / 1000)
        late = now_ms() - intended
        lateness.append(late)
        if late > BEHIND_THRESHOLD_MS:
            behind += 1
            max_behind = max(max_behind, late)
        station = stations[i % len(stations)]
        producer.send(station, intended, source.observe(station, intended), intended_time_ms=intended)
        sent += 1
        if bad_input is not None:
            bad_input.send_due(producer, sent, station)
        if on_progress and time.monotonic() - last_report >= 5:
            on_progress(sent, total)
            last_report = time.monotonic()
    end_ms = now_ms()
    unacked = producer.flush(120)
    return LoadResult(
        spec=spec,
        sent=sent,
        start_ms=start_ms,
        end_ms=end_ms,
        first_event_ms=start_ms,
        last_event_ms=start_ms + int(max(0, sent - 1) * interval_ms),
        behind_count=behind,
        max_behind_ms=max_behind,
        ledger=producer.ledger,
        stopped_early=sent < total,
        unacked_after_flush=unacked,
        lateness_ms=lateness,
        bad_records=bad_input.ledger if bad_input is not None else BadInputLedger(),
    )


def close_windows(
    producer: WeatherProducer,
    source: ObservationSource,
    last_event_ms: int,
    window_ms: int,
    watermark_ms: int,
) -> int:
    """Advance the streaming watermark past every window up to last_event_ms.

    Spark emits a window only after an event later than window end + watermark
    delay arrives. At the end of a bounded load nothing more arrives, so one
    sentinel observation (station SENTINEL_STATION) is sent with an event time
    past that bound; the watermark is global, so it closes every station's
    windows. Returns the sentinel's event time. Data sent afterwards must have
    event times after it, or it would be late: this waits until the wall clock
    passes it.
    """
    sentinel_ms = last_event_ms + window_ms + watermark_ms + 1000
    producer.send(SENTINEL_STATION, sentinel_ms, source.observe(SENTINEL_STATION, sentinel_ms))
    producer.flush(60)
    delay = sentinel_ms - now_ms()
    if delay > 0:
        time.sleep(delay / 1000)
    return sentinel_ms
