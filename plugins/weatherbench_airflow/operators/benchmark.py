"""Benchmark operators: one test of the suite as begin -> one mapped task per step -> finish.

`BeginRunOperator` opens the test's run in the results store and returns its step tickets;
`BenchmarkStepOperator` is mapped over them, so each step (a worker count, a partition count,
a load, a fault) shows in the grid with its own logs and retries; `FinishRunOperator`
summarises the run (or closes it as an error with what was measured, if a step failed) and
returns its id for the report. All three are thin over weatherbench.experiments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.providers.apache.kafka.hooks.client import KafkaAdminClientHook
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from weatherbench.experiments import abort_run, begin_run, finish_run, run_ticket
from weatherbench.runner import Bench
from weatherbench.store import ResultsStore
from weatherbench.suite import plan_for
from weatherbench_airflow.environment import KAFKA_CONN_ID, STACK_CONN_ID, STACK_POOL, reports_dir
from weatherbench_airflow.hooks.stack import WeatherStackHook
from weatherbench_airflow.operators.stack import checked_params


def results_dir() -> Path:
    return reports_dir() / "results"


class BeginRunOperator(BaseOperator):
    """Open the run of one test (skipped when the run's `tests` parameter leaves it out)."""

    ui_color = "#bbdefb"

    def __init__(self, *, test: str, stack_conn_id: str = STACK_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.test = test
        self.stack_conn_id = stack_conn_id

    def execute(self, context: Context) -> list[dict[str, Any]]:
        params = checked_params(context)
        if self.test not in params.tests:
            raise AirflowSkipException(
                f"{self.test} is not among this run's tests ({', '.join(params.tests)})"
            )
        hook = WeatherStackHook(self.stack_conn_id)
        plan = plan_for(self.test, params)
        tickets = begin_run(
            plan, hook.base_config, ResultsStore(), results_dir(), self.log.info, hook.state_dir
        )
        return [ticket.to_dict() for ticket in tickets]


class BenchmarkStepOperator(BaseOperator):
    """Run one step of a begun run on the real stack: shape it, load it, inject its faults, measure.

    Partition changes go through the Kafka provider's admin hook (connection `weatherbench_kafka`).
    """

    ui_color = "#90caf9"
    template_fields = ("ticket",)

    def __init__(
        self,
        *,
        ticket: dict[str, Any] | str,
        stack_conn_id: str = STACK_CONN_ID,
        kafka_conn_id: str = KAFKA_CONN_ID,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("pool", STACK_POOL)
        super().__init__(**kwargs)
        self.ticket = ticket
        self.stack_conn_id = stack_conn_id
        self.kafka_conn_id = kafka_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        ticket = dict(self.ticket)  # type: ignore[arg-type]
        hook = WeatherStackHook(self.stack_conn_id)
        kafka = KafkaAdminClientHook(kafka_config_id=self.kafka_conn_id)
        outcomes = run_ticket(
            ticket["run_id"],
            ticket["index"],
            hook.base_config,
            ResultsStore(),
            results_dir(),
            self.log.info,
            hook.state_dir,
            kafka_admin=lambda: kafka.get_conn,
            docker_client=hook.docker_client_factory(),
        )
        skipped = [outcome.skipped for outcome in outcomes if outcome.skipped]
        if skipped:
            # Shown as skipped in the grid; the run's summary and report say why.
            raise AirflowSkipException(f"{ticket['label']}: {skipped[0]}")
        brief = {"step": ticket["label"], "repetitions": len(outcomes)}
        for outcome in outcomes:
            self.log.info(
                "%s (repetition %d): %s", ticket["label"], outcome.repetition, Bench.describe(outcome)
            )
            brief["sustained"] = brief.get("sustained", True) and outcome.sustained
            brief["lost_messages"] = brief.get("lost_messages", 0) + outcome.accounting.get(
                "lost_messages", 0
            )
        return brief


class FinishRunOperator(BaseOperator):
    """Summarise the test's run and close it; its id goes to the report.

    Runs once the test began, whatever its steps did (trigger rule all_done_min_one_success,
    with begin upstream): if a step failed for good, the run is closed as an error with what
    the other steps measured, and this task fails with the reason.
    """

    ui_color = "#bbdefb"

    def __init__(self, *, test: str, begin_task_id: str, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done_min_one_success")
        super().__init__(**kwargs)
        self.test = test
        self.begin_task_id = begin_task_id

    def execute(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        tickets = ti.xcom_pull(task_ids=self.begin_task_id)
        if not tickets:
            raise AirflowSkipException("the test was not begun (left out of this run, or its begin failed)")
        run_id = tickets[0]["run_id"]
        store = ResultsStore()
        try:
            result = finish_run(run_id, store, results_dir(), self.log.info)
        except RuntimeError as exc:  # a step did not complete
            abort_run(run_id, store, results_dir(), str(exc), self.log.info)
            # The report and the verdict still see the run, as an error.
            ti.xcom_push(key="return_value", value={"run_id": run_id, "test": self.test, "status": "error"})
            raise AirflowFailException(
                f"{exc}; the run is stored as an error with what it measured"
            ) from None
        self.log.info("run %s: %s", run_id, result.status)
        return {"run_id": run_id, "test": result.test, "status": result.status}
