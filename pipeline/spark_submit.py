"""spark-submit command lines and environment for the pipeline's Spark applications.

Owns how our Python Spark apps (the streaming job, the batch training job) are
launched on the standalone cluster: which `spark-submit` (the pyspark wheel's,
next to the venv's python), which jars (the Kafka connector, from local files:
no network at run time), memory/cores from the stack configuration, where Spark
keeps its scratch files (under the state directory), and the fail-fast checks
that catch a broken installation before a JVM is started:

- pyspark's Python files and its jars must be the same Spark version
  (`pyspark-client`, pulled in by the Airflow Spark provider, can overwrite the
  Python files of `pyspark` with another version);
- the connector jars must exist and match that version (`make setup` fetches them).

Nothing here starts a process: callers (the stack runtime, Airflow operators,
tests) run `spark_submit_argv(...)` with `spark_env(...)` themselves.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import REPO_ROOT, StackConfig

SETUP_COMMAND = "make setup"
SCALA_BINARY = "2.13"

# The only connector jars handed to Spark. The folder also holds jars that
# duplicate pyspark's own (scala-library, hadoop-client, slf4j, ...); putting
# those on the classpath twice invites version clashes.
CONNECTOR_JARS = (
    "spark-sql-kafka-0-10_{scala}-{version}.jar",
    "spark-token-provider-kafka-0-10_{scala}-{version}.jar",
    "kafka-clients-*.jar",
    "commons-pool2-*.jar",
)

# Spark's own logging at INFO prints several lines per micro-batch; the job's
# listener records progress, so applications log WARN and above.
APP_LOG4J2 = """\
# Written by pipeline.spark_submit: log4j2 configuration of our Spark applications.
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss.SSS} %p %c{1}: %m%n%ex
# Executors lost or added are worth seeing (worker faults are benchmarked).
logger.standalone.name = org.apache.spark.scheduler.cluster.StandaloneSchedulerBackend
logger.standalone.level = info
logger.client.name = org.apache.spark.deploy.client.StandaloneAppClient$ClientEndpoint
logger.client.level = info
"""


class SparkSetupError(RuntimeError):
    """The Spark installation or the connector jars cannot run our applications."""


def pyspark_home() -> Path:
    """The installed pyspark package directory, which is also SPARK_HOME for the wheel."""
    spec = importlib.util.find_spec("pyspark")
    if spec is None or not spec.submodule_search_locations:
        raise SparkSetupError(f"pyspark is not installed in {sys.executable}; run `{SETUP_COMMAND}`")
    return Path(next(iter(spec.submodule_search_locations)))


def pyspark_python_version(home: Path | None = None) -> str:
    """Version of pyspark's Python files, read without importing pyspark (slow, needs Java)."""
    version_file = (home or pyspark_home()) / "version.py"
    match = re.search(r"__version__[^=]*=\s*['\"]([^'\"]+)['\"]", version_file.read_text())
    if not match:
        raise SparkSetupError(f"cannot read the pyspark version from {version_file}")
    return match.group(1)


def spark_jars_version(home: Path | None = None) -> str:
    """Version of the Spark jars shipped in the wheel (from the spark-core jar's file name)."""
    jars = (home or pyspark_home()) / "jars"
    cores = sorted(jars.glob(f"spark-core_{SCALA_BINARY}-*.jar"))
    if len(cores) != 1:
        raise SparkSetupError(
            f"expected exactly one spark-core_{SCALA_BINARY} jar in {jars}, found {[p.name for p in cores]}"
        )
    return cores[0].name.removeprefix(f"spark-core_{SCALA_BINARY}-").removesuffix(".jar")


