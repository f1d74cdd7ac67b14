"""Compose backend: the stack interface over the containers docker-compose.yml created.

Owns the mapping of components to compose services (kafka-<i>, spark-master, spark-worker,
ray-head, ray-worker, streaming-job, inference, api; prometheus, node-exporter), found by the
labels docker compose puts on every container (project, service, container number), and the
operations on them through the Docker Engine API (the docker SDK's low-level client; Airflow
hands in the docker provider's hook's client):

* up: start the project's stopped containers of the asked components and wait until they
  serve (brokers registered, workers alive at the master, Ray nodes joined, the API healthy);
  creating the project is `docker compose up -d`'s job, and up says so when it finds nothing;
* scale: what `docker compose up -d --scale spark-worker=N` does: containers numbered after the
  highest, cloned from an existing replica (image, command, environment, limits, volumes,
  network alias) with compose's labels, so compose itself still sees them as its replicas;
  scaling down stops and removes the highest numbers (the last replica is kept, stopped, so
  there is always one to clone);
* kill (SIGKILL, or a graceful stop), restart, status, start times and resource use (container
  stats: CPU time and memory less the page cache, as `docker stats` shows them).

The services' restart policy does not undo a kill made through the API (the engine treats it as
an operator's stop), so no component counts as supervised here: fault steps restart what they kill.
Airflow, PostgreSQL and the monitoring containers are never stopped by `down`: a benchmark's
teardown runs inside the Airflow scheduler.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import StackConfig
from pipeline.stack.base import (
    ALL_COMPONENTS,
    API,
    COMPONENTS,
    INFERENCE,
    KAFKA,
    NODE_EXPORTER,
    PROMETHEUS,
    RAY_HEAD,
    RAY_WORKER,
    SCALABLE,
    SPARK_HISTORY,
    SPARK_MASTER,
    SPARK_WORKER,
    STREAMING_JOB,
    InstanceStatus,
    Stack,
    StackError,
    StackStatus,
    UnsupportedOperation,
    check_component,
)

log = logging.getLogger(__name__)

PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
NUMBER_LABEL = "com.docker.compose.container-number"
ONEOFF_LABEL = "com.docker.compose.oneoff"
SERVICES = {
    SPARK_MASTER: "spark-master",
    SPARK_WORKER: "spark-worker",
    RAY_HEAD: "ray-head",
    RAY_WORKER: "ray-worker",
    STREAMING_JOB: "streaming-job",
    INFERENCE: "inference",
    API: "api",
    PROMETHEUS: "prometheus",
    NODE_EXPORTER: "node-exporter",
    SPARK_HISTORY: "spark-history",
}
STOP_TIMEOUT_S = 30
READY_TIMEOUT_S = 180
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def compose_environment(path: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The stack variables every pipeline container of docker-compose.yml gets (x-stack-environment).

    `${VAR:-default}` is resolved the way compose does, from `environ` (default: none set).
    """
    document = yaml.safe_load(path.read_text())
    env = environ or {}

    def resolve(value: Any) -> str:
        return _VARIABLE.sub(lambda m: env.get(m.group(1)) or (m.group(2) or ""), str(value))

    return {key: resolve(value) for key, value in document["x-stack-environment"].items()}


def kafka_service(node: int) -> str:
    return f"{KAFKA}-{node}"


def _number(container: dict[str, Any]) -> int:
    return int(container["Labels"].get(NUMBER_LABEL) or 1)


def _started_epoch(stamp: str) -> float | None:
    """The engine's RFC 3339 time (nanoseconds, 'Z') as epoch seconds; None for the zero time."""
    if not stamp or stamp.startswith("0001-"):
        return None
    match = re.fullmatch(r"(.+?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", stamp)
    if not match:
        return None
    base = datetime.fromisoformat(match.group(1) + ("+00:00" if match.group(3) == "Z" else match.group(3)))
    fraction = float(f"0.{match.group(2)}") if match.group(2) else 0.0
    return base.timestamp() + fraction


def memory_in_use(stats: dict[str, Any]) -> int:
    """Memory as `docker stats` shows it: usage less the reclaimable page cache."""
    memory = stats.get("memory_stats") or {}
    usage = int(memory.get("usage") or 0)
    detail = memory.get("stats") or {}
    cache = detail.get("inactive_file", detail.get("total_inactive_file", 0))
    return max(0, usage - int(cache or 0))


