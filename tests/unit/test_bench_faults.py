"""Fault timelines: declarations in workload files, the injector's schedule, and recovery figures."""

from __future__ import annotations

import math
import time

import pytest

from weatherbench.faults import FaultEvent, FaultInjector, checkpoint_resumption, recovery
from weatherbench.metrics import Series
from weatherbench.workloads import Fault, Slo, WorkloadError, load_workload

SLO = Slo(
    e2e_p95_ms=60_000,
    window_close_p95_ms=60_000,
    producer_p95_ms=100,
    spark_lag_max=1000,
    ray_lag_max=500,
    lag_slope_fraction=0.05,
)
START_MS = 1_000_000
WINDOW_MS = 10_000
TRIGGER_MS = 2_000


def test_quick_profile_declares_the_guides_four_faults():
    plan = load_workload("quick").plan("fault-tolerance")
    faults = [step.faults[0] for step in plan.steps]
    assert [(f.component, f.action) for f in faults] == [
        ("spark-worker", "kill"),
        ("ray-worker", "kill"),
        ("kafka", "restart"),
        ("spark-master", "restart"),
    ]
    assert all(0 < f.at_s < plan.steps[0].load.total_s for f in faults)
    assert plan.steps[0].label == "kill spark-worker-1"
    assert faults[2].down_s == 0.0  # a restart starts again at once
    assert faults[0].down_s == 15.0


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"at_s": 10, "component": "zookeeper", "action": "kill"}, "component: 'zookeeper' is not one of"),
        ({"at_s": 10, "component": "kafka", "action": "explode"}, "action: 'explode' is not one of"),
        ({"at_s": 500, "component": "kafka", "action": "kill"}, "after the step's load ends"),
        ({"component": "kafka", "action": "kill"}, "missing field(s) at_s"),
        ({"at_s": 10, "component": "kafka", "action": "kill", "when": 3}, "when"),
    ],
)
def test_bad_fault_declarations_name_the_field(tmp_path, fault, message):
    workload = load_workload("quick")
    with pytest.raises(WorkloadError) as error:
        workload.plan("fault-tolerance", {"steps": [{"faults": [fault]}]})
    assert message in str(error.value)
    assert "steps[0].faults[0]" in str(error.value)


class RecordingStack:
    """Stands in for the stack interface: records kills and restarts with their times."""

    def __init__(self, fail_restart: bool = False) -> None:
        self.calls: list[tuple[str, str, int | None, bool]] = []
        self.fail_restart = fail_restart
        self.t0 = time.monotonic()

    def kill(self, component: str, which: int | None = None, graceful: bool = False) -> str:
        self.calls.append(("kill", component, which, graceful))
        return f"{component}-{which or 1}"

    def restart(self, component: str, which: int | None = None) -> None:
        self.calls.append(("restart", component, which, False))
        if self.fail_restart:
            raise RuntimeError("port 9092 busy")

    def supervised(self, component: str) -> bool:
        return False

    def started_at(self, component: str, which: int | None = None) -> float | None:
        return None


def test_injector_kills_at_the_instant_and_restarts_after_the_outage():
    stack = RecordingStack()
    faults = [
        Fault(0.2, "spark-worker", "kill", 1, 0.3),
        Fault(0.3, "kafka", "restart", None, 0.0),
        Fault(0.1, "api", "stop", None, None),  # down until the end of the step
    ]
    injector = FaultInjector(stack, faults)
    injector.start()
    time.sleep(1.0)
    injector.stop()
    assert [c[:2] for c in stack.calls] == [
        ("kill", "api"),
        ("kill", "spark-worker"),
        ("kill", "kafka"),
        ("restart", "kafka"),
        ("restart", "spark-worker"),
    ]
    assert stack.calls[0][3] is True and stack.calls[1][3] is False  # stop is graceful, kill is not
    spark, kafka, api = injector.events
    assert spark.at_s == pytest.approx(0.2, abs=0.1)
    assert spark.restarted_at_s - spark.at_s == pytest.approx(0.3, abs=0.1)
    assert spark.target == "spark-worker-1"
    assert kafka.restarted_at_s - kafka.at_s == pytest.approx(0.0, abs=0.1)
    assert api.restarted_at_s is None
    injector.restore()
    assert stack.calls[-1][:2] == ("restart", "api") and api.restarted_at_s is not None


