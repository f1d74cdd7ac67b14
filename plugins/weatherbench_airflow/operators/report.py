"""Report operators: the suite's PDF, its e-mail (smtp provider), the local SMTP sink, the verdict.

`BuildReportOperator` builds one report over every run the suite finished (weatherbench.report)
and passes the PDF's path, subject and summary on by XCom; `ReportEmailOperator` is the smtp
provider's EmailOperator with that PDF attached, skipped when the run names no recipients.
`MailSinkOperator` starts the local SMTP sink as a set-up task when the SMTP connection points
at it (the default), and stops it afterwards if it started it. `SuiteVerdictOperator` fails
the DAG run when any test lost data, failed its checks or could not complete (bad parameters
or a stack that did not come up fail the run without it: the set-ups' scope never runs).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.providers.smtp.operators.smtp import EmailOperator
from airflow.sdk import BaseHook, BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from weatherbench.mail import DEFAULT_SENDER, SENDER_VARIABLE
from weatherbench.mailsink import accepts_connections, start_sink, stop_sink
from weatherbench.report import build_report
from weatherbench.report.delivery import SINK_OUT_DIR, SINK_STATE_DIR
from weatherbench.store import ResultsStore
from weatherbench_airflow.environment import SMTP_CONN_ID, reports_dir
from weatherbench_airflow.operators.stack import checked_params

REPORT_TASK_ID = "report"


def _finished_runs(context: Context, finish_task_ids: Sequence[str]) -> list[dict[str, Any]]:
    pulled = context["ti"].xcom_pull(task_ids=list(finish_task_ids))
    return [run for run in (pulled or []) if run]


class BuildReportOperator(BaseOperator):
    """Build the PDF and HTML report of the runs the suite's tests finished."""

    ui_color = "#d1c4e9"

    def __init__(self, *, finish_task_ids: Sequence[str], name_prefix: str, **kwargs: Any) -> None:
        kwargs.setdefault("task_id", REPORT_TASK_ID)
        kwargs.setdefault("trigger_rule", "all_done")  # report what ran, also after a failed test
        super().__init__(**kwargs)
        self.finish_task_ids = list(finish_task_ids)
        self.name_prefix = name_prefix

    def execute(self, context: Context) -> dict[str, Any]:
        runs = _finished_runs(context, self.finish_task_ids)
        if not runs:
            raise AirflowSkipException("no test of this run finished: nothing to report")
        stamp = context["logical_date"] or context["dag_run"].run_after
        result = build_report(
            ResultsStore(),
            [run["run_id"] for run in runs],
            out_dir=reports_dir(),
            name=f"{self.name_prefix}-{stamp:%Y%m%dT%H%M%SZ}",
        )
        self.log.info(
            "report: %s (%s), built in %.1f s", result.pdf, result.status.label, result.build_seconds
        )
        return {
            "pdf": str(result.pdf),
            "html": str(result.html),
            "subject": result.subject,
            "body": result.email_body(),
            "status": result.status.label,
            "run_ids": result.run_ids,
        }


class ReportEmailOperator(EmailOperator):
    """The smtp provider's EmailOperator sending the report: PDF attached, summary in the body."""

    def __init__(self, *, to: str, conn_id: str = SMTP_CONN_ID, **kwargs: Any) -> None:
        report = f"ti.xcom_pull(task_ids='{REPORT_TASK_ID}')"
        kwargs.setdefault("task_id", "email")
        super().__init__(
            to=to,
            subject="{{ " + report + "['subject'] }}",
            html_content="<pre>{{ " + report + "['body'] | e }}</pre>",
            files=["{{ " + report + "['pdf'] }}"],
            conn_id=conn_id,
            **kwargs,
        )

    def execute(self, context: Context) -> Any:
        if not self.to or self.to in ([], [""], ""):
            raise AirflowSkipException("no recipients: the report stays in reports/")
        if not self.from_email:
            # The sender as weatherbench.mail has it: WB_MAIL_FROM, the connection's from_email,
            # or the default; the provider alone would refuse a connection without from_email.
            extra = BaseHook.get_connection(self.conn_id).extra_dejson
            self.from_email = os.environ.get(SENDER_VARIABLE) or extra.get("from_email") or DEFAULT_SENDER
        return super().execute(context)


class MailSinkOperator(BaseOperator):
    """Start (set-up) or stop (teardown) the local SMTP sink, when the SMTP connection points at it."""

    def __init__(
        self, *, action: str, start_task_id: str | None = None, conn_id: str = SMTP_CONN_ID, **kwargs: Any
    ) -> None:
        if action not in ("start", "stop"):
            raise ValueError(f"action {action!r} is not start or stop")
        if action == "stop" and not start_task_id:
            raise ValueError("stop needs start_task_id: the sink is stopped only if that task started it")
        super().__init__(**kwargs)
        self.action = action
        self.start_task_id = start_task_id
        self.conn_id = conn_id

    def execute(self, context: Context) -> bool:
        state_dir = Path(os.environ.get("WB_MAIL_SINK_STATE", SINK_STATE_DIR))
        if self.action == "stop":
            if context["ti"].xcom_pull(task_ids=self.start_task_id) is True:
                stop_sink(state_dir)
                self.log.info("local SMTP sink stopped")
            return False
        conn = BaseHook.get_connection(self.conn_id)
        port = int(conn.port or 25)
        # Only a local address with nothing listening gets a sink: a server that already
        # answers there (a sink started by hand, a local relay) takes the mail as it is.
        if conn.host not in ("127.0.0.1", "localhost") or accepts_connections(conn.host, port):
            self.log.info("mail goes to %s:%s; no sink to start", conn.host, port)
            return False
        out_dir = Path(os.environ.get("WB_MAIL_SINK_DIR", SINK_OUT_DIR))
        info = start_sink(out_dir, port, state_dir, host=conn.host)
        self.log.info("local SMTP sink on %s:%s writing %s", conn.host, conn.port, info.out_dir)
        return True


class SuiteVerdictOperator(BaseOperator):
    """Fail the DAG run if a test lost data, failed its checks, or did not complete."""

    def __init__(self, *, finish_task_ids: Sequence[str], **kwargs: Any) -> None:
        kwargs.setdefault("task_id", "verdict")
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.finish_task_ids = list(finish_task_ids)

    def execute(self, context: Context) -> dict[str, str]:
        runs = {run["test"]: run["status"] for run in _finished_runs(context, self.finish_task_ids)}
        problems = [f"{test}: {status}" for test, status in runs.items() if status != "passed"]
        problems += [
            f"{test}: did not complete" for test in checked_params(context).tests if test not in runs
        ]
        if problems:
            raise AirflowFailException("tests did not pass: " + "; ".join(problems))
        self.log.info("every test passed: %s", ", ".join(runs) or "none run")
        return runs
