"""One benchmark step on the real pipeline: shape the stack, load it, measure, account, verdict.

`Bench` owns a benchmark session against one stack (its own state dir, so
checkpoints and API rows never mix with a production run). For each step
it:

1. shapes the stack as the step asks (Spark workers, Ray worker nodes,
   partitions of the benchmark topic), restarting the streaming job on a
   fresh checkpoint only when the window settings change;
2. starts the collectors (resources, Kafka throughput and lag, Spark, Ray,
   optional Locust load on the serving API);
3. runs open-loop load on `weather-raw-benchmark` with stations named by a
   prefix unique to the step and repetition, then closes the last windows;
4. waits until the serving API holds every window, or the drain timeout;
5. turns what it saw into metrics: stage latency histograms over windows
   after the warm-up, offered vs achieved throughput, producer metrics,
   lag trends, loss/duplicate accounting, Spark/Ray/resource metrics, a
   sustainability verdict against the SLOs and the named bottleneck tier;
   with bad input mixed into the load, the dead letters the step produced
   matched against the bad records it sent (weatherbench.badinput).

Definitions are in the README's measurement section.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.accounting import Accounting, account, expected_windows, fetch_predictions, stage_latencies
from pipeline.config import SECTIONS, StackConfig, load_config
from pipeline.kafka_topics import (
    APPEND_TIME,
    TopicError,
    admin_client,
    delete_topics,
    describe_cluster,
    describe_topics,
    ensure_topic,
    set_partitions,
)
from pipeline.producer.badrecords import BadInputSpec
from pipeline.producer.loadgen import LoadResult, LoadSpec, close_windows, run_open_loop
from pipeline.producer.observations import ObservationSource, make_source
from pipeline.producer.producer import DeliveryLedger, WeatherProducer
from pipeline.stack import get_stack
from pipeline.stack.base import COMPONENTS, KAFKA, RAY_WORKER, SPARK_WORKER, STREAMING_JOB, Stack
from pipeline.stack.monitoring import PrometheusClient
from weatherbench.audit import Gap, audit, gaps_by_stage
from weatherbench.badinput import check_dead_letters
from weatherbench.collectors.api_load import ApiLoadCollector, ApiLoadSpec
from weatherbench.collectors.base import Collector
from weatherbench.collectors.deadletter import DeadLetterCollector
from weatherbench.collectors.kafka import (
    KafkaFlowCollector,
    KafkaProgressTail,
    ProgressTail,
    clock_sanity,
    topic_metrics,
)
from weatherbench.collectors.prometheus import PrometheusCollector, load_queries
from weatherbench.collectors.ray import RayCollector
from weatherbench.collectors.resources import ResourceSampler
from weatherbench.collectors.spark import SparkCollector
from weatherbench.exporter import HARNESS
from weatherbench.faults import FaultInjector, recovery
from weatherbench.metrics import Metric, Series
from weatherbench.stats import LatencyHistogram, balance_score, lag_trend, name_bottleneck, percentile_key
from weatherbench.workloads import LoadSettings, Slo, StackShape, Step, TestPlan

log = logging.getLogger(__name__)

CLOCK_TOPIC = "weather-bench-clock"
# The audit reads the topics from a little before the step's first send (broker append times).
AUDIT_SLACK_MS = 1000
GAPS_LOGGED = 10  # gaps printed to the progress log; all are counted in the metrics
# Bytes of an encoded observation without padding (measured: producer.message_size.mean).
NATURAL_MESSAGE_BYTES = 240
# A sender with more than this share of messages late (> 100 ms) cannot offer the rate: the
# generator (or the machine under it), not the pipeline, is then the limit, and the step says
# so. A few late sends do not: latency counts from the intended time either way.
SENDER_BEHIND_LIMIT = 0.05
# After the served windows are drained, how long the dead letters of the step's bad records may
# still take (the dead-letter query runs beside the features query, on the same trigger).
DEADLETTER_WAIT_S = 60.0
STAGE_NAMES = {  # accounting's stage labels -> metric names
    "T1 ingestion->kafka append": "t1_producer",
    "producer ack (send->ack)": "producer_ack",
    "T2 kafka->spark batch (max in window)": "t2_kafka_spark",
    "T3 spark batch->features in kafka": "t3_spark",
    "T4 features in kafka->ray start": "t4_kafka_ray",
    "T5 ray inference": "t5_inference",
    "T6 prediction in kafka->api": "t6_kafka_api",
    "window end->api (window close)": "window_close",
    "latest ingestion->api (end to end)": "e2e",
}


def bench_config(base: StackConfig, shape: StackShape, state_dir: Path | None = None) -> StackConfig:
    """The stack configuration a benchmark runs with: base ports and sizes, the step's shape."""
    overrides: dict[str, Any] = {
        "state_dir": str(state_dir or base.state_dir / "bench"),
        "backend": base.backend,
        "spark": {
            "window": shape.window,
            "watermark": shape.watermark,
            "trigger": shape.trigger,
            "workers": shape.spark_workers,
        },
        "ray": {"workers": shape.ray_workers},
        "kafka": {"brokers": shape.brokers},
    }
    base_dict = base.to_dict()
    for section in SECTIONS:
        merged = dict(base_dict[section])
        merged.update(overrides.get(section, {}))
        overrides[section] = merged
    return load_config(overrides=overrides, environ={})