def cpu_seconds(stats: dict[str, Any]) -> float:
    """CPU time the container has used since it started (user + system, all cores)."""
    return int(((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage") or 0) / 1e9


class ComposeStack(Stack):
    backend = "compose"

    def __init__(
        self,
        config: StackConfig,
        client: Any | None = None,
        ready_count: Callable[[str], int] | None = None,
        ready_timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        """`client`: a docker APIClient (default: one for compose.docker_url); `ready_count(component)`
        counts the instances that serve (default: asks Kafka, the Spark master and Ray)."""
        super().__init__(config)
        self._client = client
        self._ready_count = ready_count or self._serving
        self.ready_timeout_s = ready_timeout_s
        self.project = config.compose.project

    # ------------------------------------------------------------------ Docker
    @property
    def client(self) -> Any:
        if self._client is None:
            import docker

            self._client = docker.APIClient(
                base_url=self.config.compose.docker_url, timeout=int(self.config.compose.docker_timeout_s)
            )
        return self._client

    def _call(self, what: str, action: Callable[[], Any]) -> Any:
        import docker.errors

        try:
            return action()
        except docker.errors.APIError as exc:
            raise StackError(f"{what}: {exc.explanation or exc}") from None
        except (docker.errors.DockerException, OSError) as exc:  # no engine at the URL
            url = self.config.compose.docker_url
            raise StackError(f"{what}: no Docker engine at {url} ({exc}); set compose.docker_url") from None

    def containers(self, service: str | None = None) -> list[dict[str, Any]]:
        """The project's service containers (not one-off `run`s), running or not, by service and number."""
        labels = [f"{PROJECT_LABEL}={self.project}", f"{ONEOFF_LABEL}=False"]
        if service:
            labels.append(f"{SERVICE_LABEL}={service}")
        found = self._call(
            f"listing containers of compose project {self.project}",
            lambda: self.client.containers(all=True, filters={"label": labels}),
        )
        return sorted(found, key=lambda c: (c["Labels"].get(SERVICE_LABEL, ""), _number(c)))

    @staticmethod
    def _name(container: dict[str, Any]) -> str:
        return container["Names"][0].lstrip("/")

    @staticmethod
    def _running(container: dict[str, Any]) -> bool:
        return container.get("State") == "running"

    def services(self, component: str) -> list[str]:
        """The compose services of a component: one per Kafka broker, else one."""
        check_component(component, ALL_COMPONENTS)
        if component == KAFKA:
            return [kafka_service(node) for node in self.config.kafka.node_ids]
        return [SERVICES[component]]

    def _instance(self, component: str, which: int | None) -> dict[str, Any]:
        """The container `kill`/`restart` act on: broker `which` (default 1), replica `which`
        (default the highest running one), or the service's only container."""
        check_component(component, ALL_COMPONENTS)
        if component == KAFKA:
            node = 1 if which is None else which
            if node not in self.config.kafka.node_ids:
                raise StackError(
                    f"{KAFKA} has {self.config.kafka.brokers} broker(s) (kafka.brokers); got which={node}"
                )
            service = kafka_service(node)
            found = self.containers(service)
        else:
            service = SERVICES[component]
            found = self.containers(service)
            if component in SCALABLE:
                if which is None:
                    running = [c for c in found if self._running(c)]
                    if not running:
                        raise StackError(f"no {component} is running")
                    return running[-1]
                found = [c for c in found if _number(c) == which]
            elif which not in (None, 1):
                raise StackError(f"{component} has a single instance; got which={which}")
        if not found:
            raise StackError(
                f"no container of service {service} (compose project {self.project}) "
                f"{'' if which is None else f'number {which} '}: run `docker compose up -d` first"
            )
        return found[0]

    # ------------------------------------------------------------------ readiness
    def _serving(self, component: str) -> int:
        """How many instances of `component` serve, asked of the system itself, not of Docker."""
        if component == KAFKA:
            from pipeline.kafka_topics import admin_client, describe_cluster

            admin = admin_client(self.config.kafka.bootstrap_servers, timeout_s=3)
            return len(describe_cluster(admin, timeout_s=3).brokers)
        if component == SPARK_WORKER:
            import json
            import urllib.request

            with urllib.request.urlopen(f"{self.config.spark.master_ui_url}/json/", timeout=3) as resp:
                state = json.loads(resp.read())
            return sum(1 for w in state.get("workers", []) if w.get("state") == "ALIVE")
        if component == RAY_WORKER:
            from ray._raylet import GcsClient

            nodes = GcsClient(address=self.config.ray.address).get_all_node_info(timeout=5).values()
            # Worker nodes: alive, not the head, with CPUs (the inference driver's node has none).
            return sum(
                1
                for node in nodes
                if node.state == 0 and not node.is_head_node and node.resources_total.get("CPU", 0) > 0
            )
        return 0

    def _wait_serving(self, component: str, count: int) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        seen, error = -1, ""
        while time.monotonic() < deadline:
            try:
                seen = self._ready_count(component)
                if seen == count:
                    return
            except Exception as exc:  # still starting: the master or broker may not answer yet
                error = str(exc)
            time.sleep(1.0)
        raise StackError(
            f"{component}: {seen} of {count} serving after {self.ready_timeout_s:.0f} s"
            + (f" ({error})" if error else "")
        )

    # ------------------------------------------------------------------ Stack API
    def up(self, components: tuple[str, ...] = COMPONENTS) -> None:
        for component in components:
            check_component(component, ALL_COMPONENTS)
        # The stack file on the shared volume gives the containers started from here their shape
        # (windows, trigger; `component` reads it before its own defaults).
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.config.dump()
        for component in components:
            if component in SCALABLE:
                wanted = self.config.spark.workers if component == SPARK_WORKER else self.config.ray.workers
                self.scale(component, wanted)
                continue
            for service in self.services(component):
                found = self.containers(service)
                if not found:
                    raise StackError(
                        f"no container of service {service} in compose project {self.project}: "
                        "run `docker compose up -d` (or `--profile kafka-3` for 3 brokers) first"
                    )
                for container in found:
                    if not self._running(container):
                        self._call(
                            f"starting {self._name(container)}",
                            lambda c=container: self.client.start(c["Id"]),
                        )
        if KAFKA in components:
            self._wait_serving(KAFKA, self.config.kafka.brokers)

    def down(self, purge: bool = False) -> None:
        if purge:
            raise UnsupportedOperation(
                "the compose backend does not delete data: `docker compose down -v` removes the state volume"
            )
        pipeline = {svc for component in COMPONENTS for svc in self.services(component)}
        # Services before the infrastructure they use, Kafka last (its consumers stop first).
        order = [
            SERVICES[c]
            for c in (API, INFERENCE, STREAMING_JOB, RAY_WORKER, RAY_HEAD, SPARK_WORKER, SPARK_MASTER)
        ]
        order += [kafka_service(n) for n in self.config.kafka.node_ids]
        for service in order:
            if service not in pipeline:
                continue
            for container in self.containers(service):
                if self._running(container):
                    self._call(
                        f"stopping {self._name(container)}",
                        lambda c=container: self.client.stop(c["Id"], timeout=STOP_TIMEOUT_S),
                    )

    def _component_of(self, service: str) -> str | None:
        if re.fullmatch(rf"{KAFKA}-\d+", service):
            return KAFKA
        return next((c for c, s in SERVICES.items() if s == service), None)

    def _stats(self, container: dict[str, Any]) -> dict[str, Any]:
        return self._call(
            f"stats of {self._name(container)}",
            lambda: self.client.stats(container["Id"], stream=False, one_shot=True),
        )

    def status(self) -> StackStatus:
        status = StackStatus(
            backend=self.backend,
            extra={"project": self.project, "kafka_bootstrap_servers": self.config.kafka.bootstrap_servers},
        )
        for container in self.containers():
            component = self._component_of(container["Labels"].get(SERVICE_LABEL, ""))
            if component is None:
                continue  # Airflow, PostgreSQL, Grafana...: not parts of the stack interface
            running = self._running(container)
            stats = self._stats(container) if running else {}
            status.instances.append(
                InstanceStatus(
                    component=component,
                    instance=self._name(container),
                    running=running,
                    pid=(container.get("Pid") or None),
                    rss_bytes=memory_in_use(stats),
                    processes=int((stats.get("pids_stats") or {}).get("current") or 0),
                    detail=container.get("Status", ""),
                )
            )
        return status

    def container_usage(self) -> dict[str, list[tuple[str, float, int]]]:
        """(container, CPU seconds used so far, memory in use) of each running container, by component."""
        usage: dict[str, list[tuple[str, float, int]]] = {}
        for container in self.containers():
            component = self._component_of(container["Labels"].get(SERVICE_LABEL, ""))
            if component is None or not self._running(container):
                continue
            stats = self._stats(container)
            usage.setdefault(component, []).append(
                (self._name(container), cpu_seconds(stats), memory_in_use(stats))
            )
        return usage

    def scale(self, component: str, count: int) -> None:
        if component == KAFKA:
            raise UnsupportedOperation(
                f"cannot scale {KAFKA} to {count}: the broker count is the compose profile's "
                "(WB_KAFKA_BROKERS=3 docker compose --profile kafka-3 up -d for 3 brokers)"
            )
        check_component(component, SCALABLE)
        if count < 0:
            raise StackError(f"cannot scale {component} to {count}: the count must be >= 0")
        service = SERVICES[component]
        found = self.containers(service)
        if not found:
            raise StackError(
                f"no container of service {service} in compose project {self.project} to scale from: "
                "run `docker compose up -d` first"
            )
        running = [c for c in found if self._running(c)]
        stopped = [c for c in found if not self._running(c)]
        if count > len(running):
            for container in stopped[: count - len(running)]:
                self._call(
                    f"starting {self._name(container)}", lambda c=container: self.client.start(c["Id"])
                )
            missing = count - len(running) - min(len(stopped), count - len(running))
            template = self._call(
                f"inspecting {self._name(found[0])}", lambda: self.client.inspect_container(found[0]["Id"])
            )
            highest = max(_number(c) for c in found)
            for number in range(highest + 1, highest + 1 + missing):
                self._create_replica(service, template, number)
        elif count < len(running):
            for container in sorted(running, key=_number)[count:]:
                name = self._name(container)
                self._call(
                    f"stopping {name}", lambda c=container: self.client.stop(c["Id"], timeout=STOP_TIMEOUT_S)
                )
                # Keep one container of the service, stopped: the template of the next scale-up.
                if _number(container) != min(_number(c) for c in found):
                    self._call(f"removing {name}", lambda c=container: self.client.remove_container(c["Id"]))
        self._wait_serving(component, count)
        if component == SPARK_WORKER:
            self.config.spark.workers = count
        else:
            self.config.ray.workers = count

    def _create_replica(self, service: str, template: dict[str, Any], number: int) -> None:
        """One more container of `service`, as compose would create replica `number`."""
        config = template["Config"]
        labels = {**config.get("Labels", {}), NUMBER_LABEL: str(number)}
        name = f"{self.project}-{service}-{number}"
        networks = (template.get("NetworkSettings") or {}).get("Networks") or {}
        endpoints = {
            network: self.client.create_endpoint_config(aliases=[service, name]) for network in networks
        }
        created = self._call(
            f"creating {name}",
            lambda: self.client.create_container(
                image=config["Image"],
                command=config.get("Cmd"),
                entrypoint=config.get("Entrypoint"),
                environment=config.get("Env"),
                labels=labels,
                name=name,
                host_config=template.get("HostConfig"),
                networking_config=self.client.create_networking_config(endpoints) if endpoints else None,
            ),
        )
        self._call(f"starting {name}", lambda: self.client.start(created["Id"]))
        log.info("created %s (replica %d of %s)", name, number, service)

    def unsupported(self, change: str) -> str | None:
        if change == "brokers":
            return (
                "the compose backend's broker count is the compose profile's "
                "(WB_KAFKA_BROKERS=3 docker compose --profile kafka-3 up -d)"
            )
        return None

    def kill(self, component: str, which: int | None = None, graceful: bool = False) -> str:
        container = self._instance(component, which)
        name = self._name(container)
        if not self._running(container):
            raise StackError(f"{name} is not running")
        if graceful:
            self._call(f"stopping {name}", lambda: self.client.stop(container["Id"], timeout=STOP_TIMEOUT_S))
        else:
            self._call(f"killing {name}", lambda: self.client.kill(container["Id"], signal="SIGKILL"))
        return name

    def restart(self, component: str, which: int | None = None) -> None:
        container = self._instance(component, which)
        name = self._name(container)
        if self._running(container):
            self._call(
                f"restarting {name}", lambda: self.client.restart(container["Id"], timeout=STOP_TIMEOUT_S)
            )
        else:
            self._call(f"starting {name}", lambda: self.client.start(container["Id"]))

    def started_at(self, component: str, which: int | None = None) -> float | None:
        try:
            container = self._instance(component, which)
        except StackError:
            return None
        state = self._call(
            f"inspecting {self._name(container)}", lambda: self.client.inspect_container(container["Id"])
        )["State"]
        return _started_epoch(state.get("StartedAt", "")) if state.get("Running") else None
