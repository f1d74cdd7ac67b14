"""Prometheus around the real stack, and the external backend measuring a stack it did not start.

The session's pipeline stack with monitoring started beside it (Debian's Prometheus and node
exporter; the brokers' JMX exporter agents and every component's own endpoint always run):

- Prometheus scrapes every component and finds it up; the alert rules are loaded;
- a benchmark step reads Prometheus's series (broker append rate, Spark batch time, the
  harness's acks, machine CPU) beside its own measurements;
- every query of the Grafana dashboards and of the benchmark evaluates, and those over
  components that run here return data.

Then the same running stack is treated as an existing cluster (backend external): a Spark
scaling test skips the step whose worker count the cluster does not have, with the reason,
and measures the one it has end to end with nothing lost; a fault test skips its fault step;
the PDF report says why. Prometheus and the node exporter are stopped at the end.

Last, the Spark History Server starts beside the same stack and shows the running streaming
job from the event log it writes, jobs included.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from pypdf import PdfReader

from pipeline.config import REPO_ROOT, StackConfig, load_config
from pipeline.kafka_topics import admin_client, describe_topics
from pipeline.stack.base import MONITORING, SPARK_HISTORY
from pipeline.stack.local import LocalStack
from pipeline.stack.monitoring import ALERT_RULES, PrometheusClient
from pipeline.stack.process import port_in_use
from weatherbench.collectors.prometheus import load_queries
from weatherbench.experiments import run_test
from weatherbench.exporter import HARNESS
from weatherbench.report import build_report
from weatherbench.store import ResultsStore
from weatherbench.suite import parse_fault
from weatherbench.workloads import WORKLOAD_DIR, load_workload

pytestmark = pytest.mark.integration

# Every scrape job of the local layout; the producer command is not running here.
EXPECTED_UP = {
    "kafka",
    "spark-master",
    "spark-applications",
    "spark-worker",
    "spark-driver",
    "spark-executors",
    "spark-streaming",
    "ray",
    "ray-worker",
    "inference",
    "api",
    "harness",
    "node",
    "prometheus",
}
# Queries over components that run locally must return data (cAdvisor's are compose-only).
MUST_HAVE_DATA = (
    'sum(rate(kafka_server_brokertopicmetrics_messagesinpersec_total{topic=~"weather-.*"}[1m]))',
    'sum(jvm_memory_used_bytes{job="kafka", area="heap"})',
    "max(weather_spark_batch_duration_seconds)",
    "max(weather_spark_trigger_interval_seconds)",
    "max(metrics_master_aliveWorkers_Value)",
    "max(weather_inference_actors)",
    "sum(rate(weather_inference_predictions_total[1m]))",
    "max(weather_api_consumer_lag)",
    "sum(ray_object_store_memory)",
    'avg(rate(node_cpu_seconds_total{mode="idle"}[1m]))',
    "sum(rate(weather_producer_acked_total[1m]))",
)


@pytest.fixture(scope="module")
def monitored(pipeline_stack: LocalStack) -> Iterator[LocalStack]:
    config = pipeline_stack.config
    config.monitoring.enabled = True
    try:
        pipeline_stack.up(MONITORING)
        HARNESS.serve(config)  # this process is the benchmark harness
        yield pipeline_stack
    finally:
        for component in MONITORING:
            if pipeline_stack.status().running(component):
                pipeline_stack.kill(component, graceful=True)
        config.monitoring.enabled = False
    assert not PrometheusClient(config.monitoring.prometheus_url).ready(), "Prometheus outlived its stop"
    assert not port_in_use(config.monitoring.node_exporter_port)


def workload(config: StackConfig, tmp_path: Path, **stack: object) -> Path:
    """The quick profile at the stack's window settings, small and short."""
    raw = yaml.safe_load((WORKLOAD_DIR / "quick.yaml").read_text())
    raw["defaults"]["stack"].update(
        window=config.spark.window, watermark=config.spark.watermark, trigger=config.spark.trigger, **stack
    )
    raw["defaults"]["load"].update(stations=5, rate=10, duration_s=30, warmup_s=10)
    raw["defaults"]["drain_timeout_s"] = 180
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "workload.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def benchmark_partitions(config: StackConfig) -> int:
    """The benchmark topic's partitions now: earlier tests of the session may have grown it, and
    Kafka cannot shrink it under the running streaming job."""
    topics = describe_topics(admin_client(config.kafka.bootstrap_servers))
    return topics[config.kafka.benchmark_topic].partitions