class PaddedSource:
    """Observations padded with a `pad` field so each encoded message is about `target_bytes`."""

    def __init__(self, inner: ObservationSource, target_bytes: int) -> None:
        self.inner = inner
        self.name = f"{inner.name}+pad{target_bytes}"
        # The envelope (ids, trace stamps, weather fields) plus `"pad":""` is the natural size.
        self.pad = "x" * max(0, target_bytes - NATURAL_MESSAGE_BYTES - len(',"pad":""'))

    def observe(self, station_id: str, event_time_ms: int) -> dict[str, Any]:
        return {**self.inner.observe(station_id, event_time_ms), "pad": self.pad}


@dataclass
class StepOutcome:
    """Everything one step of one repetition measured."""

    step: Step
    repetition: int
    station_prefix: str
    metrics: list[Metric] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    histograms: dict[str, LatencyHistogram] = field(default_factory=dict)
    sustained: bool = False
    reasons: list[str] = field(default_factory=list)  # why not sustained
    bottleneck: str | None = None
    bottleneck_reasons: list[str] = field(default_factory=list)
    accounting: dict[str, Any] = field(default_factory=dict)
    partition_counts: dict[int, int] = field(default_factory=dict)
    api_users: int = 0  # Locust users querying the API during the step
    faults: list[dict[str, Any]] = field(default_factory=list)  # one record per injected fault
    gaps: list[Gap] = field(default_factory=list)  # where served windows fell short, by stage
    bad_input: dict[str, Any] = field(default_factory=dict)  # dead letters vs bad records sent
    skipped: str = ""  # why the step was not run (the stack cannot take its shape or faults)

    def value(self, name: str, component: str | None = None) -> float:
        for metric in self.metrics:
            if metric.name == name and (component is None or metric.component == component):
                return metric.value
        return float("nan")


def served_window_latency(rows: list[dict], started_ms: int) -> Series:
    """(seconds since the step started when the window was served, its close latency in ms)."""
    points = sorted(
        ((float(r["api_time"]) - started_ms) / 1000, float(r["api_time"]) - float(r["window_end"]))
        for r in rows
        if r.get("api_time") is not None and r.get("window_end") is not None
    )
    return Series("latency.window_close.served", "ms", points)


def _latency_metrics(histograms: dict[str, LatencyHistogram]) -> list[Metric]:
    result = []
    for name, histogram in histograms.items():
        summary = histogram.summary()
        for key in (
            "count",
            "min",
            "mean",
            *(percentile_key(q) for q in (50, 95, 99, 99.9)),
            "max",
            "negative",
        ):
            unit = "samples" if key in ("count", "negative") else "ms"
            result.append(Metric(f"latency.{name}.{key}", summary[key], unit))
    return result


def producer_samples(ledger: DeliveryLedger, prefix: str, measured_from_ms: int) -> dict[str, list[float]]:
    """T1 and ack-latency samples of this step's stations sent after the warm-up."""

    def measured(key: tuple[str, int]) -> bool:
        return key[0].startswith(prefix) and ledger.event_times.get(key, 0) >= measured_from_ms

    return {
        "T1 ingestion->kafka append": [
            float(v) for v, key in zip(ledger.t1_ms, ledger.t1_keys, strict=True) if measured(key)
        ],
        "producer ack (send->ack)": [
            v for v, key in zip(ledger.ack_latency_ms, ledger.ack_keys, strict=True) if measured(key)
        ],
    }


def _producer_metrics(
    result: LoadResult, prefix: str, seconds: float, per_partition: dict[int, int], bytes_sent: int
) -> list[Metric]:
    ledger = result.ledger
    acked = sum(len(v) for k, v in ledger.acked.items() if k.startswith(prefix))
    attempted = result.sent
    ack = (
        LatencyHistogram()
        .record_all(producer_samples(ledger, prefix, 0)["producer ack (send->ack)"])
        .summary()
    )
    metrics = [
        Metric("producer.sent", float(attempted), "messages", "producer"),
        Metric("producer.acked", float(acked), "messages", "producer"),
        Metric("producer.failed", float(len(ledger.failed)), "messages", "producer"),
        Metric(
            "producer.error_rate",
            100.0 * len(ledger.failed) / attempted if attempted else 0.0,
            "%",
            "producer",
        ),
        Metric("producer.ack_latency.p50", ack["p50"], "ms", "producer"),
        Metric("producer.ack_latency.p99", ack["p99"], "ms", "producer"),
        Metric(
            "producer.message_size.mean",
            bytes_sent / acked if acked else float("nan"),
            "bytes",
            "producer",
        ),
        Metric("producer.behind", float(result.behind_count), "messages", "producer"),
        Metric("producer.max_behind", float(result.max_behind_ms), "ms", "producer"),
        Metric("throughput.offered", result.offered_rate, "msg/s", "producer"),
        Metric("throughput.achieved", result.achieved_rate, "msg/s", "producer"),
    ]
    for partition, count in sorted(per_partition.items()):
        metrics.append(Metric("producer.partition_rate", count / seconds, "msg/s", f"partition-{partition}"))
    return metrics


