"""What a report says: the verdict page, one section per run, trends, and the appendix.

This module decides which numbers, tables and charts a reader sees and in
what order; `document` holds them and the renderers lay them out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from weatherbench.audit import gap_text
from weatherbench.report import charts
from weatherbench.report.charts import Line, Marker
from weatherbench.report.data import RunData, StepInfo
from weatherbench.report.document import Banner, Bullets, Chart, Document, Heading, PageBreak, Table, Text
from weatherbench.report.regressions import HEADLINES, Change, Comparison, regressions
from weatherbench.report.targets import (
    STAGE_TARGETS_MS,
    Status,
    TargetResult,
    format_value,
    worst_status,
)
from weatherbench.store import HistoryPoint

TEST_TITLES = {
    "latency": "Latency",
    "throughput": "Throughput",
    "resources": "Resource use",
    "sustainable": "Sustainable throughput",
    "reference": "Reference ceilings and sustainable throughput",
    "partitions": "Kafka partition scaling",
    "brokers": "Kafka broker scaling",
    "scalability-spark": "Spark worker scaling",
    "scalability-ray": "Ray worker scaling",
    "scalability-load": "Load scaling",
    "fault-tolerance": "Fault tolerance",
    "recovery": "Recovery time",
    "bad-input": "Bad input under load",
}
SCALING_AXES = {
    "scalability-spark": ("Spark workers", "rows/s (busy-time capacity)", "Spark"),
    "scalability-ray": ("Ray worker nodes", "predictions/s (busy-time capacity)", "Ray"),
}
TREND_PANELS = (
    "latency.e2e.p95",
    "throughput.sustainable",
    "throughput.end_to_end",
    "lag.spark.max",
    "spark.batch_duration.p95",
    "latency.t5_inference.p95",
    "spark.capacity",
    "ray.capacity",
)
MAX_TREND_LINES = 4
MAX_LISTED = 3  # targets named in one finding; the table has the rest


@dataclass
class RunContext:
    """A run with what the report found about it."""

    data: RunData
    comparisons: list[Comparison] = field(default_factory=list)
    history: dict[str, list[HistoryPoint]] = field(default_factory=dict)  # metric -> points


def _ms(value: float) -> str:
    return format_value(value, "ms")


def _num(value: float, unit: str = "") -> str:
    return format_value(value, unit)


def _run_title(run: RunData) -> str:
    return TEST_TITLES.get(run.test, run.test.replace("-", " ").capitalize())


# -- page 1 --------------------------------------------------------------------------------------


def targets_table(results: Sequence[TargetResult], several_runs: bool) -> Table:
    rows = []
    for result in results:
        where = ""
        if result.measured is not None:
            where = result.measured.where
            if several_runs:
                where = f"{result.measured.run_id}: {where}"
            if result.measured.note:
                where = f"{where} ({result.measured.note})"
        rows.append(
            [
                result.target.name,
                result.target.target_text,
                result.target.critical_text,
                result.measured_text,
                where,
                result.status.label,
            ]
        )
    return Table(
        ["Metric (guide section 10)", "Target", "Critical", "Measured", "Where (worst step)", "Status"],
        rows,
        caption="PASS meets the target, WARN is between the target and the critical threshold, "
        "CRITICAL is past it, n/a was not measured by these runs.",
        status_column=5,
        align="llllll",
        widths=[0.25, 0.11, 0.11, 0.11, 0.32, 0.10],
        small=True,
    )


def findings(results: Sequence[TargetResult], contexts: Sequence[RunContext]) -> list[str]:
    """The three most important things a reader should know, in plain sentences.

    One sentence per kind (lost data, critical targets, regressions, what limits the
    pipeline, missed targets), most severe kind first, so three findings say three things.
    """
    kinds: list[tuple[int, str]] = []
    lost = sum(r.value for c in contexts for r in c.data.rows("accounting.lost_messages"))
    expected = sum(r.value for c in contexts for r in c.data.rows("accounting.expected_messages"))
    if lost > 0:
        kinds.append(
            (100, f"Data loss: {lost:,.0f} of {expected:,.0f} acknowledged messages never reached the API.")
        )
    bad_input = _bad_input_finding(contexts)
    if bad_input:
        kinds.append(bad_input)

    def listed(statuses: set[Status]) -> list[str]:
        return [
            f"{r.target.name} {r.measured_text} at {r.measured.where}"
            for r in results
            if r.status in statuses and r.measured is not None
        ]

    critical = listed({Status.CRITICAL})
    if critical:
        shown = "; ".join(critical[:MAX_LISTED])
        if len(critical) > MAX_LISTED:
            shown += f"; and {len(critical) - MAX_LISTED} more in the table above"
        kinds.append((90, f"{len(critical)} target(s) past the guide's critical threshold: {shown}."))
    found = [c for context in contexts for c in regressions(context.comparisons)]
    if found:
        worst = max(found, key=lambda c: abs(c.relative_change) if not math.isnan(c.relative_change) else 0)
        more = f" ({len(found) - 1} more in the trends section)" if len(found) > 1 else ""
        kinds.append((85, regression_sentence(worst) + more))
    for context in contexts:
        limit = _limit_sentence(context.data)
        if limit:
            kinds.append((75, limit))
    warned = listed({Status.WARN})
    if warned:
        kinds.append((60, f"Missed target(s), not yet critical: {'; '.join(warned)}."))
    notes = [c.data.summary["note"] for c in contexts if c.data.summary.get("note")]
    if notes:
        kinds.append((40, f"Note: {notes[0]}."))
    passed = sum(1 for r in results if r.status is Status.PASS)
    measured = sum(1 for r in results if r.status is not Status.NOT_MEASURED)
    if lost == 0 and expected > 0:
        kinds.append((38, f"No message was lost: all {expected:,.0f} acknowledged messages were served."))
    kinds.append((30, f"{passed} of the {measured} targets these runs measured pass."))
    kinds.sort(key=lambda kind: -kind[0])
    return [text for _, text in kinds[:3]]


def _bad_input_finding(contexts: Sequence[RunContext]) -> tuple[int, str] | None:
    """Whether the bad records of these runs were dead-lettered with their reasons, and only they."""
    checks = [check for c in contexts for check in c.data.summary.get("bad_input") or []]
    if not checks:
        return None
    sent = sum(check["sent"] for check in checks)
    misjudged = sum(check["missing"] + check["wrong_reason"] for check in checks)
    rejected = sum(check["unexpected"] for check in checks)
    if misjudged or rejected:
        return (
            95,
            f"Bad input: {misjudged:,} of {sent:,} bad records were not dead-lettered with their reason, "
            f"and {rejected:,} good records were dead-lettered.",
        )
    return (
        37,
        f"Bad input: all {sent:,} bad records were dead-lettered with their reason, and no good record.",
    )


def _limit_sentence(run: RunData) -> str:
    """What limits the pipeline in this run: the sustainable rate, the scaling, or the bottleneck."""
    search = run.summary.get("search")
    bottleneck = run.summary.get("bottleneck")
    if search and search.get("sustainable_rate"):
        failed = search.get("lowest_failed_rate")
        sentence = f"The pipeline sustains {search['sustainable_rate']:,.0f} msg/s"
        if failed:
            why = next((p["reasons"] for p in search["probes"] if p["rate"] == failed), [])
            sentence += f"; {failed:,.0f} msg/s did not hold" + (f": {why[0]}" if why else "")
        if bottleneck:
            sentence += f". The first tier to saturate is {bottleneck}"
        return sentence + "."
    scaling = run.summary.get("scaling")
    if scaling and len(scaling) > 1:
        tier = SCALING_AXES.get(run.test, ("", "", run.test))[2]
        last = scaling[-1]
        return (
            f"{tier} reached {last['speedup']:.2f}x with {last['workers']} workers "
            f"({last['efficiency']:.0%} of linear); the bottleneck named is {bottleneck or 'none'}."
        )
    if bottleneck:
        failed = [s for s in run.steps if s.sustained is False]
        if not failed:
            # Every step held: the tier named is only the one closest to saturating.
            return (
                f"All {len(run.steps)} step(s) of the {_run_title(run).lower()} run held their load; "
                f"the tier nearest to saturation is {bottleneck}."
            )
        reasons = failed[0].summary.get("reasons", [])
        text = f"{failed[0].label} did not hold its load; the bottleneck named is {bottleneck}"
        return text + (f": {reasons[0]}." if reasons else ".")
    return ""


def regression_sentence(c: Comparison) -> str:
    unit = c.headline.unit
    direction = "dropped" if c.headline.higher_is_better else "rose"
    return (
        f"Regression: {c.headline.label} ({c.step}) {direction} to {format_value(c.value, unit)} from a "
        f"median of {format_value(c.median, unit)} over the previous {len(c.baseline)} run(s) "
        f"({c.relative_change:+.0%}; noise {format_value(c.noise, unit)})."
    )


def overall_status(results: Sequence[TargetResult], contexts: Sequence[RunContext]) -> Status:
    status = worst_status([r.status for r in results])
    if any(regressions(c.comparisons) for c in contexts) and status is Status.PASS:
        status = Status.WARN
    return status


def banner(results: Sequence[TargetResult], contexts: Sequence[RunContext]) -> Banner:
    status = overall_status(results, contexts)
    counts = {s: sum(1 for r in results if r.status is s) for s in Status}
    found = sum(len(regressions(c.comparisons)) for c in contexts)
    text = (
        f"Overall: {status.label}. Targets: {counts[Status.PASS]} pass, {counts[Status.WARN]} warn, "
        f"{counts[Status.CRITICAL]} critical, {counts[Status.NOT_MEASURED]} not measured. "
        f"Regressions against recent runs: {found}."
    )
    return Banner(text, status.value)


def runs_table(runs: Sequence[RunData]) -> Table:
    rows = []
    for run in runs:
        record = run.record
        minutes = (
            (record.finished_at - record.started_at).total_seconds() / 60 if record.finished_at else math.nan
        )
        rows.append(
            [
                run.run_id,
                _run_title(run),
                record.profile,
                str(len(run.steps)),
                "n/a" if math.isnan(minutes) else f"{minutes:.1f} min",
                record.status,
            ]
        )
    return Table(
        ["Run", "Test", "Profile", "Steps", "Duration", "Status"],
        rows,
        align="llllrl",
        widths=[0.34, 0.3, 0.09, 0.07, 0.1, 0.1],
        small=True,
    )


# -- per-run sections ----------------------------------------------------------------------------


def steps_table(run: RunData) -> Table:
    rows = []
    for step in run.steps:
        s = step.summary
        sustained = s.get("sustained")
        rows.append(
            [
                step.label,
                _num(run.value("throughput.offered", step.index, "producer")),
                _num(run.value("throughput.achieved", step.index, "producer")),
                _ms(run.value("latency.e2e.p95", step.index)),
                _num(run.value("lag.spark.max", step.index, "spark")),
                "skipped"
                if s.get("skipped")
                else {True: "held", False: "did not hold", None: "n/a"}[sustained],
                s.get("bottleneck") or "",
                str(s.get("repetitions", "")),
            ]
        )
    return Table(
        [
            "Step",
            "Offered msg/s",
            "Achieved msg/s",
            "E2E p95",
            "Spark lag max",
            "Verdict",
            "Bottleneck",
            "Reps",
        ],
        rows,
        caption="Offered is the open-loop schedule; achieved is what the producer got acknowledged. "
        "A step holds when lag does not trend upward after warm-up, latency SLOs are met and "
        "nothing is lost. Values are means over repetitions.",
        widths=[0.2, 0.11, 0.11, 0.11, 0.11, 0.12, 0.14, 0.1],
    )


def _reasons(run: RunData) -> list[str]:
    out = []
    for step in run.steps:
        if step.summary.get("skipped"):
            out.append(f"{step.label}: skipped: {step.summary['skipped']}")
        for reason in step.summary.get("reasons", []):
            out.append(f"{step.label}: {reason}")
    return out


def latency_blocks(run: RunData, step: StepInfo) -> list[Any]:
    stages = [
        (name, label, target)
        for name, (label, target) in STAGE_TARGETS_MS.items()
        if run.has(f"latency.{name}.p95")
    ]
    if not stages:
        return []
    rows = []
    bars = []
    for name, label, target in stages:
        p50, p95, p99, top, count, negative = (
            run.value(f"latency.{name}.{q}", step.index)
            for q in ("p50", "p95", "p99", "max", "count", "negative")
        )
        rows.append(
            [
                label,
                "" if target is None else f"< {_ms(target)}",
                _ms(p50),
                _ms(p95),
                _ms(p99),
                _ms(top),
                _num(count),
                _num(negative),
            ]
        )
        bars.append((label, p50, p95, p99, target))
    blocks: list[Any] = [
        Heading("Latency per stage", 2),
        Table(
            ["Stage", "Guide target", "p50", "p95", "p99", "max", "samples", "negative"],
            rows,
            caption=f"Step {step.label}, from full histograms after warm-up. Negative samples mean clock "
            "trouble and are counted, never clamped. Window close is prediction queryable minus window end.",
            widths=[0.26, 0.12, 0.1, 0.1, 0.1, 0.1, 0.11, 0.11],
        ),
        Chart(
            charts.stage_latency(f"Latency per stage, {step.label}", bars),
            "p50, p95 and p99 per stage on a log scale; the vertical bar is the guide's stage target.",
        ),
    ]
    steps = [s for s in run.steps if run.has("latency.e2e.p95")]
    if len(steps) > 1:
        by_step = [
            [label] + [_ms(run.value(f"latency.{name}.p95", s.index)) for s in steps]
            for name, label, _ in stages
        ]
        blocks.append(
            Table(
                ["p95 by step"] + [s.label for s in steps],
                by_step,
                caption="Stage p95 in every step.",
                small=True,
            )
        )
    return blocks


def _throughput_per_step(run: RunData, steps: Sequence[StepInfo]) -> Chart:
    groups = [
        ("offered", [run.value("throughput.offered", s.index, "producer") for s in steps]),
        ("achieved (acked)", [run.value("throughput.achieved", s.index, "producer") for s in steps]),
    ]
    if run.has("throughput.end_to_end"):
        groups.append(("served end to end", [run.value("throughput.end_to_end", s.index) for s in steps]))
    return Chart(
        charts.grouped_bars("Throughput per step", [s.label for s in steps], groups, "messages per second"),
        "Offered load, what Kafka acknowledged, and what reached the serving API, per step.",
    )


def throughput_blocks(run: RunData, step: StepInfo) -> list[Any]:
    steps = run.steps
    blocks: list[Any] = []
    if not run.has("throughput.offered", "producer"):
        return blocks
    blocks.append(Heading("Throughput: offered and achieved", 2))
    if len(steps) > 1:  # one step's numbers are in the steps table already
        blocks.append(_throughput_per_step(run, steps))
    lines = series_lines(
        run,
        step.index,
        (
            ("throughput.raw", "raw topic"),
            ("throughput.features", "features topic"),
            ("throughput.predictions", "predictions topic"),
        ),
    )
    if lines:
        blocks.append(
            Chart(
                charts.time_series(f"Topic throughput over time, {step.label}", "messages per second", lines),
                "Messages appended per second to each topic, sampled from end offsets.",
            )
        )
    return blocks


def lag_blocks(run: RunData, step: StepInfo) -> list[Any]:
    lines = series_lines(
        run, step.index, (("lag.spark", "Spark"), ("lag.ray", "Ray"), ("lag.api", "serving API"))
    )
    if not lines:
        return []
    blocks: list[Any] = [
        Heading("Consumer lag over time", 2),
        Chart(
            charts.time_series(f"Consumer lag, {step.label}", "messages behind", lines),
            "Spark's lag is end offsets minus the last completed micro-batch's offsets (a sawtooth between "
            "batches); Ray's and the API's come from their consumer groups.",
        ),
    ]
    per_step = [
        Line(s.label, run.series("lag.spark", s.index).points)
        for s in run.steps
        if run.series("lag.spark", s.index)
    ]
    if len(per_step) > 1:
        blocks.append(
            Chart(
                charts.time_series("Spark lag in every step", "messages behind", per_step[:6]),
                "A lag that keeps rising after warm-up means the step did not hold its load.",
            )
        )
    return blocks


def scaling_blocks(run: RunData) -> list[Any]:
    blocks: list[Any] = []
    scaling = run.summary.get("scaling")
    if scaling and run.test in SCALING_AXES:
        xlabel, ylabel, tier = SCALING_AXES[run.test]
        bottleneck = run.summary.get("bottleneck")
        note = f"bottleneck: {bottleneck}" if bottleneck else ""
        demand = run.summary.get("demand_workers")
        blocks += [
            Heading("Scaling against ideal linear", 2),
            Chart(
                charts.scaling(
                    f"{tier} capacity per worker count",
                    xlabel,
                    ylabel,
                    [(p["workers"], p["throughput"]) for p in scaling],
                    note,
                ),
                "Measured capacity against ideal linear scaling from the smallest step; the percentage is "
                "efficiency (measured / ideal).",
            ),
            Table(
                ["Workers", "Capacity", "Speed-up", "Ideal", "Efficiency"],
                [
                    [
                        str(p["workers"]),
                        _num(p["throughput"]),
                        f"{p['speedup']:.2f}x",
                        f"{p['ideal']:.2f}x",
                        f"{p['efficiency']:.0%}",
                    ]
                    for p in scaling
                ],
                caption="Fewest workers that held the load: "
                f"{demand if demand is not None else 'none held'}. "
                f"Bottleneck named: {bottleneck or 'none'}.",
            ),
        ]
    if run.test == "scalability-load":
        steps = run.steps
        offered = [(run.value("throughput.offered", s.index, "producer"), s) for s in steps]
        blocks += [
            Heading("Load scaling", 2),
            Chart(
                charts.xy_lines(
                    "Achieved throughput against offered load",
                    "offered (msg/s)",
                    "msg/s",
                    [
                        Line(
                            "acknowledged",
                            [(o, run.value("throughput.achieved", s.index, "producer")) for o, s in offered],
                        ),
                        Line(
                            "served end to end",
                            [(o, run.value("throughput.end_to_end", s.index)) for o, s in offered],
                        ),
                    ],
                    ideal_identity=True,
                ),
                "Perfect scaling follows the dashed line; the gap is load the pipeline did not keep up with.",
            ),
        ]
    return blocks


def series_lines(run: RunData, step_index: int, names: Sequence[tuple[str, str]]) -> list[Line]:
    """The step's (repetition 0) series of these names, as labelled chart lines; missing ones are skipped."""
    found = [(run.series(name, step_index), label) for name, label in names]
    return [Line(label, series.points) for series, label in found if series is not None]


