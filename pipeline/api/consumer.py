"""The serving API's Kafka consumer: weather-predictions -> the prediction store.

This module owns the API's input side: a background thread consuming
`kafka.predictions_topic` in group `api.consumer_group` (earliest, manual
commit) that writes each batch to the PredictionStore in one transaction,
together with the batch's next offsets, and commits those offsets to Kafka
only AFTER that transaction committed. On partition assignment it seeks to
the offsets stored in the database (the beginning for a new database), so a
crash between the two commits neither loses nor re-reads a batch; the group's
committed offsets serve lag monitoring and tools. Should a record still be
read twice, the store counts it as a replay (a subset of duplicates).

Malformed prediction records are counted as `rejected` in the store and
skipped (logged with their reason); they never stop the thread. A Kafka fatal
error or an unexpected exception ends the thread; the API's /health then
answers 503 with the error, so a supervisor can restart the process.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaException,
    TopicPartition,
)

from pipeline.api.store import Incoming, PredictionStore, UpsertResult, validate_record
from pipeline.config import StackConfig
from pipeline.kafka_topics import assigned_lag, usable_messages
from pipeline.schema import now_ms

log = logging.getLogger("pipeline.api.consumer")

ConsumerFactory = Callable[[dict[str, Any]], Any]


def consumer_config(config: StackConfig) -> dict[str, Any]:
    return {
        "bootstrap.servers": config.kafka.bootstrap_servers,
        "group.id": config.api.consumer_group,
        "client.id": "serving-api",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # A crashed API's partitions go to its restarted successor after this
        # long (librdkafka's 45 s default would keep the new process idle).
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 2_000,
    }


def commit_positions(messages: Sequence[Any]) -> list[TopicPartition]:
    """The highest offset + 1 per partition of `messages`."""
    highest: dict[tuple[str, int], int] = {}
    for message in messages:
        key = (message.topic(), message.partition())
        highest[key] = max(highest.get(key, -1), message.offset())
    return [TopicPartition(t, p, o + 1) for (t, p), o in sorted(highest.items())]


class PredictionConsumer:
    """Background thread feeding the store; `status()` is safe to call from any thread."""

    def __init__(
        self,
        config: StackConfig,
        store: PredictionStore,
        *,
        consumer_factory: ConsumerFactory = Consumer,
        batch_size: int = 500,
        poll_timeout_s: float = 0.5,
        lag_interval_s: float = 5.0,
        on_stored: Callable[[UpsertResult, list[Incoming]], None] | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self._factory = consumer_factory
        self.batch_size = batch_size
        self.poll_timeout_s = poll_timeout_s
        self.lag_interval_s = lag_interval_s
        self._on_stored = on_stored
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._consumer: Any = None
        self._lock = threading.Lock()
        self._status: dict[str, Any] = {
            "state": "created",
            "error": None,
            "messages": 0,
            "batches": 0,
            "stored": 0,
            "duplicates": 0,
            "rejected": 0,
            "commit_errors": 0,
            "db_retries": 0,
            "last_poll_ms": None,
            "last_message_ms": None,
            "last_commit_ms": None,
            "assigned_partitions": [],
            "lag": None,
            "lag_by_partition": None,
            "lag_time_ms": None,
        }
        self._rejected_reasons: Counter[str] = Counter()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("consumer already started")
        self._set(state="starting")
        self._thread = threading.Thread(target=self._run, name="prediction-consumer", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Ask the thread to finish its batch, close the Kafka consumer, and wait."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("prediction consumer did not stop within %.0f s", timeout_s)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self._status)
            out["rejected_reasons"] = dict(self._rejected_reasons)
        out["alive"] = self.is_alive()
        return out

    def _set(self, **values: Any) -> None:
        with self._lock:
            self._status.update(values)

    def _add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self._status[name] += amount

    # --------------------------------------------------------------------- loop

    def _run(self) -> None:
        try:
            self._consumer = self._factory(consumer_config(self.config))
            self._consumer.subscribe(
                [self.config.kafka.predictions_topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
            )
            self._set(state="running")
            next_lag = time.monotonic() + 1.0
            while not self._stop.is_set():
                batch = self._poll()
                if batch:
                    self.handle_batch(batch)
                if time.monotonic() >= next_lag:
                    self._update_lag()
                    next_lag = time.monotonic() + self.lag_interval_s
            self._set(state="stopped")
        except Exception as exc:
            log.exception("prediction consumer failed")
            self._set(state="failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            if self._consumer is not None:
                try:
                    self._consumer.close()
                except (KafkaException, RuntimeError) as exc:
                    log.warning("closing the Kafka consumer failed: %s", exc)

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # Start where the database's rows end, not where the group's offsets say:
        # they differ after a crash between the two commits (the DB is ahead),
        # and for a new database, which must be rebuilt from the whole topic.
        stored = self.store.positions(self.config.kafka.predictions_topic)
        for tp in partitions:
            tp.offset = stored.get(tp.partition, OFFSET_BEGINNING)
        consumer.assign(partitions)
        self._set(assigned_partitions=sorted(tp.partition for tp in partitions))
        log.info("assigned partitions, starting at %s", {tp.partition: tp.offset for tp in partitions})

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        self._set(assigned_partitions=[])
        log.info("revoked partitions %s", [tp.partition for tp in partitions])

    def _poll(self) -> list[Any]:
        first = self._consumer.poll(self.poll_timeout_s)
        self._set(last_poll_ms=now_ms())
        if first is None:
            return []
        messages = [first]
        if self.batch_size > 1:
            # What is already fetched, without waiting for a full batch.
            messages.extend(self._consumer.consume(num_messages=self.batch_size - 1, timeout=0.005))
        return usable_messages(messages, lambda error: log.warning("consumer error: %s", error))

    def handle_batch(self, messages: Sequence[Any]) -> UpsertResult:
        """Store a batch (one transaction), then commit its offsets synchronously."""
        items: list[Incoming] = []
        rejected = 0
        for message in messages:
            value = message.value()
            record, reason = validate_record(value)
            if record is None:
                rejected += 1
                with self._lock:
                    self._rejected_reasons[reason or "unknown"] += 1
                log.warning(
                    "rejected prediction record %s[%d]@%d: %s",
                    message.topic(),
                    message.partition(),
                    message.offset(),
                    reason,
                )
                continue
            kind, ts = message.timestamp()
            items.append(
                Incoming(
                    record=record,
                    kafka_time=None if kind == TIMESTAMP_NOT_AVAILABLE else int(ts),
                    partition=message.partition(),
                    offset=message.offset(),
                    raw=value.decode() if isinstance(value, bytes) else value,
                )
            )
        offsets = commit_positions(messages)
        positions = [(tp.topic, tp.partition, tp.offset) for tp in offsets]
        while True:
            try:
                result = self.store.upsert_many(items, rejected=rejected, positions=positions)
                break
            except sqlite3.OperationalError as exc:
                # Locked or I/O trouble: nothing was committed, retry the same batch.
                if self._stop.is_set():
                    raise
                self._add(db_retries=1)
                log.warning("store write failed, retrying: %s", exc)
                time.sleep(1.0)
        if self._on_stored is not None:
            self._on_stored(result, items)
        self._commit(offsets)
        self._add(
            messages=len(messages),
            batches=1,
            stored=result.inserted,
            duplicates=result.duplicates,
            rejected=rejected,
        )
        self._set(last_message_ms=now_ms())
        return result

    def _commit(self, offsets: list[TopicPartition]) -> None:
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
            self._set(last_commit_ms=now_ms())
        except KafkaException as exc:
            # Rebalance or broker trouble: the batch is re-read and counted as replays.
            self._add(commit_errors=1)
            log.warning("offset commit failed (batch will be re-read): %s", exc)

    def _update_lag(self) -> None:
        """Records behind the high watermark over the assigned partitions (cheap: one request each)."""
        try:
            per_partition = assigned_lag(self._consumer)
        except KafkaException as exc:
            log.debug("lag query failed: %s", exc)
            return
        if per_partition is None:
            self._set(lag=None, lag_by_partition=None, lag_time_ms=now_ms())
            return
        self._set(lag=sum(per_partition.values()), lag_by_partition=per_partition, lag_time_ms=now_ms())
