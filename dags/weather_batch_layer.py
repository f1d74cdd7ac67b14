"""Batch layer: retrain the forecasting model with Spark and roll it out to the Ray actors.

The streaming job holds every Spark worker core, so the speed layer pauses while the batch job
trains (its checkpoint and Kafka keep every message; it catches up when it resumes). The new
version is live once every inference actor serves it; the actors swap one by one, so
predictions never stop.
"""

from airflow.sdk import DAG, Param

from weatherbench_airflow import params
from weatherbench_airflow.operators.model import (
    CheckTrainingParamsOperator,
    ModelRolloutOperator,
    TrainModelOperator,
)
from weatherbench_airflow.operators.stack import StackActionOperator, StackDownOperator, StackUpOperator
from weatherbench_airflow.workflow import DEFAULT_ARGS

with DAG(
    dag_id="weather_batch_layer",
    description="Retrain the model with the Spark batch layer and roll it out to the Ray actors",
    doc_md=__doc__,
    schedule=None,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["weatherbench", "batch-layer", "model"],
    params={
        "profile": params.profile(),
        "horizon_minutes": Param(
            60,
            type="integer",
            minimum=60,
            title="Forecast horizon (minutes)",
            description="How far ahead the model predicts the temperature; whole hours (the training "
            "data is hourly).",
            section="Model",
        ),
        "rollout_timeout_s": Param(
            180,
            type="integer",
            minimum=10,
            title="Roll-out timeout (s)",
            description="How long every inference actor may take to serve the new version.",
            section="Model",
        ),
    },
):
    check = CheckTrainingParamsOperator()
    stack_up = StackUpOperator()
    pause = StackActionOperator(task_id="pause_speed_layer", action="stop", component="streaming-job")
    train = TrainModelOperator(task_id="train_model")
    resume = StackActionOperator(
        task_id="resume_speed_layer", action="start", component="streaming-job", trigger_rule="all_done"
    )
    rollout = ModelRolloutOperator(task_id="roll_out", train_task_id=train.task_id)
    stack_down = StackDownOperator(task_id="stack_down")
    check >> stack_up >> pause >> train >> resume >> rollout >> stack_down.as_teardown(setups=stack_up)
    train >> rollout  # nothing to roll out unless training produced a version
