"""Kafka topic management for the pipeline: create, grow, describe, delete.

Topics where the broker's append time is a measured stamp use
LogAppendTime, so a record's timestamp says when Kafka got it, not when
the client claims it sent it.

The pipeline's topics get the replication factor of the configured cluster
(KafkaConfig.replication_factor: 1 on one broker, 3 on three). describe_topic
reports each partition's leader, replicas and in-sync replicas (ISR), which
broker-failure benchmarks record; describe_cluster says which brokers are
registered, which `up` waits for.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_INVALID, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic

from pipeline.config import KafkaConfig

APPEND_TIME = {"message.timestamp.type": "LogAppendTime"}


class TopicError(RuntimeError):
    """A topic could not be created, grown or described."""


@dataclass(frozen=True)
class TopicInfo:
    name: str
    partitions: int
    replication_factor: int


@dataclass(frozen=True)
class PartitionState:
    partition: int
    leader: int  # -1 while the partition has no leader
    replicas: tuple[int, ...]
    isr: tuple[int, ...]  # in-sync replicas, leader included


@dataclass(frozen=True)
class TopicState:
    """Per-partition replication state of one topic, as the cluster metadata reports it."""

    name: str
    partitions: tuple[PartitionState, ...]

    @property
    def min_isr_size(self) -> int:
        """The smallest ISR over all partitions (the partition closest to refusing acks=all writes)."""
        return min((len(p.isr) for p in self.partitions), default=0)

    @property
    def under_replicated(self) -> list[int]:
        """Partitions whose ISR is smaller than their replica set."""
        return [p.partition for p in self.partitions if len(p.isr) < len(p.replicas)]

    @property
    def leaderless(self) -> list[int]:
        return [p.partition for p in self.partitions if p.leader < 0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for benchmark reports."""
        return {
            "topic": self.name,
            "partitions": [
                {
                    "partition": p.partition,
                    "leader": p.leader,
                    "replicas": list(p.replicas),
                    "isr": list(p.isr),
                }
                for p in self.partitions
            ],
            "min_isr_size": self.min_isr_size,
            "under_replicated": self.under_replicated,
        }


@dataclass(frozen=True)
class ClusterInfo:
    cluster_id: str | None
    # In KRaft, brokers answer DescribeCluster with some live broker as "controller" (clients
    # cannot reach the quorum); that an answer names one means the broker has joined the cluster.
    controller: int | None
    brokers: tuple[int, ...]  # registered and unfenced brokers


def admin_client(bootstrap_servers: str, timeout_s: float = 10.0) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap_servers, "socket.timeout.ms": int(timeout_s * 1000)})


def describe_topics(admin: AdminClient, timeout_s: float = 10.0) -> dict[str, TopicInfo]:
    metadata = admin.list_topics(timeout=timeout_s)
    return {
        name: TopicInfo(
            name=name,
            partitions=len(topic.partitions),
            replication_factor=len(next(iter(topic.partitions.values())).replicas) if topic.partitions else 0,
        )
        for name, topic in metadata.topics.items()
        if not name.startswith("__")
    }


def describe_topic(admin: AdminClient, name: str, timeout_s: float = 10.0) -> TopicState:
    """Leader, replicas and ISR of every partition of one topic, from a fresh metadata request."""
    metadata = admin.list_topics(topic=name, timeout=timeout_s).topics.get(name)
    if metadata is None or metadata.error is not None:
        raise TopicError(f"cannot describe topic {name}: {metadata.error if metadata else 'not found'}")
    return TopicState(
        name=name,
        partitions=tuple(
            PartitionState(
                partition=pid,
                leader=part.leader,
                replicas=tuple(part.replicas),
                isr=tuple(part.isrs),
            )
            for pid, part in sorted(metadata.partitions.items())
        ),
    )


def describe_cluster(admin: AdminClient, timeout_s: float = 10.0) -> ClusterInfo:
    """Cluster id, the controller the brokers name, and the registered brokers."""
    result = admin.describe_cluster(request_timeout=timeout_s).result(timeout=timeout_s + 1)
    return ClusterInfo(
        cluster_id=result.cluster_id,
        controller=result.controller.id if result.controller is not None else None,
        brokers=tuple(sorted(node.id for node in result.nodes)),
    )


def cluster_complete(admin: AdminClient, node_ids: Sequence[int], timeout_s: float = 3.0) -> bool:
    """Every broker in node_ids is registered and the brokers name a controller."""
    info = describe_cluster(admin, timeout_s=timeout_s)
    return info.controller is not None and set(node_ids) <= set(info.brokers)


def wait_for_brokers(kafka: KafkaConfig, timeout_s: float = 120.0) -> ClusterInfo:
    """Wait until every configured broker has registered (e.g. before creating replicated topics)."""
    admin = admin_client(kafka.bootstrap_servers, timeout_s=3)
    deadline = time.monotonic() + timeout_s
    info: ClusterInfo | None = None
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            info = describe_cluster(admin, timeout_s=3)
            if info.controller is not None and set(kafka.node_ids) <= set(info.brokers):
                return info
        except (KafkaException, TimeoutError) as exc:  # no broker reachable yet
            last_error = exc
        time.sleep(1)
    seen = f"registered brokers {list(info.brokers)}" if info else f"no answer ({last_error})"
    raise TopicError(f"Kafka brokers {kafka.node_ids} did not all register within {timeout_s:.0f}s: {seen}")


