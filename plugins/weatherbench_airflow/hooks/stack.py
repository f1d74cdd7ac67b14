"""`WeatherStackHook`: the benchmark stack (pipeline.stack) behind an Airflow connection.

The connection (`weatherbench_stack`, a generic connection) says which backend runs the stack
and where it keeps its state, in its extras: `{"backend": "local", "state_dir": "..."}`. The
hook hands out the configuration the engine runs benchmarks with and the stack interface
(up, down, status, scale, kill, restart) of that state directory. With the compose backend,
the containers are scaled, killed and restarted through the docker provider's `DockerHook`
(its client of the engine at compose.docker_url).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from airflow.providers.docker.hooks.docker import DockerHook
from airflow.sdk import BaseHook

from pipeline.config import StackConfig, load_config
from pipeline.stack import BACKENDS, get_stack
from pipeline.stack.base import Stack
from weatherbench_airflow.environment import STACK_CONN_ID


class WeatherStackHook(BaseHook):
    """The stack runtime of one state directory, as configured by an Airflow connection."""

    conn_name_attr = "stack_conn_id"
    default_conn_name = STACK_CONN_ID
    conn_type = "generic"
    hook_name = "Weather benchmark stack"

    def __init__(self, stack_conn_id: str = STACK_CONN_ID) -> None:
        super().__init__()
        self.stack_conn_id = stack_conn_id
        extra: dict[str, Any] = self.get_connection(stack_conn_id).extra_dejson
        self.backend = str(extra.get("backend", "local"))
        if self.backend not in BACKENDS:
            raise ValueError(
                f"connection {stack_conn_id}: backend {self.backend!r} is not one of {', '.join(BACKENDS)}"
            )
        self.base_config: StackConfig = load_config(overrides={"backend": self.backend})
        self.state_dir = Path(extra.get("state_dir") or self.base_config.state_dir / "bench")

    def running_config(self) -> StackConfig | None:
        """The configuration the stack in the state dir was last brought up with, if any."""
        path = self.state_dir / "stack.yaml"
        return load_config(path, environ={}) if path.exists() else None

    def docker_client(self) -> Any:
        """The Docker engine's API client, from the docker provider's hook (compose backend)."""
        compose = self.base_config.compose
        return DockerHook(
            docker_conn_id=None, base_url=compose.docker_url, timeout=int(compose.docker_timeout_s)
        ).get_conn()

    def docker_client_factory(self) -> Callable[[], Any] | None:
        """What the engine calls for a Docker client: only the compose backend needs one."""
        return self.docker_client if self.backend == "compose" else None

    def get_conn(self) -> Stack:
        """The stack as it was last brought up (or the base configuration in the state dir)."""
        config = self.running_config() or load_config(
            overrides={"state_dir": str(self.state_dir), "backend": self.backend}
        )
        factory = self.docker_client_factory()
        return get_stack(config, self.backend, docker_client=factory() if factory else None)
