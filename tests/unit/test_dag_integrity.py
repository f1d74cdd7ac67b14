"""DAG integrity: every DAG imports, has no cycle, is owned, tagged and retried, and its form is complete.

The DAGs are parsed the way the dag-processor does (DagBag over dags/, with the repository's
Airflow environment), without a metadata database.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest

from weatherbench.suite import check_params, check_training_params

REPO = Path(__file__).resolve().parents[2]
SUITE_DAGS = {
    "weather_benchmark_nightly",
    "weather_benchmark_latency",
    "weather_benchmark_throughput",
    "weather_benchmark_scalability",
    "weather_benchmark_partitions",
    "weather_benchmark_fault_tolerance",
    "weather_benchmark_resources",
    "weather_benchmark_recovery",
}
ALL_DAGS = SUITE_DAGS | {"weather_batch_layer"}


@pytest.fixture(scope="module")
def dagbag(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("airflow")
    os.environ["AIRFLOW_HOME"] = str(home)
    os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow.db'}"
    from weatherbench_airflow import environment

    environment.apply()
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_every_dag_imports_without_errors(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dags) == ALL_DAGS


def test_dags_are_owned_tagged_documented_and_retried(dagbag: Any) -> None:
    for dag_id, dag in dagbag.dags.items():
        assert "weatherbench" in dag.tags, dag_id
        assert dag.doc_md and dag.description, dag_id
        assert dag.max_active_runs == 1, dag_id
        for task in dag.tasks:
            assert task.owner == "weatherbench", f"{dag_id}.{task.task_id}"
            # Parameter checks fail for good; everything else gets one retry.
            expected = 0 if task.task_id == "check_params" else 1
            assert task.retries == expected, f"{dag_id}.{task.task_id}: retries {task.retries}"


def test_no_cycles_and_the_params_check_comes_first(dagbag: Any) -> None:
    for dag_id, dag in dagbag.dags.items():
        dag.check_cycle()  # raises on a cycle
        roots = [task.task_id for task in dag.roots]
        assert roots == ["check_params"], f"{dag_id}: roots {roots}"


def test_every_param_has_a_title_description_and_section(dagbag: Any) -> None:
    for dag_id, dag in dagbag.dags.items():
        for name in dag.params:
            param = dag.params.get_param(name)
            assert param.schema.get("title"), f"{dag_id}.{name}: no title"
            assert param.schema.get("section"), f"{dag_id}.{name}: no section"
            assert param.description, f"{dag_id}.{name}: no description"


def test_default_params_pass_the_schema_and_the_first_task_check(dagbag: Any) -> None:
    for dag_id, dag in dagbag.dags.items():
        values = dag.params.validate()
        if dag_id in SUITE_DAGS:
            offered = dag.params.get_param("tests").schema["items"]["enum"]
            checked = check_params(values, offered)
            assert set(checked.tests) <= set(offered)
        else:
            assert check_training_params(values)["horizon_minutes"] == values["horizon_minutes"]


def test_nightly_runs_the_guide_suite_in_order_and_tears_down(dagbag: Any) -> None:
    dag = dagbag.dags["weather_benchmark_nightly"]
    assert dag.timetable.expression == "0 2 * * *"
    order = ["latency", "throughput", "scalability-spark", "scalability-ray", "fault-tolerance", "resources"]
    assert dag.params["tests"] == order
    for before, after in itertools.pairwise(order):
        assert f"{after}.begin" in dag.get_task(f"{before}.finish").downstream_task_ids
    assert "report" in dag.get_task("resources.finish").downstream_task_ids
    assert dag.get_task("report").downstream_task_ids == {"email"}
    teardown = dag.get_task("stack_down")
    assert teardown.is_teardown and "stack_up" in teardown.upstream_task_ids
    assert dag.get_task("stack_up").is_setup


def test_suite_dags_map_one_task_per_step_in_the_stack_pool(dagbag: Any) -> None:
    for dag_id in SUITE_DAGS:
        dag = dagbag.dags[dag_id]
        for test in dag.params["tests"]:
            step = dag.get_task(f"{test}.step")
            assert step.is_mapped, f"{dag_id}.{test}"
            assert step.partial_kwargs.get("pool", step.pool) == "weatherbench_stack", f"{dag_id}.{test}"
        assert dag.get_task("stack_up").pool == "weatherbench_stack"


def test_batch_layer_trains_then_rolls_out(dagbag: Any) -> None:
    dag = dagbag.dags["weather_batch_layer"]
    train = dag.get_task("train_model")
    assert {"pause_speed_layer"} == train.upstream_task_ids
    assert {"train_model", "resume_speed_layer"} == dag.get_task("roll_out").upstream_task_ids
    assert dag.get_task("resume_speed_layer").trigger_rule == "all_done"
    assert dag.get_task("stack_down").is_teardown