def test_injector_reports_a_failed_restart_instead_of_dying():
    injector = FaultInjector(RecordingStack(fail_restart=True), [Fault(0.05, "kafka", "restart", None, 0.0)])
    injector.start()
    time.sleep(0.4)
    injector.stop()
    [event] = injector.events
    assert "port 9092 busy" in event.error and event.restarted_at_s is None


class SupervisingStack(RecordingStack):
    """Supervises the streaming job: killed, it is back `back_after_s` later without a restart call."""

    def __init__(self, back_after_s: float) -> None:
        super().__init__()
        self.back_after_s = back_after_s
        self.back_at: float | None = None

    def supervised(self, component: str) -> bool:
        return component == "streaming-job"

    def kill(self, component: str, which: int | None = None, graceful: bool = False) -> str:
        if component == "streaming-job" and not graceful:
            self.back_at = time.time() + self.back_after_s
        return super().kill(component, which, graceful)

    def started_at(self, component: str, which: int | None = None) -> float | None:
        if component != "streaming-job" or self.back_at is None or time.time() < self.back_at:
            return None
        return self.back_at


def test_a_supervised_kill_is_not_restarted_by_the_injector():
    stack = SupervisingStack(back_after_s=0.3)
    faults = [
        Fault(0.1, "streaming-job", "kill", None, 0.1),  # down_s does not apply: the supervisor decides
        Fault(0.1, "inference", "restart", None, 0.0),  # a graceful restart of an unsupervised one
    ]
    injector = FaultInjector(stack, faults)
    injector.start()
    time.sleep(1.2)
    injector.stop()
    assert [c[:2] for c in stack.calls] == [
        ("kill", "streaming-job"),
        ("kill", "inference"),
        ("restart", "inference"),
    ]
    job, inference = injector.events
    assert job.supervised and not inference.supervised
    # The restart is the moment the supervisor started it again, seen within a watch period.
    assert job.restarted_at_s - job.at_s == pytest.approx(0.3, abs=0.1)
    assert job.error == ""
    injector.restore()
    assert ("restart", "streaming-job", None, False) not in stack.calls


def test_a_supervised_kill_still_down_at_the_end_is_restarted_by_restore():
    stack = SupervisingStack(back_after_s=60)  # a supervisor in a long back-off, or one that gave up
    injector = FaultInjector(stack, [Fault(0.05, "streaming-job", "kill", None, None)])
    injector.start()
    time.sleep(0.4)
    injector.stop()
    [event] = injector.events
    assert event.supervised and event.restarted_at_s is None
    injector.restore()
    assert stack.calls[-1][:2] == ("restart", "streaming-job") and event.restarted_at_s is not None


def row(window_end_s: float, close_s: float) -> dict:
    end = START_MS + window_end_s * 1000
    return {"window_end": end, "api_time": end + close_s * 1000, "ingestion_time_max": end - 500}


def stalled_rows() -> list[dict]:
    """Windows every 10 s served 15 s after they end; those ending 20..50 s wait for the stall at 30..60 s."""
    rows = [row(end, 15) for end in (10, 20)]  # served at 25 and 35 s: the one at 35 is after the fault
    rows += [row(end, 62 - end) for end in (30, 40, 50)]  # all served at 62 s, when Spark came back
    rows += [row(end, 15) for end in (60, 70, 80)]
    return rows


def series(name: str, points) -> Series:
    return Series(name, "", list(points))


def stalled_series() -> list[Series]:
    batches = [(t, 20.0) for t in range(2, 30, 2)] + [(t, 20.0) for t in range(62, 90, 2)]
    actors = (
        [(t, 2.0) for t in range(0, 34)]
        + [(t, 1.0) for t in range(34, 45)]
        + [(t, 2.0) for t in range(45, 90)]
    )
    served = [(t, 20.0 if t % 10 == 0 else 0.0) for t in range(0, 30)]
    served += [(t, 0.0) for t in range(30, 62)] + [(t, 20.0 if t % 10 == 0 else 0.0) for t in range(62, 90)]
    return [
        series("spark.processed_rows_per_s", batches),
        series("ray.actors", actors),
        series("throughput.predictions", served),
        series("lag.spark", [(t, 100.0) for t in range(0, 90)]),
    ]


