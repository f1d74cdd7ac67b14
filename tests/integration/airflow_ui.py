"""Airflow's UI for browser tests: a throwaway `airflow standalone`, its REST API, a headless Chromium.

This module owns the test side of a local Airflow: starting `python -m weatherbench_airflow ui`
(bootstrap, then `airflow standalone`) with its own AIRFLOW_HOME in its own process group,
waiting until it is really serving, stopping it by that process group even when the test
failed, and the REST calls and browser launch the UI tests need. It never imports Airflow:
Airflow runs only in the child process, configured through its environment.

Facts about `airflow standalone` (Airflow 3.3.2, SQLite metadata DB) this module relies on:

* Executor: LocalExecutor (standalone forces a local executor; 3.x accepts SQLite with it).
  With fork it starts all `[core] parallelism` workers at once (default 32, each about
  130 MB RSS, mostly shared), so the tests lower parallelism.
* Its "ready" banner only looks at the scheduler, DAG processor and triggerer jobs, not the
  api-server; readiness here is the API's health endpoint answering with every component
  healthy.
* New DAGs are paused (`dags_are_paused_at_creation`). A manual run of a paused DAG is
  created but stays queued; it starts once the DAG is unpaused.
* Unpausing a DAG with a cron schedule and catchup=False makes the scheduler create a
  scheduled run at once, for the latest past cron tick (e.g. today 02:00 for "0 2 * * *").
  The tests turn the scheduler's own schedule off (`[scheduler] use_job_schedule`), so the
  only runs are those they trigger.
* The api-server's auth is SimpleAuthManager with every user an admin: REST calls need no
  token, the UI no login.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx
import psutil

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Locator, Page, Playwright

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
UI_HOST = "127.0.0.1"
UI_PORT = 8080
BASE_URL = f"http://{UI_HOST}:{UI_PORT}"
# Every component the health endpoint reports; the endpoint answering at all is the api-server.
HEALTH_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
TERMINAL_RUN_STATES = frozenset({"success", "failed"})
FAILED_TASK_STATES = frozenset({"failed", "upstream_failed", "up_for_retry"})

# Debian's Chromium (apt package `chromium`); Playwright downloads no browser of its own.
CHROMIUM = Path("/usr/bin/chromium")
# The machine has no network beyond package registries: without these Chromium keeps trying
# to reach Google services (component updates, sync, QUIC probes) and logs refusals.
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

STARTUP_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0
DAG_PARSE_TIMEOUT_S = 120.0


class AirflowUiError(RuntimeError):
    """The standalone did not start, serve or stop as expected; the text says what and where."""


def port_is_free(port: int, host: str = UI_HOST) -> bool:
    """Nothing accepts connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) != 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((UI_HOST, 0))
        return sock.getsockname()[1]


# -- REST API --------------------------------------------------------------


