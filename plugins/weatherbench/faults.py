"""Faults on a timeline under load, and how long the pipeline took to recover from each.

`FaultInjector` is a collector: started with the step's load, it kills,
stops or restarts components through the stack interface at the instants a
workload declares (like Trogdor's fault specs), and records when each fault
happened and when the component was started again.

`recovery` turns one fault and what the step measured into recovery figures.
All times are seconds since the step started (the collectors' time base):

* outputs resume: from the fault to the first prediction served by the API
  that was also inferred after the fault (a prediction made before it and
  served later shows only that the API kept going);
* Spark recovery: from the fault (and from the restart, when there is one) to
  the first micro-batch that completed with input after it;
* Ray recovery: from the fault until the inference pool has as many actors as
  before it (0 when it never lost one);
* end-to-end recovery (the guide's "pipeline operational: all components
  recovered and processing"): from the fault until Spark processes input
  again, outputs flow again, and the end-to-end latency and the Spark lag are
  back within their SLOs: the latest of "Spark first batch", "outputs resume"
  and "SLO recovery" (the last window over the end-to-end SLO, or the last lag
  sample over the lag SLO, after the fault). None when that did not happen
  within the step;
* back to normal latency: stricter, from the fault until the last window
  served late because of it. A window is late when its close latency
  (queryable minus window end) exceeds the pre-fault maximum by more than one
  trigger interval and more than 20%. On a machine whose CPU the pipeline
  already saturates, any process start (a restarted JVM, a Ray node) pushes
  close latency over that band for a while, so this figure is reported but
  not judged against the recovery target;
* throughput dip: the lowest served-prediction rate, averaged over two window
  lengths, between the fault and recovery, against the pre-fault average;
* windows affected: windows served late (in the sense above) because of the fault.

A `kill` of a component the stack supervises (the pipeline's services on the local
backend) is a crash the stack recovers from by itself: the injector starts nothing
then (`down_s` does not apply; a restart on top would take the service down a second
time) and records as the restart the moment the supervisor started it again, read
from `Stack.started_at`. `stop` and `restart` are an operator's graceful stops: the
supervisor does not undo them, and the injector restarts as for any component.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.stack.base import Stack
from weatherbench.collectors.base import Collector
from weatherbench.metrics import Metric, Series
from weatherbench.workloads import Fault, Slo

log = logging.getLogger(__name__)
NORMAL_SPREAD = 0.2
WATCH_S = 0.5  # how often to look whether a supervised component is back


@dataclass
class FaultEvent:
    """One fault as it happened."""

    fault: Fault
    target: str = ""  # the instance hit, e.g. "spark-worker-1"
    at_s: float = math.nan  # when the fault was injected
    restarted_at_s: float | None = None  # when the component was started again
    error: str = ""
    supervised: bool = False  # killed under the stack's supervision: it comes back by itself

    @property
    def label(self) -> str:
        return f"{self.fault.action} {self.target or self.fault.component}"


class FaultInjector(Collector):
    """Injects a step's faults at their instants on a background thread."""

    name = "faults"

    def __init__(self, stack: Stack, faults: Sequence[Fault]) -> None:
        super().__init__()
        self.stack = stack
        self.events = [FaultEvent(fault) for fault in faults]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        super().start()
        self._thread = threading.Thread(target=self._run, name="fault-injector", daemon=True)
        self._thread.start()

    def _now_s(self) -> float:
        return self.seconds_since_start(time.time() * 1000)

    def _wait_until(self, at_s: float) -> bool:
        """Sleep until ``at_s``; False when the step ended first."""
        return not self._stop.wait(max(0.0, at_s - self._now_s()))

    def _run(self) -> None:
        # Restarts are scheduled with the faults, so one fault's outage can overlap the next fault.
        timeline: list[tuple[float, str, FaultEvent]] = []
        for event in self.events:
            timeline.append((event.fault.at_s, "inject", event))
        timeline.sort(key=lambda item: item[0])
        while timeline:
            at_s, what, event = timeline.pop(0)
            if not self._wait_until(at_s):
                return
            try:
                if what == "inject":
                    self._inject(event)
                    down = event.fault.down_s
                    if event.supervised:
                        timeline.append((event.at_s + WATCH_S, "watch", event))
                    elif down is not None:
                        timeline.append((event.at_s + down, "restart", event))
                    timeline.sort(key=lambda item: item[0])
                elif what == "watch":
                    if not self._came_back(event):
                        timeline.append((at_s + WATCH_S, "watch", event))
                        timeline.sort(key=lambda item: item[0])
                else:
                    self.stack.restart(event.fault.component, event.fault.which)
                    event.restarted_at_s = self._now_s()
            except Exception as exc:  # the step goes on; the error is reported with the fault
                event.error = f"{what}: {type(exc).__name__}: {exc}"
                log.warning("fault %s failed: %s", event.label, event.error)

    def _inject(self, event: FaultEvent) -> None:
        fault = event.fault
        event.at_s = self._now_s()
        event.target = self.stack.kill(fault.component, fault.which, graceful=fault.action != "kill")
        event.supervised = fault.action == "kill" and self.stack.supervised(fault.component)

    def _came_back(self, event: FaultEvent) -> bool:
        """Whether a supervised component runs again since its kill; notes when it started."""
        started = self.stack.started_at(event.fault.component, event.fault.which)
        if started is None or self.seconds_since_start(started * 1000) <= event.at_s:
            return False
        event.restarted_at_s = self.seconds_since_start(started * 1000)
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)
            self._thread = None

    def restore(self) -> None:
        """Start again whatever a fault left down (a step's faults must not leak into the next)."""
        for event in self.events:
            if event.target and event.restarted_at_s is None:
                try:
                    if event.supervised and self._came_back(event):
                        continue  # back by itself after the step stopped watching
                    self.stack.restart(event.fault.component, event.fault.which)
                    event.restarted_at_s = self._now_s()
                except Exception as exc:
                    event.error = (event.error + "; " if event.error else "") + f"restore: {exc}"


