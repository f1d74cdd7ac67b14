"""Kafka-side measurement: throughput per topic, consumer lag per stage, topic state, clock sanity.

Sampled every second through the AdminClient:

* throughput per topic: the change of the sum of the partitions' end
  offsets per second (what was appended, whoever wrote it);
* consumer lag per stage as time series. Ray's and the API's lag come from
  their consumer groups (end offset minus committed offset, summed over
  partitions). Spark commits no consumer-group offsets, so its lag is the
  input topics' end offsets now minus the end offsets of the streaming
  job's latest completed micro-batch, read from its progress log; it is
  the backlog Spark has not yet read, per partition and in total;
* at the end of a step: partitions, replicas, ISR and leader of each topic,
  and the bytes each topic holds on disk.

`clock_sanity` checks that the broker's append stamps fall between the
client's send and acknowledgement: all stamps of the latency definitions
come from clocks that must agree, and a violation is reported, not hidden.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from weatherbench.collectors.base import PollingCollector
from weatherbench.collectors.resources import directory_bytes
from weatherbench.metrics import Metric, Series, summary_metrics

SPARK_QUERY = "features"  # the streaming job's main query (the dead-letter query reads the same input)


def end_offsets(admin: AdminClient, topics: list[str], timeout_s: float = 5.0) -> dict[tuple[str, int], int]:
    """(topic, partition) -> end offset (the next offset to be written)."""
    metadata = admin.list_topics(timeout=timeout_s)
    request = {
        TopicPartition(topic, p): OffsetSpec.latest()
        for topic in topics
        if topic in metadata.topics
        for p in metadata.topics[topic].partitions
    }
    if not request:
        return {}
    futures = admin.list_offsets(request, request_timeout=timeout_s)
    return {(tp.topic, tp.partition): future.result().offset for tp, future in futures.items()}


def committed_offsets(admin: AdminClient, group: str, timeout_s: float = 5.0) -> dict[tuple[str, int], int]:
    futures = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=timeout_s
    )
    result = futures[group].result()
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions if tp.offset >= 0}


def group_lag(ends: dict[tuple[str, int], int], committed: dict[tuple[str, int], int], topic: str) -> int:
    """Messages of `topic` the group has not committed; a partition with no commit counts from 0."""
    return sum(end - committed.get(key, 0) for key, end in ends.items() if key[0] == topic)


class ProgressTail:
    """Reads the streaming job's progress log incrementally (it is append-only JSON lines)."""

    def __init__(self, path: Path, since_ms: int = 0) -> None:
        self.path = path
        self.since_ms = since_ms
        self._offset = 0
        self.events: list[dict[str, Any]] = []

    def skip_to_end(self) -> None:
        self._offset = self.path.stat().st_size if self.path.exists() else 0

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        fresh = []
        with self.path.open("rb") as handle:
            handle.seek(self._offset)
            data = handle.read()
        complete = data.rfind(b"\n") + 1  # leave a half-written last line for the next read
        self._offset += complete
        for line in data[:complete].splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            fresh.append(event)
        self.events.extend(fresh)
        return fresh

    def close(self) -> None:
        """Release what the tail holds (nothing for a file)."""

    def latest_progress(self, query: str = SPARK_QUERY) -> dict[str, Any] | None:
        for event in reversed(self.events):
            if event.get("event") == "progress" and event.get("name") == query:
                return event
        return None


class KafkaProgressTail(ProgressTail):
    """The same progress records, read from the progress topic instead of the job's log file.

    For a streaming job whose files are not on this machine (an external cluster): its
    listener publishes every record to Kafka too. Reads from the end at skip_to_end (as the
    file tail does), with a consumer of its own that commits nothing.
    """

    def __init__(self, bootstrap_servers: str, topic: str) -> None:
        super().__init__(Path(topic))
        self.topic = topic
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap_servers,
                "group.id": f"weatherbench-progress-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "latest",
            }
        )
        self._assigned = False

    def skip_to_end(self) -> None:
        metadata = self._consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        partitions = sorted((metadata.partitions if metadata else {}) or {})
        assignment = []
        for partition in partitions:
            _, high = self._consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=10)
            assignment.append(TopicPartition(self.topic, partition, high))
        self._consumer.assign(assignment)
        self._assigned = True

    def read(self) -> list[dict[str, Any]]:
        if not self._assigned:
            self.skip_to_end()
        fresh = []
        while messages := self._consumer.consume(num_messages=500, timeout=0.2):
            for message in messages:
                if message.error() is not None or message.value() is None:
                    continue
                try:
                    fresh.append(json.loads(message.value()))
                except ValueError:
                    continue
        self.events.extend(fresh)
        return fresh

    def close(self) -> None:
        self._consumer.close()


