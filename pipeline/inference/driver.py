"""The long-running inference driver: weather-features -> Ray actors -> weather-predictions.

Run as ``python -m pipeline.inference.driver --config <stack.yaml>``.

This module owns the Kafka side of the inference stage and its delivery
guarantee, and the driver process itself:

* consume `kafka.features_topic` in group `inference.consumer_group` with
  auto-commit off; take up to `inference.batch_size` messages per poll;
* validate each feature row; malformed ones go to `kafka.deadletter_topic`
  with a reason ``bad_feature_row:<why>`` and never stop the driver;
* predict through the actor pool (pipeline.inference.pool), stamp
  `features_kafka_time` (the feature record's broker timestamp);
* produce every prediction, keyed by schema.window_key, with an idempotent
  producer, wait for all acks, and only then commit the consumed offsets
  synchronously. A crash anywhere before the commit replays the batch:
  at-least-once, with duplicates counted downstream by (station, window);
* watch <model_dir>/CURRENT and roll a new version out to the actors;
* write periodic stats as JSON lines to <state_dir>/logs/inference-stats.jsonl
  and serve Prometheus metrics on <network.bind>:--metrics-port (default
  inference.metrics_port; 0 disables). The port opens only once an actor is
  ready and the consumer has subscribed, so "port open" means "driver ready";
* SIGTERM/SIGINT: finish the in-flight batch, commit, close, exit 0. If the
  batch cannot finish within --shutdown-grace-s (e.g. no Ray worker left),
  exit 3 without committing it (it is replayed by the next driver). A second
  signal abandons the batch at once. Exit 2: start-up failed (no model, no
  actor ready within --startup-timeout-s, metrics port taken, bad config).

Ray authentication: Ray reads RAY_AUTH_MODE once, at import. The driver sets
it from --ray-auth-mode (default: the environment's RAY_AUTH_MODE, else
"disabled") before importing Ray, and the cluster's head and workers must be
started with the same mode; otherwise a stray ~/.ray/auth_token silently
switches one side to token auth and the connection fails.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from prometheus_client import CollectorRegistry, Gauge, Histogram, start_http_server
from prometheus_client import Counter as PromCounter

from pipeline.config import REPO_ROOT, ConfigError, StackConfig, load_config
from pipeline.kafka_topics import assigned_lag, usable_messages
from pipeline.model import ModelError, current_version, model_path
from pipeline.schema import FEATURE_FIELDS, WEATHER_FIELDS, encode, now_ms, window_key

if TYPE_CHECKING:
    from pipeline.inference.pool import ActorPool, InferResult

log = logging.getLogger("pipeline.inference.driver")

DEFAULT_METRICS_PORT = 9102
DEADLETTER_PREFIX = "bad_feature_row"
MAX_DEADLETTER_PAYLOAD = 8_000  # keep dead letters under the 10 KB message ceiling
EXIT_OK = 0
EXIT_STARTUP_FAILED = 2
EXIT_UNCLEAN_STOP = 3

# Epoch ms values before this are not plausible event times (2001-09-09).
MIN_EPOCH_MS = 1_000_000_000_000
TEMPERATURE_RANGE = WEATHER_FIELDS["temperature_c"]


# --------------------------------------------------------------------- pure helpers


class StartupError(RuntimeError):
    """The driver cannot start (e.g. its metrics port is taken)."""


class BadFeature(ValueError):
    """A feature message that cannot be predicted; str() is the dead-letter reason."""

    def __init__(self, why: str) -> None:
        super().__init__(f"{DEADLETTER_PREFIX}:{why}")


def _reject_constant(name: str) -> float:
    # json.loads accepts NaN/Infinity; the pipeline's JSON never carries them.
    raise BadFeature(f"non_finite_number:{name}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_feature(value: bytes | str | None, filled: set[str] | None = None) -> dict[str, Any]:
    """Parse and check one weather-features message; raise BadFeature(reason) if unusable.

    Strict on what the model and the idempotent key need (station_id,
    window_start, window_end, temperature_mean); the remaining FEATURE_FIELDS
    are trace data: a missing one is filled with None rather than losing the
    prediction, and unknown extra fields pass through untouched. Names of
    filled-in fields are added to `filled` when given.
    """
    if value is None or len(value) == 0:
        raise BadFeature("empty")
    try:
        row = json.loads(value, parse_constant=_reject_constant)
    except BadFeature:
        raise
    except (ValueError, UnicodeDecodeError):
        raise BadFeature("malformed_json") from None
    if not isinstance(row, dict):
        raise BadFeature("not_an_object")
    for name in ("station_id", "window_start", "window_end", "temperature_mean"):
        if row.get(name) is None:
            raise BadFeature(f"missing_field:{name}")
    station = row["station_id"]
    if not isinstance(station, str) or not station or "|" in station:
        # "|" separates station and window in the idempotent key.
        raise BadFeature("mistyped_field:station_id")
    for name in ("window_start", "window_end"):
        if not _is_int(row[name]) or row[name] < MIN_EPOCH_MS:
            raise BadFeature(f"mistyped_field:{name}")
    if row["window_end"] <= row["window_start"]:
        raise BadFeature("bad_window:window_end<=window_start")
    temperature = row["temperature_mean"]
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool):
        raise BadFeature("mistyped_field:temperature_mean")
    if not math.isfinite(temperature) or not TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1]:
        raise BadFeature("out_of_range:temperature_mean")
    for name in FEATURE_FIELDS:
        if name not in row:
            row[name] = None
            if filled is not None:
                filled.add(name)
    return row


def kafka_timestamp(message: Any) -> int | None:
    """The record's timestamp in epoch ms (broker append time on LogAppendTime topics)."""
    kind, value = message.timestamp()
    return None if kind == TIMESTAMP_NOT_AVAILABLE else int(value)