def check_spark_versions(home: Path | None = None) -> str:
    """Fail fast when pyspark's Python files and jars differ; return the common version."""
    home = home or pyspark_home()
    python_version = pyspark_python_version(home)
    jars_version = spark_jars_version(home)
    if python_version != jars_version:
        raise SparkSetupError(
            f"pyspark Python files are {python_version} but its jars are {jars_version} (in {home}). "
            "pyspark-client probably overwrote pyspark: pin pyspark and pyspark-client to one version "
            f"and reinstall (`{SETUP_COMMAND}`)."
        )
    return python_version


def connector_jars(config: StackConfig, spark_version: str) -> list[Path]:
    """The Kafka connector jars for `spark.jars`, checked to exist and to match Spark's version."""
    folder = config.jars_dir / "spark-kafka"
    found: list[Path] = []
    for pattern in CONNECTOR_JARS:
        name = pattern.format(scala=SCALA_BINARY, version=spark_version)
        matches = sorted(folder.glob(name))
        if not matches:
            hint = ""
            if "{version}" in pattern and folder.is_dir():
                # Name a connector of another Spark version if one is there: the usual cause.
                stem = pattern.split("{")[0]
                others = sorted(p.name for p in folder.glob(f"{stem}*.jar"))
                if others:
                    hint = f" (found {', '.join(others)}: built for another Spark version)"
            raise SparkSetupError(
                f"missing Spark Kafka connector jar {name} in {folder}{hint}; "
                f"run `{SETUP_COMMAND}` to fetch it"
            )
        if len(matches) > 1:
            raise SparkSetupError(f"several jars match {name} in {folder}: {[p.name for p in matches]}")
        found.append(matches[0])
    return found


def spark_submit_binary() -> Path:
    """The wheel's spark-submit next to the venv's python (not one from PATH or pyspark-client)."""
    binary = Path(sys.executable).parent / "spark-submit"
    if not binary.exists():
        raise SparkSetupError(f"{binary} not found: install pyspark into {sys.prefix} (`{SETUP_COMMAND}`)")
    return binary


def spark_dirs(config: StackConfig) -> dict[str, Path]:
    """Scratch directories of our Spark applications, all under the state directory."""
    base = config.state_dir / "spark"
    return {
        "ivy": base / "ivy",
        "local": base / "local",
        "conf": base / "conf",
        "events": base / "events",  # event logs, read by the History Server
    }


def app_log_config(config: StackConfig) -> Path:
    """Write (if changed) and return the log4j2 file our Spark drivers and executors use."""
    path = spark_dirs(config)["conf"] / "app-log4j2.properties"
    if not path.exists() or path.read_text() != APP_LOG4J2:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(APP_LOG4J2)
        os.replace(tmp, path)
    return path


def event_log_conf(events_dir: Path) -> dict[str, Any]:
    """Event logging for the History Server: rolled files, so a long-running streaming job's
    log is read in parts and its older parts can be compacted and cleaned."""
    return {
        "spark.eventLog.enabled": "true",
        "spark.eventLog.dir": events_dir.resolve().as_uri(),
        "spark.eventLog.compress": "true",
        "spark.eventLog.rolling.enabled": "true",
        "spark.eventLog.rolling.maxFileSize": "16m",
    }


@dataclass(frozen=True)
class SubmitSettings:
    """What spark-submit is given for one of our applications (SparkSubmitHook takes the same)."""

    binary: Path
    master_url: str
    app_name: str
    driver_memory: str
    executor_memory: str
    executor_cores: int
    jars: tuple[Path, ...]
    conf: dict[str, Any]


