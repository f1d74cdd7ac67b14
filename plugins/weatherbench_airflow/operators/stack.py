"""Stack operators: check a run's parameters, bring the benchmark stack up, shape it, break it, stop it.

`CheckParamsOperator` is every benchmark DAG's first task: it validates the run's parameters
(weatherbench.suite) before any task touches the stack, and hands the checked values on by
XCom, where the other operators read them (`checked_params`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from pipeline.stack.base import COMPONENTS, INFRASTRUCTURE, KAFKA
from weatherbench.runner import Bench
from weatherbench.suite import ParamError, SuiteParams, check_params, plan_for
from weatherbench_airflow.environment import STACK_CONN_ID, STACK_POOL
from weatherbench_airflow.hooks.stack import WeatherStackHook

CHECK_TASK_ID = "check_params"
STACK_UP_TASK_ID = "stack_up"
STACK_PARTS = {"pipeline": COMPONENTS, "infrastructure": INFRASTRUCTURE, "kafka": (KAFKA,)}


def checked_params(context: Context) -> SuiteParams:
    """The run's parameters as the check task validated them."""
    raw = context["ti"].xcom_pull(task_ids=CHECK_TASK_ID)
    if raw is None:
        raise AirflowFailException(f"no checked parameters: the {CHECK_TASK_ID} task must run first")
    return SuiteParams.from_dict(raw)


class CheckParamsOperator(BaseOperator):
    """Validate the run's parameters; a bad one fails this task, naming it, and nothing else runs."""

    ui_color = "#fbe9b7"

    def __init__(self, *, offered_tests: Sequence[str], **kwargs: Any) -> None:
        kwargs.setdefault("task_id", CHECK_TASK_ID)
        kwargs.setdefault("retries", 0)  # a bad parameter stays bad
        super().__init__(**kwargs)
        self.offered_tests = tuple(offered_tests)

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            params = check_params(dict(context["params"]), self.offered_tests)
        except ParamError as exc:
            raise AirflowFailException(str(exc)) from None
        self.log.info("parameters: %s", params.to_dict())
        return params.to_dict()


class StackUpOperator(BaseOperator):
    """Bring the benchmark stack up in the shape of the suite's first test.

    `components`: "pipeline" (default) starts everything and primes it, so no step measures a
    cold start; "infrastructure" starts Kafka, Spark and Ray (for DAGs that submit their own
    jobs); "kafka" starts Kafka alone (the Kafka-only partition test of the guide's 5.3).
    If starting fails, whatever did start is stopped again before the task fails.
    """

    ui_color = "#c8e6c9"

    def __init__(
        self, *, components: str = "pipeline", stack_conn_id: str = STACK_CONN_ID, **kwargs: Any
    ) -> None:
        if components not in STACK_PARTS:
            raise ValueError(f"components {components!r} is not one of {', '.join(STACK_PARTS)}")
        kwargs.setdefault("task_id", STACK_UP_TASK_ID)
        kwargs.setdefault("pool", STACK_POOL)
        super().__init__(**kwargs)
        self.components = components
        self.stack_conn_id = stack_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        params = checked_params(context)
        hook = WeatherStackHook(self.stack_conn_id)
        # The stack takes the shape of the suite's first test (DAGs without tests: the profile's
        # steady-load shape, that of its latency test).
        plan = plan_for(params.tests[0] if params.tests else "latency", params)
        step = plan.steps[0]
        bench = Bench(hook.base_config, step.stack, hook.state_dir, self.log.info, hook.state_dir)
        try:
            if self.components == "pipeline":
                bench.ensure_up(step, plan.drain_timeout_s)
            else:
                bench.up(STACK_PARTS[self.components])
        except BaseException:
            # The teardown only runs after a successful set-up: leave nothing running behind.
            bench.stack.down()
            raise
        return _status(bench.stack)


class StackDownOperator(BaseOperator):
    """Stop every process of the benchmark stack (by pid); used as the DAGs' teardown task."""

    ui_color = "#ffcdd2"

    def __init__(self, *, stack_conn_id: str = STACK_CONN_ID, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stack_conn_id = stack_conn_id

    def execute(self, context: Context) -> None:
        stack = WeatherStackHook(self.stack_conn_id).get_conn()
        stack.down()
        self.log.info("benchmark stack stopped")


class StackActionOperator(BaseOperator):
    """One stack call: `scale` (component, count), `kill` / `stop` / `restart` (component, which), `start`.

    `stop` is an operator's graceful stop (a supervised service stays stopped), `kill` a crash
    (SIGKILL; its supervisor restarts a supervised service), `start` brings stopped components up.
    """

    template_fields = ("component", "count", "which")

    def __init__(
        self,
        *,
        action: str,
        component: str,
        count: int | str | None = None,
        which: int | str | None = None,
        stack_conn_id: str = STACK_CONN_ID,
        **kwargs: Any,
    ) -> None:
        if action not in ("scale", "kill", "stop", "restart", "start"):
            raise ValueError(f"action {action!r} is not one of scale, kill, stop, restart, start")
        kwargs.setdefault("pool", STACK_POOL)
        super().__init__(**kwargs)
        self.action = action
        self.component = component
        self.count = count
        self.which = which
        self.stack_conn_id = stack_conn_id

    def execute(self, context: Context) -> dict[str, Any]:
        stack = WeatherStackHook(self.stack_conn_id).get_conn()
        which = int(self.which) if self.which not in (None, "") else None
        if self.action == "scale":
            stack.scale(self.component, int(self.count or 0))
        elif self.action == "start":
            stack.up((self.component,) if self.component in COMPONENTS else COMPONENTS)
        elif self.action == "restart":
            stack.restart(self.component, which)
        else:
            self.log.info(stack.kill(self.component, which, graceful=self.action == "stop"))
        return _status(stack)


def _status(stack: Any) -> dict[str, Any]:
    status = stack.status()
    return {component: status.running(component) for component in COMPONENTS}
