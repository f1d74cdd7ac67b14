"""How Airflow runs for this repository, set before Airflow is imported (no Airflow import here).

`airflow_environ()` gives the variables: AIRFLOW_HOME under .state/airflow (SQLite metadata DB),
the repository's dags/ and plugins/ folders, no example DAGs, the UI on 127.0.0.1:8080 (the
stack's ports keep clear of it), and the connections the operators use. A variable already in
the environment wins, so a user points the DAGs at another SMTP server, Kafka or Spark master
by exporting the usual `AIRFLOW_CONN_<ID>` or `AIRFLOW__SECTION__KEY`.

`python -m weatherbench_airflow` (the `wb-airflow` command) is `airflow` with this environment,
plus `bootstrap` (migrate the metadata DB, create the stack pool) and `ui` (bootstrap, then
`airflow standalone`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pipeline.config import REPO_ROOT, load_config
from weatherbench.mail import DEFAULT_SINK_HOST, sink_port

AIRFLOW_HOME = REPO_ROOT / ".state" / "airflow"
UI_HOST = "127.0.0.1"
UI_PORT = 8080

# Connection ids the operators use by default.
STACK_CONN_ID = "weatherbench_stack"
KAFKA_CONN_ID = "weatherbench_kafka"
SPARK_CONN_ID = "weatherbench_spark"
RAY_CONN_ID = "weatherbench_ray"
SMTP_CONN_ID = "weatherbench_smtp"

STACK_BACKEND_VARIABLE = "WB_STACK_BACKEND"

# Benchmarks share one stack: the pool with one slot runs one of their tasks at a time.
STACK_POOL = "weatherbench_stack"
STACK_POOL_DESCRIPTION = "One slot: benchmark tasks that use the shared benchmark stack run one at a time"


def reports_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the DAGs write reports (results JSON under results/): WB_REPORTS_DIR, default reports/."""
    env = os.environ if environ is None else environ
    return Path(env.get("WB_REPORTS_DIR") or REPO_ROOT / "reports")


