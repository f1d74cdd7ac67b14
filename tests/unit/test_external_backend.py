"""External backend: measures a cluster it did not start; refuses every change, saying why."""

from __future__ import annotations

import socket

import pytest

from pipeline.config import load_config
from pipeline.stack import get_stack
from pipeline.stack.base import StackError, UnsupportedOperation
from pipeline.stack.external import ExternalStack


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture
def stack(tmp_path) -> ExternalStack:
    config = load_config(
        environ={"WB_STACK_BACKEND": "external"},
        overrides={
            "state_dir": str(tmp_path),
            "spark": {"master_ui_port": closed_port()},
            "api": {"port": closed_port()},
        },
    )
    built = get_stack(config)
    assert isinstance(built, ExternalStack)
    return built


def test_every_change_is_refused_with_the_reason(stack: ExternalStack) -> None:
    with pytest.raises(
        UnsupportedOperation, match=r"external cluster .* does not resize its Spark or Ray workers"
    ):
        stack.scale("spark-worker", 3)
    with pytest.raises(UnsupportedOperation, match="does not change its Kafka broker count"):
        stack.scale("kafka", 3)
    with pytest.raises(UnsupportedOperation, match="does not kill or restart its components"):
        stack.kill("ray-worker", 1)
    with pytest.raises(UnsupportedOperation, match="does not kill or restart its components"):
        stack.restart("spark-master")
    with pytest.raises(StackError, match="unknown component 'spark-wrker'"):
        stack.kill("spark-wrker")
    for change in ("scale", "faults", "brokers", "partitions"):
        assert "external cluster" in (stack.unsupported(change) or "")


def test_up_names_each_component_that_does_not_answer(stack: ExternalStack) -> None:
    with pytest.raises(StackError) as error:
        stack.up(("spark-master", "api"))
    text = str(error.value)
    assert "spark-master (not reachable" in text and "api (not reachable" in text
    assert "starts nothing" in text


def test_down_leaves_the_cluster_and_refuses_to_purge_it(stack: ExternalStack) -> None:
    stack.down()  # nothing to stop, nothing raised
    with pytest.raises(UnsupportedOperation, match="does not delete"):
        stack.down(purge=True)


def test_local_and_compose_backends_refuse_only_what_they_cannot_do(tmp_path) -> None:
    local = get_stack(load_config(environ={}, overrides={"state_dir": str(tmp_path)}))
    assert all(local.unsupported(c) is None for c in ("scale", "faults", "brokers", "partitions"))
    compose = get_stack(load_config(environ={}, overrides={"state_dir": str(tmp_path), "backend": "compose"}))
    assert compose.unsupported("scale") is None and compose.unsupported("faults") is None
    assert "profile" in (compose.unsupported("brokers") or "")


def test_an_unknown_backend_is_named() -> None:
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="backend: 'kubernetes' is not one of local, compose, external"):
        load_config(environ={"WB_STACK_BACKEND": "kubernetes"})