@dataclass
class Recovery:
    """What one fault cost the pipeline (seconds unless named otherwise; NaN = could not tell)."""

    kind: str
    target: str
    at_s: float
    restarted_at_s: float | None
    outputs_resume_s: float
    spark_first_batch_s: float
    spark_first_batch_after_restart_s: float
    ray_actors_back_s: float
    recovery_s: float | None  # end to end: outputs flow and SLOs hold; None = not within the step
    slo_recovery_s: float | None
    normal_latency_s: float | None  # close latency back in the pre-fault band; None = not in the step
    throughput_dip_percent: float
    windows_affected: int
    error: str = ""
    checkpoint: dict[str, Any] | None = (
        None  # set when the streaming query restarted (see checkpoint_resumption)
    )

    def summary(self, step_index: int, lost: int, duplicated: int) -> dict[str, Any]:
        """The report's fault record (see weatherbench.report.content.fault_blocks)."""

        def number(value: float | None) -> float | None:
            return None if value is None or math.isnan(value) else round(value, 3)

        return {
            "kind": self.kind,
            "target": self.target,
            "step_index": step_index,
            "at_s": number(self.at_s),
            "restarted_at_s": number(self.restarted_at_s),
            "recovery_s": number(self.recovery_s),
            "slo_recovery_s": number(self.slo_recovery_s),
            "normal_latency_s": number(self.normal_latency_s),
            "outputs_resume_s": number(self.outputs_resume_s),
            "spark_first_batch_s": number(self.spark_first_batch_s),
            "spark_first_batch_after_restart_s": number(self.spark_first_batch_after_restart_s),
            "ray_actors_back_s": number(self.ray_actors_back_s),
            "throughput_dip_percent": number(self.throughput_dip_percent),
            "windows_affected": self.windows_affected,
            "checkpoint": self.checkpoint,
            "lost": lost,
            "duplicated": duplicated,
            "error": self.error,
        }

    def metrics(self) -> list[Metric]:
        component = self.target or self.kind
        values = {
            "fault.recovery_s": self.recovery_s,
            "fault.slo_recovery_s": self.slo_recovery_s,
            "fault.normal_latency_s": self.normal_latency_s,
            "fault.outputs_resume_s": self.outputs_resume_s,
            "fault.spark_first_batch_s": self.spark_first_batch_s,
            "fault.spark_first_batch_after_restart_s": self.spark_first_batch_after_restart_s,
            "fault.ray_actors_back_s": self.ray_actors_back_s,
        }
        result = [
            # A recovery that did not happen within the step is infinite, not missing.
            Metric(name, math.inf if value is None else value, "s", component)
            for name, value in values.items()
        ]
        result.append(Metric("fault.throughput_dip", self.throughput_dip_percent, "%", component))
        result.append(Metric("fault.windows_affected", float(self.windows_affected), "windows", component))
        if self.checkpoint is not None:
            resumed = 1.0 if self.checkpoint["resumed"] else 0.0
            result.append(Metric("fault.checkpoint_resumed", resumed, "bool", component))
        return result