def ensure_topic(
    admin: AdminClient,
    name: str,
    partitions: int,
    replication_factor: int = 1,
    config: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> TopicInfo:
    """Create the topic, or grow it to `partitions` if it has fewer; never shrinks."""
    existing = describe_topics(admin).get(name)
    if existing is None:
        futures = admin.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=replication_factor,
                    config=config or {},
                )
            ],
            operation_timeout=timeout_s,
        )
        try:
            futures[name].result(timeout=timeout_s)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise TopicError(f"cannot create topic {name}: {exc}") from None
    elif existing.partitions < partitions:
        set_partitions(admin, name, partitions, timeout_s)
    # Metadata reaches the broker's cache shortly after the controller commits it.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = describe_topics(admin).get(name)
        if info is not None and info.partitions >= partitions:
            return info
        time.sleep(0.2)
    raise TopicError(
        f"topic {name} was created but is not visible with {partitions} partitions after {timeout_s}s"
    )


def set_partitions(admin: AdminClient, name: str, partitions: int, timeout_s: float = 30.0) -> None:
    """Grow a topic to `partitions`. Kafka cannot shrink a topic: asking for fewer is an error."""
    current = describe_topics(admin).get(name)
    if current is None:
        raise TopicError(f"topic {name} does not exist")
    if partitions < current.partitions:
        raise TopicError(
            f"topic {name} has {current.partitions} partitions; Kafka cannot reduce it to {partitions} "
            "(delete and recreate the topic instead)"
        )
    if partitions == current.partitions:
        return
    futures = admin.create_partitions([NewPartitions(name, partitions)], operation_timeout=timeout_s)
    try:
        futures[name].result(timeout=timeout_s)
    except KafkaException as exc:
        raise TopicError(f"cannot grow topic {name} to {partitions} partitions: {exc}") from None


def delete_topics(admin: AdminClient, names: list[str], timeout_s: float = 30.0) -> None:
    present = set(describe_topics(admin))
    doomed = [n for n in names if n in present]
    if not doomed:
        return
    for name, future in admin.delete_topics(doomed, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
        except KafkaException as exc:
            if "UNKNOWN_TOPIC" not in str(exc):
                raise TopicError(f"cannot delete topic {name}: {exc}") from None


def ensure_pipeline_topics(kafka: KafkaConfig, admin: AdminClient | None = None) -> dict[str, TopicInfo]:
    """Create the pipeline's topics with the configured partition count, replication and append-time stamps.

    The replication factor follows the configured cluster (min(3, kafka.brokers)); the
    brokers' min.insync.replicas (2 of 3) applies to these topics as well. An existing
    topic keeps the replication factor it was created with.
    """
    admin = admin or admin_client(kafka.bootstrap_servers)
    retention = {"retention.ms": str(kafka.retention_hours * 3_600_000)}
    return {
        name: ensure_topic(
            admin,
            name,
            kafka.partitions,
            replication_factor=kafka.replication_factor,
            config={**APPEND_TIME, **retention},
        )
        for name in kafka.pipeline_topics
    }


def read_topic(
    bootstrap_servers: str, topic: str, timeout_s: float = 30.0, since_ms: int | None = None
) -> list[tuple[int, int, bytes | None, bytes | None]]:
    """Every record currently in a topic as (partition, broker timestamp ms, key, value), read to the end.

    With `since_ms`, reading starts at the first record of each partition whose
    broker timestamp is at or after it (the topics use log-append time).
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"wb-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise TopicError(f"topic {topic} does not exist")
        remaining: dict[int, int] = {}
        assignment = []
        starts: dict[int, int] = {}
        if since_ms is not None:
            wanted = [TopicPartition(topic, p, since_ms) for p in metadata.partitions]
            # Offset -1: no record at or after since_ms in that partition.
            starts = {tp.partition: tp.offset for tp in consumer.offsets_for_times(wanted, timeout=timeout_s)}
        for partition in metadata.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            if partition in starts:
                low = high if starts[partition] < 0 else max(low, starts[partition])
            if high > low:
                remaining[partition] = high
                assignment.append(TopicPartition(topic, partition, low))
        consumer.assign(assignment)
        records = []
        deadline = time.monotonic() + timeout_s
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error():
                    continue
                records.append((msg.partition(), msg.timestamp()[1], msg.key(), msg.value()))
                if msg.offset() + 1 >= remaining.get(msg.partition(), 0):
                    remaining.pop(msg.partition(), None)
        if remaining:
            raise TopicError(
                f"timed out reading {topic}; partitions not read to the end: {sorted(remaining)}"
            )
        return records
    finally:
        consumer.close()


def usable_messages(messages: Sequence[Any], on_error: Callable[[KafkaError], None]) -> list[Any]:
    """The messages of a consumed batch that carry data.

    Partition-EOF markers are skipped, a fatal client error is raised, and any
    other error (transient: the client retries by itself) is passed to on_error.
    """
    good = []
    for message in messages:
        error = message.error()
        if error is None:
            good.append(message)
        elif error.code() == KafkaError._PARTITION_EOF:
            continue
        elif error.fatal():
            raise KafkaException(error)
        else:
            on_error(error)
    return good


def assigned_lag(consumer: Any, timeout_s: float = 5.0) -> dict[int, int] | None:
    """Records behind the high watermark per assigned partition, from the group's committed offsets.

    None while the consumer has no assignment (before its first rebalance). One request per
    partition; raises KafkaException when the broker cannot answer.
    """
    assignment = consumer.assignment()
    if not assignment:
        return None
    lag: dict[int, int] = {}
    for tp in consumer.committed(assignment, timeout=timeout_s):
        low, high = consumer.get_watermark_offsets(tp, timeout=timeout_s, cached=False)
        position = tp.offset if tp.offset != OFFSET_INVALID and tp.offset >= 0 else low
        lag[tp.partition] = max(0, high - position)
    return lag
