"""Real experiments of the benchmark engine against the running pipeline, stored and exported.

The latency experiment runs open-loop load through Kafka, Spark, Ray and the
serving API (once quiet, once under Locust query load) and must store every
metric family the guide names, with no acknowledged message lost. The
partition experiment grows the benchmark topic under the running pipeline and
accounts every message to a partition.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pypdf import PdfReader

from pipeline.stack.local import LocalStack
from weatherbench.experiments import run_test
from weatherbench.report import build_report
from weatherbench.report.targets import format_value
from weatherbench.store import ResultsStore
from weatherbench.workloads import WORKLOAD_DIR, load_workload

pytestmark = pytest.mark.integration

COMPONENTS = (
    "kafka",
    "spark-master",
    "spark-worker",
    "ray-head",
    "ray-worker",
    "streaming-job",
    "inference",
    "api",
)


def workload_for(stack: LocalStack, tmp_path: Path) -> Path:
    """The quick profile with the test stack's window settings and small, short loads."""
    raw = yaml.safe_load((WORKLOAD_DIR / "quick.yaml").read_text())
    spark = stack.config.spark
    raw["defaults"]["stack"].update(
        window=spark.window, watermark=spark.watermark, trigger=spark.trigger, spark_workers=2, ray_workers=2
    )
    raw["defaults"]["load"].update(stations=5, rate=10, duration_s=30, warmup_s=10)
    raw["defaults"]["drain_timeout_s"] = 180
    path = tmp_path / "it.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def run(stack: LocalStack, tmp_path: Path, test: str, overrides: dict):
    plan = load_workload(workload_for(stack, tmp_path)).plan(test, overrides)
    store = ResultsStore(f"sqlite:///{tmp_path}/results.db")
    result = run_test(
        plan,
        stack.config,
        store,
        tmp_path / "out",
        progress=lambda message: print(message, flush=True),
        keep_up=True,  # the session's stack is shared with other tests
        state_dir=stack.config.state_dir,
    )
    return result, store


def test_latency_experiment_measures_every_stage_and_loses_nothing(
    pipeline_stack: LocalStack, tmp_path: Path
) -> None:
    result, store = run(pipeline_stack, tmp_path, "latency", {"users": 2})
    assert result.status == "passed", result.summary
    quiet, loaded = result.outcomes
    assert loaded.api_users == 2 and quiet.api_users == 0
    for outcome in result.outcomes:
        assert outcome.accounting["lost_messages"] == 0
        assert outcome.accounting["expected_messages"] == outcome.value("producer.acked") > 0
        assert outcome.value("producer.failed") == 0
        assert outcome.value("clock.violations") == 0
        windows = outcome.value("latency.windows_measured")
        assert windows > 0
        # One end-to-end and one window-close sample per measured window; T1 and ack latency
        # once per message sent after the warm-up.
        assert outcome.histograms["e2e"].count == windows
        assert outcome.histograms["window_close"].count == windows
        t1 = outcome.histograms["t1_producer"].count
        assert 0 < t1 < outcome.value("producer.acked")
        assert outcome.histograms["producer_ack"].count == t1

    stored = {(m.metric, m.component) for m in store.metrics(result.run_id)}
    names = {name for name, _ in stored}
    for stage in (
        "t1_producer",
        "t2_kafka_spark",
        "t3_spark",
        "t4_kafka_ray",
        "t5_inference",
        "t6_kafka_api",
    ):
        for key in ("p50", "p95", "p99", "p99.9", "max"):
            assert f"latency.{stage}.{key}" in names
    for name in (
        "latency.window_close.p95",
        "latency.e2e.p95",
        "throughput.offered",
        "throughput.achieved",
        "throughput.end_to_end",
        "throughput.raw.mean",
        "throughput.features.mean",
        "throughput.predictions.mean",
        "producer.ack_latency.p99",
        "producer.error_rate",
        "producer.message_size.mean",
        "lag.spark.max",
        "lag.ray.max",
        "lag.api.max",
        "lag.spark.slope",
        "kafka.balance_score",
        "kafka.topic.bytes",
        "kafka.topic.min_isr_seen",
        "spark.batch_duration.p95",
        "spark.scheduling_delay.p95",
        "spark.total_delay.p95",
        "spark.checkpoint_write.p95",
        "spark.watermark_delay.p95",
        "spark.state_rows.max",
        "spark.state_memory.max",
        "spark.checkpoint.bytes",
        "spark.executors.task_time_ms",
        "spark.executors.shuffle_write_bytes",
        "ray.throughput",
        "ray.actors",
        "ray.nodes_with_actors",
        "ray.actor_rss.max",
        "ray.failure_rate",
        "ray.model_load.max",
        "resources.machine.cpu.mean",
        "resources.machine.memory.max",
        "resources.network.loopback.mean",
        "clock.max_skew",
        "api_load.rps",
        "api_load.p95",
    ):
        assert name in names, name
    for component in (*COMPONENTS, "harness"):
        assert ("resources.rss.max", component) in stored, component
        assert ("resources.cpu.mean", component) in stored, component
    assert loaded.value("api_load.requests") > 0
    assert loaded.value("api_load.failures") == 0

    series = {s.name: s for s in store.series(result.run_id)}
    assert len(series["lag.spark"].points) >= 20  # one sample a second over the step
    assert {h.name for h in store.histograms(result.run_id)} >= {"latency.e2e", "latency.t5_inference"}
    assert result.summary["api_load_impact"][0]["users"] == 2

    exported = json.loads(result.json_path.read_text())
    assert exported["run"]["manifest"]["git"]["commit"]
    assert exported["run"]["summary"]["steps"][0]["lost_messages"] == 0

    # The run's report: page 1 judges what was just measured against the guide's targets.
    report = build_report(store, [result.run_id], tmp_path / "report")
    page_one = " ".join(PdfReader(report.pdf).pages[0].extract_text().split())
    worst_e2e = max(o.value("latency.e2e.p95") for o in result.outcomes)
    assert f"End-to-end latency (p95) < 1 min > 2 min {format_value(worst_e2e, 'ms')}" in page_one
    assert "Message loss rate 0% > 0.1% 0% all steps" in page_one
    html = report.html.read_text()
    assert "Serving API under query load" in html and result.run_id in html


def test_partition_steps_account_every_message_to_a_partition(
    pipeline_stack: LocalStack, tmp_path: Path
) -> None:
    steps = [{"partitions": 4}, {"partitions": 8}]
    result, _store = run(pipeline_stack, tmp_path, "partitions", {"steps": steps, "duration_s": 15})
    assert result.status == "passed", result.summary
    for outcome, expected in zip(result.outcomes, (4, 8), strict=True):
        counts = outcome.partition_counts
        assert len(counts) == expected
        assert sum(counts.values()) == outcome.value("producer.acked") > 0
        assert 0 < outcome.value("kafka.balance_score") <= 100
        assert (
            outcome.value("kafka.topic.partitions", pipeline_stack.config.kafka.benchmark_topic) == expected
        )
        assert outcome.accounting["lost_messages"] == 0  # the pipeline read the grown topic whole
    table = result.summary["steps"]
    assert [row["partitions"] for row in table] == [4, 8]
