"""A Ray worker node and a Spark worker are killed (SIGKILL) under load: the pipeline carries on.

Full fault accounting (recovery times, throughput dip) belongs to the fault-tolerance
benchmarks; here the pipeline must keep serving, and no acknowledged observation may be lost.
"""

from __future__ import annotations

import pytest

from pipeline.config import duration_ms
from pipeline.producer.loadgen import LoadSpec
from pipeline.stack.base import RAY_WORKER, SPARK_WORKER

from .conftest import close_all_windows
from .test_02_flow import wait_served, windows_of
from .test_04_scaling import BackgroundLoad

pytestmark = pytest.mark.integration


def test_killed_workers_do_not_stop_the_pipeline(pipeline_stack, producer):
    stack = pipeline_stack
    config = stack.config
    window_ms = duration_ms(config.spark.window)
    load = BackgroundLoad(producer, LoadSpec(stations=4, rate=10, duration_s=75, station_prefix="fault"))
    try:
        load.at(10)
        killed_ray = stack.kill(RAY_WORKER, 1)
        assert killed_ray == "ray-worker-1"
        assert stack.status().running(RAY_WORKER) == config.ray.workers - 1
        load.at(25)
        killed_spark = stack.kill(SPARK_WORKER, 1)
        assert killed_spark == "spark-worker-1"
        assert stack.status().running(SPARK_WORKER) == config.spark.workers - 1
        load.at(50)
    finally:
        stack.restart(RAY_WORKER, 1)
        stack.restart(SPARK_WORKER, 1)
    result = load.join()
    assert result.ledger.failed == []
    close_all_windows(stack, producer, result.last_event_ms)

    expected = windows_of(result.ledger, "fault", window_ms)
    rows = wait_served(config.api.url, "fault", set(expected), timeout_s=300)
    served = {(r["station_id"], r["window_start"]): r["count"] for r in rows}
    # The pipeline went on after the faults: windows that closed after both kills were served...
    after_kills = {k for k in expected if k[1] >= result.start_ms + 30_000}
    assert after_kills and after_kills <= set(served)
    # ...and nothing acknowledged was lost across them.
    assert served == {key: len(seqs) for key, seqs in expected.items()}