def progress_tail(source: Path | ProgressTail) -> ProgressTail:
    """A tail of the streaming job's progress: its log file (a path) or a tail built elsewhere."""
    return source if isinstance(source, ProgressTail) else ProgressTail(source)


def processed_offsets(progress: dict[str, Any] | None) -> dict[tuple[str, int], int]:
    """(topic, partition) -> end offset of the micro-batch a progress event reports."""
    offsets: dict[tuple[str, int], int] = {}
    for source in (progress or {}).get("sources", []):
        for topic, partitions in (source.get("endOffset") or {}).items():
            for partition, offset in partitions.items():
                offsets[(topic, int(partition))] = int(offset)
    return offsets


class KafkaFlowCollector(PollingCollector):
    """Throughput per topic and lag per stage, every second."""

    name = "kafka-flow"

    def __init__(
        self,
        bootstrap_servers: str,
        topics: dict[str, str],  # label -> topic, e.g. {"raw": "weather-raw-benchmark"}
        spark_inputs: list[str],
        groups: dict[str, tuple[str, str]],  # stage -> (consumer group, topic it reads)
        progress: Path | ProgressTail,
        interval_s: float = 1.0,
    ) -> None:
        super().__init__(interval_s)
        self.admin = AdminClient({"bootstrap.servers": bootstrap_servers})
        self.topics = topics
        self.spark_inputs = spark_inputs
        self.groups = groups
        self.progress = progress_tail(progress)
        self._previous: tuple[int, dict[str, int]] | None = None
        self.first_ends: dict[tuple[str, int], int] = {}
        self.last_ends: dict[tuple[str, int], int] = {}
        self.throughput = {label: Series(f"throughput.{label}", "msg/s") for label in topics}
        self.lag = {stage: Series(f"lag.{stage}", "messages") for stage in ("spark", *groups)}
        self.partition_lag: dict[int, Series] = {}

    def start(self) -> None:
        self.progress.skip_to_end()
        super().start()

    def stop(self) -> None:
        super().stop()
        self.progress.close()

    def sample(self, now_ms: int) -> None:
        t = self.seconds_since_start(now_ms)
        watched = sorted(
            set(self.topics.values()) | set(self.spark_inputs) | {t for _, t in self.groups.values()}
        )
        ends = end_offsets(self.admin, watched)
        if not self.first_ends:
            self.first_ends = dict(ends)
        self.last_ends = ends
        totals = {
            label: sum(v for (tp, _), v in ends.items() if tp == topic)
            for label, topic in self.topics.items()
        }
        if self._previous is not None:
            then_ms, then = self._previous
            seconds = max(1e-3, (now_ms - then_ms) / 1000)
            for label, total in totals.items():
                self.throughput[label].points.append((t, (total - then[label]) / seconds))
        self._previous = (now_ms, totals)
        self.progress.read()
        latest = self.progress.latest_progress()
        if latest is not None:
            done = processed_offsets(latest)
            per_partition: dict[int, int] = defaultdict(int)
            for (topic, partition), end in ends.items():
                if topic in self.spark_inputs:
                    per_partition[partition] += max(0, end - done.get((topic, partition), 0))
            self.lag["spark"].points.append((t, float(sum(per_partition.values()))))
            for partition, value in per_partition.items():
                self.partition_lag.setdefault(
                    partition, Series(f"lag.spark.partition-{partition}", "messages")
                ).points.append((t, float(value)))
        for stage, (group, topic) in self.groups.items():
            self.lag[stage].points.append(
                (t, float(group_lag(ends, committed_offsets(self.admin, group), topic)))
            )

    def appended(self, topic: str) -> dict[int, int]:
        """Messages appended to each partition of `topic` while the collector ran."""
        return {
            partition: end - self.first_ends.get((name, partition), 0)
            for (name, partition), end in self.last_ends.items()
            if name == topic
        }

    def series(self) -> list[Series]:
        return [*self.throughput.values(), *self.lag.values(), *self.partition_lag.values()]

    def metrics(self) -> list[Metric]:
        result: list[Metric] = []
        for label, series in self.throughput.items():
            result += summary_metrics(f"throughput.{label}", series.values(), "msg/s", "kafka")
        for stage, series in self.lag.items():
            result += summary_metrics(f"lag.{stage}", series.values(), "messages", stage)
        result.append(Metric("kafka.failed_samples", float(self.failed_samples), "samples", "kafka"))
        return result