def run(config: StackConfig, tmp_path: Path, test: str, overrides: dict, state_dir: Path):
    shape = {
        "spark_workers": config.spark.workers,
        "ray_workers": 2,
        "partitions": benchmark_partitions(config),
    }
    plan = load_workload(workload(config, tmp_path, **shape)).plan(test, overrides)
    store = ResultsStore(f"sqlite:///{tmp_path}/results.db")
    result = run_test(
        plan,
        config,
        store,
        tmp_path / "out",
        progress=lambda message: print(message, flush=True),
        keep_up=True,
        state_dir=state_dir,
    )
    return result, store


def wait_for_targets(client: PrometheusClient, timeout_s: float = 120) -> dict[str, str]:
    deadline = time.monotonic() + timeout_s
    health: dict[str, str] = {}
    while time.monotonic() < deadline:
        health = {}
        for target in client.targets():
            job = target["labels"]["job"]
            # A job is up when every one of its targets is (two Spark workers, two Ray nodes).
            if health.get(job) != "down":
                health[job] = "up" if target["health"] == "up" else "down"
        if all(health.get(job) == "up" for job in EXPECTED_UP):
            return health
        time.sleep(2)
    return health


def test_prometheus_scrapes_every_component(monitored: LocalStack) -> None:
    client = PrometheusClient(monitored.config.monitoring.prometheus_url)
    health = wait_for_targets(client)
    assert {job for job, state in health.items() if state == "up"} >= EXPECTED_UP, health
    assert health.get("producer") == "down"  # nothing runs the producer command here
    workers = [t for t in client.targets() if t["labels"]["job"] == "spark-worker"]
    assert len(workers) == monitored.config.spark.workers  # file_sd lists exactly the running ones


def test_alert_rules_are_loaded(monitored: LocalStack) -> None:
    client = PrometheusClient(monitored.config.monitoring.prometheus_url)
    expected = {r["alert"] for g in yaml.safe_load(ALERT_RULES.read_text())["groups"] for r in g["rules"]}
    assert {rule["name"] for rule in client.rules()} == expected
    assert all(rule["health"] in ("ok", "unknown") for rule in client.rules())


def test_a_benchmark_step_reads_prometheus_series(monitored: LocalStack, tmp_path: Path) -> None:
    result, _ = run(monitored.config, tmp_path, "latency", {}, monitored.config.state_dir)
    assert result.status == "passed", result.summary
    outcome = result.outcomes[0]
    assert outcome.accounting["lost_messages"] == 0
    assert outcome.value("prometheus.failed_queries") == 0
    assert outcome.value("prom.kafka.messages_in_rate.max") > 0
    assert outcome.value("prom.harness.acked_rate.max") > 0
    assert outcome.value("prom.spark.batch_duration.max") > 0
    assert outcome.value("prom.spark.alive_workers.max") == monitored.config.spark.workers
    assert 0 < outcome.value("prom.machine.cpu.mean") <= 100
    assert not math.isnan(outcome.value("prom.inference.lag.max"))
    series = {s.name for s in outcome.series if s.points}
    assert {"prom.kafka.messages_in_rate", "prom.spark.lag"} <= series


def test_every_dashboard_and_benchmark_query_evaluates(monitored: LocalStack) -> None:
    client = PrometheusClient(monitored.config.monitoring.prometheus_url)
    wait_for_targets(client)
    expressions = [q.expr for q in load_queries()]
    for path in sorted((REPO_ROOT / "include" / "grafana" / "dashboards").glob("*.json")):
        board = json.loads(path.read_text())
        expressions += [t["expr"] for p in board["panels"] for t in p["targets"]]
        expressions += [a["expr"] for a in board["annotations"]["list"]]
    for expr in expressions:
        client.query(expr)  # a malformed or unknown-function query raises with Prometheus's reason
    empty = [expr for expr in MUST_HAVE_DATA if not client.query(expr)]
    assert empty == []