def fault_at(at_s: float, restarted: float | None = None) -> FaultEvent:
    return FaultEvent(Fault(at_s, "spark-worker", "kill", 1, None), "spark-worker-1", at_s, restarted)


def test_recovery_of_a_stall_lasts_until_spark_processes_again_and_latency_until_the_last_late_window():
    found = recovery(
        fault_at(30, restarted=45), stalled_rows(), stalled_series(), START_MS, 5, WINDOW_MS, TRIGGER_MS, SLO
    )
    assert found.outputs_resume_s == pytest.approx(5)  # the window ending at 20 s, served at 35 s
    # Ends 30 and 40 s: close latency 32 and 22 s > 15 + 2 s; the one ending at 50 s waited only 12 s.
    assert found.windows_affected == 2
    assert found.normal_latency_s == pytest.approx(62 - 30)  # the last late window was served at 62 s
    assert found.slo_recovery_s == 0.0  # nothing breached the 60-s end-to-end SLO or the lag SLO
    # Operational again when Spark processed input again (62 s): the latest of the three.
    assert found.recovery_s == pytest.approx(62 - 30)
    assert found.spark_first_batch_s == pytest.approx(62 - 30)
    assert found.spark_first_batch_after_restart_s == pytest.approx(62 - 45)
    assert found.ray_actors_back_s == pytest.approx(45 - 30)
    assert found.throughput_dip_percent == pytest.approx(100)
    summary = found.summary(step_index=2, lost=0, duplicated=1)
    assert summary["recovery_s"] == 32 and summary["step_index"] == 2 and summary["duplicated"] == 1
    metrics = {m.name: m for m in found.metrics()}
    assert metrics["fault.recovery_s"].value == pytest.approx(32)
    assert metrics["fault.recovery_s"].component == "spark-worker-1"


def test_a_fault_without_effect_recovers_in_zero_seconds():
    rows = [row(end, 15) for end in range(10, 90, 10)]
    steady = [series("throughput.predictions", [(t, 20.0 if t % 10 == 0 else 0.0) for t in range(0, 90)])]
    found = recovery(fault_at(30), rows, steady, START_MS, 5, WINDOW_MS, TRIGGER_MS, SLO)
    assert found.normal_latency_s == 0.0 and found.windows_affected == 0
    assert found.recovery_s == found.outputs_resume_s == pytest.approx(5)  # the next window served
    assert found.throughput_dip_percent == pytest.approx(0, abs=1e-9)
    assert math.isnan(found.ray_actors_back_s)  # no actor series: unknown, not zero


def test_still_late_at_the_end_of_the_step_is_no_recovery():
    rows = [row(end, 15) for end in (10, 20)] + [row(end, 40) for end in (30, 40, 50)]
    found = recovery(fault_at(30), rows, [], START_MS, 5, WINDOW_MS, TRIGGER_MS, SLO)
    assert found.normal_latency_s is None
    assert found.recovery_s == pytest.approx(5)  # late, but inside the 60-s end-to-end SLO
    assert {m.name: m.value for m in found.metrics()}["fault.normal_latency_s"] == math.inf
    assert found.summary(0, 0, 0)["normal_latency_s"] is None


def test_over_the_slo_at_the_end_of_the_step_is_no_end_to_end_recovery():
    rows = [row(end, 15) for end in (10, 20)] + [row(end, 70) for end in (30, 40, 50)]
    lag = [series("lag.spark", [(t, 100.0) for t in range(0, 130)])]
    found = recovery(fault_at(30), rows, lag, START_MS, 5, WINDOW_MS, TRIGGER_MS, SLO)
    assert found.slo_recovery_s == pytest.approx(120 - 30)  # the last window over the SLO, served at 120 s
    assert found.recovery_s == pytest.approx(120 - 30)
    still = recovery(
        fault_at(30),
        rows,
        [series("lag.spark", [(t, 100.0) for t in range(0, 100)])],
        START_MS,
        5,
        WINDOW_MS,
        TRIGGER_MS,
        SLO,
    )
    assert still.slo_recovery_s is None and still.recovery_s is None  # over the SLO at the last sample
    assert {m.name: m.value for m in still.metrics()}["fault.recovery_s"] == math.inf
    assert still.summary(0, 0, 0)["recovery_s"] is None