def sustainability(
    outcome: StepOutcome, load: LoadSettings, slo: Slo, load_seconds: float, accounting: Accounting
) -> tuple[bool, list[str], dict[str, list[str]]]:
    """Whether the step sustained its offered load, why not, and each tier's saturation signals."""
    reasons: list[str] = []
    signals: dict[str, list[str]] = {tier: [] for tier in ("producer", "kafka", "spark", "ray", "api", "cpu")}
    tolerance = slo.lag_slope_fraction * load.rate
    for series in outcome.series:
        stage = series.name.removeprefix("lag.")
        if not series.name.startswith("lag.") or "partition" in series.name:
            continue
        window = [(t, v) for t, v in series.points if load.warmup_s <= t <= load_seconds]
        trend = lag_trend(window)
        outcome.metrics.append(Metric(f"lag.{stage}.slope", trend.slope, "msg/s", stage))
        if trend.points >= 3 and not trend.is_flat(tolerance):
            text = f"{stage} lag grows {trend.slope:.1f} msg/s (95% CI {trend.low:.1f}..{trend.high:.1f})"
            signals["ray" if stage == "ray" else stage].append(text)
            reasons.append(text)
    sent = outcome.value("producer.sent")
    behind = outcome.value("producer.behind")
    if sent and behind / sent > SENDER_BEHIND_LIMIT:
        text = f"the load generator sent {behind:.0f} of {sent:.0f} messages over 100 ms late"
        signals["producer"].append(text)
        reasons.append(text)
    ack_p99 = outcome.value("producer.ack_latency.p99")
    if ack_p99 > slo.producer_p95_ms * 5:
        signals["kafka"].append(f"producer ack p99 {ack_p99:.0f} ms")
    if outcome.value("producer.failed") > 0:
        signals["kafka"].append(f"{outcome.value('producer.failed'):.0f} sends failed")
        reasons.append("sends failed")
    if outcome.value("spark.batches_over_interval") > 0.5 * max(1.0, outcome.value("spark.batches")):
        signals["spark"].append("most micro-batches took longer than the trigger interval")
    if outcome.value("lag.spark.max") > slo.spark_lag_max:
        signals["spark"].append(
            f"spark lag reached {outcome.value('lag.spark.max'):.0f} > {slo.spark_lag_max:.0f}"
        )
    if outcome.value("lag.ray.max") > slo.ray_lag_max:
        signals["ray"].append(f"ray lag reached {outcome.value('lag.ray.max'):.0f} > {slo.ray_lag_max:.0f}")
    if outcome.value("resources.machine.cpu.mean") > 90:
        signals["cpu"].append(f"machine CPU {outcome.value('resources.machine.cpu.mean'):.0f}% on average")
    e2e = outcome.value("latency.e2e.p95")
    if e2e > slo.e2e_p95_ms:
        reasons.append(f"end-to-end p95 {e2e / 1000:.1f} s > SLO {slo.e2e_p95_ms / 1000:.0f} s")
    close = outcome.value("latency.window_close.p95")
    if close > slo.window_close_p95_ms:
        reasons.append(f"window-close p95 {close / 1000:.1f} s > SLO {slo.window_close_p95_ms / 1000:.0f} s")
    if not accounting.complete:
        reasons.append(
            f"{accounting.lost_messages} messages not served ({len(accounting.missing_windows)} windows "
            f"missing, {len(accounting.short_windows)} short) within the drain timeout"
        )
    return not reasons, reasons, signals


