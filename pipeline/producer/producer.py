"""The weather producer: stamps observations and publishes them to Kafka, recording every ack.

Owns the per-station sequence numbers (gap-free from 0), the trace stamps of
a raw message (`intended_time`, `ingestion_time`), the idempotent Kafka
producer, and the delivery ledger: which (station, seq) Kafka acknowledged,
when, to which partition, and with which broker append time. Loss and
latency accounting downstream is matched against this ledger. The same deliveries
feed Prometheus series (`ProducerMetrics`) wherever a producer runs: the producer
command and the benchmark harness.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, Message, Producer
from prometheus_client import CollectorRegistry, Counter, Histogram

from pipeline.schema import encode, now_ms, raw_key


@dataclass
class DeliveryLedger:
    """What Kafka acknowledged (and refused) of the observations sent, filled from delivery callbacks.

    Records sent without a `trace` (bad input, see send_raw) are not observations: they are left out
    of every count here, bytes and partitions included.
    """

    # The per-message fields are long: kept out of repr so failures stay readable.
    acked: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list), repr=False)
    event_times: dict[tuple[str, int], int] = field(default_factory=dict, repr=False)  # (station, seq) -> ms
    failed: list[tuple[str, int, str]] = field(default_factory=list)
    ack_latency_ms: list[float] = field(default_factory=list, repr=False)  # produce() -> broker ack
    t1_ms: list[int] = field(default_factory=list, repr=False)  # ingestion_time -> broker append time
    # (station, seq) of each ack-latency and T1 sample, in the same order, so a sample can be
    # attributed to its message (e.g. to leave out a warm-up or another run's stations).
    ack_keys: list[tuple[str, int]] = field(default_factory=list, repr=False)
    t1_keys: list[tuple[str, int]] = field(default_factory=list, repr=False)
    per_partition: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    bytes_sent: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def acked_count(self) -> int:
        return sum(len(v) for v in self.acked.values())

    def acked_set(self) -> set[tuple[str, int]]:
        return {(station, seq) for station, seqs in self.acked.items() for seq in seqs}


class ProducerMetrics:
    """Prometheus series of one process's producers: sent, acknowledged, failed, ack latency, T1."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
        self.sent = Counter("weather_producer_sent", "Records handed to the producer", registry=self.registry)
        self.acked = Counter(
            "weather_producer_acked", "Observations acknowledged by Kafka", registry=self.registry
        )
        self.failed = Counter(
            "weather_producer_failed", "Observations Kafka did not acknowledge", registry=self.registry
        )
        self.bytes = Counter(
            "weather_producer_acked_bytes", "Bytes of acknowledged observations", registry=self.registry
        )
        self.ack_latency = Histogram(
            "weather_producer_ack_latency_seconds",
            "produce() -> broker acknowledgement",
            buckets=buckets,
            registry=self.registry,
        )
        self.t1 = Histogram(
            "weather_producer_t1_seconds",
            "T1: ingestion time -> Kafka append time",
            buckets=buckets,
            registry=self.registry,
        )


class WeatherProducer:
    """Idempotent producer of raw observations to one topic."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        extra_config: dict[str, Any] | None = None,
        metrics: ProducerMetrics | None = None,
    ) -> None:
        self.topic = topic
        self.metrics = metrics
        self.ledger = DeliveryLedger()
        self._next_seq: dict[str, int] = defaultdict(int)
        config = {
            "bootstrap.servers": bootstrap_servers,
            # Idempotence gives acks=all and retries without duplicates or reordering.
            "enable.idempotence": True,
            "linger.ms": 5,
            "message.timeout.ms": 60_000,
            "statistics.interval.ms": 0,
        }
        config.update(extra_config or {})
        self._producer = Producer(config)

    def next_seq(self, station_id: str) -> int:
        seq = self._next_seq[station_id]
        self._next_seq[station_id] = seq + 1
        return seq

    def send(
        self,
        station_id: str,
        event_time_ms: int,
        values: dict[str, float],
        intended_time_ms: int | None = None,
    ) -> dict[str, Any]:
        """Stamp and publish one observation; returns the record as sent."""
        seq = self.next_seq(station_id)
        record: dict[str, Any] = {"station_id": station_id, "seq": seq, "event_time": event_time_ms, **values}
        if intended_time_ms is not None:
            record["intended_time"] = intended_time_ms
        record["ingestion_time"] = now_ms()
        self.send_raw(
            encode(record), raw_key(station_id), (station_id, seq, record["ingestion_time"], event_time_ms)
        )
        return record

    def send_raw(
        self,
        payload: bytes,
        key: bytes | None,
        trace: tuple[str, int, int, int] | None = None,
        on_result: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        """Publish bytes as they are (also used to inject bad records).

        `trace` is (station, seq, ingestion time, event time) of a valid observation; its ack enters
        the ledger. Bad records are sent without one. `on_result` is called with the delivery
        report (error or None, and the message with its partition and offset).
        """

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if on_result is not None:
                on_result(err, msg)
            if trace and self.metrics is not None:
                self._observe(err, msg, len(payload), trace[2])
            with self.ledger._lock:
                if err is not None:
                    if trace:
                        self.ledger.failed.append((trace[0], trace[1], str(err)))
                    return
                if trace:
                    self.ledger.bytes_sent += len(payload)
                    self.ledger.per_partition[msg.partition()] += 1
                    self.ledger.acked[trace[0]].append(trace[1])
                    self.ledger.event_times[(trace[0], trace[1])] = trace[3]
                    latency = msg.latency()
                    if latency is not None:
                        self.ledger.ack_latency_ms.append(latency * 1000.0)
                        self.ledger.ack_keys.append((trace[0], trace[1]))
                    _, append_ms = msg.timestamp()
                    if append_ms > 0:
                        self.ledger.t1_ms.append(append_ms - trace[2])
                        self.ledger.t1_keys.append((trace[0], trace[1]))

        while True:
            try:
                self._producer.produce(self.topic, value=payload, key=key, on_delivery=on_delivery)
                break
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.05)
        if self.metrics is not None:
            self.metrics.sent.inc()
        self._producer.poll(0)

    def _observe(self, err: KafkaError | None, msg: Message, size: int, ingestion_ms: int) -> None:
        metrics = self.metrics
        assert metrics is not None
        if err is not None:
            metrics.failed.inc()
            return
        metrics.acked.inc()
        metrics.bytes.inc(size)
        latency = msg.latency()
        if latency is not None:
            metrics.ack_latency.observe(latency)
        _, append_ms = msg.timestamp()
        if append_ms > 0:
            metrics.t1.observe(max(0, append_ms - ingestion_ms) / 1000)

    def poll(self, timeout_s: float = 0) -> None:
        self._producer.poll(timeout_s)

    def flush(self, timeout_s: float = 60.0) -> int:
        """Wait for outstanding acks; returns how many are still outstanding."""
        return self._producer.flush(timeout_s)

    def close(self) -> None:
        self.flush()
