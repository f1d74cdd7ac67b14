"""External backend: a cluster this suite did not start, measured but never changed.

Points at existing Kafka bootstrap servers (kafka.bootstrap), a Spark standalone master
(spark.master_host and ports), a Ray cluster (ray.head_host, gcs_port) and the serving API
(api.host, port), with the pipeline's services already running there. `up` checks that each
asked component answers and says which does not; `status` asks each system what runs (brokers
registered, workers alive at the master, Ray nodes, the streaming application, the API's
health); `down` leaves everything running. Scaling, kills and restarts are refused with
`UnsupportedOperation` naming the reason, and `unsupported()` gives that reason beforehand, so a
benchmark skips such steps (and says why in its report) instead of failing half-way.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

from pipeline.stack.base import (
    ALL_COMPONENTS,
    API,
    COMPONENTS,
    INFERENCE,
    KAFKA,
    RAY_HEAD,
    RAY_WORKER,
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
STREAMING_APP = "weather-streaming"  # the application name the streaming job registers
CHANGES = ("scale", "faults", "brokers", "partitions")


def _http_json(url: str, timeout_s: float = 3.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read())


class ExternalStack(Stack):
    backend = "external"

    def unsupported(self, change: str) -> str | None:
        if change not in CHANGES:
            raise ValueError(f"unknown change {change!r}; expected one of {', '.join(CHANGES)}")
        what = {
            "scale": "resize its Spark or Ray workers",
            "faults": "kill or restart its components",
            "brokers": "change its Kafka broker count",
            "partitions": "change the partitions of its topics",
        }[change]
        return (
            f"the stack is an external cluster (backend external): the suite measures it but does not {what}"
        )

    def _refuse(self, change: str) -> UnsupportedOperation:
        return UnsupportedOperation(self.unsupported(change) or change)

    # ------------------------------------------------------------------ probes
    def _kafka_brokers(self) -> list[int]:
        from pipeline.kafka_topics import admin_client, describe_cluster

        admin = admin_client(self.config.kafka.bootstrap_servers, timeout_s=5)
        return list(describe_cluster(admin, timeout_s=5).brokers)

    def _spark_state(self) -> dict[str, Any]:
        return _http_json(f"{self.config.spark.master_ui_url}/json/")

    def _ray_nodes(self) -> list[Any]:
        from ray._raylet import GcsClient

        nodes = GcsClient(address=self.config.ray.address).get_all_node_info(timeout=5).values()
        return [node for node in nodes if node.state == 0]  # 0 = ALIVE

    def _api_healthy(self) -> bool:
        return _http_json(f"{self.config.api.url}/health") is not None

    def _inference_serving(self) -> bool:
        with urllib.request.urlopen(self.config.inference.metrics_url, timeout=3) as response:
            return response.status == 200

    def _probe(self, component: str) -> list[InstanceStatus]:
        """What runs of one component, as the system itself tells; an error is 'not running'."""
        try:
            if component == KAFKA:
                return [InstanceStatus(KAFKA, f"broker {b}", True) for b in self._kafka_brokers()]
            if component == SPARK_MASTER:
                state = self._spark_state()
                return [
                    InstanceStatus(
                        SPARK_MASTER, state.get("url", SPARK_MASTER), state.get("status") == "ALIVE"
                    )
                ]
            if component == SPARK_WORKER:
                workers = self._spark_state().get("workers", [])
                return [
                    InstanceStatus(
                        SPARK_WORKER, w.get("id", "?"), w.get("state") == "ALIVE", detail=w.get("host", "")
                    )
                    for w in workers
                ]
            if component == STREAMING_JOB:
                apps = self._spark_state().get("activeapps", [])
                return [
                    InstanceStatus(STREAMING_JOB, a.get("id", "?"), True)
                    for a in apps
                    if a.get("name") == STREAMING_APP
                ]
            if component in (RAY_HEAD, RAY_WORKER):
                nodes = self._ray_nodes()
                heads = [n for n in nodes if n.is_head_node]
                workers = [n for n in nodes if not n.is_head_node and n.resources_total.get("CPU", 0) > 0]
                chosen = heads if component == RAY_HEAD else workers
                return [InstanceStatus(component, n.node_manager_address, True) for n in chosen]
            if component == INFERENCE:
                return [
                    InstanceStatus(INFERENCE, self.config.inference.metrics_url, self._inference_serving())
                ]
            if component == API:
                return [InstanceStatus(API, self.config.api.url, self._api_healthy())]
        except Exception as exc:
            return [InstanceStatus(component, component, False, detail=f"not reachable: {exc}")]
        return []

    # ------------------------------------------------------------------ Stack API
    def up(self, components: tuple[str, ...] = COMPONENTS) -> None:
        """Check that every asked component of the external cluster serves; start nothing."""
        for component in components:
            check_component(component, COMPONENTS)
        # The configuration benchmarks measured it with, for the next step to compare against.
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.config.dump()
        missing = []
        for component in components:
            instances = self._probe(component)
            if not any(i.running for i in instances):
                detail = next((i.detail for i in instances if i.detail), "nothing running")
                missing.append(f"{component} ({detail})")
        if missing:
            raise StackError(
                "the external cluster does not serve: "
                + "; ".join(missing)
                + " (backend external starts nothing: check the addresses in kafka.bootstrap, "
                "spark.master_host, ray.head_host, api.host, inference.host)"
            )

    def down(self, purge: bool = False) -> None:
        if purge:
            raise UnsupportedOperation("the external backend does not delete an external cluster's data")
        log.info("backend external: the cluster is left running")

    def status(self) -> StackStatus:
        status = StackStatus(
            backend=self.backend, extra={"kafka_bootstrap_servers": self.config.kafka.bootstrap_servers}
        )
        for component in COMPONENTS:
            status.instances += self._probe(component)
        return status

    def scale(self, component: str, count: int) -> None:
        check_component(component, ALL_COMPONENTS)
        raise self._refuse("brokers" if component == KAFKA else "scale")

    def kill(self, component: str, which: int | None = None, graceful: bool = False) -> str:
        check_component(component, ALL_COMPONENTS)
        raise self._refuse("faults")

    def restart(self, component: str, which: int | None = None) -> None:
        check_component(component, ALL_COMPONENTS)
        raise self._refuse("faults")