def _min_over_components(run: RunData, metric: str, step_index: int) -> float:
    values = [run.value(metric, step_index, c) for c in run.components(metric)]
    values = [v for v in values if not math.isnan(v)]
    return min(values) if values else math.nan


def partition_blocks(run: RunData) -> list[Any]:
    steps = [s for s in run.steps if s.summary.get("partition_counts")]
    if run.test not in ("partitions", "brokers") and len(steps) < 2:
        return []
    if not steps:
        return []
    rows = [
        [
            s.label,
            str(s.summary.get("partitions", "")),
            str(s.summary.get("brokers", "")),
            f"{run.value('kafka.balance_score', s.index, 'kafka'):.1f}%",
            _ms(run.value("producer.ack_latency.p50", s.index, "producer")),
            _ms(run.value("producer.ack_latency.p99", s.index, "producer")),
            _num(_min_over_components(run, "kafka.topic.min_isr_seen", s.index)),
        ]
        for s in steps
    ]
    return [
        Heading("Partition balance", 2),
        Chart(
            charts.partition_balance(
                "Messages per partition",
                [
                    (
                        s.label,
                        s.summary["partition_counts"],
                        run.value("kafka.balance_score", s.index, "kafka"),
                    )
                    for s in steps
                ],
            ),
            "Balance score = mean / max messages per partition (100% is perfectly even).",
        ),
        Table(
            ["Step", "Partitions", "Brokers", "Balance", "Ack p50", "Ack p99", "Min ISR"],
            rows,
            caption="Ack latency is produce() to broker acknowledgement (idempotent, acks=all).",
        ),
    ]


