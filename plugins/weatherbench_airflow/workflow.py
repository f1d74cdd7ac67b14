"""Building blocks of the benchmark DAGs, so each DAG file reads as its table of contents.

`benchmark_suite(tests, report_name)` lays out a suite on one shared stack:

    check_params -> mail_sink_start -> stack_up -> <test 1> -> ... -> <test N> -> report -> email -> verdict
                                         stack_up ........ stack_down (teardown, after the last test)
                             mail_sink_start ................................ mail_sink_stop (teardown)

and each test is a task group `begin -> step (mapped, one per step) -> finish`. A test left
out of the run's `tests` parameter is skipped; a failed test does not stop the ones after it
(the next begins when it is done), and the report covers every test that ran. The verdict
fails the run when a test did not pass. Bad parameters or a stack that did not come up fail
the run at once: nothing in the set-ups' scope runs (Airflow marks it upstream_failed).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.sdk import TaskGroup, chain

from weatherbench_airflow.environment import STACK_POOL
from weatherbench_airflow.operators.benchmark import (
    BeginRunOperator,
    BenchmarkStepOperator,
    FinishRunOperator,
)
from weatherbench_airflow.operators.report import (
    BuildReportOperator,
    MailSinkOperator,
    ReportEmailOperator,
    SuiteVerdictOperator,
)
from weatherbench_airflow.operators.stack import CheckParamsOperator, StackDownOperator, StackUpOperator

OWNER = "weatherbench"
DEFAULT_ARGS: dict[str, Any] = {
    "owner": OWNER,
    # A step that fails on a transient (a broker slow to elect, a port still closing) runs again
    # once; a second failure is real.
    "retries": 1,
    "retry_delay": timedelta(seconds=30),
}


def benchmark_test(test: str, first: bool = False) -> TaskGroup:
    """One test: begin (opens the run) -> one mapped task per step -> finish (summary, run id).

    The first test begins only after a successful set-up (Airflow requires that of a set-up's
    direct successors); the others begin when the test before is done, whatever its outcome.
    """
    with TaskGroup(group_id=test, tooltip=f"The {test} test: one mapped task per step") as group:
        begin = BeginRunOperator(
            task_id="begin", test=test, trigger_rule="all_success" if first else "all_done"
        )
        # The pool is given here: a mapped task's pool is read before its operator is built.
        steps = BenchmarkStepOperator.partial(
            task_id="step", pool=STACK_POOL, map_index_template="{{ task.ticket['label'] }}"
        ).expand(ticket=begin.output)
        finish = FinishRunOperator(task_id="finish", test=test, begin_task_id=begin.task_id)
        # Upstream of finish: begin too, so a begun test always finishes (also when every step
        # failed), and a test left out (begin skipped) is skipped by the scheduler, with no task.
        begin >> steps >> finish
        begin >> finish
    return group


def benchmark_suite(tests: Sequence[str], report_name: str, components: str = "pipeline") -> None:
    """The whole suite of `tests` in the current DAG (see the module docstring for its shape)."""
    check = CheckParamsOperator(offered_tests=tests)
    sink_start = MailSinkOperator(task_id="mail_sink_start", action="start")
    stack_up = StackUpOperator(components=components)
    groups = [benchmark_test(test, first=i == 0) for i, test in enumerate(tests)]
    finish_ids = [f"{test}.finish" for test in tests]
    report = BuildReportOperator(finish_task_ids=finish_ids, name_prefix=report_name)
    email = ReportEmailOperator(to="{{ params.recipients or '' }}")
    verdict = SuiteVerdictOperator(finish_task_ids=finish_ids)
    stack_down = StackDownOperator(task_id="stack_down")
    sink_stop = MailSinkOperator(task_id="mail_sink_stop", action="stop", start_task_id=sink_start.task_id)
    chain(check, sink_start, stack_up, *groups, report, email, verdict)
    groups[-1] >> stack_down.as_teardown(setups=stack_up)
    verdict >> sink_stop.as_teardown(setups=sink_start)
