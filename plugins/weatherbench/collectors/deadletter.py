"""Dead-letter measurement: every record the pipeline dead-lettered while a step ran.

A consumer with no consumer group (manual assignment, nothing committed) reads
the dead-letter topic from its end offsets at the step's start, twice a second
on the collector's thread, so the letters of earlier steps are never counted.
At the same instant it notes the end offsets of the step's source topic: a dead
letter of a record below them belongs to load sent before the step
(weatherbench.badinput matches the letters to the bad records sent).
"""

from __future__ import annotations

import threading
import time
import uuid

from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from pipeline.kafka_topics import usable_messages
from weatherbench.badinput import DeadLetter, Position, parse_dead_letter
from weatherbench.collectors.base import PollingCollector
from weatherbench.collectors.kafka import end_offsets
from weatherbench.metrics import Metric

READ_BATCH = 1000


class DeadLetterCollector(PollingCollector):
    """Reads the dead-letter topic during a step; `letters` holds what it read."""

    name = "dead-letters"

    def __init__(
        self, bootstrap_servers: str, deadletter_topic: str, source_topic: str, interval_s: float = 0.5
    ) -> None:
        super().__init__(interval_s)
        self.bootstrap_servers = bootstrap_servers
        self.deadletter_topic = deadletter_topic
        self.source_topic = source_topic
        self.source_start: dict[int, int] = {}  # partition of the source topic -> end offset at start
        self.unreadable = 0  # records that name no source position and reason
        self.read_errors = 0
        self._letters: list[DeadLetter] = []
        self._lock = threading.Lock()
        self._consumer: Consumer | None = None

    @property
    def letters(self) -> list[DeadLetter]:
        with self._lock:
            return list(self._letters)

    def start(self) -> None:
        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        ends = end_offsets(admin, [self.source_topic, self.deadletter_topic])
        self.source_start = {p: offset for (topic, p), offset in ends.items() if topic == self.source_topic}
        self._consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap_servers,
                # Required by the client; never joined or committed (the partitions are assigned).
                "group.id": f"wb-deadletters-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        self._consumer.assign(
            [
                TopicPartition(topic, p, offset)
                for (topic, p), offset in ends.items()
                if topic == self.deadletter_topic
            ]
        )
        super().start()

    def sample(self, now_ms: int) -> None:
        assert self._consumer is not None
        while messages := self._consumer.consume(READ_BATCH, timeout=0.1):
            parsed = [parse_dead_letter(m.value()) for m in usable_messages(messages, self._note_error)]
            with self._lock:
                self._letters += [letter for letter in parsed if letter is not None]
                self.unreadable += sum(1 for letter in parsed if letter is None)
            if len(messages) < READ_BATCH:
                break

    def _note_error(self, _error: KafkaError) -> None:
        self.read_errors += 1

    def wait_for(self, positions: set[Position], timeout_s: float) -> bool:
        """Wait until a dead letter of every source position was read; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while not positions <= {letter.position for letter in self.letters}:
            if time.monotonic() >= deadline:
                return False
            time.sleep(self.interval_s)
        return True

    def stop(self) -> None:
        super().stop()
        if self._consumer is None:
            return
        try:
            self.sample(int(time.time() * 1000))  # what arrived since the last sample
        except Exception as exc:  # the step's other results still count
            self.failed_samples += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
        finally:
            self._consumer.close()
            self._consumer = None

    def metrics(self) -> list[Metric]:
        return [
            Metric("deadletter.read", float(len(self._letters)), "records", "kafka"),
            Metric("deadletter.unreadable", float(self.unreadable), "records", "kafka"),
            Metric(
                "deadletter.failed_samples", float(self.failed_samples + self.read_errors), "samples", "kafka"
            ),
        ]