def resource_blocks(run: RunData, step: StepInfo) -> list[Any]:
    components = run.components("resources.cpu.mean")
    if not components:
        return []
    rows = [
        (
            c,
            run.value("resources.cpu.mean", step.index, c),
            run.value("resources.cpu.max", step.index, c),
            run.value("resources.rss.max", step.index, c),
        )
        for c in components
    ]
    rows = [r for r in rows if not math.isnan(r[1])]
    blocks: list[Any] = [
        Heading("Resource use per component", 2),
        Chart(
            charts.resources(f"Resources, {step.label}", rows),
            "CPU in % of one core (mean bar, max tick; the dotted line is one full core) and peak resident "
            "memory, per component, sampled every second from the process tree.",
        ),
    ]
    machine = series_lines(
        run, step.index, (("resources.machine.cpu", "CPU"), ("resources.machine.memory", "memory"))
    )
    if machine:
        blocks.append(
            Chart(
                charts.time_series(f"Machine utilisation, {step.label}", "% of the machine", machine),
                "Whole-machine CPU and memory; the guide's targets are < 80% CPU and < 85% memory.",
            )
        )
    return blocks


def _seconds(value: Any) -> str:
    if value is None:
        return "not within the step"
    return "n/a" if isinstance(value, float) and math.isnan(value) else f"{value:.1f} s"


