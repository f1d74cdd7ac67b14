"""Run a DAG of dags/ for real with `airflow dags test` and read back what each task did.

Each DAG test gets its own Airflow home (SQLite metadata DB, migrated once per session), its
own results store, reports and mail folders, and a benchmark stack on its own ports and state
dir, all through the environment the `wb-airflow` command honours: the DAGs run exactly as
`make run` runs them, only pointed elsewhere.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import SECTIONS, StackConfig, load_config
from pipeline.stack import get_stack
from pipeline.stack.base import Stack
from tests.integration.conftest import is_port_setting, stack_config

REPO = Path(__file__).resolve().parents[2]
# The stack of the DAG tests, on its own ports and state dir; the UI test of the nightly DAG
# runs on it too, so the model trained at its first start serves both.
DAG_STACK = stack_config("dags", port_offset=900)


def stack_environ(config: StackConfig) -> dict[str, str]:
    """WB_* variables that make load_config() give `config`'s ports and state dir."""
    environ = {"WB_STATE_DIR": str(config.state_dir)}
    for section in SECTIONS:
        for key, value in vars(getattr(config, section)).items():
            if is_port_setting(key):
                environ[f"WB_{section.upper()}_{key.upper()}"] = str(value)
    return environ


@dataclass
class DagRunResult:
    state: str
    conf: dict
    tasks: dict[str, str]  # task_id, or task_id[label] for a mapped task -> state
    log: Path
    seconds: float
    mapped_labels: dict[str, list[str]] = field(default_factory=dict)

    def failures(self) -> str:
        bad = {t: s for t, s in self.tasks.items() if s not in ("success", "skipped")}
        return f"run {self.state}; tasks not successful: {bad}; log: {self.log}"


def run_dag(dag_id: str, conf: dict, env: dict[str, str], log: Path, timeout_s: float = 1800) -> DagRunResult:
    """`wb-airflow dags test DAG_ID -c CONF`; the run's and its tasks' states from the metadata DB."""
    began = time.monotonic()
    with log.open("w") as out:
        subprocess.run(
            [sys.executable, "-m", "weatherbench_airflow", "dags", "test", dag_id, "-c", json.dumps(conf)],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout_s,
            check=False,
        )
    seconds = time.monotonic() - began
    db = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    with sqlite3.connect(db) as conn:
        run_id, state, conf_blob = conn.execute(
            "SELECT run_id, state, conf FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
        ).fetchone()
        rows = conn.execute(
            "SELECT task_id, map_index, rendered_map_index, state FROM task_instance "
            "WHERE dag_id = ? AND run_id = ? ORDER BY task_id, map_index",
            (dag_id, run_id),
        ).fetchall()
    tasks: dict[str, str] = {}
    labels: dict[str, list[str]] = {}
    for task_id, map_index, label, task_state in rows:
        if map_index >= 0:
            labels.setdefault(task_id, []).append(label or str(map_index))
            tasks[f"{task_id}[{label or map_index}]"] = task_state
        else:
            tasks[task_id] = task_state
    conf_value = _decode_conf(conf_blob)
    return DagRunResult(state, conf_value, tasks, log, seconds, labels)


def _decode_conf(blob: object) -> dict:
    if blob is None:
        return {}
    if isinstance(blob, bytes):
        try:
            return json.loads(blob.decode())
        except (UnicodeDecodeError, ValueError):
            import pickle

            return pickle.loads(blob)
    return json.loads(str(blob))


def airflow_env(home: Path, base: dict[str, str]) -> dict[str, str]:
    """The environment for `wb-airflow` with its home at `home` (the DB migrated on first use)."""
    env = {**os.environ, **base, "AIRFLOW_HOME": str(home)}
    env.pop("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", None)  # derived from AIRFLOW_HOME
    if not (home / "airflow.db").exists():
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "weatherbench_airflow", "bootstrap"],
            env=env,
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=300,
        )
    return env


def bench_stack(config: StackConfig) -> Stack:
    """The benchmark stack the DAGs run for `config` (its bench state dir): to check or clean up."""
    bench = load_config(
        environ=stack_environ(config), overrides={"state_dir": str(config.state_dir / "bench")}
    )
    return get_stack(bench)
