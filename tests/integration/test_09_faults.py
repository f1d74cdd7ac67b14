"""Faults under steady load, for real: a Ray worker kill, a Spark worker kill and a Kafka broker restart.

Each runs as a step of the fault-tolerance experiment against the session's
pipeline: the fault is injected through the stack interface while the open-loop
load runs, and afterwards every acknowledged message must have been served,
each window is served once, and the recovery figures are stored.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pipeline.stack.local import LocalStack
from tests.integration.test_08_benchmark import run

pytestmark = pytest.mark.integration

FAULTS = [
    {"faults": [{"at_s": 25, "component": "ray-worker", "which": 1, "action": "kill", "down_s": 10}]},
    {"faults": [{"at_s": 25, "component": "spark-worker", "which": 1, "action": "kill", "down_s": 10}]},
    {"faults": [{"at_s": 25, "component": "kafka", "action": "restart"}]},
]


def test_guide_faults_lose_no_acknowledged_message(pipeline_stack: LocalStack, tmp_path: Path) -> None:
    # 8 partitions: an earlier test in the session may have grown the benchmark topic to 8, and
    # Kafka cannot shrink it under the running streaming job (growing from 4 is fine).
    overrides = {"steps": FAULTS, "duration_s": 40, "warmup_s": 10, "partitions": 8}
    result, store = run(pipeline_stack, tmp_path, "fault-tolerance", overrides)
    faults = result.summary["faults"]
    kafka = "kafka" if pipeline_stack.config.kafka.brokers == 1 else "kafka-1"
    assert [f["target"] for f in faults] == ["ray-worker-1", "spark-worker-1", kafka]
    for outcome, fault in zip(result.outcomes, faults, strict=True):
        accounting = outcome.accounting
        assert accounting["expected_messages"] == outcome.value("producer.acked") > 0
        assert accounting["lost_messages"] == 0, (fault["target"], accounting)
        assert accounting["missing_windows"] == 0 and accounting["short_windows"] == 0
        # The API serves each window once: repeated deliveries after a recovery are absorbed and counted.
        assert accounting["unexpected_windows"] == 0
        assert accounting["served_windows"] == accounting["expected_windows"]
        assert fault["error"] == "", fault
        assert fault["at_s"] == pytest.approx(25, abs=3)
        assert fault["restarted_at_s"] is not None and fault["restarted_at_s"] >= fault["at_s"]
        assert fault["lost"] == 0
        # Outputs came back within the step, and the recovery is a measured number of seconds.
        assert fault["outputs_resume_s"] is not None and fault["outputs_resume_s"] >= 0
        assert fault["recovery_s"] is None or fault["recovery_s"] >= 0
    ray_kill = faults[0]
    assert ray_kill["ray_actors_back_s"] is not None and not math.isnan(ray_kill["ray_actors_back_s"])
    stored = {(m.metric, m.component) for m in store.metrics(result.run_id)}
    for target in ("ray-worker-1", "spark-worker-1", kafka):
        assert ("fault.recovery_s", target) in stored
        assert ("fault.windows_affected", target) in stored
    # Every step leaves the stack whole for the next one.
    status = pipeline_stack.status()
    assert all(instance.running for instance in status.instances), status.to_dict()