def test_outputs_resume_with_the_first_prediction_inferred_after_the_fault():
    rows = [row(end, 15) for end in (10, 20, 30, 40)]
    for r in rows:
        r["ray_start"] = r["api_time"] - 200
    rows[1]["ray_start"] = START_MS + 29_000  # served at 35 s, but inferred before the fault at 30 s
    found = recovery(fault_at(30), rows, [], START_MS, 5, WINDOW_MS, TRIGGER_MS, SLO)
    assert found.outputs_resume_s == pytest.approx(45 - 30)


def test_a_fault_that_was_never_injected_says_so():
    event = FaultEvent(
        Fault(30, "kafka", "restart", None, 0.0), error="inject: StackError: kafka is not running"
    )
    found = recovery(event, stalled_rows(), [], START_MS, 5, WINDOW_MS, TRIGGER_MS, SLO)
    assert "kafka is not running" in found.error and math.isnan(found.at_s)


def batch(t_ms: float, run: str, batch_id: int, watermark: float, query: str = "q1") -> dict:
    return {"timestamp_ms": t_ms, "id": query, "runId": run, "batchId": batch_id, "watermark_ms": watermark}


def test_a_restarted_query_that_carried_on_from_its_checkpoint_is_resumed():
    batches = [batch(1000, "r1", 7, 500), batch(2000, "r1", 8, 900), batch(9000, "r2", 9, 900)]
    found = checkpoint_resumption(batches, fault_ms=5000)
    assert found == {
        "resumed": True,
        "batch_before": 8,
        "batch_after": 9,
        "watermark_before_ms": 900.0,
        "watermark_after_ms": 900.0,
    }


@pytest.mark.parametrize(
    "after",
    [
        batch(9000, "r2", 0, 0, query="q2"),  # a new query: the checkpoint was lost
        batch(9000, "r2", 9, 100),  # the watermark went back: state was not restored
        batch(9000, "r2", 3, 900),  # batch ids started over
    ],
)
def test_a_restart_that_lost_its_checkpoint_is_not_resumed(after):
    batches = [batch(1000, "r1", 7, 500), batch(2000, "r1", 8, 900), after]
    assert checkpoint_resumption(batches, fault_ms=5000)["resumed"] is False


def test_no_restart_no_checkpoint_verdict():
    batches = [batch(1000, "r1", 7, 500), batch(9000, "r1", 8, 900)]
    assert checkpoint_resumption(batches, fault_ms=5000) is None


def test_ray_actors_back_comes_from_the_pools_record_of_the_node_loss():
    steady = [row(end, 15) for end in range(10, 90, 10)]
    # The sampled actor count never saw the loss; the pool noticed it 6 s after the fault.
    actors = [series("ray.actors", [(t, 2.0) for t in range(0, 90, 5)])]

    def at(seconds: float) -> float:
        return START_MS + seconds * 1000

    back = [
        {"actor": 1, "lost_ms": at(36), "back_ms": at(39.5)},
        {"actor": 0, "lost_ms": at(5), "back_ms": at(7)},
    ]
    found = recovery(fault_at(30), steady, actors, START_MS, 5, WINDOW_MS, TRIGGER_MS, SLO, node_losses=back)
    assert found.ray_actors_back_s == pytest.approx(9.5)  # the loss before the fault is not this fault's
    pending = [{"actor": 1, "lost_ms": at(36), "back_ms": None}]
    found = recovery(
        fault_at(30), steady, actors, START_MS, 5, WINDOW_MS, TRIGGER_MS, SLO, node_losses=pending
    )
    assert found.ray_actors_back_s == math.inf