def checkpoint_resumption(batches: Sequence[dict[str, Any]], fault_ms: float) -> dict[str, Any] | None:
    """Whether a streaming query that restarted after the fault resumed from its checkpoint.

    ``batches`` are the query's progress events. A restart shows as a new ``runId``;
    it resumed when the query ``id`` is the same, the batch ids carry on, and the
    watermark did not go back (state and watermark restored). None: no restart.
    """
    before = [b for b in batches if float(b.get("timestamp_ms") or 0) < fault_ms]
    after = [b for b in batches if float(b.get("timestamp_ms") or 0) >= fault_ms]
    if not before:
        return None
    last = before[-1]
    restarted = [b for b in after if b.get("runId") != last.get("runId")]
    if not restarted:
        return None
    first = restarted[0]
    watermark_before = float(last.get("watermark_ms") or 0)
    watermark_after = float(first.get("watermark_ms") or 0)
    return {
        "resumed": first.get("id") == last.get("id")
        and int(first.get("batchId", -1)) > int(last.get("batchId", -1))
        and watermark_after >= watermark_before,
        "batch_before": last.get("batchId"),
        "batch_after": first.get("batchId"),
        "watermark_before_ms": watermark_before,
        "watermark_after_ms": watermark_after,
    }


def _points(series: Sequence[Series], name: str) -> list[tuple[float, float]]:
    for item in series:
        if item.name == name:
            return [(t, v) for t, v in item.points if v is not None and not math.isnan(v)]
    return []


def rolling_mean(points: Sequence[tuple[float, float]], width_s: float) -> list[tuple[float, float]]:
    """Mean of each point and those up to ``width_s`` before it (per-second rates, bursty by window)."""
    out = []
    for t, _ in points:
        inside = [v for u, v in points if t - width_s < u <= t]
        out.append((t, sum(inside) / len(inside)))
    return out