def fault_blocks(run: RunData) -> list[Any]:
    """The fault tables and one timeline per fault, from the run summary's ``faults`` list.

    Each fault is a dict (see weatherbench.faults.Recovery.summary): ``kind``
    (kill, stop, restart), ``target`` (the instance), ``step_index`` (whose
    series to draw), ``at_s`` (the fault instant, seconds since the step
    start), ``restarted_at_s``, ``outputs_resume_s``, ``spark_first_batch_s``,
    ``ray_actors_back_s``, ``recovery_s``, ``slo_recovery_s`` and
    ``normal_latency_s`` (None: not within the step), ``throughput_dip_percent``, ``windows_affected``,
    ``lost`` and ``duplicated``. The slowest recovery is also judged as the
    guide's recovery-time target, from the metric ``fault.recovery_s``.
    """
    faults = run.summary.get("faults") or []
    if not faults:
        return []
    blocks: list[Any] = [Heading("Faults: timeline and recovery", 2)]
    timing = [
        [
            f"{fault.get('kind', '')} {fault.get('target', '')}",
            _seconds(fault.get("at_s", math.nan)),
            _seconds(fault.get("outputs_resume_s", math.nan)),
            _seconds(fault.get("spark_first_batch_s", math.nan)),
            _seconds(fault.get("ray_actors_back_s", math.nan)),
            _seconds(fault.get("recovery_s")),
            _seconds(fault.get("slo_recovery_s", math.nan)),
            _seconds(fault.get("normal_latency_s", math.nan)),
        ]
        for fault in faults
    ]
    blocks.append(
        Table(
            [
                "Fault",
                "Injected at",
                "Outputs resume",
                "Spark 1st batch",
                "Ray actors back",
                "E2E recovery",
                "SLO recovery",
                "Latency normal",
            ],
            timing,
            caption="Seconds after the fault. Outputs resume: the first prediction inferred and served "
            "after it. Spark: the first micro-batch with input that completed after it. Ray: the inference "
            "pool back to its actor count. SLO recovery: end-to-end latency and Spark lag back within their "
            "SLOs. End-to-end recovery, judged against the recovery target: the latest of Spark's first "
            "batch, outputs resume and SLO recovery. Latency normal, stricter: the last window served "
            "late because of the fault (close latency above the pre-fault maximum plus one trigger "
            "interval and 20%).",
            widths=[0.2, 0.1, 0.11, 0.11, 0.12, 0.12, 0.12, 0.12],
            small=True,
        )
    )
    damage = [
        [
            f"{fault.get('kind', '')} {fault.get('target', '')}",
            _num(fault.get("throughput_dip_percent", math.nan) or 0.0, "%")
            if fault.get("throughput_dip_percent") is not None
            else "n/a",
            _num(fault.get("windows_affected", math.nan)),
            _num(fault.get("lost", math.nan)),
            _num(fault.get("duplicated", math.nan)),
            gap_text(fault.get("gaps")),
            ", ".join(fault.get("left_down_after_step") or []) or "none",
            fault.get("error") or "",
        ]
        for fault in faults
    ]
    blocks.append(
        Table(
            [
                "Fault",
                "Throughput dip",
                "Windows late",
                "Lost",
                "Duplicated",
                "Where",
                "Down after step",
                "Error",
            ],
            damage,
            caption="Lost and duplicated are counted against every acknowledged message of the step; "
            "duplicated are repeated prediction deliveries the API absorbed. Where: the stage at which "
            "messages of a window served short went missing (lost, dropped behind the watermark, or "
            "counted twice), found by following the window through the topics. Down after step: "
            "components found not running after the step and started again before the next one.",
            align="lrrrrlll",
            widths=[0.2, 0.1, 0.1, 0.07, 0.1, 0.14, 0.13, 0.16],
            small=True,
        )
    )
    for fault in faults:
        blocks += fault_timeline(run, fault)
    return blocks


