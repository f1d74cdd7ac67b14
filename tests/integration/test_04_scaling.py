"""Spark and Ray workers scaled up and down while load flows: every window still served, nothing lost."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline.config import duration_ms
from pipeline.producer.loadgen import LoadSpec, run_open_loop
from pipeline.producer.observations import SyntheticSource
from pipeline.stack.base import RAY_WORKER, SPARK_WORKER

from .conftest import close_all_windows
from .test_02_flow import wait_served, windows_of

pytestmark = pytest.mark.integration


class BackgroundLoad:
    def __init__(self, producer, spec: LoadSpec) -> None:
        self.result = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(producer, spec), daemon=True)
        self.started = time.monotonic()
        self.thread.start()

    def _run(self, producer, spec) -> None:
        try:
            self.result = run_open_loop(producer, SyntheticSource(), spec)
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def at(self, seconds: float) -> None:
        """Sleep until `seconds` after the load started."""
        time.sleep(max(0.0, self.started + seconds - time.monotonic()))

    def join(self):
        self.thread.join(timeout=600)
        if self.error:
            raise self.error
        assert self.result is not None
        return self.result


def test_scaling_workers_while_running_loses_nothing(pipeline_stack, producer):
    stack = pipeline_stack
    config = stack.config
    initial_spark, initial_ray = config.spark.workers, config.ray.workers
    load = BackgroundLoad(producer, LoadSpec(stations=4, rate=10, duration_s=70, station_prefix="scale"))
    try:
        load.at(5)
        stack.scale(SPARK_WORKER, initial_spark + 1)
        assert stack.status().running(SPARK_WORKER) == initial_spark + 1
        stack.scale(RAY_WORKER, initial_ray + 1)
        assert stack.status().running(RAY_WORKER) == initial_ray + 1
        load.at(30)
        stack.scale(SPARK_WORKER, 1)
        assert stack.status().running(SPARK_WORKER) == 1
        stack.scale(RAY_WORKER, 1)
        assert stack.status().running(RAY_WORKER) == 1
        load.at(50)
    finally:
        stack.scale(SPARK_WORKER, initial_spark)
        stack.scale(RAY_WORKER, initial_ray)
    result = load.join()
    assert result.ledger.failed == []
    close_all_windows(stack, producer, result.last_event_ms)

    expected = windows_of(result.ledger, "scale", duration_ms(config.spark.window))
    rows = wait_served(config.api.url, "scale", set(expected), timeout_s=240)
    served = {(r["station_id"], r["window_start"]): r["count"] for r in rows}
    assert served == {key: len(seqs) for key, seqs in expected.items()}
    scale_acked = sum(len(v) for s, v in result.ledger.acked.items() if s.startswith("scale"))
    assert sum(served.values()) == scale_acked
