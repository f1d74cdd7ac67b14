"""A 3-broker KRaft cluster on real processes: replication factor 3, one broker killed and restarted.

Only Kafka runs (no Spark, Ray or services). Every acknowledged record must be readable
at the end: with acks=all and min.insync.replicas=2, losing one broker of three neither
stops writes nor loses data, the ISR shrinks to the two live brokers, and the restarted
broker catches up and rejoins the ISR.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import pytest
from confluent_kafka import Producer

from pipeline.kafka_topics import (
    TopicState,
    admin_client,
    describe_cluster,
    describe_topic,
    describe_topics,
    ensure_topic,
    read_topic,
)
from pipeline.stack.base import KAFKA
from pipeline.stack.process import read_pid_record

from .conftest import running_stack, stack_config
from .test_01_lifecycle import assert_nothing_left

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

TOPIC = "cluster-check"
PARTITIONS = 4
BATCH = 2000  # records per produce phase


class Batch:
    """Records sent without waiting; confirm() waits for every acknowledgement."""

    def __init__(self, producer: Producer, keys: Iterable[int]) -> None:
        self.producer = producer
        self.acked: set[bytes] = set()
        self.failed: list[str] = []
        self.sent = 0
        for key in keys:
            producer.produce(TOPIC, key=str(key).encode(), value=b"x" * 100, on_delivery=self._on_delivery)
            producer.poll(0)
            self.sent += 1

    def _on_delivery(self, err, msg) -> None:
        if err is None:
            self.acked.add(msg.key())
        else:
            self.failed.append(str(err))

    def confirm(self, timeout_s: float = 120.0) -> set[bytes]:
        """The acknowledged keys, once all are acknowledged; fails on any delivery error."""
        assert self.producer.flush(timeout_s) == 0, "records still unacknowledged"
        assert not self.failed, f"{len(self.failed)} records failed, e.g. {self.failed[:3]}"
        assert len(self.acked) == self.sent
        return self.acked


def produce(producer: Producer, keys: Iterable[int]) -> set[bytes]:
    return Batch(producer, keys).confirm()


def wait_for_state(
    admin, check: Callable[[TopicState], bool], timeout_s: float, what: str, since: float | None = None
) -> float:
    """Seconds from `since` (default: now, monotonic) until the topic's replication state passes `check`."""
    began = time.monotonic() if since is None else since
    state = None
    while time.monotonic() - began < timeout_s:
        try:
            state = describe_topic(admin, TOPIC, timeout_s=5)
            if check(state):
                return time.monotonic() - began
        except Exception as exc:  # a metadata request may fail while leadership moves
            log.info("describe %s: %s", TOPIC, exc)
        time.sleep(0.5)
    pytest.fail(f"{what} not reached within {timeout_s:.0f}s; last state: {state and state.to_dict()}")


def test_three_brokers_replicate_and_survive_losing_one():
    config = stack_config("kafka-cluster", port_offset=700)
    config.kafka.brokers = 3
    config.kafka.heap_mb = 384
    began = time.monotonic()
    sessions: list[int] = []
    with running_stack(config, (KAFKA,)) as stack:
        log.info("3-broker cluster up in %.1f s: %s", time.monotonic() - began, stack.startup_seconds)
        running = [i.instance for i in stack.status().instances if i.component == KAFKA and i.running]
        assert running == ["kafka-1", "kafka-2", "kafka-3"]
        admin = admin_client(config.kafka.bootstrap_servers)
        assert describe_cluster(admin).brokers == (1, 2, 3)
        assert describe_topics(admin)[config.kafka.raw_topic].replication_factor == 3  # pipeline topics

        ensure_topic(admin, TOPIC, PARTITIONS, replication_factor=3)
        wait_for_state(admin, lambda s: s.min_isr_size == 3, 60, "a full ISR on every partition")
        state = describe_topic(admin, TOPIC)
        assert len(state.partitions) == PARTITIONS
        assert all(sorted(p.replicas) == [1, 2, 3] and sorted(p.isr) == [1, 2, 3] for p in state.partitions)

        producer = Producer(
            {
                "bootstrap.servers": config.kafka.bootstrap_servers,
                "enable.idempotence": True,  # implies acks=all; retries cannot duplicate
                "acks": "all",
                "linger.ms": 5,
            }
        )
        acked = produce(producer, range(BATCH))
        assert len(read_topic(config.kafka.bootstrap_servers, TOPIC)) == BATCH

        killed_session = read_pid_record(stack.pid_dir / "kafka-2.json").pid
        killed_at = time.monotonic()
        assert stack.kill(KAFKA, which=2) == "kafka-2"  # SIGKILL
        assert [i.instance for i in stack.status().instances if i.component == KAFKA and i.running] == [
            "kafka-1",
            "kafka-3",
        ]
        # Records sent right after the kill wait (retrying) until the controller has fenced
        # broker 2 (broker.session.timeout.ms, 9 s) and dropped it from the ISR; then two of
        # three replicas are in sync, enough for acks=all with min.insync.replicas=2.
        during = Batch(producer, range(BATCH, 2 * BATCH))
        shrink_s = wait_for_state(
            admin,
            lambda s: all(sorted(p.isr) == [1, 3] and p.leader in (1, 3) for p in s.partitions),
            60,
            "an ISR of brokers 1 and 3 only",
            since=killed_at,
        )
        acked |= during.confirm()
        log.info(
            "ISR without broker 2 %.1f s after the kill; records sent at the kill acknowledged after %.1f s",
            shrink_s,
            time.monotonic() - killed_at,
        )

        t0 = time.monotonic()
        stack.restart(KAFKA, which=2)
        restarted_s = time.monotonic() - t0
        rejoin_s = wait_for_state(admin, lambda s: s.min_isr_size == 3, 120, "broker 2 back in every ISR")
        log.info("broker 2 registered %.1f s after restart, in every ISR %.1f s later", restarted_s, rejoin_s)
        assert describe_cluster(admin).brokers == (1, 2, 3)

        acked |= produce(producer, range(2 * BATCH, 3 * BATCH))
        keys = [key for _, _, key, _ in read_topic(config.kafka.bootstrap_servers, TOPIC, timeout_s=60)]
        assert len(keys) == len(acked) == 3 * BATCH  # nothing lost, nothing written twice
        assert set(keys) == acked
        sessions = [read_pid_record(p).pid for p in stack.pid_dir.glob("*.json")] + [killed_session]
        assert len(sessions) == 4
        del producer, admin  # close the clients before their brokers go
    assert_nothing_left(stack, sessions)