def fault_timeline(run: RunData, fault: dict[str, Any]) -> list[Any]:
    """Flow and lag around one fault, and the close latency of every window served around it."""
    step_index = fault.get("step_index", 0)
    name = f"{fault.get('kind', 'fault')} of {fault.get('target', '')}"
    if fault.get("at_s") is None:
        return []
    markers = [Marker(fault["at_s"], name)]
    spans = []
    if fault.get("restarted_at_s") is not None:
        markers.append(Marker(fault["restarted_at_s"], "started again"))
    if fault.get("recovery_s") is not None:
        end = fault["at_s"] + fault["recovery_s"]
        markers.append(Marker(end, "recovered"))
        spans.append((fault["at_s"], end, "recovery"))
    blocks: list[Any] = []
    # A flow of a few predictions a second beside a backlog of thousands: each on its own axis.
    flow = series_lines(run, step_index, (("throughput.predictions", "predictions/s"),))
    lag = series_lines(run, step_index, (("lag.spark", "Spark lag"),))
    # Without the flow, the lag takes the left axis.
    left, left_label, right = (flow, "predictions per second", lag) if flow else (lag, "messages behind", [])
    if left:
        blocks.append(
            Chart(
                charts.time_series(
                    f"Fault timeline: {name}",
                    left_label,
                    left,
                    markers,
                    spans,
                    right_lines=right,
                    right_ylabel="Spark lag (messages behind)",
                ),
                f"Fault timeline: {name} at {fault['at_s']:.1f} s. Predictions served per second on the "
                "left axis, the Spark stage's lag (messages behind) on the right. The fault instant, "
                "the restart and the recovery point are marked; the shaded band is the end-to-end "
                "recovery time.",
            )
        )
    served = run.series("latency.window_close.served", step_index)
    if served is not None and served.points:
        seconds = [Line("window close latency", [(t, v / 1000) for t, v in served.points])]
        blocks.append(
            Chart(
                charts.time_series(
                    f"Windows served around the fault: {name}", "close latency (s)", seconds, markers, spans
                ),
                "Each point is a window, at the time the API served it: a fault shows as late windows.",
            )
        )
    return blocks