@dataclass(frozen=True)
class PartitionState:
    topic: str
    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


def topic_state(admin: AdminClient, topics: list[str], timeout_s: float = 10.0) -> list[PartitionState]:
    metadata = admin.list_topics(timeout=timeout_s)
    states = []
    for topic in topics:
        meta = metadata.topics.get(topic)
        if meta is None:
            continue
        for partition in sorted(meta.partitions.values(), key=lambda p: p.id):
            states.append(
                PartitionState(
                    topic, partition.id, partition.leader, tuple(partition.replicas), tuple(partition.isrs)
                )
            )
    return states


def topic_metrics(admin: AdminClient, topics: list[str], kafka_data_dir: Path) -> list[Metric]:
    """Partitions, under-replicated partitions and bytes on disk per topic."""
    result: list[Metric] = []
    states = topic_state(admin, topics)
    for topic in topics:
        mine = [s for s in states if s.topic == topic]
        if not mine:
            continue
        under = sum(1 for s in mine if len(s.isr) < len(s.replicas))
        on_disk = (
            sum(directory_bytes(path) for path in kafka_data_dir.rglob(f"{topic}-*") if path.is_dir())
            if kafka_data_dir.exists()
            else 0
        )
        result += [
            Metric("kafka.topic.partitions", float(len(mine)), "partitions", topic),
            Metric("kafka.topic.replication_factor", float(len(mine[0].replicas)), "replicas", topic),
            Metric("kafka.topic.min_isr_seen", float(min(len(s.isr) for s in mine)), "replicas", topic),
            Metric("kafka.topic.under_replicated", float(under), "partitions", topic),
            Metric("kafka.topic.bytes", float(on_disk), "bytes", topic),
        ]
    return result


@dataclass(frozen=True)
class ClockCheck:
    probes: int
    violations: int  # broker stamp outside [send, ack] by more than the tolerance
    max_skew_ms: float  # largest distance of a broker stamp outside that interval (0 if inside)

    def metrics(self) -> list[Metric]:
        return [
            Metric("clock.probes", float(self.probes), "probes"),
            Metric("clock.violations", float(self.violations), "probes"),
            Metric("clock.max_skew", self.max_skew_ms, "ms"),
        ]


def clock_sanity(
    bootstrap_servers: str, topic: str, probes: int = 20, tolerance_ms: float = 1.0
) -> ClockCheck:
    """Send probes to a LogAppendTime topic; the broker's stamp must lie between send and ack."""
    producer = Producer({"bootstrap.servers": bootstrap_servers, "linger.ms": 0, "acks": "all"})
    outside: list[float] = []
    done: list[bool] = []

    def check(sent_ms: float):
        def on_delivery(err: Any, msg: Any) -> None:
            acked_ms = time.time() * 1000
            done.append(True)
            if err is not None:
                outside.append(float("inf"))
                return
            _kind, stamp = msg.timestamp()
            if stamp < sent_ms - tolerance_ms:
                outside.append(sent_ms - stamp)
            elif stamp > acked_ms + tolerance_ms:
                outside.append(stamp - acked_ms)

        return on_delivery

    for i in range(probes):
        producer.produce(
            topic,
            key=b"__clock__",
            value=json.dumps({"probe": i}).encode(),
            on_delivery=check(time.time() * 1000),
        )
        producer.flush(10)
    return ClockCheck(probes=len(done), violations=len(outside), max_skew_ms=max(outside, default=0.0))
