"""The DAGs run for real: `airflow dags test` against the real stack at the smallest sizes.

- The nightly DAG runs whole: every test of the suite, each scaling and fault step as its own
  mapped task, the report built and e-mailed (through the smtp provider to the local sink)
  with the PDF attached, and the stack torn down afterwards.
- A bad parameter fails the first task, naming it, and nothing touches the stack.
- The batch layer trains a new model version with SparkSubmitHook and every inference actor
  ends up serving it.
- The partition DAG runs its Kafka-only steps, through the Kafka provider's admin hook.
"""

from __future__ import annotations

import email
import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.model import current_version
from tests.integration.airflow_dags import DAG_STACK, airflow_env, bench_stack, run_dag, stack_environ

MAIL_SINK_PORT = 8725  # not the default 8025, so a developer's sink is left alone


@pytest.fixture(scope="module")
def dag_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Airflow and the stack of these tests: own ports, state, results store, reports and mail."""
    tmp = tmp_path_factory.mktemp("dags")
    base = {
        **stack_environ(DAG_STACK),
        "WB_RESULTS_URL": f"sqlite:///{tmp / 'results.db'}",
        "WB_REPORTS_DIR": str(tmp / "reports"),
        "WB_MAIL_SINK_DIR": str(tmp / "mail"),
        "WB_MAIL_SINK_STATE": str(tmp / "mailsink"),
        "WB_MAIL_SINK_PORT": str(MAIL_SINK_PORT),
    }
    env = airflow_env(tmp / "airflow", base)
    yield env
    bench_stack(DAG_STACK).down()  # whatever a failed test left running


def assert_stack_down() -> None:
    running = [i for i in bench_stack(DAG_STACK).status().instances if i.running]
    assert running == [], f"left running after the DAG: {running}"


def runs_in_store(env: dict[str, str]) -> dict[str, str]:
    path = env["WB_RESULTS_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT test, status FROM runs"))


def test_nightly_dag_runs_whole(dag_env: dict[str, str], tmp_path: Path) -> None:
    conf = {
        "duration_s": 10,
        "warmup_s": 5,
        "load_steps": [5],
        "spark_workers": [1, 2],
        "ray_workers": [2],
        "faults": ["kill spark-worker 1 for 10s"],
        "fault_at_s": 12,
        "fault_duration_s": 25,
        "recipients": "nightly@example.com",
    }
    result = run_dag("weather_benchmark_nightly", conf, dag_env, tmp_path / "nightly.log")
    print(f"nightly DAG: {result.seconds:.0f} s")
    assert result.state == "success", result.failures()
    assert all(state == "success" for state in result.tasks.values()), result.failures()
    # One mapped task per step, labelled with what the step changes.
    assert result.mapped_labels["scalability-spark.step"] == ["spark_workers=1", "spark_workers=2"]
    assert result.mapped_labels["scalability-ray.step"] == ["ray_workers=2"]
    assert result.mapped_labels["fault-tolerance.step"] == ["kill spark-worker-1"]
    assert result.mapped_labels["throughput.step"] == ["rate=5,stations=5"]
    stored = runs_in_store(dag_env)
    suite = ["latency", "throughput", "scalability-spark", "scalability-ray", "fault-tolerance", "resources"]
    assert sorted(stored) == sorted(suite)
    assert set(stored.values()) == {"passed"}, stored  # no message lost anywhere
    pdfs = list(Path(dag_env["WB_REPORTS_DIR"]).glob("nightly-*.pdf"))
    assert len(pdfs) == 1
    messages = [
        email.message_from_bytes(p.read_bytes()) for p in Path(dag_env["WB_MAIL_SINK_DIR"]).glob("*.eml")
    ]
    assert len(messages) == 1
    message = messages[0]
    assert "nightly@example.com" in message["To"]
    attached = [part.get_filename() for part in message.walk() if part.get_filename()]
    assert attached == [pdfs[0].name]
    assert_stack_down()


def test_a_bad_parameter_fails_the_first_task_before_the_stack_is_touched(
    dag_env: dict[str, str], tmp_path: Path
) -> None:
    state = Path(dag_env["WB_STATE_DIR"]) / "bench"
    shutil.rmtree(state / "pids", ignore_errors=True)
    log = tmp_path / "bad.log"
    result = run_dag("weather_benchmark_nightly", {"faults": ["explode kafka"]}, dag_env, log)
    assert result.state == "failed"
    assert result.tasks["check_params"] == "failed"
    assert "parameter 'faults'" in log.read_text() and "explode" in log.read_text()
    # Everything after it is upstream_failed (the set-ups failed, so their scope does not run).
    others = {t: s for t, s in result.tasks.items() if t != "check_params"}
    assert set(others.values()) == {"upstream_failed"}, others
    assert not (state / "pids").exists() or not any((state / "pids").iterdir())


def test_batch_layer_trains_with_spark_and_rolls_out_to_every_actor(
    dag_env: dict[str, str], tmp_path: Path
) -> None:
    model_dir = bench_stack(DAG_STACK).config.model_dir
    before = current_version(model_dir) if model_dir.exists() else None
    log = tmp_path / "batch.log"
    result = run_dag("weather_batch_layer", {}, dag_env, log)
    assert result.state == "success", result.failures()
    assert all(state == "success" for state in result.tasks.values()), result.failures()
    after = current_version(model_dir)
    assert after is not None and after != before
    text = log.read_text()
    assert f"model v{after} served by all" in text
    assert "spark-submit" in text  # submitted through the Spark provider's hook
    assert_stack_down()


def test_partition_dag_runs_kafka_only_steps(dag_env: dict[str, str], tmp_path: Path) -> None:
    conf = {"partitions": [2, 4], "duration_s": 5, "recipients": None}
    result = run_dag("weather_benchmark_partitions", conf, dag_env, tmp_path / "partitions.log")
    assert result.state == "success", result.failures()
    assert result.mapped_labels["partitions.step"] == ["partitions=2", "partitions=4"]
    assert result.tasks["brokers.begin"] == "skipped"  # not chosen
    assert result.tasks["email"] == "skipped"  # no recipients
    assert runs_in_store(dag_env)["partitions"] == "passed"
    exported = sorted(Path(dag_env["WB_REPORTS_DIR"], "results").glob("*-partitions-*.json"))
    steps = json.loads(exported[-1].read_text())["run"]["summary"]["steps"]
    assert [s["partitions"] for s in steps] == [2, 4]
    assert all(s["sustained"] is None for s in steps)  # Kafka only: no pipeline verdict
    assert_stack_down()