class AirflowApi:
    """The few REST calls (API v2) the UI tests use; no auth, as every user is an admin."""

    def __init__(self, base_url: str = BASE_URL, timeout_s: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = httpx.Client(base_url=f"{self.base_url}/api/v2", timeout=timeout_s)

    def close(self) -> None:
        self.client.close()

    def _get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params or None)
        response.raise_for_status()
        return response.json()

    def health(self) -> dict[str, Any]:
        return self._get("/monitor/health")

    def dag(self, dag_id: str) -> dict[str, Any] | None:
        """The DAG as the API shows it, None while the DAG processor has not stored it yet."""
        response = self.client.get(f"/dags/{quote(dag_id, safe='')}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        return response.json()

    def import_errors(self) -> list[dict[str, Any]]:
        return self._get("/importErrors")["import_errors"]

    def wait_for_dag(self, dag_id: str, timeout_s: float = DAG_PARSE_TIMEOUT_S) -> dict[str, Any]:
        """Wait until the DAG processor has parsed the DAG; an import error fails at once."""
        deadline = time.monotonic() + timeout_s
        while True:
            dag = self.dag(dag_id)
            if dag is not None:
                return dag
            errors = self.import_errors()
            if errors:
                text = "\n".join(f"{e.get('filename')}: {e.get('stack_trace')}" for e in errors)
                raise AirflowUiError(f"DAG {dag_id} not loaded, import errors:\n{text}")
            if time.monotonic() > deadline:
                raise AirflowUiError(f"DAG {dag_id} not parsed within {timeout_s:.0f} s")
            time.sleep(1.0)

    def set_paused(self, dag_id: str, paused: bool) -> None:
        response = self.client.patch(f"/dags/{quote(dag_id, safe='')}", json={"is_paused": paused})
        response.raise_for_status()
        if response.json()["is_paused"] is not paused:
            raise AirflowUiError(f"DAG {dag_id}: is_paused did not change to {paused}")

    def dag_runs(self, dag_id: str) -> list[dict[str, Any]]:
        """All runs of the DAG, oldest first."""
        body = self._get(f"/dags/{quote(dag_id, safe='')}/dagRuns", order_by="run_after", limit=100)
        return body["dag_runs"]

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._get(f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's task instances (task_id, map_index, state, try_number, ...)."""
        path = f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}/taskInstances"
        return self._get(path, limit=1000)["task_instances"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> str:
        """One attempt's log as text lines (the API serves structured events as JSON)."""
        path = (
            f"/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"
            f"/taskInstances/{quote(task_id, safe='')}/logs/{try_number}"
        )
        response = self.client.get(
            path,
            params={"full_content": "true", "map_index": map_index},
            headers={"Accept": "application/json"},
        )
        response.raise_for_status()
        content = response.json().get("content", [])
        if isinstance(content, str):
            return content
        return "\n".join(_log_line(event) for event in content)

    def wait_for_run(self, dag_id: str, run_id: str, timeout_s: float, poll_s: float = 5.0) -> dict[str, Any]:
        """Poll until the run is in a terminal state; the run as the API last showed it."""
        deadline = time.monotonic() + timeout_s
        last_state = None
        run: dict[str, Any] = {"state": None}
        while True:
            try:
                run = self.dag_run(dag_id, run_id)
            except httpx.TransportError as exc:
                # The api-server shares two cores with a starting benchmark stack: a slow answer
                # is not a verdict on the run; ask again until the deadline.
                log.warning("run %s of %s: no answer from the API (%s); asking again", run_id, dag_id, exc)
                if time.monotonic() > deadline:
                    raise
                time.sleep(poll_s)
                continue
            if run["state"] != last_state:
                log.info("run %s of %s: %s", run_id, dag_id, run["state"])
                last_state = run["state"]
            if run["state"] in TERMINAL_RUN_STATES or time.monotonic() > deadline:
                return run
            time.sleep(poll_s)

    def failure_report(self, dag_id: str, run_id: str, max_chars: int = 20_000) -> str:
        """Task states of the run and the log of every task that failed, for an assertion message."""
        tis = self.task_instances(dag_id, run_id)
        lines = [f"task instances of {dag_id} / {run_id}:"]
        lines += [
            f"  {ti['task_id']}[{ti['map_index']}] {ti['state']} (try {ti['try_number']})" for ti in tis
        ]
        for ti in tis:
            if ti["state"] not in FAILED_TASK_STATES or not ti["try_number"]:
                continue
            try:
                text = self.task_log(dag_id, run_id, ti["task_id"], ti["try_number"], ti["map_index"])
            except httpx.HTTPError as exc:
                text = f"(log not available: {exc})"
            lines += [f"--- log of {ti['task_id']}[{ti['map_index']}] try {ti['try_number']} ---", text]
        report = "\n".join(lines)
        return report if len(report) <= max_chars else "...\n" + report[-max_chars:]


def _log_line(event: Any) -> str:
    """One structured log event as a text line; an exception as its type, message and last frames."""
    if not isinstance(event, dict):
        return str(event)
    head = " ".join(str(event[k]) for k in ("timestamp", "level") if event.get(k))
    lines = [f"{head} {event.get('event', '')}".strip()]
    for exc in event.get("error_detail") or []:
        if not isinstance(exc, dict):
            lines.append(f"    {exc}")
            continue
        lines.append(f"    {exc.get('exc_type')}: {exc.get('exc_value')}")
        lines += [
            f"      at {f.get('filename')}:{f.get('lineno')} in {f.get('name')}"
            for f in (exc.get("frames") or [])[-4:]
        ]
    return "\n".join(lines)


# -- the standalone process ------------------------------------------------


def standalone_environ(
    home: Path,
    *,
    dags_folder: Path | None = None,
    extra: Mapping[str, str] | None = None,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Environment of a test standalone: its own home and DB, this checkout, no schedule of its own.

    Settings that would point it at the developer's Airflow (DB, DAGs folder, home) are
    dropped from `base`, so weatherbench_airflow derives them from `home` and the repository.
    """
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if k
        not in (
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
            "AIRFLOW__CORE__DAGS_FOLDER",
            "AIRFLOW__CORE__EXECUTOR",
            "AIRFLOW__API__BASE_URL",
            "AIRFLOW__API__PORT",
            "AIRFLOW__API__HOST",
        )
    }
    env["AIRFLOW_HOME"] = str(home)
    if dags_folder is not None:
        env["AIRFLOW__CORE__DAGS_FOLDER"] = str(dags_folder)
    # This checkout's packages, whatever the virtualenv's .pth file points at.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), str(REPO_ROOT / "plugins"), env.get("PYTHONPATH", "")) if p
    )
    # Runs come only from the test: no scheduled run when a cron DAG is unpaused.
    env["AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE"] = "False"
    # LocalExecutor forks `parallelism` workers up front; 4 is plenty for one run on 2 cores.
    env["AIRFLOW__CORE__PARALLELISM"] = "4"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass
class Standalone:
    """A running `airflow standalone`: its process (leader of its own group), home and log."""

    process: subprocess.Popen[bytes]
    home: Path
    log_path: Path
    api: AirflowApi
    started_s: float  # monotonic time of the start
    healthy_after_s: float | None = None

    @property
    def base_url(self) -> str:
        return self.api.base_url

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def memory_mb(self) -> float:
        """Proportional set size of the whole process group (shared pages counted once)."""
        total = 0
        for proc in _group_members(self.process.pid):
            with contextlib.suppress(psutil.Error):
                total += proc.memory_full_info().pss
        return total / 2**20


def _group_members(pgid: int) -> list[psutil.Process]:
    """Live (non-zombie) processes of the process group."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                members.append(proc)
    return members


def _wait_group_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _group_members(pgid):
            return True
        time.sleep(0.3)
    return not _group_members(pgid)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def stop_standalone(sa: Standalone, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM to the whole process group, SIGKILL to what is left after timeout_s; reaps the leader.

    The group is the one the standalone was started in (start_new_session), so the scheduler,
    DAG processor, api-server, triggerer, executor workers and any task they run go with it.
    """
    pgid = sa.process.pid
    began = time.monotonic()
    _signal_group(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        sa.process.wait(timeout=timeout_s)
    if not _wait_group_gone(pgid, max(0.0, timeout_s - (time.monotonic() - began))):
        left = ", ".join(f"{p.pid} {p.name()}" for p in _group_members(pgid))
        log.warning("standalone group %d still has %s after SIGTERM: SIGKILL", pgid, left)
        _signal_group(pgid, signal.SIGKILL)
        _wait_group_gone(pgid, 10.0)
    with contextlib.suppress(subprocess.TimeoutExpired):
        sa.process.wait(timeout=5.0)
    sa.api.close()
    log.info("standalone stopped in %.1f s", time.monotonic() - began)


def wait_healthy(sa: Standalone, timeout_s: float = STARTUP_TIMEOUT_S) -> dict[str, Any]:
    """Wait until the API answers and reports every component healthy; fail early if the process exits."""
    deadline = sa.started_s + timeout_s
    last: Any = "no answer"
    while True:
        if sa.process.poll() is not None:
            raise AirflowUiError(
                f"standalone exited with {sa.process.returncode} before it was healthy; "
                f"log {sa.log_path}:\n{sa.log_tail()}"
            )
        try:
            health = sa.api.health()
            last = health
            if all(health.get(c, {}).get("status") == "healthy" for c in HEALTH_COMPONENTS):
                sa.healthy_after_s = time.monotonic() - sa.started_s
                return health
        except (httpx.HTTPError, ValueError) as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() > deadline:
            raise AirflowUiError(
                f"standalone not healthy within {timeout_s:.0f} s (last health: {last}); "
                f"log {sa.log_path}:\n{sa.log_tail()}"
            )
        time.sleep(1.0)


@contextlib.contextmanager
def airflow_standalone(
    home: Path,
    *,
    dags_folder: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> Iterator[Standalone]:
    """`python -m weatherbench_airflow ui` with its home in `home`, healthy on entry, stopped on exit.

    The UI's port (8080) must be free: a developer's running Airflow is not reused, as its
    DB and DAGs are not the test's. On exit, also after a failure, the process group is
    stopped and the port checked free again.
    """
    if not port_is_free(UI_PORT):
        raise AirflowUiError(f"port {UI_PORT} is in use (another Airflow UI running?); stop it first")
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / "standalone.log"
    env = standalone_environ(home, dags_folder=dags_folder, extra=extra_env)
    python = sys.executable
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [python, "-m", "weatherbench_airflow", "ui"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopped as one, never by name
        )
    sa = Standalone(
        process=process, home=home, log_path=log_path, api=AirflowApi(BASE_URL), started_s=time.monotonic()
    )
    log.info("standalone started: pid %d, home %s, log %s", process.pid, home, log_path)
    try:
        wait_healthy(sa, startup_timeout_s)
        log.info("standalone healthy after %.1f s, %.0f MB PSS", sa.healthy_after_s, sa.memory_mb())
        yield sa
    finally:
        stop_standalone(sa, stop_timeout_s)
        deadline = time.monotonic() + 10.0
        while not port_is_free(UI_PORT) and time.monotonic() < deadline:
            time.sleep(0.5)
        if not port_is_free(UI_PORT):
            raise AirflowUiError(f"port {UI_PORT} still in use after the standalone was stopped")


def launch_chromium(playwright: Playwright, user_data_dir: Path, **context_options: Any) -> BrowserContext:
    """A headless Debian Chromium as a Playwright persistent context with a fresh profile.

    `playwright` is the object `sync_playwright()` yields. Persistent, because a profile
    directory of our own is given (Playwright rejects --user-data-dir in plain launch args).
    """
    if not CHROMIUM.exists():
        raise AirflowUiError(f"{CHROMIUM} not found: install Debian's chromium (make system-deps)")
    user_data_dir.mkdir(parents=True, exist_ok=True)
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=str(CHROMIUM),
        headless=True,
        args=list(CHROMIUM_ARGS),
        **context_options,
    )


# -- the trigger form (Airflow 3.3 React UI) -------------------------------
#
# The DAG page's "Trigger" button (aria-label "Trigger Dag") opens a dialog. Each param is a
# form field named `element_<param>`: a text input, a number input (role spinbutton), a
# textarea for an array of strings without examples (one value per line, committed on blur),
# or a react-select multi-select (container id `element_<param>`, one chip per value with a
# "Remove <value>" button) for an array with examples or enum. Params with a `section` sit
# in accordion items that start collapsed; the submit button has data-testid
# "trigger-dag-submit". A paused DAG's dialog has an "Unpause <dag> on trigger" checkbox,
# ticked by default.

SUBMIT = '[data-testid="trigger-dag-submit"]'


def open_trigger_form(page: Page, dag_id: str, base_url: str = BASE_URL) -> Locator:
    """The DAG's page, then its trigger dialog; returns the dialog."""
    # Not "networkidle": the UI polls the API, so the network is rarely idle for long.
    page.goto(f"{base_url}/dags/{quote(dag_id, safe='')}", wait_until="domcontentloaded")
    page.get_by_role("button", name="Trigger Dag").click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for(state="visible")
    dialog.locator(SUBMIT).wait_for(state="visible")
    return dialog


def param_field(dialog: Locator, name: str) -> Locator:
    """The param's form field, its accordion section opened first when it is in a closed one."""
    selector = f'[name="element_{name}"]'
    field = dialog.locator(selector).first
    field.wait_for(state="attached")
    # `has` matches inside each item, so it takes a page-rooted locator, not one under the dialog.
    item = dialog.locator('[data-scope="accordion"][data-part="item"]').filter(
        has=dialog.page.locator(selector)
    )
    if item.count():
        trigger = item.first.locator('[data-part="item-trigger"]').first
        if trigger.get_attribute("aria-expanded") != "true":
            trigger.click()
    return field


def set_text_param(dialog: Locator, name: str, value: str) -> None:
    """A string (text input) or number (spinbutton) param; the value commits when the field blurs."""
    field = param_field(dialog, name)
    field.fill(value)
    field.press("Tab")


def set_string_list_param(dialog: Locator, name: str, values: list[str]) -> str:
    """An array-of-strings param, whichever way the form shows it; returns "textarea" or "multiselect"."""
    param_field(dialog, name)
    textarea = dialog.locator(f'textarea[name="element_{name}"]')
    if textarea.count():
        textarea.fill("\n".join(values))
        textarea.press("Tab")  # the textarea hands its lines to the form on blur
        return "textarea"
    select = dialog.locator(f'[id="element_{name}"]')
    select.wait_for(state="visible")
    chips = select.locator('[aria-label^="Remove "]')

    def chosen() -> list[str]:
        labels = chips.evaluate_all("nodes => nodes.map(n => n.getAttribute('aria-label'))")
        return [label.removeprefix("Remove ") for label in labels]

    # Drop every chosen value not wanted (each chip has its own "Remove <value>" control; the
    # list shrinks with each click, so it is read again every time) ...
    while unwanted := [v for v in chosen() if v not in values]:
        select.locator(f'[aria-label="Remove {unwanted[0]}"]').click()
    # ... then choose each missing one from the menu, typed into the combobox to filter it.
    for value in values:
        if value not in chosen():
            select.get_by_role("combobox").fill(value)
            dialog.page.get_by_role("option", name=value, exact=True).click()
    if chosen() != values:
        raise AirflowUiError(f"multi-select {name} shows {chosen()} instead of {values}")
    return "multiselect"


def ensure_unpause_on_trigger(dialog: Locator) -> bool:
    """Tick "Unpause <dag> on trigger" if the dialog shows it (it does for a paused DAG only).

    A manual run of a paused DAG would stay queued. Returns whether the checkbox was there.
    """
    label = (
        dialog.locator('label[data-scope="checkbox"]')
        .filter(has_text="Unpause")
        .filter(has_text="on trigger")
    )
    if not label.count():
        return False
    if not label.locator('input[type="checkbox"]').is_checked():
        label.click()
    return True


def submit_trigger(page: Page, dialog: Locator, dag_id: str) -> dict[str, Any]:
    """Press the dialog's Trigger button; the run the UI created, from the API's answer to its POST."""
    path = f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns"
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.split("?")[0].endswith(path)
    ) as answer:
        dialog.locator(SUBMIT).click()
    response = answer.value
    if not response.ok:
        raise AirflowUiError(f"trigger refused: HTTP {response.status} {response.text()}")
    return response.json()
