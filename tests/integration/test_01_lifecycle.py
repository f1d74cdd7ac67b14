"""Stack lifecycle on real processes: idempotent up, clear busy-port error, clean down, also after a crash."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from pipeline.config import REPO_ROOT
from pipeline.stack import get_stack
from pipeline.stack.base import KAFKA, RAY_HEAD, RAY_WORKER, SPARK_MASTER, SPARK_WORKER, PortBusyError
from pipeline.stack.process import port_in_use, read_pid_record, session_members

from .conftest import running_stack, stack_config

pytestmark = pytest.mark.integration

INFRA = (KAFKA, SPARK_MASTER, SPARK_WORKER, RAY_HEAD, RAY_WORKER)


def recorded_sessions(stack) -> list[int]:
    return [read_pid_record(p).pid for p in stack.pid_dir.glob("*.json")]


def assert_nothing_left(stack, sessions: list[int]) -> None:
    leftovers = {sid: [p.pid for p in session_members(sid)] for sid in sessions}
    assert not any(leftovers.values()), f"processes left behind: {leftovers}"
    bound = {owner: port for owner, port in stack.config.ports().items() if port_in_use(port)}
    assert not bound, f"ports still bound after down: {bound}"
    assert not list(stack.pid_dir.glob("*.json"))


def test_up_is_idempotent_and_down_leaves_nothing():
    config = stack_config("lifecycle", port_offset=200)
    config.spark.workers = 1
    config.ray.workers = 1
    with running_stack(config, INFRA) as stack:
        status = stack.status()
        assert status.running(KAFKA) == 1
        assert status.running(SPARK_WORKER) == 1
        assert status.running(RAY_WORKER) == 1
        pids = {i.instance: i.pid for i in status.instances if i.running}
        stack.up(INFRA)  # again: nothing new starts
        assert {i.instance: i.pid for i in stack.status().instances if i.running} == pids
        sessions = recorded_sessions(stack)
        assert len(sessions) == 5
    assert_nothing_left(stack, sessions)


def test_busy_port_is_named_and_nothing_starts():
    config = stack_config("busyport", port_offset=300)
    stack = get_stack(config)
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", config.kafka.bootstrap_port))
        squatter.listen()
        with pytest.raises(
            PortBusyError, match=f"port {config.kafka.bootstrap_port} needed by the kafka broker"
        ):
            stack.up((KAFKA,))
    assert not list(stack.pid_dir.glob("*.json"))
    stack.down()


def test_down_after_the_caller_crashed():
    config = stack_config("crash", port_offset=400)
    env = dict(os.environ)
    env.update(
        WB_STATE_DIR=str(config.state_dir),
        WB_KAFKA_BOOTSTRAP_PORT=str(config.kafka.bootstrap_port),
        WB_KAFKA_CONTROLLER_PORT=str(config.kafka.controller_port),
        WB_SPARK_MASTER_PORT=str(config.spark.master_port),
        WB_SPARK_MASTER_UI_PORT=str(config.spark.master_ui_port),
        WB_SPARK_WORKER_UI_PORT_BASE=str(config.spark.worker_ui_port_base),
        WB_SPARK_WORKERS="1",
    )
    stack = get_stack(config)
    stack.down(purge=True)
    caller = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "up", "--only", "kafka,spark-master,spark-worker"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not port_in_use(config.spark.master_port):
            time.sleep(0.5)
        assert port_in_use(config.spark.master_port), "the caller never got the Spark master up"
    finally:
        caller.send_signal(signal.SIGKILL)  # the caller dies mid-up, holding no reference to its children
        caller.wait()
    sessions = recorded_sessions(stack)
    assert sessions and any(session_members(sid) for sid in sessions), "children should outlive the caller"
    stack.down(purge=True)
    assert_nothing_left(stack, sessions)