def submit_settings(
    config: StackConfig, app_name: str, ui_port: int, extra_conf: dict[str, Any] | None = None
) -> SubmitSettings:
    """Settings to submit one of our apps to the standalone master in client mode.

    Checks the installation first (SparkSetupError with the fix) and creates the scratch
    directories. `extra_conf` is applied last, so callers can override any default
    (e.g. `spark.cores.max`).
    """
    version = check_spark_versions()
    jars = connector_jars(config, version)
    binary = spark_submit_binary()
    dirs = spark_dirs(config)
    for folder in dirs.values():
        folder.mkdir(parents=True, exist_ok=True)
    log_config = app_log_config(config)
    java_options = f"-Dlog4j2.configurationFile=file:{log_config} -Djava.net.preferIPv4Stack=true"
    spark = config.spark
    conf: dict[str, Any] = {
        # Loopback by default (the whole stack on one host, independent of its DNS name); in a
        # container the driver advertises its own address for the executors to call back.
        "spark.driver.host": config.network.advertised_address,
        "spark.driver.bindAddress": config.network.bind,
        "spark.ui.port": ui_port,
        "spark.sql.shuffle.partitions": spark.shuffle_partitions,
        # Epoch-ms stamps are UTC; keep timestamp rendering and parsing independent of the host zone.
        "spark.sql.session.timeZone": "UTC",
        "spark.jars.ivy": dirs["ivy"],
        "spark.local.dir": dirs["local"],
        "spark.pyspark.python": sys.executable,
        "spark.pyspark.driver.python": sys.executable,
        # Python workers on executors import `pipeline` from the checkout (single host).
        "spark.executorEnv.PYTHONPATH": REPO_ROOT,
        "spark.driver.extraJavaOptions": java_options,
        "spark.executor.extraJavaOptions": java_options,
    }
    if spark.event_log:
        conf.update(event_log_conf(dirs["events"]))
    conf.update(extra_conf or {})
    return SubmitSettings(
        binary=binary,
        master_url=spark.master_url,
        app_name=app_name,
        driver_memory=f"{spark.driver_memory_mb}m",
        executor_memory=f"{spark.executor_memory_mb}m",
        executor_cores=spark.worker_cores,
        jars=tuple(jars),
        conf=conf,
    )


def spark_submit_argv(
    config: StackConfig,
    script: Path,
    app_name: str,
    ui_port: int,
    extra_args: list[str],
    extra_conf: dict[str, Any] | None = None,
) -> list[str]:
    """argv that submits `script` to the standalone master in client mode (see submit_settings).

    `[spark-submit, --master, URL, --deploy-mode, client, --name, APP, --driver-memory, ..,
    --executor-memory, .., --executor-cores, .., --jars, J1,J2,.., --conf k=v ..., script, *extra_args]`.
    """
    settings = submit_settings(config, app_name, ui_port, extra_conf)
    argv = [
        str(settings.binary),
        "--master",
        settings.master_url,
        "--deploy-mode",
        "client",
        "--name",
        app_name,
        "--driver-memory",
        settings.driver_memory,
        "--executor-memory",
        settings.executor_memory,
        "--executor-cores",
        str(settings.executor_cores),
        "--jars",
        ",".join(str(p) for p in settings.jars),
    ]
    for key, value in settings.conf.items():
        argv += ["--conf", f"{key}={value}"]
    argv.append(str(script))
    argv += [str(a) for a in extra_args]
    return argv


def spark_env(config: StackConfig, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for running spark_submit_argv: `base` (default os.environ) plus our settings.

    SPARK_HOME is pinned to the wheel so a SPARK_HOME of another installation in
    the caller's environment cannot mix versions.
    """
    env = dict(os.environ if base is None else base)
    python_path = [str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    submit_opts = env.get("SPARK_SUBMIT_OPTS", "")
    if "preferIPv4Stack" not in submit_opts:
        submit_opts = f"{submit_opts} -Djava.net.preferIPv4Stack=true".strip()
    env.update(
        {
            "SPARK_HOME": str(pyspark_home()),
            "SPARK_LOCAL_IP": config.network.advertised_address,
            "PYSPARK_PYTHON": sys.executable,
            "PYSPARK_DRIVER_PYTHON": sys.executable,
            "PYTHONPATH": os.pathsep.join(dict.fromkeys(python_path)),
            "SPARK_SUBMIT_OPTS": submit_opts,
            # Lines such as TRAIN_RESULT must reach the caller's pipe as they are printed.
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env