class Bench:
    """A benchmark session against one stack."""

    def __init__(
        self,
        base: StackConfig,
        shape: StackShape,
        out_dir: Path,
        progress: Callable[[str], None] = print,
        state_dir: Path | None = None,
        kafka_admin: Callable[[], Any] | None = None,
        docker_client: Callable[[], Any] | None = None,
    ) -> None:
        """`kafka_admin` makes the AdminClient topic changes go through (an orchestrator's hook, say);
        `docker_client` gives the compose backend its Docker API client the same way."""
        self.base = base
        self.kafka_admin = kafka_admin
        self.docker_client = docker_client
        self.config = bench_config(base, shape, state_dir)
        self.stack: Stack = self._stack(self.config)
        self.out_dir = out_dir
        self.progress = progress
        self.tag = uuid.uuid4().hex[:6]
        self.shape = shape

    def _stack(self, config: StackConfig) -> Stack:
        return get_stack(config, docker_client=self.docker_client() if self.docker_client else None)

    def skip_reason(self, plan: TestPlan, step: Step) -> str:
        """Why this stack cannot run `step` as asked ("" when it can), before anything changes.

        A backend that cannot scale, break or re-partition (an external cluster) runs a step only
        when the cluster already has the shape the step varies, and steps with faults not at all.
        Only what the test varies is compared: a latency step runs on any worker count.
        """
        refused = self.stack.unsupported
        wanted = step.stack
        if step.faults and refused("faults"):
            return str(refused("faults"))
        if plan.test in ("partitions", "brokers"):
            admin = self._admin()
            if plan.test == "brokers" and refused("brokers"):
                brokers = len(describe_cluster(admin).brokers)
                if brokers != wanted.brokers:
                    asked = f"the step asks for {wanted.brokers} broker(s), the cluster has {brokers}"
                    return f"{refused('brokers')}: {asked}"
            current = describe_topics(admin).get(self.config.kafka.benchmark_topic)
            other_count = current is not None and current.partitions != wanted.partitions
            if plan.test == "partitions" and refused("partitions") and other_count:
                return (
                    f"{refused('partitions')}: the step asks for {wanted.partitions} partitions of "
                    f"{current.name}, it has {current.partitions}"
                )
            return ""
        if plan.test.startswith("scalability-") and refused("scale"):
            status = self.stack.status()
            for component, count, what in (
                (SPARK_WORKER, wanted.spark_workers, "Spark workers"),
                (RAY_WORKER, wanted.ray_workers, "Ray worker nodes"),
            ):
                if status.running(component) != count:
                    have = status.running(component)
                    return f"{refused('scale')}: the step asks for {count} {what}, the stack has {have}"
        return ""

    def _producer(self) -> WeatherProducer:
        """The load's producer, its deliveries counted in the harness's Prometheus series too."""
        HARNESS.serve(self.config)
        return WeatherProducer(
            self.config.kafka.bootstrap_servers, self.config.kafka.benchmark_topic, metrics=HARNESS.producer
        )

    # ------------------------------------------------------------------ stack shaping
    def _copy_model(self) -> None:
        """Reuse the batch layer's model of the base stack, if any, instead of training again."""
        target = self.config.model_dir
        source = self.base.model_dir
        if (target / "CURRENT").exists() or not (source / "CURRENT").exists():
            return
        shutil.copytree(source, target, dirs_exist_ok=True)

    def _running_config(self) -> StackConfig | None:
        """The configuration the stack in this state dir was last brought up with, if any."""
        path = self.config.stack_file
        return load_config(path, environ={}) if path.exists() else None

    def _window_settings_differ(self, other: StackConfig) -> bool:
        return any(
            getattr(other.spark, key) != getattr(self.config.spark, key)
            for key in ("window", "watermark", "trigger")
        )

    def up(self, components: tuple[str, ...] | None = None) -> None:
        """Bring the benchmark stack up in the session's shape (window settings changed: fresh checkpoint)."""
        previous = self._running_config()
        if previous is not None and previous.kafka.brokers != self.config.kafka.brokers:
            # The KRaft quorum is formatted for its broker count: a new count is a new cluster.
            self.progress(
                f"Kafka brokers {previous.kafka.brokers} -> {self.config.kafka.brokers}: "
                "stopping the stack and starting a fresh cluster"
            )
            self._stack(previous).down(purge=True)
        elif previous is not None and self._window_settings_differ(previous):
            self.progress("window settings changed: restarting the pipeline on a fresh checkpoint")
            self.stack.down()
            shutil.rmtree(self.config.state_dir / "checkpoints", ignore_errors=True)
        self._copy_model()
        began = time.monotonic()
        # Kafka first, so the benchmark topic gets the session's partition count before a
        # streaming job reads it (an earlier Kafka-only partition run may have grown it).
        self.stack.up((KAFKA,))
        # A stack that refuses partition changes keeps its topic as it is (created if missing).
        if not self.stack.unsupported("partitions") or not self._benchmark_topic_exists():
            self.set_benchmark_partitions(self.shape.partitions)
        self.stack.up(components or COMPONENTS)
        self.progress(f"stack up in {time.monotonic() - began:.0f} s (state in {self.config.state_dir})")

    def ensure_up(self, step: Step, timeout_s: float) -> bool:
        """The whole pipeline up in the step's broker count and window settings; True if it started.

        Only a stack that had to start anything (or to change its Kafka cluster or window
        settings) is primed: a warm pipeline left running by the step before stays as it is.
        """
        previous = self._running_config()
        status = self.stack.status()
        missing = [c for c in COMPONENTS if status.running(c) == 0]
        reshaped = (
            previous is None
            or previous.kafka.brokers != self.config.kafka.brokers
            or self._window_settings_differ(previous)
        )
        if not missing and not reshaped:
            return False
        self.up()
        self.prime(step, timeout_s)
        return True

    def heal(self, step: Step, timeout_s: float) -> list[str]:
        """After a fault step: start whatever is not running, and prime again if anything was.

        Returns the components that had to be started, so the report can say a fault
        outlived its step (a crashed streaming job, say) instead of hiding it. A supervised
        service waiting out its restart back-off counts as down: `up` leaves its supervisor
        to start it (nothing is started twice), and priming waits until it serves again.
        """
        status = self.stack.status()
        down = sorted({i.component for i in status.instances if not i.running})
        if down:
            self.progress(f"after the faults, starting again: {', '.join(down)}")
            self.stack.up(COMPONENTS)
            self.shape_stack(step.stack)
            self.prime(step, timeout_s)
        return down

    def reconfigure_brokers(self, brokers: int) -> None:
        """Kafka alone with `brokers` brokers (a fresh cluster when the count changes)."""
        self.shape = replace(self.shape, brokers=brokers)
        self.config = bench_config(self.base, self.shape, self.config.state_dir)
        self.stack = self._stack(self.config)
        self.up((KAFKA,))

    def prime(self, step: Step, timeout_s: float) -> None:
        """Load a freshly started pipeline until it serves, so its start-up is not in any step.

        A new streaming job's first micro-batches take many times the steady ones (JVM and
        code generation warm-up); the priming load is sent and drained but not recorded.
        """
        seconds = max(step.load.warmup_s, 20.0)
        prefix = f"{step.load.station_prefix}{self.tag}prime"
        self.progress(f"priming the pipeline: {step.load.rate:g} msg/s for {seconds:g} s")
        began = time.monotonic()
        producer = self._producer()
        spec = LoadSpec(
            stations=step.load.stations, rate=step.load.rate, duration_s=seconds, station_prefix=prefix
        )
        result = run_open_loop(producer, make_source(step.load.source), spec)
        close_windows(
            producer,
            make_source(step.load.source),
            result.last_event_ms,
            step.stack.window_ms,
            step.stack.watermark_ms,
        )
        producer.flush(10)
        expected = expected_windows(result.ledger, step.stack.window_ms, prefix + "-")
        served = account(expected, self._drain(expected, prefix + "-", timeout_s))
        windows = f"{served.served_windows}/{served.expected_windows}"
        self.progress(f"   primed in {time.monotonic() - began:.0f} s: {windows} windows served")

    def shape_stack(self, shape: StackShape) -> None:
        """Workers and partitions as the step asks; a stack that refuses such changes keeps its own."""
        if self.stack.unsupported("scale"):
            return
        status = self.stack.status()
        if status.running(SPARK_WORKER) != shape.spark_workers:
            self.progress(f"scaling Spark workers to {shape.spark_workers}")
            self.stack.scale(SPARK_WORKER, shape.spark_workers)
        if status.running(RAY_WORKER) != shape.ray_workers:
            self.progress(f"scaling Ray worker nodes to {shape.ray_workers}")
            self.stack.scale(RAY_WORKER, shape.ray_workers)
        if not self.stack.unsupported("partitions"):
            self.set_benchmark_partitions(shape.partitions)

    def _admin(self) -> Any:
        """The AdminClient topic changes go through: the orchestrator's hook's, else our own."""
        return self.kafka_admin() if self.kafka_admin else admin_client(self.config.kafka.bootstrap_servers)

    def _benchmark_topic_exists(self) -> bool:
        admin = self._admin()
        return self.config.kafka.benchmark_topic in describe_topics(admin)

    def set_benchmark_partitions(self, partitions: int) -> None:
        """Grow the benchmark topic in place; shrinking recreates it (refused under a streaming job)."""
        admin = self._admin()
        topic = self.config.kafka.benchmark_topic
        current = describe_topics(admin).get(topic)
        retention = {"retention.ms": str(self.config.kafka.retention_hours * 3_600_000)}
        rf = self.config.kafka.replication_factor
        if current is None:
            ensure_topic(admin, topic, partitions, rf, config={**APPEND_TIME, **retention})
        elif current.partitions < partitions:
            self.progress(f"growing {topic} from {current.partitions} to {partitions} partitions")
            set_partitions(admin, topic, partitions)
        elif current.partitions > partitions:
            if self.stack.status().running(STREAMING_JOB):
                raise ValueError(
                    f"partitions: {topic} has {current.partitions} partitions and Kafka cannot shrink a "
                    "topic; recreating it under the running streaming job would break its checkpoint. "
                    "Run partition steps in ascending order, or with only Kafka up."
                )
            self.progress(
                f"recreating {topic} with {partitions} partitions (and a fresh streaming checkpoint)"
            )
            delete_topics(admin, [topic])
            # The checkpoint holds offsets of partitions that no longer exist.
            shutil.rmtree(self.config.state_dir / "checkpoints", ignore_errors=True)
            ensure_topic(admin, topic, partitions, rf, config={**APPEND_TIME, **retention})

    # ------------------------------------------------------------------ one step
    def _progress_source(self) -> Path | ProgressTail:
        """The streaming job's progress: its log file, or the progress topic where the job's
        files are not on this machine (an external cluster)."""
        if self.stack.backend == "external":
            return KafkaProgressTail(self.config.kafka.bootstrap_servers, self.config.kafka.progress_topic)
        return self.config.state_dir / "logs" / "spark-progress.jsonl"

    # ------------------------------------------------------------------ one step
    def collectors(self, step: Step, pipeline: bool) -> list[Collector]:
        config = self.config
        logs = config.state_dir / "logs"
        result: list[Collector] = [
            ResourceSampler(
                self.stack.processes,
                {
                    "kafka": config.state_dir / "kafka",
                    "checkpoints": config.state_dir / "checkpoints",
                    "models": config.model_dir,
                },
                containers=self.stack.container_usage if self.stack.backend == "compose" else None,
                # The harness's machine is not an external cluster's: its figures would mislead.
                machine=self.stack.backend != "external",
            )
        ]
        topics = {"raw": config.kafka.benchmark_topic}
        groups: dict[str, tuple[str, str]] = {}
        if pipeline:
            topics |= {"features": config.kafka.features_topic, "predictions": config.kafka.predictions_topic}
            groups = {
                "ray": (config.inference.consumer_group, config.kafka.features_topic),
                "api": (config.api.consumer_group, config.kafka.predictions_topic),
            }
        result.append(
            KafkaFlowCollector(
                config.kafka.bootstrap_servers,
                topics,
                config.kafka.input_topics if pipeline else [],
                groups,
                self._progress_source(),
            )
        )
        if pipeline:
            result.append(
                SparkCollector(
                    self._progress_source(),
                    config.spark.streaming_ui_url,
                    config.state_dir / "checkpoints",
                    step.stack.trigger_ms,
                )
            )
            result.append(RayCollector(logs / "inference-stats.jsonl", config.ray.dashboard_url))
        if config.monitoring.enabled:
            client = PrometheusClient(config.monitoring.prometheus_url)
            result.append(PrometheusCollector(client, load_queries(), config.monitoring.scrape_interval_s))
        return result

    def run_step(
        self,
        plan: TestPlan,
        step: Step,
        repetition: int,
        pipeline: bool = True,
        api_users: int = 0,
        extra: list[Collector] | None = None,
    ) -> StepOutcome:
        """Run one step; `pipeline=False` measures Kafka only (partition and broker tests).

        `api_users` > 0 runs that many Locust users querying the serving API during the load.
        """
        load = step.load
        prefix = f"{load.station_prefix}{self.tag}s{step.index}r{repetition}"
        outcome = StepOutcome(step=step, repetition=repetition, station_prefix=prefix, api_users=api_users)
        spec = LoadSpec(
            stations=load.stations,
            rate=load.rate,
            duration_s=load.total_s,
            station_prefix=prefix,
            bad_input=self.bad_input_spec(step),
        )
        source: Any = make_source(load.source)
        if load.message_bytes:
            source = PaddedSource(source, load.message_bytes)
        collectors = self.collectors(step, pipeline) + list(extra or [])
        if api_users:
            spec_api = ApiLoadSpec(
                users=api_users,
                spawn_rate=plan.api_load.spawn_rate,
                duration_s=load.total_s,
                station_prefix=prefix,
                stations=load.stations,
            )
            collectors.append(
                ApiLoadCollector(self.config.api.url, spec_api, self.out_dir / f"locust-{prefix}")
            )
        injector = FaultInjector(self.stack, step.faults) if step.faults else None
        if injector is not None:
            collectors.append(injector)
        deadletters = self.deadletter_collector() if pipeline and spec.bad_input else None
        if deadletters is not None:
            collectors.append(deadletters)
        producer = self._producer()
        self.progress(
            f"step {step.index} [{step.label}] repetition {repetition}: {load.stations} stations, "
            f"{load.rate:g} msg/s for {load.total_s:g} s ({load.warmup_s:g} s warm-up)"
        )
        outcome.metrics += self.clock_check()
        step_labels = (self.tag, plan.test, f"{step.index} {step.label} r{repetition}")
        HARNESS.step_started(*step_labels, rate=load.rate)
        for collector in collectors:
            collector.start()
        try:
            result = run_open_loop(
                producer,
                source,
                spec,
                on_progress=lambda sent, total: self.progress(f"   sent {sent}/{total}"),
            )
            load_seconds = (result.end_ms - result.start_ms) / 1000
            if injector is not None:
                # Faults belong to the load; whatever is still down is started before the drain.
                injector.stop()
                injector.restore()
            # run_open_loop waited for every ack: the ledger now holds exactly this load's
            # messages, before the end-of-load sentinel adds one more.
            per_partition = dict(result.ledger.per_partition)
            bytes_sent = result.ledger.bytes_sent
            accounting = None
            if pipeline:
                close_windows(
                    producer,
                    make_source(load.source),
                    result.last_event_ms,
                    step.stack.window_ms,
                    step.stack.watermark_ms,
                )
                expected = expected_windows(result.ledger, step.stack.window_ms, prefix + "-")
                rows = self._drain(expected, prefix + "-", plan.drain_timeout_s)
                accounting = account(expected, rows)
                if deadletters is not None:
                    sent = {record.position for record in result.bad_records.sent}
                    deadletters.wait_for(sent, min(DEADLETTER_WAIT_S, plan.drain_timeout_s))
        finally:
            HARNESS.step_ended(*step_labels)
            for collector in collectors:
                collector.stop()
            producer.flush(10)
        measured_from = result.start_ms + int(load.warmup_s * 1000)
        for collector in collectors:
            outcome.metrics += collector.metrics()
            outcome.series += collector.series()
        outcome.partition_counts = per_partition
        if pipeline and rows:
            # Close latency of every served window at the moment it was served: faults show as spikes.
            outcome.series.append(served_window_latency(rows, collectors[0].started_ms))
        if pipeline and accounting is not None:
            outcome.gaps = self._locate_gaps(outcome, result, prefix + "-", step, accounting, rows)
        if injector is not None and pipeline and accounting is not None:
            for event in injector.events:
                found = recovery(
                    event,
                    rows,
                    outcome.series,
                    injector.started_ms,
                    load.warmup_s,
                    step.stack.window_ms,
                    step.stack.trigger_ms,
                    plan.slo,
                    next((c.batches for c in collectors if isinstance(c, SparkCollector)), []),
                    next((c.node_losses for c in collectors if isinstance(c, RayCollector)), []),
                )
                outcome.metrics += found.metrics()
                outcome.faults.append(
                    found.summary(step.index, accounting.lost_messages, accounting.duplicate_deliveries)
                    | {"gaps": gaps_by_stage(outcome.gaps)}
                )
        if deadletters is not None and accounting is not None:
            outcome.bad_input = self.check_bad_input(outcome, result, deadletters, accounting.lost_messages)
        outcome.metrics += _producer_metrics(
            result, prefix, max(1e-3, load_seconds), per_partition, bytes_sent
        )
        samples = producer_samples(result.ledger, prefix + "-", measured_from)
        if pipeline and accounting is not None:
            # Latency counts windows the watermark closed during the load. The last ones are
            # closed by the end-of-load sentinel, whose event time runs ahead of the clock, so
            # their "window close" would be early (even negative) by construction.
            closed_by_load = result.last_event_ms - step.stack.watermark_ms
            after_warmup = [
                r
                for r in rows
                if int(r["window_start"]) >= measured_from and int(r["window_end"]) <= closed_by_load
            ]
            samples |= stage_latencies(after_warmup)
            outcome.accounting = accounting.summary()
            outcome.metrics += [
                Metric(f"accounting.{key}", float(value), "messages" if "messages" in key else "windows")
                for key, value in outcome.accounting.items()
            ]
            served_rate = accounting.served_messages / max(1e-3, load_seconds)
            outcome.metrics.append(Metric("throughput.end_to_end", served_rate, "msg/s"))
            outcome.metrics.append(Metric("latency.windows_measured", float(len(after_warmup)), "windows"))
        outcome.histograms = {
            STAGE_NAMES.get(name, name): LatencyHistogram().record_all(values)
            for name, values in samples.items()
        }
        outcome.metrics += _latency_metrics(outcome.histograms)
        outcome.metrics.append(Metric("load.warmup", load.warmup_s, "s"))
        outcome.metrics.append(Metric("load.seconds", load_seconds, "s"))
        admin = admin_client(self.config.kafka.bootstrap_servers)
        topics = [self.config.kafka.benchmark_topic]
        if pipeline:
            topics += [self.config.kafka.features_topic, self.config.kafka.predictions_topic]
        outcome.metrics += topic_metrics(admin, topics, self.config.state_dir / "kafka")
        outcome.metrics.append(
            Metric("kafka.balance_score", balance_score(outcome.partition_counts), "%", "kafka")
        )
        if pipeline and accounting is not None:
            outcome.sustained, outcome.reasons, signals = sustainability(
                outcome, load, plan.slo, load_seconds, accounting
            )
            outcome.bottleneck, outcome.bottleneck_reasons = name_bottleneck(signals)
            outcome.metrics.append(Metric("verdict.sustained", 1.0 if outcome.sustained else 0.0, "bool"))
        self.progress(self.describe(outcome))
        return outcome

    def _locate_gaps(
        self,
        outcome: StepOutcome,
        result: LoadResult,
        prefix: str,
        step: Step,
        accounting: Accounting,
        rows: list[dict],
    ) -> list[Gap]:
        """The stage and kind of every window the API serves short, missing or over-counted."""
        acked = {key: ms for key, ms in result.ledger.event_times.items() if key[0].startswith(prefix)}
        dropped = outcome.value("spark.rows_dropped_by_watermark")
        try:
            gaps = audit(
                self.config,
                self.config.kafka.benchmark_topic,
                prefix,
                result.start_ms - AUDIT_SLACK_MS,
                acked,
                step.stack.window_ms,
                accounting,
                rows,
                late_dropped_rows=0 if math.isnan(dropped) else int(dropped),
            )
        except TopicError as exc:
            self.progress(f"   could not locate the gaps: {exc}")
            return []
        for stage, kinds in gaps_by_stage(gaps).items():
            outcome.metrics += [
                Metric(f"loss.{stage}.{kind}", float(n), "messages", stage) for kind, n in kinds.items() if n
            ]
        for gap in gaps[:GAPS_LOGGED]:
            self.progress(
                f"   gap: {gap.station} window {gap.window_start}: {gap.messages} {gap.kind} at {gap.stage}"
            )
        return gaps

    def bad_input_spec(self, step: Step) -> BadInputSpec | None:
        """The step's bad-input mix, its far-late records aged against the streaming job's limit."""
        settings = step.load.bad_input
        if settings is None:
            return None
        return BadInputSpec(settings.fraction, settings.kinds, self.config.spark.late_limit_ms)

    def deadletter_collector(self) -> DeadLetterCollector:
        kafka = self.config.kafka
        return DeadLetterCollector(kafka.bootstrap_servers, kafka.deadletter_topic, kafka.benchmark_topic)

    @staticmethod
    def check_bad_input(
        outcome: StepOutcome, result: LoadResult, deadletters: DeadLetterCollector, lost_good: int
    ) -> dict[str, Any]:
        """Match the step's dead letters to its bad records; metrics to the outcome, the summary back."""
        step = outcome.step
        settings = step.load.bad_input
        assert settings is not None
        check = check_dead_letters(
            result.bad_records,
            deadletters.letters,
            deadletters.source_topic,
            deadletters.source_start,
            settings.kinds,
        )
        outcome.metrics += check.metrics()
        return {
            "step_index": step.index,
            "step": step.label,
            "repetition": outcome.repetition,
            "fraction": settings.fraction,
            **check.summary(),
            "good_lost": lost_good,
            "dropped_by_watermark": outcome.value("spark.rows_dropped_by_watermark"),
        }

    def _drain(self, expected: dict, prefix: str, timeout_s: float) -> list[dict]:
        """Poll the API until every expected window is served in full, or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        rows: list[dict] = []
        reported = time.monotonic()
        while time.monotonic() < deadline:
            rows = fetch_predictions(self.config.api.url, station_prefix=prefix)
            state = account(expected, rows)
            if state.complete:
                return rows
            if time.monotonic() - reported > 10:
                self.progress(f"   draining: {state.served_windows}/{state.expected_windows} windows served")
                reported = time.monotonic()
            time.sleep(1)
        return rows

    def clock_check(self) -> list[Metric]:
        admin = admin_client(self.config.kafka.bootstrap_servers)
        ensure_topic(admin, CLOCK_TOPIC, 1, config=dict(APPEND_TIME))
        return clock_sanity(self.config.kafka.bootstrap_servers, CLOCK_TOPIC).metrics()

    @staticmethod
    def describe(outcome: StepOutcome) -> str:
        def ms(name: str) -> str:
            value = outcome.value(name)
            return "n/a" if value != value else f"{value / 1000:.1f}s"

        achieved, offered = outcome.value("throughput.achieved"), outcome.value("throughput.offered")
        parts = [f"   achieved {achieved:.1f}/{offered:g} msg/s"]
        if outcome.accounting:
            parts += [
                f"e2e p95 {ms('latency.e2e.p95')}",
                f"window-close p95 {ms('latency.window_close.p95')}",
                f"lost {outcome.accounting['lost_messages']}",
                "sustained" if outcome.sustained else "NOT sustained: " + "; ".join(outcome.reasons),
            ]
            if outcome.bottleneck:
                role = "nearest to saturation" if outcome.sustained else "bottleneck"
                parts.append(f"{role}: {outcome.bottleneck} ({'; '.join(outcome.bottleneck_reasons)})")
            if outcome.bad_input:
                bad = outcome.bad_input
                parts.append(
                    f"bad input: {bad['expected_reason']}/{bad['sent']} dead-lettered with their reason, "
                    f"{bad['missing']} missing, {bad['wrong_reason']} with another reason, "
                    f"{bad['unexpected']} good records dead-lettered"
                )
        else:
            parts.append(f"balance {outcome.value('kafka.balance_score'):.1f}%")
        return ", ".join(parts)