def bad_input_blocks(run: RunData) -> list[Any]:
    """Per step with bad input, a table of each kind: sent, dead-lettered, reason, missing.

    Reads the run summary's ``bad_input`` list; each entry is what
    weatherbench.runner.Bench.check_bad_input returns: ``step``, ``repetition``,
    ``fraction``, the counts of weatherbench.badinput.DeadLetterCheck (``sent``,
    ``missing``, ``wrong_reason``, ``unexpected``, ``duplicates``), ``kinds`` (per kind
    ``sent``, ``dead_lettered``, ``wrong_reason``, ``missing``, ``reasons``), ``good_lost``
    and ``dropped_by_watermark``.
    """
    checks = run.summary.get("bad_input") or []
    if not checks:
        return []
    blocks: list[Any] = [Heading("Bad input: dead letters per kind", 2)]
    for check in checks:
        rows = [
            [
                kind["kind"],
                _num(kind["sent"]),
                _num(kind["dead_lettered"]),
                ", ".join(kind["reasons"]) or "n/a",
                _num(kind["wrong_reason"]),
                _num(kind["missing"]),
            ]
            for kind in check["kinds"]
        ]
        blocks.append(
            Table(
                ["Kind", "Sent", "Dead-lettered", "Reason", "Other reason", "Missing"],
                rows,
                caption=f"{check['step']}, repetition {check['repetition']}: {check['fraction'] * 100:g}% of "
                "the records sent were bad. Dead-lettered: found in the dead-letter topic with the reason "
                "the record was made for; other reason: found with a different one. Good records "
                f"dead-lettered: {_num(check['unexpected'])}; good records lost: {_num(check['good_lost'])}; "
                f"dead letters written twice: {_num(check['duplicates'])}; rows dropped by the watermark "
                f"(late, but inside the far-late limit): {_num(check['dropped_by_watermark'])}.",
                align="lrrlrr",
                widths=[0.16, 0.1, 0.16, 0.32, 0.14, 0.12],
                small=True,
            )
        )
    return blocks


def search_blocks(run: RunData) -> list[Any]:
    search = run.summary.get("search")
    if not search:
        return []
    rows = [
        [f"{p['rate']:,.0f}", "held" if p["sustained"] else "did not hold", "; ".join(p["reasons"]) or ""]
        for p in sorted(search["probes"], key=lambda p: p["rate"])
    ]
    blocks: list[Any] = [
        Heading("Sustainable-throughput search", 2),
        Text(
            f"Sustainable rate: {format_value(search['sustainable_rate'] or math.nan, 'msg/s')}"
            + (
                f"; lowest rate that did not hold: {search['lowest_failed_rate']:,.0f} msg/s."
                if search.get("lowest_failed_rate")
                else "."
            )
            + (" Every probed rate held, so this is a lower bound." if search.get("lower_bound_only") else "")
        ),
        Table(["Rate msg/s", "Verdict", "Why not"], rows, align="lll", widths=[0.13, 0.13, 0.74], small=True),
    ]
    reference = run.summary.get("reference")
    if reference:
        blocks += [
            Heading("Reference ceilings on this machine", 3),
            Table(
                ["Measurement", "Value"],
                [
                    [
                        "Kafka ProducerPerformance",
                        _num(reference.get("kafka_producer_perf_msg_per_s") or math.nan, "msg/s"),
                    ],
                    [
                        "Spark rate source to noop sink",
                        _num(reference.get("spark_rate_noop_rows_per_s") or math.nan, "rows/s"),
                    ],
                    [
                        "Pipeline sustainable rate",
                        _num(reference.get("pipeline_sustainable_msg_per_s") or math.nan, "msg/s"),
                    ],
                    [
                        "Harness CPU (load generator and collectors)",
                        f"{reference.get('harness_cpu_percent_of_a_core') or math.nan:.0f}% of a core",
                    ],
                ],
                caption="The same machine's ceilings for Kafka alone and Spark alone, next to the pipeline.",
                align="lr",
            ),
        ]
    return blocks


def api_load_blocks(run: RunData) -> list[Any]:
    impact = run.summary.get("api_load_impact")
    if not impact:
        return []
    rows = [
        [
            f"{i['step']} x{i['users']} users",
            _num(i.get("api_rps") or math.nan, "req/s"),
            _ms(i.get("api_p95_ms") or math.nan),
            _ms(i.get("latency.e2e.p95 without") or math.nan),
            _ms(i.get("latency.e2e.p95 with") or math.nan),
        ]
        for i in impact
    ]
    return [
        Heading("Serving API under query load", 2),
        Table(
            ["Step", "API rate", "API p95", "E2E p95 without", "E2E p95 with"],
            rows,
            caption="Locust users query the serving API during a twin of the step; ingestion latency with "
            "and without that load.",
        ),
    ]


ALERT_PREFIX = "alerts.firing."


