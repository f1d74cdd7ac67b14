"""spark-submit argv and environment: jars, versions, memory, directories (no JVM started)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from pipeline import spark_submit
from pipeline.config import REPO_ROOT, load_config
from pipeline.spark_submit import SparkSetupError

CONNECTOR = [
    "spark-sql-kafka-0-10_2.13-{v}.jar",
    "spark-token-provider-kafka-0-10_2.13-{v}.jar",
    "kafka-clients-3.9.2.jar",
    "commons-pool2-2.13.1.jar",
]
# Jars that must NOT reach spark.jars (they duplicate pyspark's own).
DUPLICATES = ["scala-library-2.13.15.jar", "slf4j-api-1.7.36.jar", "hadoop-client-api-3.5.0.jar"]


def fake_pyspark(tmp_path: Path, python_version: str, jars_version: str) -> Path:
    home = tmp_path / "pyspark"
    (home / "jars").mkdir(parents=True)
    (home / "version.py").write_text(f'__version__: str = "{python_version}"\n')
    (home / "jars" / f"spark-core_2.13-{jars_version}.jar").touch()
    return home


@pytest.fixture
def jars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Make a jars dir (config.jars_dir, via WB_JARS_DIR) holding the given connector files."""

    def make(version: str, names: list[str] | None = None) -> Path:
        folder = tmp_path / "jars" / "spark-kafka"
        folder.mkdir(parents=True)
        for name in names if names is not None else CONNECTOR + DUPLICATES:
            (folder / name.format(v=version)).touch()
        monkeypatch.setenv("WB_JARS_DIR", str(tmp_path / "jars"))
        return folder

    return make


def test_versions_must_match(tmp_path: Path) -> None:
    assert spark_submit.check_spark_versions(fake_pyspark(tmp_path / "a", "4.2.0", "4.2.0")) == "4.2.0"
    with pytest.raises(
        SparkSetupError, match=r"Python files are 4\.2\.0 but its jars are 4\.3\.0.*pyspark-client"
    ):
        spark_submit.check_spark_versions(fake_pyspark(tmp_path / "b", "4.2.0", "4.3.0"))


def test_installed_pyspark_is_consistent() -> None:
    import pyspark

    assert spark_submit.check_spark_versions() == pyspark.__version__


def test_connector_jars_are_filtered_and_ordered(tmp_path: Path, jars) -> None:
    folder = jars("4.2.0")
    config = load_config(overrides={"state_dir": str(tmp_path / "state")})
    found = spark_submit.connector_jars(config, "4.2.0")
    assert found == [folder / name.format(v="4.2.0") for name in CONNECTOR]


def test_missing_connector_names_the_jar_and_the_fix(tmp_path: Path, jars) -> None:
    jars("4.2.0", CONNECTOR[1:])
    config = load_config(overrides={"state_dir": str(tmp_path / "state")})
    with pytest.raises(SparkSetupError, match=r"spark-sql-kafka-0-10_2\.13-4\.2\.0\.jar.*make setup"):
        spark_submit.connector_jars(config, "4.2.0")


def test_connector_of_another_spark_version_is_named(tmp_path: Path, jars) -> None:
    jars("4.1.1")
    config = load_config(overrides={"state_dir": str(tmp_path / "state")})
    with pytest.raises(SparkSetupError, match=r"found spark-sql-kafka-0-10_2\.13-4\.1\.1\.jar"):
        spark_submit.connector_jars(config, "4.2.0")


def test_argv_shape(tmp_path: Path, jars) -> None:
    import pyspark

    jars(pyspark.__version__)
    state = tmp_path / "state"
    config = load_config(
        overrides={
            "state_dir": str(state),
            "spark": {
                "master_port": 7277,
                "driver_memory_mb": 700,
                "executor_memory_mb": 400,
                "worker_cores": 2,
            },
        }
    )
    script = REPO_ROOT / "pipeline" / "streaming" / "job.py"
    argv = spark_submit.spark_submit_argv(
        config, script, "app-x", 4150, ["--config", "c.yaml"], extra_conf={"spark.cores.max": 1}
    )
    assert argv[0] == str(Path(sys.executable).parent / "spark-submit")
    options = dict(zip(argv[1:-3:2], argv[2:-3:2], strict=True))
    assert options["--master"] == "spark://127.0.0.1:7277"
    assert options["--deploy-mode"] == "client" and options["--name"] == "app-x"
    assert options["--driver-memory"] == "700m" and options["--executor-memory"] == "400m"
    assert options["--executor-cores"] == "2"
    assert [Path(p).name for p in options["--jars"].split(",")] == [
        name.format(v=pyspark.__version__) for name in CONNECTOR
    ]
    conf = dict(v.split("=", 1) for k, v in zip(argv[1:-3:2], argv[2:-3:2], strict=True) if k == "--conf")
    assert conf["spark.ui.port"] == "4150"
    assert conf["spark.sql.shuffle.partitions"] == str(config.spark.shuffle_partitions)
    assert conf["spark.jars.ivy"] == str(state / "spark" / "ivy")
    assert conf["spark.local.dir"] == str(state / "spark" / "local")
    assert conf["spark.pyspark.python"] == sys.executable
    assert conf["spark.executorEnv.PYTHONPATH"] == str(REPO_ROOT)
    assert conf["spark.cores.max"] == "1"
    assert "-Dlog4j2.configurationFile=file:" in conf["spark.driver.extraJavaOptions"]
    # Event logs for the History Server, in the directory it reads, which exists before the app starts.
    assert conf["spark.eventLog.enabled"] == "true"
    assert conf["spark.eventLog.dir"] == (state / "spark" / "events").as_uri()
    assert conf["spark.eventLog.rolling.enabled"] == "true"
    assert (state / "spark" / "events").is_dir()
    assert argv[-3:] == [str(script), "--config", "c.yaml"]
    assert (state / "spark" / "local").is_dir() and (
        state / "spark" / "conf" / "app-log4j2.properties"
    ).is_file()


def test_spark_env(tmp_path: Path) -> None:
    config = load_config(overrides={"state_dir": str(tmp_path)})
    env = spark_submit.spark_env(
        config, base={"PYTHONPATH": "/other", "SPARK_HOME": "/opt/spark", "KEEP": "1"}
    )
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO_ROOT), "/other"]
    assert env["SPARK_HOME"] == str(spark_submit.pyspark_home()) != "/opt/spark"
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1"
    assert env["PYSPARK_PYTHON"] == env["PYSPARK_DRIVER_PYTHON"] == sys.executable
    assert "-Djava.net.preferIPv4Stack=true" in env["SPARK_SUBMIT_OPTS"]
    assert env["KEEP"] == "1"


def test_event_logs_can_be_switched_off(tmp_path: Path, jars) -> None:
    import pyspark

    jars(pyspark.__version__)
    config = load_config(overrides={"state_dir": str(tmp_path), "spark": {"event_log": False}})
    settings = spark_submit.submit_settings(config, "app-y", 4151)
    assert not any(key.startswith("spark.eventLog") for key in settings.conf)
