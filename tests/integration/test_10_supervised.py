"""Supervised services under steady load, for real: a killed streaming job and inference driver come back.

Each kill is a step of the fault-tolerance experiment against the session's pipeline. The
supervisor starts the service again after its back-off and the fault injector starts nothing;
afterwards every acknowledged message must have been served once, the streaming query must have
resumed from its checkpoint, and the stack reports the restart.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.stack.base import INFERENCE, STREAMING_JOB
from pipeline.stack.local import LocalStack
from tests.integration.test_08_benchmark import run

pytestmark = pytest.mark.integration

FAULTS = [
    {"faults": [{"at_s": 25, "component": STREAMING_JOB, "action": "kill"}]},
    {"faults": [{"at_s": 25, "component": INFERENCE, "action": "kill"}]},
]


def restarts(detail: str) -> int:
    match = re.search(r"(\d+) restart\(s\)", detail)
    return int(match.group(1)) if match else 0


def test_killed_services_are_started_again_by_their_supervisor(
    pipeline_stack: LocalStack, tmp_path: Path
) -> None:
    assert pipeline_stack.supervised(STREAMING_JOB) and pipeline_stack.supervised(INFERENCE)
    before = {i.instance: restarts(i.detail) for i in pipeline_stack.status().instances}
    # 8 partitions, as test_09: an earlier test may have grown the benchmark topic to 8.
    overrides = {"steps": FAULTS, "duration_s": 40, "warmup_s": 10, "partitions": 8}
    result, _ = run(pipeline_stack, tmp_path, "fault-tolerance", overrides)
    faults = result.summary["faults"]
    assert [f["target"] for f in faults] == [STREAMING_JOB, INFERENCE]
    for outcome, fault in zip(result.outcomes, faults, strict=True):
        accounting = outcome.accounting
        assert accounting["expected_messages"] == outcome.value("producer.acked") > 0
        assert accounting["lost_messages"] == 0, (fault["target"], accounting)
        assert accounting["unexpected_windows"] == 0
        assert accounting["served_windows"] == accounting["expected_windows"]
        assert fault["error"] == "", fault
        # The supervisor's restart, after its 1-s back-off; the injector started nothing.
        assert fault["restarted_at_s"] is not None, fault
        assert 1.0 <= fault["restarted_at_s"] - fault["at_s"] < 15, fault
        assert fault["outputs_resume_s"] is not None and fault["outputs_resume_s"] >= 0
    streaming = faults[0]
    assert streaming["checkpoint"] is not None and streaming["checkpoint"]["resumed"], streaming
    status = {i.instance: i for i in pipeline_stack.status().instances}
    assert all(instance.running for instance in status.values()), pipeline_stack.status().to_dict()
    for service in (STREAMING_JOB, INFERENCE):
        # Started again by the same supervisor, not by a restart of the stack (which resets the count).
        assert restarts(status[service].detail) >= before.get(service, 0) + 1, status[service].detail
