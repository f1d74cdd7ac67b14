"""Batch-layer operators: train a model version on the Spark cluster and roll it out to the Ray actors.

`TrainModelOperator` submits pipeline/batch/train.py through the Spark provider's
SparkSubmitHook (connection `weatherbench_spark`: the standalone master), with the same
jars, memory and configuration the stack's own submissions use (pipeline.spark_submit). The
job writes a new model version and moves the model directory's CURRENT pointer to it; the
inference driver notices and swaps the actors over one by one. `ModelRolloutOperator` waits
until every live inference actor serves that version, checking the actors through `RayHook`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from airflow.providers.apache.spark.hooks.spark_submit import SparkSubmitHook
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from pipeline.config import REPO_ROOT, service_environ
from pipeline.model import current_version, load_model
from pipeline.spark_submit import spark_env, submit_settings
from weatherbench.suite import ParamError, check_training_params
from weatherbench_airflow.environment import RAY_CONN_ID, SPARK_CONN_ID, STACK_CONN_ID, STACK_POOL
from weatherbench_airflow.hooks.ray import RayHook
from weatherbench_airflow.hooks.stack import WeatherStackHook
from weatherbench_airflow.operators.stack import CHECK_TASK_ID

TRAIN_SCRIPT = REPO_ROOT / "pipeline" / "batch" / "train.py"
# train.py's exit codes (see its docstring).
EXIT_NOT_BETTER = 3
EXIT_NO_EXECUTORS = 4
INFERENCE_ACTOR_CLASS = "InferenceActor"


class CheckTrainingParamsOperator(BaseOperator):
    """Validate the batch-layer run's parameters; a bad one fails this task, naming it."""

    ui_color = "#fbe9b7"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("task_id", CHECK_TASK_ID)
        kwargs.setdefault("retries", 0)
        super().__init__(**kwargs)

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            return check_training_params(dict(context["params"]))
        except ParamError as exc:
            raise AirflowFailException(str(exc)) from None


class TrainModelOperator(BaseOperator):
    """Train a new model version with Spark (SparkSubmitHook); returns its version and hold-out metrics."""

    ui_color = "#ffe0b2"

    def __init__(
        self, *, spark_conn_id: str = SPARK_CONN_ID, stack_conn_id: str = STACK_CONN_ID, **kwargs: Any
    ) -> None:
        kwargs.setdefault("pool", STACK_POOL)
        super().__init__(**kwargs)
        self.spark_conn_id = spark_conn_id
        self.stack_conn_id = stack_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        checked = context["ti"].xcom_pull(task_ids=CHECK_TASK_ID)
        config = WeatherStackHook(self.stack_conn_id).get_conn().config
        config.dump()
        before = current_version(config.model_dir)
        settings = submit_settings(config, "weather-train", config.spark.driver_ui_port + 1)
        env = spark_env(config, base=service_environ())
        # SparkSubmitHook runs `spark-submit` from PATH: the wheel's, next to this Python.
        env["PATH"] = os.pathsep.join(
            [str(settings.binary.parent), os.path.dirname(sys.executable), env["PATH"]]
        )
        hook = SparkSubmitHook(
            conn_id=self.spark_conn_id,
            conf={key: str(value) for key, value in settings.conf.items()},
            jars=",".join(str(path) for path in settings.jars),
            name=settings.app_name,
            driver_memory=settings.driver_memory,
            executor_memory=settings.executor_memory,
            executor_cores=settings.executor_cores,
            application_args=[
                "--config",
                str(config.stack_file),
                "--horizon-minutes",
                str(checked["horizon_minutes"]),
            ],
            env_vars=env,
            verbose=False,
        )
        try:
            hook.submit(str(TRAIN_SCRIPT))
        except AirflowException:
            # The hook raises one exception type for every exit code; its process handle has the code.
            process = getattr(hook, "_submit_sp", None)
            code = process.returncode if process is not None else None
            if code == EXIT_NOT_BETTER:
                raise AirflowSkipException(
                    "the new model does not beat the persistence forecast on the hold-out: "
                    "nothing to roll out"
                ) from None
            if code == EXIT_NO_EXECUTORS:
                raise AirflowFailException(
                    "no Spark executor was granted: the cluster's cores are all taken (is the streaming job "
                    "still running?)"
                ) from None
            raise
        version = current_version(config.model_dir)
        if version is None or version == before:
            raise AirflowFailException(f"training finished but {config.model_dir}/CURRENT did not move on")
        model = load_model(config.model_dir, version)
        self.log.info("model v%s: %s", version, json.dumps(model.metrics))
        return {"version": version, "previous": before, "metrics": model.metrics}


class ModelRolloutOperator(BaseOperator):
    """Wait until every live inference actor serves the version the training task produced."""

    ui_color = "#ffe0b2"

    def __init__(
        self,
        *,
        train_task_id: str,
        ray_conn_id: str = RAY_CONN_ID,
        stack_conn_id: str = STACK_CONN_ID,
        poll_s: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.train_task_id = train_task_id
        self.ray_conn_id = ray_conn_id
        self.stack_conn_id = stack_conn_id
        self.poll_s = poll_s

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        version = ti.xcom_pull(task_ids=self.train_task_id)["version"]
        timeout_s = ti.xcom_pull(task_ids=CHECK_TASK_ID)["rollout_timeout_s"]
        stats_file = (
            WeatherStackHook(self.stack_conn_id).get_conn().config.state_dir
            / "logs"
            / "inference-stats.jsonl"
        )
        ray = RayHook(self.ray_conn_id)
        began = time.monotonic()
        pool: dict[str, Any] = {}
        while time.monotonic() - began < timeout_s:
            pool = _last_pool_snapshot(stats_file)
            actors = ray.actors(class_name=INFERENCE_ACTOR_CLASS)
            if pool.get("actor_versions") == [version] and pool.get("actors", 0) >= 1 and actors:
                seconds = time.monotonic() - began
                self.log.info(
                    "model v%s served by all %d actors (%d alive in Ray) after %.1f s",
                    version,
                    pool["actors"],
                    len(actors),
                    seconds,
                )
                return {"version": version, "actors": pool["actors"], "rollout_s": round(seconds, 1)}
            time.sleep(self.poll_s)
        raise AirflowFailException(
            f"model v{version} not served by every actor within {timeout_s} s: "
            f"actors serve {pool.get('actor_versions')}, target {pool.get('target_model_version')}"
        )


def _last_pool_snapshot(stats_file: Any) -> dict[str, Any]:
    """The inference driver's latest pool snapshot (it writes one JSON line every few seconds)."""
    try:
        lines = stats_file.read_text().splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            return dict(json.loads(line).get("pool") or {})
        except ValueError:
            continue  # a line being written
    return {}
