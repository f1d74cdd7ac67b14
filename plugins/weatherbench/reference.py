"""Our own benchmark: the pipeline's sustainable throughput and latency next to reference ceilings.

In one run, on one machine:

1. the infrastructure alone (Kafka, Spark, Ray; no pipeline services);
2. ingest ceiling: Kafka's own ProducerPerformance tool (the tool behind
   kafka-producer-perf-test) on a fresh topic like the benchmark topic,
   with the pipeline producer's settings (idempotent, acks=all, linger 5 ms)
   and its message size;
3. streaming ceiling: Spark's rate source into the noop sink with the
   pipeline's window shape, on the same cluster (`spark_rate_noop.py`);
4. the pipeline itself: the sustainable-throughput search of the workload,
   with the end-to-end, window-close and inference latency of the best step;
5. the harness's own cost: CPU and memory of the benchmark process (load
   generator and collectors) during the pipeline steps.

The report reads "the pipeline sustains X msg/s; Kafka alone takes Y and
Spark alone Z on this machine", which says how much of the hardware the
pipeline's design leaves on the table.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import REPO_ROOT, StackConfig
from pipeline.jobs import run_spark_job
from pipeline.kafka_topics import APPEND_TIME, admin_client, delete_topics, ensure_topic
from weatherbench.metrics import Metric

PERF_TOPIC = "weather-bench-perf"
RATE_MARKER = "RATE_RESULT "
# ProducerPerformance's final line, e.g. "50000 records sent, 24096.4 records/sec (5.74 MB/sec),
# 412.3 ms avg latency, 980.0 ms max latency, 401 ms 50th, 890 ms 95th, 960 ms 99th, 978 ms 99.9th."
SUMMARY = re.compile(
    r"(?P<records>\d+) records sent, (?P<rate>[\d.]+) records/sec \((?P<mb>[\d.]+) MB/sec\), "
    r"(?P<avg>[\d.]+) ms avg latency, (?P<max>[\d.]+) ms max latency, (?P<p50>\d+) ms 50th, "
    r"(?P<p95>\d+) ms 95th, (?P<p99>\d+) ms 99th, (?P<p999>\d+) ms 99.9th"
)


class ReferenceError(RuntimeError):
    """A reference measurement failed; the message says which and why."""


def parse_producer_performance(output: str) -> dict[str, float]:
    """The final summary line of ProducerPerformance as numbers (ms, records/s, MB/s)."""
    matches = list(SUMMARY.finditer(output))
    if not matches:
        raise ReferenceError(f"no ProducerPerformance summary in its output:\n{output[-2000:]}")
    found = matches[-1].groupdict()
    return {key: float(value) for key, value in found.items()}


def kafka_producer_ceiling(
    config: StackConfig, records: int, record_size: int, partitions: int, timeout_s: float = 600
) -> dict[str, float]:
    """Run ProducerPerformance at unlimited rate against the stack's Kafka."""
    admin = admin_client(config.kafka.bootstrap_servers)
    delete_topics(admin, [PERF_TOPIC])
    ensure_topic(admin, PERF_TOPIC, partitions, config=dict(APPEND_TIME))
    jars = config.jars_dir / "kafka"
    argv = [
        "java",
        "-Xmx256m",
        "-cp",
        f"{jars}/*",
        "-Dlog4j2.configurationFile=" + str(REPO_ROOT / "include" / "kafka" / "log4j2.properties"),
        f"-Dkafka.logs.dir={config.state_dir / 'logs'}",
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        PERF_TOPIC,
        "--num-records",
        str(records),
        "--record-size",
        str(record_size),
        "--throughput",
        "-1",
        "--producer-props",
        f"bootstrap.servers={config.kafka.bootstrap_servers}",
        "enable.idempotence=true",
        "acks=all",
        "linger.ms=5",
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ReferenceError(f"ProducerPerformance did not finish within {timeout_s:.0f} s") from exc
    finally:
        delete_topics(admin, [PERF_TOPIC])
    if done.returncode != 0:
        raise ReferenceError(f"ProducerPerformance exited {done.returncode}:\n{done.stderr[-2000:]}")
    return parse_producer_performance(done.stdout)


def spark_stream_ceiling(
    config: StackConfig, rows_per_second: int, seconds: float, stations: int, timeout_s: float = 600
) -> dict[str, Any]:
    """Run the rate -> noop reference job on the stack's Spark cluster."""
    spark = config.spark
    _code, records = run_spark_job(
        config,
        Path(__file__).resolve().parent / "spark_rate_noop.py",
        app_name="weather-reference-rate-noop",
        marker=RATE_MARKER,
        extra_args=[
            "--rows-per-second",
            str(rows_per_second),
            "--seconds",
            str(seconds),
            "--stations",
            str(stations),
            "--window",
            spark.window,
            "--watermark",
            spark.watermark,
            "--trigger",
            spark.trigger,
            "--partitions",
            str(config.kafka.partitions),
        ],
        timeout_s=timeout_s,
        log_name="spark-reference",
    )
    if not records:
        raise ReferenceError("the rate -> noop job printed no result")
    return records[-1]


@dataclass
class ReferenceResult:
    kafka: dict[str, float] = field(default_factory=dict)
    spark: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> list[Metric]:
        result = []
        if self.kafka:
            result += [
                Metric("reference.kafka.records_per_s", self.kafka["rate"], "msg/s", "kafka"),
                Metric("reference.kafka.mb_per_s", self.kafka["mb"], "MB/s", "kafka"),
                Metric("reference.kafka.latency.p50", self.kafka["p50"], "ms", "kafka"),
                Metric("reference.kafka.latency.p99", self.kafka["p99"], "ms", "kafka"),
                Metric("reference.kafka.records", self.kafka["records"], "messages", "kafka"),
            ]
        if self.spark:
            result += [
                Metric(
                    "reference.spark.rows_per_s", float(self.spark["rows_per_second_wall"]), "rows/s", "spark"
                ),
                Metric(
                    "reference.spark.rows_per_busy_s",
                    float(self.spark.get("rows_per_busy_second") or float("nan")),
                    "rows/s",
                    "spark",
                ),
                Metric(
                    "reference.spark.batch.p50",
                    float(self.spark.get("batch_ms_p50") or float("nan")),
                    "ms",
                    "spark",
                ),
                Metric("reference.spark.batches", float(self.spark["batches"]), "batches", "spark"),
            ]
        result += [Metric(f"reference.{name}.wall", value, "s") for name, value in self.seconds.items()]
        return result


def measure_ceilings(
    config: StackConfig,
    record_size: int,
    stations: int,
    progress: Callable[[str], None],
    kafka_records: int = 200_000,
    spark_rows_per_second: int = 20_000,
    spark_seconds: float = 60,
) -> ReferenceResult:
    """Both ceilings; the caller runs the infrastructure alone (no pipeline services) first."""
    result = ReferenceResult()
    began = time.monotonic()
    progress(f"reference: Kafka ProducerPerformance, {kafka_records} records of {record_size} B")
    result.kafka = kafka_producer_ceiling(config, kafka_records, record_size, config.kafka.partitions)
    result.seconds["kafka"] = time.monotonic() - began
    progress(f"   {result.kafka['rate']:.0f} records/s, p99 {result.kafka['p99']:.0f} ms")
    began = time.monotonic()
    progress(f"reference: Spark rate -> noop, {spark_rows_per_second} rows/s offered for {spark_seconds:g} s")
    result.spark = spark_stream_ceiling(config, spark_rows_per_second, spark_seconds, stations)
    result.seconds["spark"] = time.monotonic() - began
    progress(f"   {result.spark['rows_per_second_wall']:.0f} rows/s processed")
    return result
