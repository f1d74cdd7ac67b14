"""Stack runtime: start, stop, scale and break the pipeline's components (see base.Stack)."""

from __future__ import annotations

from typing import Any

from pipeline.config import STACK_BACKENDS, StackConfig
from pipeline.stack.base import Stack, StackError

BACKENDS = STACK_BACKENDS


def get_stack(config: StackConfig, backend: str | None = None, docker_client: Any | None = None) -> Stack:
    """The stack of a backend (default: the configuration's `backend`). `docker_client`: the compose
    backend's Docker API client (Airflow passes the docker provider hook's); default, one for
    compose.docker_url."""
    backend = backend or config.backend
    if backend == "local":
        from pipeline.stack.local import LocalStack

        return LocalStack(config)
    if backend == "compose":
        from pipeline.stack.compose import ComposeStack

        return ComposeStack(config, client=docker_client)
    if backend == "external":
        from pipeline.stack.external import ExternalStack

        return ExternalStack(config)
    raise StackError(f"unknown stack backend {backend!r}; available: {', '.join(BACKENDS)}")