def monitoring_blocks(run: RunData) -> list[Any]:
    """What Prometheus saw during the run: the alert rules that fired, and in which steps."""
    if not run.has("prometheus.failed_queries", "prometheus"):
        return []  # monitoring was off: nothing was read
    fired: dict[tuple[str, str], dict[str, float]] = {}
    labels = {step.index: step.label for step in run.steps}
    for row in run.metric_rows:
        if row.metric.startswith(ALERT_PREFIX) and not math.isnan(row.value):
            by_step = fired.setdefault((row.metric.removeprefix(ALERT_PREFIX), row.component), {})
            label = labels.get(row.step_index, row.step)
            by_step[label] = by_step.get(label, 0.0) + row.value
    blocks: list[Any] = [Heading("Alerts (Prometheus)", 2)]
    if not fired:
        blocks.append(Text("No alert rule fired while the steps ran.", "note"))
        return blocks
    rows = [
        [
            alert,
            {"warning": "WARN"}.get(severity, severity.upper()),
            ", ".join(by_step),
            _seconds(sum(by_step.values())),
        ]
        for (alert, severity), by_step in sorted(
            fired.items(), key=lambda item: (item[0][1] != "critical", item[0])
        )
    ]
    blocks.append(
        Table(
            ["Alert", "Severity", "Steps", "Firing"],
            rows,
            caption="Rules of include/prometheus/alerts.yml that fired during the run's steps, from "
            "Prometheus's ALERTS series; firing time is summed over the steps and repetitions.",
            status_column=1,
            align="llll",
            widths=[0.3, 0.14, 0.4, 0.16],
        )
    )
    return blocks


def run_section(context: RunContext) -> list[Any]:
    run = context.data
    record = run.record
    blocks: list[Any] = [
        PageBreak(),
        Heading(f"{_run_title(run)}: {run.run_id}"),
        Text(
            f"{record.parameters.get('description', '')} Profile {record.profile}, status {record.status}, "
            f"started {record.started_at:%Y-%m-%d %H:%M} UTC"
            + (
                f", {(record.finished_at - record.started_at).total_seconds() / 60:.1f} min."
                if record.finished_at
                else "."
            ),
            "lead",
        ),
    ]
    if run.summary.get("error"):
        blocks.append(Text(f"The run stopped with an error: {run.summary['error']}", "note"))
    if run.steps:
        blocks.append(steps_table(run))
    reasons = _reasons(run)
    if reasons:
        blocks.append(Bullets(reasons[:12]))
    if run.summary.get("note"):
        blocks.append(Text(f"Note: {run.summary['note']}.", "note"))
    step = run.headline_step()
    blocks += search_blocks(run)
    blocks += fault_blocks(run)
    blocks += bad_input_blocks(run)
    blocks += scaling_blocks(run)
    if step is not None:
        blocks += latency_blocks(run, step)
        blocks += throughput_blocks(run, step)
        blocks += lag_blocks(run, step)
        blocks += partition_blocks(run)
        blocks += resource_blocks(run, step)
    blocks += api_load_blocks(run)
    blocks += monitoring_blocks(run)
    return blocks


# -- trends --------------------------------------------------------------------------------------


def trend_section(contexts: Sequence[RunContext], baseline_runs: int, relative: float) -> list[Any]:
    blocks: list[Any] = [
        PageBreak(),
        Heading("Trends and regressions"),
        Text(
            f"Each headline metric against the same test's previous runs. A value regresses when it is worse "
            f"than the median of the last {baseline_runs} runs by more than the noise (the largest of "
            f"{relative:.0%} of the median, three robust standard deviations of those runs, and a floor per "
            "metric) and worse than each of them.",
            "lead",
        ),
    ]
    for context in contexts:
        run = context.data
        compared = [c for c in context.comparisons if c.change is not Change.NO_BASELINE]
        blocks.append(Heading(f"{_run_title(run)}: {run.run_id}", 2))
        if not compared:
            blocks.append(
                Text("No earlier run of this test in the results store: nothing to compare yet.", "note")
            )
            continue
        rows = [
            [
                c.headline.label,
                c.step,
                format_value(c.value, c.headline.unit),
                format_value(c.median, c.headline.unit),
                str(len(c.baseline)),
                format_value(c.noise, c.headline.unit),
                "n/a" if math.isnan(c.relative_change) else f"{c.relative_change:+.0%}",
                c.change.value.upper(),
            ]
            for c in sorted(compared, key=lambda c: (c.change is not Change.REGRESSION, c.headline.label))
        ]
        blocks.append(
            Table(
                ["Metric", "Step", "This run", "Baseline median", "Runs", "Noise", "Change", "Verdict"],
                rows,
                status_column=7,
                align="llrrrrrl",
                widths=[0.22, 0.14, 0.11, 0.12, 0.06, 0.1, 0.08, 0.17],
                small=True,
            )
        )
        chart = trend_chart(context)
        if chart is not None:
            blocks.append(chart)
    return blocks


def trend_chart(context: RunContext) -> Chart | None:
    run_ids: list[str] = []
    labels: dict[str, str] = {}
    for points in context.history.values():
        for p in points:
            if p.run_id not in labels:
                labels[p.run_id] = f"{p.started_at:%m-%d %H:%M}"
                run_ids.append(p.run_id)
    if len(run_ids) < 2:
        return None
    ordered = sorted(run_ids, key=lambda r: labels[r] + r)
    position = {r: i for i, r in enumerate(ordered)}
    flagged = {(c.headline.metric, c.step) for c in regressions(context.comparisons)}
    panels = []
    for headline in HEADLINES:
        if headline.metric not in TREND_PANELS:
            continue
        points = context.history.get(headline.metric, [])
        steps = [s for s in dict.fromkeys(p.step for p in points if p.run_id == context.data.run_id)]
        lines, marks = [], []
        for step in steps[:MAX_TREND_LINES]:
            per_run: dict[str, list[float]] = {}
            for p in points:
                if p.step == step and not math.isnan(p.value):
                    per_run.setdefault(p.run_id, []).append(p.value)
            xy = sorted((position[r], sum(v) / len(v)) for r, v in per_run.items() if r in position)
            if len(xy) >= 2:  # a step seen in one run only has no trend
                lines.append(Line(step, xy))
            if (headline.metric, step) in flagged and context.data.run_id in per_run:
                vs = per_run[context.data.run_id]
                marks.append((position[context.data.run_id], sum(vs) / len(vs)))
        if lines:
            panels.append((headline.label, headline.unit, lines, marks))
    if not panels:
        return None
    return Chart(
        charts.trends(
            f"Headline metrics over the last {len(ordered)} {context.data.test} runs",
            panels[:8],
            [labels[r] for r in ordered],
        ),
        "One line per step; x is the run's start time (UTC). "
        "Large hollow circles mark regressions of this run.",
    )


