"""wb-airflow's environment: a given AIRFLOW_HOME carries the DB along, `airflow` found in this venv."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from weatherbench_airflow.environment import airflow_environ

BIN_DIR = os.path.dirname(sys.executable)


def test_home_from_the_environment_also_moves_the_metadata_db(tmp_path: Path) -> None:
    env = airflow_environ({"AIRFLOW_HOME": str(tmp_path), "PATH": "/usr/bin"})
    assert env["AIRFLOW_HOME"] == str(tmp_path)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path / 'airflow.db'}"


def test_an_exported_setting_wins(tmp_path: Path) -> None:
    env = airflow_environ(
        {"AIRFLOW_HOME": str(tmp_path), "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "sqlite:////elsewhere.db"}
    )
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "sqlite:////elsewhere.db"


def test_this_interpreters_bin_folder_leads_path_once() -> None:
    # `airflow standalone` starts its components as `airflow` from PATH, even from a venv not activated.
    once = airflow_environ({"PATH": f"/usr/local/bin{os.pathsep}{BIN_DIR}{os.pathsep}/usr/bin"})
    assert once["PATH"].split(os.pathsep) == [BIN_DIR, "/usr/local/bin", "/usr/bin"]
    assert airflow_environ(once)["PATH"] == once["PATH"]
