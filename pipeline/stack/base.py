"""The stack interface: one lifecycle API over interchangeable backends.

Callers (the CLI, the benchmark engine, Airflow operators) speak only to
`Stack`: up, down, status, scale, kill, restart. The local backend runs every
component as a process on this machine; other backends (docker compose, an
existing cluster) implement the same methods, and refuse what they cannot do
with `UnsupportedOperation` naming the reason.
"""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline.config import StackConfig

# Components, in start order. "Instances" are numbered from 1 for scalable ones.
KAFKA = "kafka"
SPARK_MASTER = "spark-master"
SPARK_WORKER = "spark-worker"
RAY_HEAD = "ray-head"
RAY_WORKER = "ray-worker"
STREAMING_JOB = "streaming-job"
INFERENCE = "inference"
API = "api"

COMPONENTS = (KAFKA, SPARK_MASTER, SPARK_WORKER, RAY_HEAD, RAY_WORKER, STREAMING_JOB, INFERENCE, API)
SCALABLE = (SPARK_WORKER, RAY_WORKER)
# The services of the pipeline itself, on top of the infrastructure.
SERVICES = (STREAMING_JOB, INFERENCE, API)
INFRASTRUCTURE = (KAFKA, SPARK_MASTER, SPARK_WORKER, RAY_HEAD, RAY_WORKER)
# Monitoring beside the pipeline: started by `up` when monitoring.enabled (see stack/monitoring.py).
PROMETHEUS = "prometheus"
NODE_EXPORTER = "node-exporter"
MONITORING = (PROMETHEUS, NODE_EXPORTER)
# Past Spark applications from their event logs: started by `up` when spark.history_server is on.
SPARK_HISTORY = "spark-history"
ALL_COMPONENTS = COMPONENTS + MONITORING + (SPARK_HISTORY,)


class StackError(RuntimeError):
    """The stack could not do what was asked; the message says what and why."""


class PortBusyError(StackError):
    """A port the stack needs is taken by a process the stack does not own."""


class UnsupportedOperation(StackError):
    """This backend cannot perform the operation (e.g. scaling an external cluster)."""


@dataclass
class InstanceStatus:
    component: str
    instance: str  # e.g. "spark-worker-2"
    running: bool
    pid: int | None = None
    rss_bytes: int = 0
    processes: int = 0
    detail: str = ""


@dataclass
class StackStatus:
    backend: str
    instances: list[InstanceStatus] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def running(self, component: str) -> int:
        return sum(1 for i in self.instances if i.component == component and i.running)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_component(component: str, allowed: tuple[str, ...] = COMPONENTS) -> None:
    if component not in allowed:
        raise StackError(f"unknown component {component!r}; expected one of: {', '.join(allowed)}")


class Stack(abc.ABC):
    """Lifecycle of the pipeline's components. Every method is idempotent."""

    backend: str = "abstract"

    def __init__(self, config: StackConfig) -> None:
        self.config = config

    @abc.abstractmethod
    def up(self, components: tuple[str, ...] = COMPONENTS) -> None:
        """Start what is not running yet (in dependency order) and wait until healthy."""

    @abc.abstractmethod
    def down(self, purge: bool = False) -> None:
        """Stop everything; with purge, also delete topics' data, checkpoints and service state."""

    @abc.abstractmethod
    def status(self) -> StackStatus:
        """What runs now, per instance."""

    def processes(self) -> dict[str, list[int]]:
        """Pids of every process of each component (children included), for resource sampling.

        Backends whose components are not host processes return an empty mapping.
        """
        return {}

    @abc.abstractmethod
    def scale(self, component: str, count: int) -> None:
        """Set the number of instances of a scalable component, while the pipeline runs."""

    @abc.abstractmethod
    def kill(self, component: str, which: int | None = None, graceful: bool = False) -> str:
        """Stop one instance abruptly (SIGKILL) or gracefully; returns the instance name."""

    @abc.abstractmethod
    def restart(self, component: str, which: int | None = None) -> None:
        """Start a stopped or killed instance again (or stop and start a running one)."""

    def container_usage(self) -> dict[str, list[tuple[str, float, int]]]:
        """(container, CPU seconds used, memory in use) per running container, by component.

        Backends whose components are not containers return an empty mapping.
        """
        return {}

    def unsupported(self, change: str) -> str | None:
        """Why this backend cannot make a change to the stack ("scale", "faults", "brokers",
        "partitions"), or None when it can: asked before a step, so the step is skipped with
        the reason instead of failing half-way."""
        return None

    def supervised(self, component: str) -> bool:
        """Whether this backend starts the component again by itself after its process dies.

        For such a component kill() is a crash the backend recovers from without a restart()
        call, and kill(graceful=True) is an operator's stop, which it does not undo.
        """
        return False

    def started_at(self, component: str, which: int | None = None) -> float | None:
        """When the instance's current process started (epoch seconds); None when none runs.

        A supervised component restarted by its backend shows a later time than its kill:
        that is how a caller learns when it came back.
        """
        return None