def connection_uris(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Default connections (Airflow's JSON form), from the local stack configuration."""
    config = load_config(environ=environ)
    env = os.environ if environ is None else environ
    # WB_STACK_BACKEND: where the benchmark stack runs (local processes, docker compose, an
    # existing cluster); see pipeline.stack.
    backend = env.get(STACK_BACKEND_VARIABLE) or "local"
    # Benchmarks keep their own state beside a production stack's, except in compose, where
    # the containers' state volume is the only one (the benchmark stack is the stack).
    state_dir = config.state_dir if backend == "compose" else config.state_dir / "bench"
    return {
        STACK_CONN_ID: json.dumps(
            {
                "conn_type": "generic",
                "description": "The benchmark stack: backend and configuration of the stack runtime",
                "extra": {"backend": backend, "state_dir": str(state_dir)},
            }
        ),
        KAFKA_CONN_ID: json.dumps(
            {
                "conn_type": "kafka",
                "description": "Kafka brokers of the benchmark stack (admin client)",
                "extra": {"bootstrap.servers": config.kafka.bootstrap_servers},
            }
        ),
        SPARK_CONN_ID: json.dumps(
            {
                "conn_type": "spark",
                "description": "The Spark standalone master of the stack",
                "host": f"spark://{config.spark.master_host}",
                "port": config.spark.master_port,
                "extra": {"deploy-mode": "client", "spark-binary": "spark-submit"},
            }
        ),
        RAY_CONN_ID: json.dumps(
            {
                "conn_type": "generic",
                "description": "The Ray cluster's dashboard (state API)",
                "host": config.ray.head_host,
                "port": config.ray.dashboard_port,
            }
        ),
        SMTP_CONN_ID: json.dumps(
            {
                "conn_type": "smtp",
                "description": "Where report e-mail goes: the local SMTP sink unless overridden",
                "host": DEFAULT_SINK_HOST,
                "port": sink_port(environ),
                "extra": {"disable_ssl": True, "disable_tls": True, "from_email": "weatherbench@localhost"},
            }
        ),
    }


def airflow_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment Airflow runs in for this repository: `environ` plus our defaults."""
    env = dict(os.environ if environ is None else environ)
    home = Path(env.get("AIRFLOW_HOME") or AIRFLOW_HOME)
    defaults = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__API__HOST": UI_HOST,
        "AIRFLOW__API__PORT": str(UI_PORT),
        "AIRFLOW__API__BASE_URL": f"http://{UI_HOST}:{UI_PORT}",
        # LocalExecutor forks this many workers up front; benchmark tasks take one pool slot at a
        # time, so a few suffice (32, the default, costs about 1 GB on a 2-core machine).
        "AIRFLOW__CORE__PARALLELISM": "4",
        # The local UI is for the person at this machine: every user is an admin, no login form.
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        # A benchmark step runs for minutes; the default 5-minute task heartbeat leeway is fine,
        # but tasks must not be killed as zombies while the 2 cores are saturated.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "900",
        # Our packages (pipeline, weatherbench) import from the repository root and plugins/.
        "PYTHONPATH": os.pathsep.join(
            dict.fromkeys(
                p
                for p in (
                    str(REPO_ROOT),
                    str(REPO_ROOT / "plugins"),
                    *env.get("PYTHONPATH", "").split(os.pathsep),
                )
                if p
            )
        ),
    }
    # `airflow standalone` starts its components as plain `airflow` found on PATH: this
    # interpreter's bin folder goes first, so they run from the same virtualenv even when it
    # is not activated (else they fail with "No such file or directory: 'airflow'").
    bin_dir = os.path.dirname(sys.executable)
    path = [p for p in env.get("PATH", os.defpath).split(os.pathsep) if p and p != bin_dir]
    defaults["PATH"] = os.pathsep.join([bin_dir, *path])
    for conn_id, uri in connection_uris(env).items():
        defaults[f"AIRFLOW_CONN_{conn_id.upper()}"] = uri
    for key, value in defaults.items():
        if key in ("PYTHONPATH", "PATH") or not env.get(key):
            env[key] = value
    return env


def apply(environ: dict[str, str] | None = None) -> None:
    """Set the environment of this process (call before the first Airflow import)."""
    target = os.environ if environ is None else environ
    target.update(airflow_environ(target))


@dataclass
class RunSummary:
    """A DAG run as the metadata DB recorded it: its state, wall time and every task's."""

    dag_id: str
    run_id: str
    state: str
    seconds: float
    tasks: list[tuple[str, str, float]]  # (task, state, seconds), in start order
    report: str | None

    def text(self) -> str:
        lines = [f"\n{self.dag_id} run {self.run_id}: {self.state} in {self.seconds / 60:.1f} min"]
        lines += [f"  {task:45s} {state:16s} {seconds:7.1f} s" for task, state, seconds in self.tasks]
        if self.report:
            lines.append(f"report: {self.report}")
        return "\n".join(lines)


def last_run_summary(dag_id: str, environ: Mapping[str, str] | None = None) -> RunSummary | None:
    """The latest run of `dag_id` in the SQLite metadata DB (None if it has none)."""
    env = airflow_environ(environ)
    url = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    if not url.startswith("sqlite:///"):
        return None
    with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
        run = conn.execute(
            "SELECT run_id, state, start_date, end_date FROM dag_run WHERE dag_id = ? "
            "ORDER BY id DESC LIMIT 1",
            (dag_id,),
        ).fetchone()
        if run is None:
            return None
        rows = conn.execute(
            "SELECT task_id, map_index, rendered_map_index, state, start_date, end_date FROM task_instance "
            "WHERE dag_id = ? AND run_id = ? ORDER BY start_date IS NULL, start_date",
            (dag_id, run[0]),
        ).fetchall()
        report = conn.execute(
            "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? "
            "AND task_id = 'report' AND key = 'return_value'",
            (dag_id, run[0]),
        ).fetchone()
    tasks = []
    for task_id, map_index, label, state, start, end in rows:
        name = task_id if map_index < 0 else f"{task_id}[{label or map_index}]"
        tasks.append((name, state or "none", _seconds(start, end)))
    pdf = None
    if report is not None:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            pdf = json.loads(report[0]).get("pdf")
    return RunSummary(dag_id, run[0], run[1], _seconds(run[2], run[3]), tasks, pdf)


def _seconds(start: str | None, end: str | None) -> float:
    if not start or not end:
        return 0.0
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
