"""Run manifest: git state, versions, machine, configuration and parameters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import psutil
import pytest

from pipeline.config import REPO_ROOT, load_config
from weatherbench.manifest import build_manifest, git_state, kafka_jars_version


@pytest.fixture(scope="module")
def manifest() -> dict:
    return build_manifest(load_config(environ={}), {"rate": 20, "stations": [1, 2]})


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def test_sections_present_and_strict_json(manifest: dict) -> None:
    assert {"format", "created_at", "git", "versions", "machine", "stack_config", "parameters"} <= set(
        manifest
    )
    assert json.loads(json.dumps(manifest, allow_nan=False)) == manifest
    created = datetime.fromisoformat(manifest["created_at"])
    assert created.utcoffset().total_seconds() == 0
    assert abs((datetime.now(UTC) - created).total_seconds()) < 600


def test_commit_is_the_checkout_head(manifest: dict) -> None:
    assert manifest["git"]["commit"] == git(REPO_ROOT, "rev-parse", "HEAD")
    assert manifest["git"]["dirty"] is bool(git(REPO_ROOT, "status", "--porcelain"))


def test_dirty_flag_follows_the_working_tree(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git(tmp_path, "add", "a.txt")
    git(tmp_path, "commit", "-q", "-m", "first")
    assert git_state(tmp_path) == {"commit": git(tmp_path, "rev-parse", "HEAD"), "dirty": False}
    (tmp_path / "a.txt").write_text("two\n")
    assert git_state(tmp_path)["dirty"] is True


def test_not_a_checkout_gives_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIT_CEILING_DIRECTORIES stops git from finding a repository above tmp_path.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert git_state(tmp_path) == {"commit": None, "dirty": None}
    assert git_state(tmp_path / "missing") == {"commit": None, "dirty": None}


def test_versions_come_from_the_installed_packages(manifest: dict) -> None:
    versions = manifest["versions"]
    assert versions["python"] == ".".join(map(str, sys.version_info[:3]))
    for key, dist in [
        ("pyspark", "pyspark"),
        ("ray", "ray"),
        ("confluent_kafka", "confluent-kafka"),
        ("sqlalchemy", "SQLAlchemy"),
        ("airflow", "apache-airflow"),
    ]:
        assert versions[key] == metadata.version(dist), key
    import confluent_kafka

    assert versions["librdkafka"] == confluent_kafka.libversion()[0]


def test_building_a_manifest_does_not_import_airflow() -> None:
    code = (
        "import sys; from weatherbench.manifest import build_manifest; build_manifest(None, {}); "
        "print('airflow' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "plugins")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "False"


def test_kafka_jars_version_from_file_names(tmp_path: Path) -> None:
    assert kafka_jars_version(tmp_path / "missing") is None
    jars = tmp_path / "kafka"
    jars.mkdir()
    (jars / "slf4j-api-2.0.17.jar").touch()
    assert kafka_jars_version(jars) is None
    (jars / "kafka-clients-9.8.7.jar").touch()
    assert kafka_jars_version(jars) == "9.8.7"
    # The broker jar wins over the clients jar.
    (jars / "kafka_2.13-9.8.6.jar").touch()
    assert kafka_jars_version(jars) == "9.8.6"
    (jars / "kafka_2.13-9.9.0.jar").touch()
    assert kafka_jars_version(jars) == "9.8.6,9.9.0"


def test_kafka_jars_of_the_configured_jars_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "kafka_2.13-7.6.5.jar").touch()
    monkeypatch.setenv("WB_JARS_DIR", str(tmp_path))
    assert build_manifest(load_config(environ={}), {})["versions"]["kafka_jars"] == "7.6.5"


def test_machine_cores_and_memory(manifest: dict) -> None:
    machine = manifest["machine"]
    assert machine["logical_cores"] == os.cpu_count() > 0
    assert 0 < machine["usable_cores"] <= machine["logical_cores"]
    assert machine["usable_cores"] == len(os.sched_getaffinity(0))
    assert machine["memory_total_bytes"] == psutil.virtual_memory().total > 0
    assert machine["hostname"] and machine["os"] and machine["kernel"]


def test_configuration_and_parameters_embedded() -> None:
    config = load_config(environ={}, overrides={"spark": {"workers": 3}})
    parameters = {"rate": 50, "windows": {"size": "10 seconds"}}
    manifest = build_manifest(config, parameters)
    assert manifest["stack_config"] == config.to_dict()
    assert manifest["stack_config"]["spark"]["workers"] == 3
    assert manifest["parameters"] == {"rate": 50, "windows": {"size": "10 seconds"}}
    parameters["windows"]["size"] = "changed"
    assert manifest["parameters"]["windows"]["size"] == "10 seconds"


def test_without_a_stack_config() -> None:
    assert build_manifest(None, {})["stack_config"] is None
    with pytest.raises(TypeError, match="parameters must be a dict"):
        build_manifest(None, [("rate", 1)])  # type: ignore[arg-type]
