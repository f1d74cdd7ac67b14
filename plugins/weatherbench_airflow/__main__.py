"""`wb-airflow`: the `airflow` command with this repository's environment (see environment.py).

wb-airflow bootstrap                       # metadata DB migrated, stack pool created
wb-airflow dags test weather_benchmark_nightly
wb-airflow ui                              # bootstrap, then `airflow standalone` on :8080
wb-airflow <any airflow command>
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from weatherbench_airflow import environment


def _airflow(*args: str) -> list[str]:
    binary = shutil.which("airflow", path=os.path.dirname(sys.executable)) or "airflow"
    return [binary, *args]


def bootstrap() -> None:
    # The home in force: the repository's default or the AIRFLOW_HOME the caller exported.
    os.makedirs(os.environ.get("AIRFLOW_HOME") or environment.AIRFLOW_HOME, exist_ok=True)
    subprocess.run(_airflow("db", "migrate"), check=True, stdout=subprocess.DEVNULL)
    subprocess.run(
        _airflow("pools", "set", environment.STACK_POOL, "1", environment.STACK_POOL_DESCRIPTION),
        check=True,
        stdout=subprocess.DEVNULL,
    )


def run_dag(dag_id: str, extra: list[str]) -> int:
    """Run a DAG once in this process's terminal (`airflow dags test`), then summarise the run."""
    bootstrap()
    subprocess.run(_airflow("dags", "test", dag_id, *extra), check=False)
    summary = environment.last_run_summary(dag_id)
    if summary is None:
        print(f"{dag_id}: no run recorded", file=sys.stderr)
        return 1
    print(summary.text())
    return 0 if summary.state == "success" else 1


def main(argv: list[str]) -> int:
    environment.apply()
    if argv[:1] == ["bootstrap"]:
        bootstrap()
        return 0
    if argv[:1] == ["run"]:
        if len(argv) < 2:
            print("usage: wb-airflow run DAG_ID [-c JSON]", file=sys.stderr)
            return 2
        return run_dag(argv[1], argv[2:])
    if argv[:1] == ["ui"]:
        bootstrap()
        argv = ["standalone", *argv[1:]]
    os.execv(_airflow()[0], _airflow(*argv))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