# -- appendix ------------------------------------------------------------------------------------


def _cores(machine: dict[str, Any]) -> Any:
    return machine.get("usable_cores", machine.get("logical_cores", "?"))


def _gib(machine: dict[str, Any]) -> float:
    return (machine.get("memory_total_bytes") or 0) / 2**30


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict):
        out = []
        for key, item in value.items():
            out += _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = []
        for i, item in enumerate(value):
            out += _flatten(item, f"{prefix}[{i}]")
        return out
    return [(prefix, str(value))]


def appendix(contexts: Sequence[RunContext]) -> list[Any]:
    blocks: list[Any] = [PageBreak(), Heading("Appendix: run manifests and raw numbers")]
    for context in contexts:
        run = context.data
        manifest = run.record.manifest
        blocks.append(Heading(f"Manifest of {run.run_id}", 2))
        git = manifest.get("git", {})
        machine = manifest.get("machine", {})
        head = [
            ["run", run.run_id],
            ["test / profile / status", f"{run.test} / {run.record.profile} / {run.record.status}"],
            [
                "git commit",
                f"{git.get('commit', 'unknown')}{' (uncommitted changes)' if git.get('dirty') else ''}",
            ],
            [
                "machine",
                f"{machine.get('cpu_model', '?')}, {_cores(machine)} usable cores, {_gib(machine):.1f} GiB, "
                f"{machine.get('os', '')} {machine.get('kernel', '')}",
            ],
            ["versions", ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())],
        ]
        blocks.append(Table(["Field", "Value"], head, align="ll", widths=[0.22, 0.78], small=True))
        params = [[k, v] for k, v in _flatten(run.record.parameters) if not k.startswith("steps[")]
        stack = [[k, v] for k, v in _flatten(manifest.get("stack_config", {}))]
        blocks.append(
            Table(
                ["Parameter", "Value"],
                params,
                align="ll",
                widths=[0.4, 0.6],
                small=True,
                caption="Run parameters (steps are listed in the raw numbers).",
            )
        )
        blocks.append(Table(["Stack setting", "Value"], stack, align="ll", widths=[0.4, 0.6], small=True))
        blocks += raw_numbers(run)
    return blocks


def _raw(value: float) -> str:
    if math.isnan(value):
        return ""
    return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.5g}"


def raw_numbers(run: RunData) -> list[Any]:
    steps = sorted({(r.step_index, r.step) for r in run.metric_rows})
    keys = sorted({(r.metric, r.component, r.unit) for r in run.metric_rows})
    if not keys:
        return []
    blocks: list[Any] = [Heading(f"Raw numbers of {run.run_id}", 2)]
    # At most 5 step columns per table, so a long run splits into several readable tables.
    for start in range(0, len(steps), 5):
        chunk = steps[start : start + 5]
        rows = []
        for metric, component, unit in keys:
            values = [run.value(metric, index, component) for index, _ in chunk]
            if all(math.isnan(v) for v in values):
                continue
            name = f"{metric} [{component}]" if component else metric
            rows.append([name, unit] + [_raw(v) for v in values])
        blocks.append(
            Table(
                ["Metric [component]", "Unit"] + [label for _, label in chunk],
                rows,
                caption="Mean over repetitions; empty where a step did not record the metric.",
                small=True,
                align="ll" + "r" * len(chunk),
                widths=[0.38, 0.12] + [0.5 / len(chunk)] * len(chunk),
            )
        )
    return blocks


# -- the whole document --------------------------------------------------------------------------


def compose(
    contexts: Sequence[RunContext],
    results: Sequence[TargetResult],
    generated_at: datetime,
    baseline_runs: int,
    relative: float,
) -> Document:
    runs = [c.data for c in contexts]
    tests = ", ".join(dict.fromkeys(_run_title(r) for r in runs))
    first = runs[0].record
    machine = first.manifest.get("machine", {})
    commit = (first.git_commit or "unknown")[:10]
    document = Document(
        title="Weather pipeline benchmark report",
        subtitle=(
            f"{tests}. {len(runs)} run(s), profile {first.profile}, commit {commit}, "
            f"{_cores(machine)} cores / {_gib(machine):.0f} GiB. "
            f"Generated {generated_at:%Y-%m-%d %H:%M} UTC."
        ),
        footer=f"Runs: {', '.join(r.run_id for r in runs)}",
    )
    document.add(
        banner(results, contexts),
        Heading("Verdict against the guide's targets", 2),
        targets_table(results, several_runs=len(runs) > 1),
        Heading("Findings", 2),
        Bullets(findings(results, contexts), numbered=True),
        Heading("Runs in this report", 2),
        runs_table(runs),
    )
    for context in contexts:
        document.add(*run_section(context))
    document.add(*trend_section(contexts, baseline_runs, relative))
    document.add(*appendix(contexts))
    return document