def deadletter_record(message: Any, reason: str, stage: str = "inference") -> dict[str, Any]:
    """Dead-letter envelope for a consumed message that could not be processed."""
    raw = message.value()
    if isinstance(raw, bytes):
        payload = raw[:MAX_DEADLETTER_PAYLOAD].decode("utf-8", errors="replace")
    else:
        payload = None if raw is None else str(raw)[:MAX_DEADLETTER_PAYLOAD]
    key = message.key()
    return {
        "stage": stage,
        "reason": reason,
        "source_topic": message.topic(),
        "source_partition": message.partition(),
        "source_offset": message.offset(),
        "source_kafka_time": kafka_timestamp(message),
        "key": key.decode("utf-8", errors="replace") if isinstance(key, bytes) else key,
        "payload": payload,
        "payload_truncated": raw is not None and len(raw) > MAX_DEADLETTER_PAYLOAD,
        "deadletter_time": now_ms(),
    }


def commit_positions(messages: Iterable[Any]) -> list[TopicPartition]:
    """Offsets to commit after `messages`: the highest offset + 1 per partition."""
    highest: dict[tuple[str, int], int] = {}
    for message in messages:
        if message.error() is not None:
            continue
        key = (message.topic(), message.partition())
        highest[key] = max(highest.get(key, -1), message.offset())
    return [
        TopicPartition(topic, partition, offset + 1) for (topic, partition), offset in sorted(highest.items())
    ]


def reason_kind(reason: str) -> str:
    """Low-cardinality label of a dead-letter reason (drops the free-text detail)."""
    return ":".join(reason.split(":")[:2])


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """Exact percentiles of every value recorded in an interval (no sampling)."""
    if not values:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)

    def pct(q: float) -> float:
        # Nearest-rank percentile: an observed value, never an interpolation.
        rank = max(1, math.ceil(q / 100.0 * len(ordered)))
        return round(ordered[rank - 1], 3)

    return {
        "count": len(ordered),
        "p50": pct(50),
        "p95": pct(95),
        "p99": pct(99),
        "max": round(ordered[-1], 3),
        "mean": round(sum(ordered) / len(ordered), 3),
    }