def recovery(
    event: FaultEvent,
    rows: Sequence[dict[str, Any]],
    series: Sequence[Series],
    start_ms: int,
    warmup_s: float,
    window_ms: int,
    trigger_ms: int,
    slo: Slo,
    batches: Sequence[dict[str, Any]] = (),
    node_losses: Sequence[dict[str, Any]] = (),
) -> Recovery:
    """Recovery figures of one fault from the step's served rows and series (see the module doc)."""
    fault_s = event.at_s

    def served_s(row: dict[str, Any]) -> float:
        return (float(row["api_time"]) - start_ms) / 1000

    def close_ms(row: dict[str, Any]) -> float:
        return float(row["api_time"]) - float(row["window_end"])

    def e2e_ms(row: dict[str, Any]) -> float:
        return float(row["api_time"]) - float(row.get("ingestion_time_max") or row["window_end"])

    timed = [r for r in rows if r.get("api_time") is not None and r.get("window_end") is not None]
    # Normal is judged on windows served after the warm-up, or on any served before the
    # fault when the warm-up left none (a slow pipeline serves its first window late).
    before = [r for r in timed if warmup_s <= served_s(r) < fault_s] or [
        r for r in timed if served_s(r) < fault_s
    ]
    after = sorted((r for r in timed if served_s(r) >= fault_s), key=served_s)
    nan = math.nan
    if math.isnan(fault_s):
        return Recovery(
            kind=event.fault.action,
            target=event.target,
            at_s=nan,
            restarted_at_s=None,
            outputs_resume_s=nan,
            spark_first_batch_s=nan,
            spark_first_batch_after_restart_s=nan,
            ray_actors_back_s=nan,
            recovery_s=None,
            slo_recovery_s=None,
            normal_latency_s=None,
            throughput_dip_percent=nan,
            windows_affected=0,
            error=event.error or "the fault was not injected",
        )

    def inferred_s(row: dict[str, Any]) -> float:
        stamp = row.get("ray_start")
        return math.inf if stamp is None else (float(stamp) - start_ms) / 1000

    fresh = [r for r in after if inferred_s(r) >= fault_s]
    outputs_resume = served_s(fresh[0]) - fault_s if fresh else nan

    # End to end: the last window served late because of the fault.
    # Normal is what the windows before the fault saw, with room for this machine's jitter:
    # one trigger interval, or 20% (the run-to-run spread), whichever is larger.
    normal_ms = max(close_ms(r) for r in before) if before else nan
    limit_ms = normal_ms + max(trigger_ms, NORMAL_SPREAD * normal_ms)
    late = [r for r in after if not math.isnan(limit_ms) and close_ms(r) > limit_ms]
    if math.isnan(limit_ms):
        recovered: float | None = nan
    elif not late:
        recovered = 0.0
    else:
        last = served_s(late[-1])
        # Still late at the end of the step: it did not recover within it.
        on_time_after = [r for r in after if served_s(r) > last]
        recovered = last - fault_s if on_time_after else None
    slo_late = [r for r in after if e2e_ms(r) > slo.e2e_p95_ms]
    lag = [(t, v) for t, v in _points(series, "lag.spark") if t >= fault_s]
    lag_high = [t for t, v in lag if v > slo.spark_lag_max]
    slo_ends = [served_s(r) for r in slo_late] + lag_high
    slo_recovered: float | None = max(slo_ends) - fault_s if slo_ends else 0.0
    if slo_ends and lag and max(slo_ends) >= lag[-1][0]:
        slo_recovered = None

    # Spark: the first batch with input that completed after the fault (and after the restart).
    with_input = [t for t, v in _points(series, "spark.processed_rows_per_s") if v > 0]
    first = [t for t in with_input if t > fault_s]
    spark_first = first[0] - fault_s if first else nan
    spark_after_restart = nan
    if event.restarted_at_s is not None:
        later = [t for t in with_input if t > event.restarted_at_s]
        spark_after_restart = later[0] - event.restarted_at_s if later else nan

    # Operational again: Spark processes input, outputs flow, the SLOs hold (all needed).
    end_to_end: float | None = None
    spark_known = bool(_points(series, "spark.processed_rows_per_s"))  # a Kafka-only step has none
    if slo_recovered is not None and not math.isnan(outputs_resume):
        if not spark_known:
            end_to_end = max(outputs_resume, slo_recovered)
        elif not math.isnan(spark_first):
            end_to_end = max(outputs_resume, spark_first, slo_recovered)

    # Ray: back to the pre-fault number of actors. The pool's own record of a node loss is exact;
    # the actor count, sampled every few seconds, can miss a loss shorter than its period.
    fault_ms = start_ms + fault_s * 1000
    losses = [entry for entry in node_losses if (entry.get("lost_ms") or 0) >= fault_ms]
    actors = _points(series, "ray.actors")
    pre = [v for t, v in actors if t < fault_s]
    ray_back = nan
    if pre:
        target = pre[-1]
        post = [(t, v) for t, v in actors if t >= fault_s]
        dropped = [t for t, v in post if v < target]
        if not dropped:
            ray_back = 0.0
        else:
            back = [t for t, v in post if t > dropped[0] and v >= target]
            ray_back = back[0] - fault_s if back else math.inf
    if losses:
        backs = [entry.get("back_ms") for entry in losses]
        ray_back = math.inf if None in backs else (max(backs) - fault_ms) / 1000

    # Throughput dip of served predictions. They arrive in a burst per window, so the rate is
    # averaged over two window lengths: every average then holds bursts when nothing is wrong.
    width = 2 * window_ms / 1000
    rate = rolling_mean(_points(series, "throughput.predictions"), width)
    baseline = [v for t, v in rate if max(width, warmup_s) <= t < fault_s]
    settled = recovered if isinstance(recovered, float) and not math.isnan(recovered) else 0.0
    until = fault_s + max(2 * width, settled + width)
    during = [v for t, v in rate if fault_s <= t <= until]
    dip = nan
    if baseline and during:
        level = sum(baseline) / len(baseline)
        dip = max(0.0, (1 - min(during) / level) * 100) if level > 0 else nan
    return Recovery(
        kind=event.fault.action,
        target=event.target,
        at_s=fault_s,
        restarted_at_s=event.restarted_at_s,
        outputs_resume_s=outputs_resume,
        spark_first_batch_s=spark_first,
        spark_first_batch_after_restart_s=spark_after_restart,
        ray_actors_back_s=ray_back,
        recovery_s=end_to_end,
        slo_recovery_s=slo_recovered,
        normal_latency_s=recovered,
        throughput_dip_percent=dip,
        windows_affected=len(late),
        error=event.error,
        checkpoint=checkpoint_resumption(batches, fault_ms),
    )
