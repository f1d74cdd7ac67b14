"""Stack runtime: start, stop, scale and break the pipeline's components (see base.Stack)."""

from __future__ import annotations

from pipeline.config import StackConfig
from pipeline.stack.base import Stack, StackError

BACKENDS = ("local",)


def get_stack(config: StackConfig, backend: str = "local") -> Stack:
    """The stack for a backend name; further backends register here."""
    if backend == "local":
        from pipeline.stack.local import LocalStack

        return LocalStack(config)
    raise StackError(f"unknown stack backend {backend!r}; available: {', '.join(BACKENDS)}")