# --------------------------------------------------------------------------- metrics


class DriverMetrics:
    """Counters kept twice: as Prometheus series and as plain totals for the stats file."""

    COUNTERS = (
        "batches",
        "messages",
        "rows",
        "predictions",
        "deadletters",
        "redispatches",
        "hedges",
        "timeouts",
        "actor_errors",
        "app_errors",
        "commits",
        "commit_errors",
        "delivery_errors",
        "kafka_errors",
        "rollouts",
    )

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.totals: Counter[str] = Counter()
        self._counters = {
            name: PromCounter(
                f"weather_inference_{name}",
                f"Inference driver: {name.replace('_', ' ')}",
                registry=self.registry,
            )
            for name in self.COUNTERS
        }
        self.deadletter_reasons = PromCounter(
            "weather_inference_deadletter_reasons",
            "Dead-lettered feature messages by reason",
            ["reason"],
            registry=self.registry,
        )
        ms_buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
        self.call_latency = Histogram(
            "weather_inference_actor_call_seconds",
            "Actor predict call round trip, driver side",
            buckets=ms_buckets,
            registry=self.registry,
        )
        self.batch_latency = Histogram(
            "weather_inference_batch_seconds",
            "Consumed batch -> predictions acked and offsets committed",
            buckets=ms_buckets,
            registry=self.registry,
        )
        self.actor_startup = Histogram(
            "weather_inference_actor_startup_seconds",
            "Actor creation -> ready",
            buckets=(0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120),
            registry=self.registry,
        )
        self.actors = Gauge("weather_inference_actors", "Ready inference actors", registry=self.registry)
        self.actors_starting = Gauge(
            "weather_inference_actors_starting", "Actors created, not ready yet", registry=self.registry
        )
        self.worker_nodes = Gauge(
            "weather_inference_ray_worker_nodes", "Alive Ray worker nodes", registry=self.registry
        )
        self.pool_resizes = Gauge(
            "weather_inference_pool_resizes", "Pool resizes since start", registry=self.registry
        )
        self.actor_restarts = Gauge(
            "weather_inference_actor_restarts", "Actor restarts seen since start", registry=self.registry
        )
        self.model_version = Gauge(
            "weather_inference_model_version", "Target model version", registry=self.registry
        )
        self.last_commit = Gauge(
            "weather_inference_last_commit_time_ms",
            "Epoch ms of the last offset commit",
            registry=self.registry,
        )
        self.consumer_lag = Gauge(
            "weather_inference_consumer_lag",
            "Records behind on weather-features (committed offsets of the driver's group)",
            registry=self.registry,
        )

    def add(self, name: str, amount: int = 1) -> None:
        if amount:
            self.totals[name] += amount
            self._counters[name].inc(amount)


# ---------------------------------------------------------------------------- driver


