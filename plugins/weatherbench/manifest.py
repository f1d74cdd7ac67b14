"""Run manifest: what was measured, on what code, with which versions, on which machine.

This module owns the manifest that every run records (the results store keeps
it with the run, and copies the git commit into a column). It is a plain dict
of JSON values:

* ``created_at``: UTC, ISO 8601;
* ``git``: commit of the repository checkout and whether it had uncommitted
  changes (``None`` for both when it is not a git checkout or git is missing);
* ``versions``: Python and the installed pyspark (and its jars), Ray,
  confluent-kafka and its librdkafka, the Kafka broker jars, SQLAlchemy and
  Airflow, each ``None`` when absent. Versions come from package metadata:
  nothing heavy is imported, and Airflow never is;
* ``machine``: hostname, OS and kernel, CPU model, logical cores, cores this
  process may run on (affinity) and any cgroup CPU quota, total memory, and
  the load average when the manifest was made (a busy machine skews results);
* ``stack_config``: the resolved stack configuration (``StackConfig.to_dict()``);
* ``parameters``: the run's parameters, as given.
"""

from __future__ import annotations

import copy
import os
import platform
import re
import socket
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from pipeline.config import REPO_ROOT, StackConfig

MANIFEST_FORMAT = "weatherbench.manifest/1"
_GIT_TIMEOUT_S = 10

# The broker jar (kafka_<scala>-<version>.jar) names the Kafka version; kafka-clients is the fallback.
_KAFKA_JAR_PATTERNS = (
    re.compile(r"kafka_\d+(?:\.\d+)*-(\d+\.\d+\.\d+[\w.-]*)\.jar"),
    re.compile(r"kafka-clients-(\d+\.\d+\.\d+[\w.-]*)\.jar"),
)


def build_manifest(stack_config: StackConfig | None, parameters: dict[str, Any]) -> dict[str, Any]:
    """The manifest of a run about to start with this stack configuration and these parameters."""
    if not isinstance(parameters, dict):
        raise TypeError(f"parameters must be a dict, got {type(parameters).__name__}")
    jars_dir = stack_config.jars_dir if stack_config is not None else StackConfig().jars_dir
    return {
        "format": MANIFEST_FORMAT,
        "created_at": datetime.now(UTC).isoformat(),
        "git": git_state(REPO_ROOT),
        "versions": versions(jars_dir),
        "machine": machine(),
        "stack_config": stack_config.to_dict() if stack_config is not None else None,
        # A copy: the caller may keep changing its parameters after the manifest is made.
        "parameters": copy.deepcopy(parameters),
    }


def git_state(repo: Path) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout at repo."""
    commit = _git(repo, "rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    # Untracked files count: a new, uncommitted module changes what runs as much as an edit does.
    status = _git(repo, "status", "--porcelain")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def versions(jars_dir: Path) -> dict[str, str | None]:
    """Versions of the runtime and of every component of the stack that shapes the results."""
    librdkafka = None
    try:
        # A C extension: cheap to import, and the only way to learn the bundled librdkafka.
        import confluent_kafka

        librdkafka = confluent_kafka.libversion()[0]
    except ImportError:
        pass
    return {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "pyspark": _dist_version("pyspark"),
        "pyspark_client": _dist_version("pyspark-client"),
        "spark_jars": _spark_jars_version(),
        "ray": _dist_version("ray"),
        "confluent_kafka": _dist_version("confluent-kafka"),
        "librdkafka": librdkafka,
        "kafka_jars": kafka_jars_version(jars_dir / "kafka"),
        "sqlalchemy": _dist_version("SQLAlchemy"),
        "airflow": _dist_version("apache-airflow"),
    }


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _spark_jars_version() -> str | None:
    """The version of the Spark jars the JVM side runs (pyspark-client can install over pyspark)."""
    try:
        from pipeline.versions import VersionMismatch, spark_jars_version
    except ImportError:
        return None
    try:
        return spark_jars_version()
    except (ImportError, VersionMismatch):
        return None


def kafka_jars_version(kafka_jars: Path) -> str | None:
    """The Kafka version of the broker jars in kafka_jars, from their file names.

    None when the directory or the jars are missing. Several versions side by
    side (a stale fetch) are all reported, comma-separated, because the broker's
    classpath takes every jar in the directory.
    """
    if not kafka_jars.is_dir():
        return None
    names = [p.name for p in kafka_jars.glob("*.jar")]
    for pattern in _KAFKA_JAR_PATTERNS:
        found = sorted({m.group(1) for m in map(pattern.fullmatch, names) if m})
        if found:
            return ",".join(found)
    return None


def machine() -> dict[str, Any]:
    """The host: identity, CPU, memory, and how busy it was when the run started."""
    uname = platform.uname()
    try:
        load: list[float] | None = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    memory = psutil.virtual_memory()
    return {
        "hostname": socket.gethostname(),
        "os": uname.system,
        "kernel": uname.release,
        "platform": platform.platform(),
        "architecture": uname.machine,
        "cpu_model": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": _usable_cores(),
        "cpu_quota_cores": _cgroup_cpu_quota(),
        "memory_total_bytes": memory.total,
        "memory_available_bytes": memory.available,
        "load_average": load,
    }


def _usable_cores() -> int | None:
    # Affinity (taskset, cpusets) can leave this process fewer cores than the machine has.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def _cgroup_cpu_quota() -> float | None:
    """Cores allowed by a cgroup v2 CPU quota (containers), None when unlimited or unknown."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return round(int(quota) / int(period), 3)
    except (ValueError, ZeroDivisionError):
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            # x86 says "model name"; some ARM kernels only give "Hardware" or "Processor".
            if key.strip() in ("model name", "Hardware", "Processor") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None
