"""The real local stack for integration tests: its own ports and state dir, torn down even on failure.

Ports are offset from the defaults so a developer's running stack is not disturbed;
windows are seconds long so tests finish in minutes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import SECTIONS, StackConfig, duration_ms, load_config
from pipeline.producer.loadgen import close_windows
from pipeline.producer.observations import SyntheticSource
from pipeline.producer.producer import WeatherProducer
from pipeline.stack import get_stack
from pipeline.stack.local import LocalStack

log = logging.getLogger(__name__)

TEST_STATE = Path(
    os.environ.get("WB_TEST_STATE_DIR", Path(__file__).resolve().parents[2] / ".state" / "test")
)


def is_port_setting(name: str) -> bool:
    """A setting that is a TCP port or the base of a row of them (not Ray's worker port range)."""
    return name == "port" or name.endswith("_port") or name.endswith("_port_base")


def stack_config(name: str, port_offset: int, **spark: str) -> StackConfig:
    """A stack configuration whose every port is shifted by port_offset, with state under TEST_STATE/name."""
    base = load_config(environ={})
    overrides: dict[str, dict[str, object]] = {}
    for section in SECTIONS:
        for key, value in vars(getattr(base, section)).items():
            if is_port_setting(key) and isinstance(value, int):
                overrides.setdefault(section, {})[key] = value + port_offset
    overrides["spark"].update(
        {"window": "5 seconds", "watermark": "2 seconds", "trigger": "2 seconds", **spark}
    )
    return load_config(environ={}, overrides={"state_dir": str(TEST_STATE / name), **overrides})


@contextlib.contextmanager
def running_stack(config: StackConfig, components: tuple[str, ...] | None = None) -> Iterator[LocalStack]:
    stack = get_stack(config)
    assert isinstance(stack, LocalStack)
    stack.down(purge=True)
    try:
        if components is None:
            stack.up()
        else:
            stack.up(components)
        yield stack
    finally:
        try:
            stack.down()
        finally:
            shutil.rmtree(config.state_dir / "kafka", ignore_errors=True)


PIPELINE_FIXTURE = "pipeline_stack"
_shared: list[LocalStack] = []  # the running shared pipeline stack, while it runs


@pytest.fixture(scope="session")
def pipeline_stack() -> Iterator[LocalStack]:
    """The whole pipeline, shared by the flow, dead-letter, scaling, fault and monitoring tests.

    It goes down after the last test that uses it (see pytest_runtest_teardown), not at the end
    of the session: the tests after it start stacks of their own, and two stacks on 2 cores
    would slow both.
    """
    config = stack_config("pipeline", port_offset=100)
    began = time.monotonic()
    with running_stack(config) as stack:
        log.info(
            "pipeline stack up in %.1f s: %s", time.monotonic() - began, json.dumps(stack.startup_seconds)
        )
        _shared.append(stack)
        try:
            yield stack
        finally:
            _shared.clear()


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Take the shared pipeline stack down once no test left in the session uses it.

    Its fixture's own teardown still runs at the end of the session; `down` is idempotent.
    """
    if not _shared or PIPELINE_FIXTURE not in getattr(item, "fixturenames", ()):
        return
    remaining = item.session.items[item.session.items.index(item) + 1 :]
    if any(PIPELINE_FIXTURE in getattr(later, "fixturenames", ()) for later in remaining):
        return
    stack = _shared.pop()
    log.info("last test of the shared pipeline stack done: taking it down")
    stack.down()


@pytest.fixture()
def producer(pipeline_stack: LocalStack) -> Iterator[WeatherProducer]:
    config = pipeline_stack.config
    prod = WeatherProducer(config.kafka.bootstrap_servers, config.kafka.raw_topic)
    yield prod
    prod.flush(30)


def close_all_windows(stack: LocalStack, producer: WeatherProducer, last_event_ms: int) -> None:
    config = stack.config
    close_windows(
        producer,
        SyntheticSource(),
        last_event_ms,
        duration_ms(config.spark.window),
        duration_ms(config.spark.watermark),
    )
