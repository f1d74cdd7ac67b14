"""The Airflow UI end to end: trigger a benchmark DAG from its form in a browser, see the run succeed.

A throwaway `airflow standalone` (tests/integration/airflow_ui.py) runs with its own home and
SQLite DB; headless Debian Chromium, driven by Playwright, opens the DAG's trigger dialog,
changes params in the form fields (tests, duration_s, recipients) and submits. The REST API
then shows the run, its conf and its end; the report e-mail lands in a mail sink of the test.

`test_nightly_dag_from_trigger_form` triggers the real `weather_benchmark_nightly` from dags/;
its run starts the benchmark stack (Kafka, Spark, Ray) and takes minutes.

Runs come only from the test: the standalone's scheduler has its own schedule off, so
unpausing the cron DAG (the form's "Unpause on trigger") adds no scheduled run.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.integration import airflow_ui as ui
from tests.integration.airflow_dags import DAG_STACK, bench_stack, stack_environ
from weatherbench.mailsink import local_sink

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)

NIGHTLY_DAG_ID = "weather_benchmark_nightly"
RECIPIENT = "ui-test@example.com"
TESTS = ["latency"]
DURATION_S = 20
# Where the report goes when a DAG delivers through the repository's default local sink
# rather than the SMTP settings the test exports (then only the newest file there tells).
REPO_MAIL_DIR = ui.REPO_ROOT / "reports" / "mail"

NIGHTLY_RUN_TIMEOUT_S = 900.0
UI_TIMEOUT_MS = 60_000  # one UI step; generous, the 2 cores are shared with the whole standalone


@dataclass
class UiPlace:
    """A running standalone with the mail sink its DAGs deliver to, and a folder for artefacts."""

    airflow: ui.Standalone
    mail_dir: Path
    out_dir: Path


@contextlib.contextmanager
def airflow_with_sink(
    root: Path, dags_folder: Path | None, extra_env: dict[str, str] | None = None
) -> Iterator[UiPlace]:
    """A mail sink on a free port, then the standalone with every SMTP setting pointed at it."""
    port = ui.free_port()
    mail_dir = root / "mail"
    # The same sink whichever way a DAG sends: weatherbench.mail (WB_SMTP_URL), the SMTP
    # provider's default connection, or the repository's weatherbench_smtp connection.
    sink_uri = f"smtp://127.0.0.1:{port}?disable_ssl=true&disable_tls=true"
    env = {
        "WB_SMTP_URL": sink_uri,
        "AIRFLOW_CONN_SMTP_DEFAULT": sink_uri,
        "AIRFLOW_CONN_WEATHERBENCH_SMTP": sink_uri,
        "WB_MAIL_SINK_PORT": str(port),
        **(extra_env or {}),
    }
    with (
        local_sink(mail_dir, port, root / "mailsink"),
        ui.airflow_standalone(root / "airflow", dags_folder=dags_folder, extra_env=env) as airflow,
    ):
        log.info(
            "standalone healthy after %.1f s, %.0f MB (PSS)", airflow.healthy_after_s, airflow.memory_mb()
        )
        out_dir = root / "artefacts"
        out_dir.mkdir(exist_ok=True)
        yield UiPlace(airflow=airflow, mail_dir=mail_dir, out_dir=out_dir)


def mail_to(address: str, folders: list[Path], since: float, known: set[Path]) -> list[Path]:
    """.eml files new since `since` (or not in `known`) addressed to `address`, newest first."""
    found = []
    for folder in folders:
        for path in folder.glob("*.eml") if folder.is_dir() else ():
            if path in known or path.stat().st_mtime < since:
                continue
            message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            recipients = f"{message.get('X-Envelope-To', '')},{message.get('To', '')}".lower()
            if address.lower() in recipients:
                found.append(path)
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def trigger_from_form(place: UiPlace, dag_id: str, run_timeout_s: float) -> tuple[str, Path]:
    """The whole check for one DAG: form, submit, run to its end, conf, runs, mail.

    Returns the run id and the report e-mail (.eml) it sent.
    """
    api = place.airflow.api
    api.wait_for_dag(dag_id)
    mail_folders = [place.mail_dir, REPO_MAIL_DIR]
    known_mail = {p for folder in mail_folders if folder.is_dir() for p in folder.glob("*.eml")}
    started = time.time()

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = ui.launch_chromium(
            playwright, place.out_dir / f"chromium-{dag_id}", viewport={"width": 1400, "height": 1000}
        )
        page = browser.pages[0] if browser.pages else browser.new_page()
        page.set_default_timeout(UI_TIMEOUT_MS)
        shot = place.out_dir / f"{dag_id}-failure.png"
        try:
            dialog = ui.open_trigger_form(page, dag_id)
            dialog.screenshot(path=str(place.out_dir / f"{dag_id}-form-opened.png"))
            unpause_offered = ui.ensure_unpause_on_trigger(dialog)
            shown_as = ui.set_string_list_param(dialog, "tests", TESTS)
            ui.set_text_param(dialog, "duration_s", str(DURATION_S))
            ui.set_text_param(dialog, "recipients", RECIPIENT)
            ui.param_field(dialog, "tests")  # its section open again, for the screenshot
            dialog.screenshot(path=str(place.out_dir / f"{dag_id}-form-filled.png"))
            log.info("%s: tests shown as %s, unpause offered: %s", dag_id, shown_as, unpause_offered)

            created = ui.submit_trigger(page, dialog, dag_id)
            page.get_by_text("Dag Run Triggered").first.wait_for(state="visible")
            run_id = created["dag_run_id"]
            log.info("%s: run %s triggered from the form", dag_id, run_id)
            assert created["run_type"] == "manual"
            assert created["triggered_by"] == "ui"
            assert created["conf"]["tests"] == TESTS
            assert created["conf"]["duration_s"] == DURATION_S
            assert created["conf"]["recipients"] == RECIPIENT

            # Off the UI while the run goes on: its pages poll the API every few seconds, and the
            # renderer would take a third of a core from the benchmark for the whole run.
            page.goto("about:blank")
            run = api.wait_for_run(dag_id, run_id, run_timeout_s)
            if run["state"] != "success":
                # The run's grid, for whoever reads the failure.
                page.goto(f"{ui.BASE_URL}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe='')}")
                page.wait_for_timeout(3000)
                page.screenshot(path=str(shot), full_page=True)
                pytest.fail(
                    f"run {run_id} of {dag_id} is {run['state']} (not success) after "
                    f"{time.time() - started:.0f} s; screenshot {shot}\n" + api.failure_report(dag_id, run_id)
                )
        except Exception:
            with contextlib.suppress(Exception):
                if not shot.exists():
                    page.screenshot(path=str(shot), full_page=True)
            log.error("%s: screenshot %s, standalone log %s", dag_id, shot, place.airflow.log_path)
            raise
        finally:
            browser.close()

    assert run["conf"]["tests"] == TESTS
    assert run["conf"]["duration_s"] == DURATION_S
    assert run["conf"]["recipients"] == RECIPIENT
    # The form's "Unpause on trigger" unpaused it, and no scheduled run came along.
    assert api.dag(dag_id)["is_paused"] is False  # type: ignore[index]
    assert [r["dag_run_id"] for r in api.dag_runs(dag_id)] == [run_id]

    delivered = mail_to(RECIPIENT, mail_folders, started, known_mail)
    assert delivered, (
        f"no e-mail to {RECIPIENT} in {place.mail_dir} or {REPO_MAIL_DIR} since the trigger; "
        + api.failure_report(dag_id, run_id)
    )
    log.info("%s: report e-mail %s", dag_id, delivered[0])
    return run_id, delivered[0]


@pytest.mark.timeout(int(ui.STARTUP_TIMEOUT_S + NIGHTLY_RUN_TIMEOUT_S + 300))
def test_nightly_dag_from_trigger_form(tmp_path: Path) -> None:
    """The real nightly DAG from the repository's dags/: a short latency run, its report e-mailed.

    Its benchmark stack runs on the DAG tests' ports and state dir (test_15_dags; the model
    trained once serves both), with its own results store and reports folder.
    """
    isolated = {
        **stack_environ(DAG_STACK),
        "WB_RESULTS_URL": f"sqlite:///{tmp_path / 'results.db'}",
        "WB_REPORTS_DIR": str(tmp_path / "reports"),
    }
    try:
        with airflow_with_sink(tmp_path, dags_folder=None, extra_env=isolated) as place:
            _, eml = trigger_from_form(place, NIGHTLY_DAG_ID, NIGHTLY_RUN_TIMEOUT_S)
    finally:
        # A run cut short (a failure stops the standalone) leaves its stack to us.
        bench_stack(DAG_STACK).down()
    # The PDF report of the latency run, attached to the e-mail the DAG's EmailOperator sent.
    pdfs = sorted((tmp_path / "reports").glob("nightly-*.pdf"))
    assert len(pdfs) == 1, pdfs
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    assert [part.get_filename() for part in message.iter_attachments()] == [pdfs[0].name]
    assert "latency" in message["Subject"]