def test_external_backend_measures_the_running_stack_and_skips_what_it_cannot_change(
    monitored: LocalStack, tmp_path: Path
) -> None:
    # The running stack as a cluster the suite did not start: its addresses, no state shared.
    external = replace(
        load_config(environ={}, overrides={"state_dir": str(tmp_path / "ext"), "backend": "external"}),
        kafka=monitored.config.kafka,
        spark=monitored.config.spark,
        ray=monitored.config.ray,
        inference=monitored.config.inference,
        api=monitored.config.api,
        network=monitored.config.network,
    )
    workers = monitored.status().running("spark-worker")
    other = 1 if workers != 1 else 2
    steps = [{"spark_workers": other}, {"spark_workers": workers}]
    scaling, store = run(
        external, tmp_path / "scaling", "scalability-spark", {"steps": steps}, tmp_path / "ext"
    )
    assert scaling.status == "passed", scaling.summary
    by_label = {o.step.label: o for o in scaling.outcomes}
    skipped = by_label[f"spark_workers={other}"].skipped
    assert "external cluster" in skipped
    assert f"asks for {other} Spark workers, the stack has {workers}" in skipped
    measured = by_label[f"spark_workers={workers}"]
    assert measured.skipped == ""
    assert measured.accounting["lost_messages"] == 0
    assert measured.accounting["expected_messages"] > 0
    assert measured.value("latency.e2e.p95") > 0
    assert measured.value("spark.batch_duration.p95") > 0  # from the progress topic, not a log file
    assert math.isnan(measured.value("resources.machine.cpu.mean"))  # this machine is not the cluster's
    assert monitored.status().running("spark-worker") == workers  # nothing was resized

    fault = {"steps": [{"faults": [parse_fault("kill spark-worker 1 for 5s", 20)]}]}
    faults, _ = run(external, tmp_path / "faults", "fault-tolerance", fault, tmp_path / "ext")
    assert [o.skipped for o in faults.outcomes] == [
        "the stack is an external cluster (backend external): the suite measures it but does not kill "
        "or restart its components"
    ]
    assert monitored.status().running("spark-worker") == workers

    report = build_report(store, [scaling.run_id], tmp_path / "report", name="external")
    text = " ".join(page.extract_text() for page in PdfReader(report.pdf).pages)
    text = " ".join(text.split())
    assert f"spark_workers={other}: skipped: the stack is an external cluster" in text


def http_json(url: str, timeout_s: float = 5) -> object:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


def first_answer(url: str, within_s: float) -> object:
    """The first answer of a request that may be slow at first (the server loads what it serves)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return http_json(url, timeout_s=max(1.0, min(30.0, deadline - time.monotonic())))
        except (TimeoutError, OSError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(2)


def test_the_history_server_shows_the_running_streaming_job(pipeline_stack: LocalStack) -> None:
    spark = pipeline_stack.config.spark
    (running,) = http_json(f"{spark.streaming_ui_url}/api/v1/applications")
    try:
        pipeline_stack.up((SPARK_HISTORY,))
        assert pipeline_stack.status().running(SPARK_HISTORY) == 1
        seen: dict = {}
        deadline = time.monotonic() + 60  # it scans the event log folder every 5 s
        while time.monotonic() < deadline and not seen:
            apps = http_json(f"{spark.history_url}/api/v1/applications")
            seen = next((app for app in apps if app["id"] == running["id"]), {})
            time.sleep(2)
        assert seen, f"{running['id']} not among {[app['id'] for app in apps]}"
        assert seen["name"] == "weather-streaming"
        assert seen["attempts"][0]["completed"] is False  # in progress: read from its rolled event log
        # The first request for an application replays its event log (the streaming job's has run
        # since the session began): that can take a while on a busy machine.
        jobs = first_answer(f"{spark.history_url}/api/v1/applications/{running['id']}/jobs", within_s=180)
        assert len(jobs) > 0
    finally:
        if pipeline_stack.status().running(SPARK_HISTORY):
            pipeline_stack.kill(SPARK_HISTORY, graceful=True)
    assert not port_in_use(spark.history_port)
    assert SPARK_HISTORY not in {i.component for i in pipeline_stack.status().instances}