class _DeliveryRound:
    """Delivery reports of one produce round: which records failed, ack latencies."""

    def __init__(self, metrics: DriverMetrics, ack_ms: list[float]) -> None:
        self.metrics = metrics
        self.ack_ms = ack_ms
        self.failed: list[tuple[str, bytes | None, bytes]] = []
        self.fatal = False

    def report(self, record: tuple[str, bytes | None, bytes], err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.failed.append(record)
            self.fatal = self.fatal or err.fatal()
            self.metrics.add("delivery_errors")
            log.warning("delivery to %s failed: %s", record[0], err)
            return
        latency = msg.latency()
        if latency is not None:
            self.ack_ms.append(latency * 1000.0)


class InferenceDriver:
    """The consume -> infer -> produce -> flush -> commit loop, one batch at a time."""

    def __init__(
        self,
        config: StackConfig,
        pool: ActorPool,
        consumer: Any,
        producer_factory: Callable[[], Any],
        metrics: DriverMetrics,
        *,
        stats_path: Path | None = None,
        stats_interval_s: float = 5.0,
        pool_check_s: float = 3.0,
        model_check_s: float = 2.0,
        poll_timeout_s: float = 0.5,
        linger_s: float = 0.005,
        shutdown_grace_s: float = 60.0,
    ) -> None:
        self.config = config
        self.pool = pool
        self.consumer = consumer
        self._producer_factory = producer_factory
        self.producer = producer_factory()
        self.metrics = metrics
        self.stats_path = stats_path
        self.stats_interval_s = stats_interval_s
        self.pool_check_s = pool_check_s
        self.model_check_s = model_check_s
        self.poll_timeout_s = poll_timeout_s
        self.linger_s = linger_s
        self.shutdown_grace_s = shutdown_grace_s
        self.stopping = False
        self._stop_deadline: float | None = None
        self._force = False
        self._started = time.monotonic()
        # Values recorded since the last stats line; cleared when it is written.
        self._call_ms: list[float] = []
        self._batch_ms: list[float] = []
        self._ack_ms: list[float] = []
        self._commit_ms: list[float] = []
        self._actor_compute_ms: list[float] = []
        self._last_totals: Counter[str] = Counter()
        self._last_stats = time.monotonic()
        self._startup_seen = 0
        self._rollouts_seen = 0
        self._missing_trace_fields: set[str] = set()
        self._missing_version: int | None = None
        self._next_pool = self._next_model = 0.0
        self._next_stats = time.monotonic() + stats_interval_s

    # ------------------------------------------------------------------ control

    def request_stop(self, signum: int | None = None) -> None:
        """First call: finish the batch in flight, then stop. Second call: stop now."""
        if self.stopping:
            log.warning("second stop request: abandoning the batch in flight (it is not committed)")
            self._force = True
            return
        log.info("stop requested (signal %s): finishing the batch in flight", signum)
        self.stopping = True
        self._stop_deadline = time.monotonic() + self.shutdown_grace_s

    def should_abort(self) -> bool:
        return self._force or (self._stop_deadline is not None and time.monotonic() > self._stop_deadline)

    # --------------------------------------------------------------------- loop

    def run(self) -> int:
        """Process batches until stopped; returns the process exit code."""
        from pipeline.inference.pool import InferenceAborted  # lazily: the pool imports Ray (see main)

        code = EXIT_OK
        try:
            while not self.stopping:
                self.periodic()
                batch = self.poll_batch()
                if batch:
                    self.process_batch(batch)
        except InferenceAborted as exc:
            log.error("batch abandoned, offsets not committed: %s", exc)
            code = EXIT_UNCLEAN_STOP
        finally:
            self.write_stats()
        return code

    def periodic(self) -> None:
        """Pool maintenance, model check and stats, each at its own cadence.

        Also runs while a batch waits on the pool (a stall after node deaths),
        so the pool keeps resizing and the stats file keeps a line per interval.
        """
        now = time.monotonic()
        if now >= self._next_pool:
            self.pool.maintain()
            self.update_gauges()
            self._next_pool = now + self.pool_check_s
        if now >= self._next_model:
            self.check_model()
            self._next_model = now + self.model_check_s
        if now >= self._next_stats:
            self.update_lag()
            self.write_stats()
            self._next_stats = now + self.stats_interval_s

    def poll_batch(self) -> list[Any]:
        """Up to batch_size messages: wait for the first, then take what is already fetched."""
        first = self.consumer.poll(self.poll_timeout_s)
        if first is None:
            return []
        messages = [first]
        want = self.config.inference.batch_size - 1
        if want > 0:
            messages.extend(self.consumer.consume(num_messages=want, timeout=self.linger_s))
        return usable_messages(messages, self._on_consumer_error)

    def _on_consumer_error(self, error: KafkaError) -> None:
        self.metrics.add("kafka_errors")
        log.warning("consumer error: %s", error)

    def process_batch(self, messages: Sequence[Any]) -> None:
        """Infer, produce, await every ack, then commit. Raises InferenceAborted on a forced stop."""
        started = time.perf_counter()
        rows: list[dict[str, Any]] = []
        source: dict[tuple[str, int], Any] = {}  # (station, window) -> message, for dead letters
        deadletters: list[tuple[Any, dict[str, Any]]] = []
        filled: set[str] = set()
        for message in messages:
            try:
                row = parse_feature(message.value(), filled)
            except BadFeature as exc:
                deadletters.append((message.key(), deadletter_record(message, str(exc))))
                continue
            row["features_kafka_time"] = kafka_timestamp(message)
            rows.append(row)
            source[(row["station_id"], row["window_start"])] = message
        for name in sorted(filled - self._missing_trace_fields):
            self._missing_trace_fields.add(name)
            log.warning("feature rows lack the trace field %r (stored as null)", name)

        result = self.pool.infer(rows, self.should_abort, tick=self.periodic)
        self._record_inference(result)
        for row, reason in result.failed:
            message = source[(row["station_id"], row["window_start"])]
            deadletters.append((message.key(), deadletter_record(message, reason)))

        outgoing: list[tuple[str, bytes | None, bytes]] = [
            (
                self.config.kafka.predictions_topic,
                window_key(p["station_id"], p["window_start"]),
                encode(p),
            )
            for p in result.predictions
        ]
        outgoing += [(self.config.kafka.deadletter_topic, key, encode(env)) for key, env in deadletters]
        self.deliver(outgoing)
        self.commit(messages)

        self.metrics.add("batches")
        self.metrics.add("messages", len(messages))
        self.metrics.add("rows", len(rows))
        self.metrics.add("predictions", len(result.predictions))
        self.metrics.add("deadletters", len(deadletters))
        for _, envelope in deadletters:
            self.metrics.deadletter_reasons.labels(reason_kind(envelope["reason"])).inc()
        if deadletters:
            reasons = Counter(reason_kind(env["reason"]) for _, env in deadletters)
            log.warning("dead-lettered %d messages: %s", len(deadletters), dict(reasons))
        elapsed = time.perf_counter() - started
        self.metrics.batch_latency.observe(elapsed)
        self._batch_ms.append(elapsed * 1000.0)

    def _record_inference(self, result: InferResult) -> None:
        for call in result.calls:
            self.metrics.call_latency.observe(call.latency_ms / 1000.0)
            self._call_ms.append(call.latency_ms)
            if call.actor_ms is not None:
                self._actor_compute_ms.append(call.actor_ms)
        self.metrics.add("redispatches", result.redispatches)
        self.metrics.add("hedges", result.hedges)
        self.metrics.add("timeouts", result.timeouts)
        self.metrics.add("actor_errors", result.actor_errors)
        self.metrics.add("app_errors", result.app_errors)

    def deliver(self, outgoing: Sequence[tuple[str, bytes | None, bytes]]) -> None:
        """Produce every record and return only when the broker acked all of them.

        The idempotent producer retries transient errors itself; a record that
        still fails (delivery timeout, fatal producer state) is produced again,
        with a new producer after a fatal error, until acked or aborted.
        """
        from pipeline.inference.pool import InferenceAborted  # lazily: the pool imports Ray (see main)

        todo = list(outgoing)
        while todo:
            round_ = _DeliveryRound(self.metrics, self._ack_ms)
            for record in todo:
                topic, key, value = record
                while True:
                    try:
                        self.producer.produce(
                            topic, value=value, key=key, on_delivery=functools.partial(round_.report, record)
                        )
                        break
                    except BufferError:
                        # Local queue full: serve delivery reports to make room.
                        self.producer.poll(0.1)
                        if self.should_abort():
                            raise InferenceAborted("stopped while producing") from None
            while len(self.producer) > 0:
                self.producer.flush(1.0)
                if self.should_abort():
                    raise InferenceAborted(f"stopped with {len(self.producer)} records unacknowledged")
            if round_.fatal:
                log.error("producer is in a fatal state: replacing it")
                self.producer = self._producer_factory()
            if round_.failed:
                time.sleep(0.5)
            todo = round_.failed

    def commit(self, messages: Sequence[Any]) -> None:
        offsets = commit_positions(messages)
        if not offsets:
            return
        started = time.perf_counter()
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            # E.g. a rebalance took the partitions away: the new owner replays the
            # batch; its predictions are duplicates the API counts, nothing is lost.
            self.metrics.add("commit_errors")
            log.warning("offset commit failed (batch will be replayed): %s", exc)
            return
        self._commit_ms.append((time.perf_counter() - started) * 1000.0)
        self.metrics.add("commits")
        self.metrics.last_commit.set(now_ms())

    # ------------------------------------------------------------ model / stats

    def check_model(self) -> None:
        try:
            version = current_version(self.config.model_dir)
        except (OSError, ValueError) as exc:
            log.warning("cannot read the current model version: %s", exc)
            return
        if version is not None and version != self.pool.target_version:
            if not model_path(self.config.model_dir, version).exists():
                if version != self._missing_version:
                    self._missing_version = version
                    log.error(
                        "CURRENT names model v%s but %s is missing: not rolling out",
                        version,
                        model_path(self.config.model_dir, version),
                    )
                return
            self.pool.rollout(version)
            self.metrics.add("rollouts")
        if self.pool.target_version is not None:
            self.metrics.model_version.set(self.pool.target_version)

    def update_lag(self) -> None:
        """The consumer group's lag as a gauge (NaN before the first assignment)."""
        try:
            lag = assigned_lag(self.consumer)
        except (KafkaException, RuntimeError) as exc:  # a broker restart: try again next interval
            log.debug("lag query failed: %s", exc)
            return
        self.metrics.consumer_lag.set(float("nan") if lag is None else sum(lag.values()))

    def update_gauges(self) -> dict[str, Any]:
        """Refresh the pool gauges; returns the pool snapshot they came from."""
        pool = self.pool.snapshot()
        self.metrics.actors.set(pool["actors"])
        self.metrics.actors_starting.set(pool["actors_starting"])
        self.metrics.worker_nodes.set(pool["alive_worker_nodes"])
        self.metrics.pool_resizes.set(pool["pool_resizes"])
        self.metrics.actor_restarts.set(pool["actor_restarts"])
        return pool

    def stats_line(self) -> dict[str, Any]:
        now = time.monotonic()
        interval = max(1e-9, now - self._last_stats)
        delta = {name: self.metrics.totals[name] - self._last_totals[name] for name in DriverMetrics.COUNTERS}
        pool = self.update_gauges()
        startups = self.pool.startup_ms[self._startup_seen :]
        rollouts = self.pool.rollouts_done[self._rollouts_seen :]
        for value in startups:
            self.metrics.actor_startup.observe(value / 1000.0)
        line = {
            "time_ms": now_ms(),
            "uptime_s": round(now - self._started, 1),
            "interval_s": round(interval, 3),
            "stopping": self.stopping,
            "interval": delta,
            "totals": dict(self.metrics.totals),
            "predictions_per_s": round(delta["predictions"] / interval, 1),
            "rows_per_s": round(delta["rows"] / interval, 1),
            "call_latency_ms": summarize(self._call_ms),
            "actor_compute_ms": summarize(self._actor_compute_ms),
            "batch_latency_ms": summarize(self._batch_ms),
            "produce_ack_ms": summarize(self._ack_ms),
            "commit_ms": summarize(self._commit_ms),
            "actor_startup_ms": [round(v, 1) for v in startups],
            "rollouts": [{"version": v, "ms": round(ms, 1)} for v, ms in rollouts],
            "pool": pool,
        }
        self._startup_seen += len(startups)
        self._rollouts_seen += len(rollouts)
        self._last_totals = Counter(self.metrics.totals)
        self._last_stats = now
        for values in (self._call_ms, self._actor_compute_ms, self._batch_ms, self._ack_ms, self._commit_ms):
            values.clear()
        return line

    def write_stats(self) -> None:
        line = self.stats_line()
        if self.stats_path is not None:
            self.stats_path.parent.mkdir(parents=True, exist_ok=True)
            with self.stats_path.open("a") as fh:
                fh.write(json.dumps(line, separators=(",", ":"), default=str) + "\n")
        log.info(
            "stats: %s pred/s, %d actors on %d worker nodes, call p50/p95 %s/%s ms, totals %s",
            line["predictions_per_s"],
            line["pool"]["actors"],
            line["pool"]["alive_worker_nodes"],
            line["call_latency_ms"]["p50"],
            line["call_latency_ms"]["p95"],
            {k: v for k, v in line["totals"].items() if v},
        )

    def close(self) -> None:
        """Leave the consumer group and drain the producer (offsets are already committed)."""
        try:
            self.consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.warning("consumer close failed: %s", exc)
        remaining = self.producer.flush(10.0)
        if remaining:
            log.warning("%d produced records still unacknowledged at exit", remaining)


# ------------------------------------------------------------------------------ main


def kafka_consumer_config(config: StackConfig) -> dict[str, Any]:
    return {
        "bootstrap.servers": config.kafka.bootstrap_servers,
        "group.id": config.inference.consumer_group,
        "client.id": f"inference-driver-{os.getpid()}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        # A crashed driver's partitions go to its successor after this long
        # (librdkafka's 45 s default would stall a restart that long).
        "session.timeout.ms": 10_000,
        "heartbeat.interval.ms": 2_000,
        # A batch may wait for a restarted actor; stay in the group meanwhile.
        "max.poll.interval.ms": max(300_000, int(config.inference.call_timeout_s * 1000 * 4)),
    }


def kafka_producer_config(config: StackConfig) -> dict[str, Any]:
    return {
        "bootstrap.servers": config.kafka.bootstrap_servers,
        "client.id": f"inference-driver-{os.getpid()}",
        "enable.idempotence": True,  # implies acks=all and safe, ordered retries
        "linger.ms": 5,
        "compression.type": "lz4",
    }


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.inference.driver",
        description="Inference driver: weather-features -> Ray actor pool -> weather-predictions.",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="stack YAML (default include/stack/local.yaml)"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help=f"Prometheus port (default inference.metrics_port, else {DEFAULT_METRICS_PORT}; "
        "0 disables). It opens once an actor is ready and the consumer subscribed: a readiness signal.",
    )
    parser.add_argument(
        "--ray-auth-mode",
        choices=("disabled", "token"),
        default=os.environ.get("RAY_AUTH_MODE", "disabled"),
        help="RAY_AUTH_MODE; must match the cluster (default: $RAY_AUTH_MODE, else disabled)",
    )
    parser.add_argument(
        "--actor-cpus", type=float, default=0.25, help="CPUs reserved per actor (default 0.25)"
    )
    parser.add_argument(
        "--actors-per-node", type=int, default=1, help="actors per alive worker node (default 1)"
    )
    parser.add_argument("--stats-interval-s", type=float, default=5.0, help="stats line period (default 5)")
    parser.add_argument("--pool-check-s", type=float, default=3.0, help="pool resize period (default 3)")
    parser.add_argument("--model-check-s", type=float, default=2.0, help="CURRENT poll period (default 2)")
    parser.add_argument(
        "--startup-timeout-s", type=float, default=120.0, help="wait for the first ready actor (default 120)"
    )
    parser.add_argument(
        "--shutdown-grace-s",
        type=float,
        default=60.0,
        help="max time to finish the batch on SIGTERM (default 60)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.actor_cpus <= 0:
        log.error("--actor-cpus must be > 0, got %s", args.actor_cpus)
        return EXIT_STARTUP_FAILED
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        log.error("%s", exc)
        return EXIT_STARTUP_FAILED
    metrics_port = args.metrics_port
    if metrics_port is None:
        metrics_port = int(getattr(config.inference, "metrics_port", DEFAULT_METRICS_PORT))
    if not 0 <= metrics_port <= 65535:
        log.error("--metrics-port must be 0..65535, got %d", metrics_port)
        return EXIT_STARTUP_FAILED
    model_dir = config.model_dir
    try:
        version = current_version(model_dir)
    except (OSError, ValueError) as exc:
        log.error("cannot read the current model version in %s: %s", model_dir, exc)
        return EXIT_STARTUP_FAILED
    if version is None:
        log.error("no model in %s: run the batch layer (training) first", model_dir)
        return EXIT_STARTUP_FAILED

    # Ray reads RAY_AUTH_MODE once, when it is imported: set it first.
    os.environ["RAY_AUTH_MODE"] = args.ray_auth_mode
    import ray
    from ray.job_config import JobConfig

    from pipeline.inference.pool import ActorPool, InferenceAborted, NoActorsError

    stop_early = threading.Event()

    def early_stop(signum: int, _frame: Any) -> None:
        stop_early.set()

    log.info("connecting to Ray at %s (RAY_AUTH_MODE=%s)", config.ray.address, args.ray_auth_mode)
    ray.init(
        address=config.ray.address,
        namespace="weather-inference",
        # Workers import pipeline.inference.actors by name: put the repository on their path.
        job_config=JobConfig(code_search_path=[str(REPO_ROOT)]),
        logging_level=logging.WARNING,
    )
    # ray.init installs a SIGTERM handler that exits at once; ours finishes the batch.
    signal.signal(signal.SIGTERM, early_stop)
    signal.signal(signal.SIGINT, early_stop)

    metrics = DriverMetrics()
    metrics_server = None
    pool = ActorPool(
        model_dir,
        version,
        call_timeout_s=config.inference.call_timeout_s,
        actor_cpus=args.actor_cpus,
        actors_per_node=args.actors_per_node,
        min_actors=config.inference.min_actors,
        hedge_after_s=config.inference.hedge_after_s or None,
    )
    code = EXIT_OK
    driver: InferenceDriver | None = None
    try:
        pool.wait_ready(args.startup_timeout_s, should_abort=stop_early.is_set)
        consumer = Consumer(kafka_consumer_config(config))
        consumer.subscribe([config.kafka.features_topic])
        driver = InferenceDriver(
            config,
            pool,
            consumer,
            lambda: Producer(kafka_producer_config(config)),
            metrics,
            stats_path=config.state_dir / "logs" / "inference-stats.jsonl",
            stats_interval_s=args.stats_interval_s,
            pool_check_s=args.pool_check_s,
            model_check_s=args.model_check_s,
            shutdown_grace_s=args.shutdown_grace_s,
        )
        active = driver
        signal.signal(signal.SIGTERM, lambda signum, _frame: active.request_stop(signum))
        signal.signal(signal.SIGINT, lambda signum, _frame: active.request_stop(signum))
        if stop_early.is_set():
            driver.request_stop()
        if metrics_port:
            # Opened last on purpose: the stack runtime takes the open port as "driver ready".
            try:
                metrics_server, _ = start_http_server(
                    metrics_port, addr=config.network.bind, registry=metrics.registry
                )
            except OSError as exc:
                raise StartupError(
                    f"cannot serve metrics on {config.network.bind}:{metrics_port}: {exc}"
                ) from exc
            log.info("Prometheus metrics on http://%s:%d/metrics", config.network.bind, metrics_port)
        log.info(
            "consuming %s as group %s, producing %s (batch %d, call timeout %.0f s)",
            config.kafka.features_topic,
            config.inference.consumer_group,
            config.kafka.predictions_topic,
            config.inference.batch_size,
            config.inference.call_timeout_s,
        )
        code = driver.run()
    except (NoActorsError, ModelError, StartupError) as exc:
        log.error("%s", exc)
        code = EXIT_STARTUP_FAILED
    except InferenceAborted as exc:
        log.info("stopped during start-up: %s", exc)
    finally:
        if driver is not None:
            driver.close()
        pool.shutdown()
        if metrics_server is not None:
            metrics_server.shutdown()
        ray.shutdown()
    log.info("inference driver exits with code %d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
