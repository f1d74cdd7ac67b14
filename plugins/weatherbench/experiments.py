"""Experiments: a test plan run step by step and repetition by repetition, stored and summarised.

Each test of the benchmark guide is a sequence of steps (`TestPlan`):

* latency, resources: one step at a steady load;
* throughput, scalability-load: load steps (stations, rate);
* scalability-spark / scalability-ray: worker counts at a fixed load, with
  speed-up against ideal linear scaling, the demand metric (fewest workers
  that sustain the load) and the bottleneck tier per step;
* partitions: partition counts of the benchmark topic, Kafka only, with the
  balance score per step;
* brokers: 1 broker vs 3 with replication factor 3, Kafka only;
* sustainable: a rate search for the highest offered rate whose lag trend is
  flat after the warm-up and whose latency SLOs hold;
* bad-input: bad records of every kind mixed into steady load, each matched
  to its dead letter and reason; a run with a bad record not dead-lettered
  with its reason, or a good record dead-lettered, has failed.

Every step outcome goes to the results store (one row per metric per step
per repetition, plus time series and HDR histograms) with the run manifest;
the run's summary (per-step means with 95% intervals, scaling table,
demand, bottleneck, sustainable rate) is stored with the run and returned.
"""

from __future__ import annotations

import json
import math
import pickle
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.config import StackConfig
from pipeline.stack.base import INFRASTRUCTURE, KAFKA, STREAMING_JOB
from weatherbench.audit import gaps_by_stage
from weatherbench.manifest import build_manifest
from weatherbench.metrics import Metric
from weatherbench.reference import ReferenceResult, measure_ceilings
from weatherbench.runner import NATURAL_MESSAGE_BYTES, Bench, StepOutcome, bench_config
from weatherbench.stats import RateSearch, fewest_sufficient, mean_ci, scaling_points
from weatherbench.store import ResultsStore
from weatherbench.workloads import Step, TestPlan, with_step

HEADLINE = (
    ("throughput.offered", "msg/s"),
    ("throughput.achieved", "msg/s"),
    ("throughput.end_to_end", "msg/s"),
    ("latency.e2e.p95", "ms"),
    ("latency.window_close.p95", "ms"),
    ("latency.t5_inference.p95", "ms"),
    ("latency.t1_producer.p95", "ms"),
    ("lag.spark.max", "messages"),
    ("lag.ray.max", "messages"),
    ("spark.batch_duration.p95", "ms"),
    ("spark.capacity", "rows/s"),
    ("ray.capacity", "pred/s"),
    ("kafka.balance_score", "%"),
    ("kafka.topic.replication_factor", "replicas"),
    ("kafka.topic.min_isr_seen", "replicas"),
    ("producer.ack_latency.p50", "ms"),
    ("producer.ack_latency.p99", "ms"),
    ("latency.t1_producer.p99", "ms"),
    ("resources.machine.cpu.mean", "%"),
)
SEARCH_RESULT_STEP = "search result"
SCALED = {
    "scalability-spark": ("spark_workers", "spark.capacity"),
    "scalability-ray": ("ray_workers", "ray.capacity"),
}


@dataclass
class RunResult:
    run_id: str
    test: str
    status: str
    outcomes: list[StepOutcome] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    json_path: Path | None = None


def record_outcome(store: ResultsStore, run_id: str, outcome: StepOutcome) -> None:
    step, rep = outcome.step, outcome.repetition
    store.record_metrics(
        run_id,
        step.label,
        step.index,
        rep,
        outcome.metrics,
    )
    for series in outcome.series:
        if series.points:
            store.record_series(run_id, step.label, step.index, rep, series.name, series.unit, series.points)
    for name, histogram in outcome.histograms.items():
        if histogram.count:
            store.record_histogram(
                run_id,
                step.label,
                step.index,
                rep,
                f"latency.{name}",
                "ms",
                histogram.count,
                histogram.encode(),
            )


def summarize(plan: TestPlan, outcomes: list[StepOutcome], cores: int) -> dict[str, Any]:
    by_step: dict[int, list[StepOutcome]] = defaultdict(list)
    for outcome in outcomes:
        by_step[outcome.step.index].append(outcome)
    steps = []
    for index in sorted(by_step):
        group = by_step[index]
        step = group[0].step
        entry: dict[str, Any] = {
            "index": index,
            "label": step.label,
            "stations": step.load.stations,
            "rate": step.load.rate,
            "spark_workers": step.stack.spark_workers,
            "ray_workers": step.stack.ray_workers,
            "partitions": step.stack.partitions,
            "brokers": step.stack.brokers,
            "repetitions": len(group),
            "sustained": all(o.sustained for o in group) if group[0].accounting else None,
            "skipped": group[0].skipped or None,
            "reasons": sorted({r for o in group for r in o.reasons}),
            "bottleneck": Counter(o.bottleneck for o in group if o.bottleneck).most_common(1)[0][0]
            if any(o.bottleneck for o in group)
            else None,
            "lost_messages": sum(o.accounting.get("lost_messages", 0) for o in group),
            "gaps": gaps_by_stage(gap for o in group for gap in o.gaps),
            "partition_counts": {str(k): v for k, v in sorted(group[0].partition_counts.items())},
            "metrics": {},
        }
        for name, unit in HEADLINE:
            interval = mean_ci([o.value(name) for o in group])
            if interval.n:
                entry["metrics"][name] = {
                    "mean": interval.mean,
                    "ci95": None if math.isnan(interval.half_width) else interval.half_width,
                    "n": interval.n,
                    "unit": unit,
                }
        # Kafka-only steps run no Spark or Ray workers.
        pipeline_step = entry["sustained"] is not None
        oversubscribed = pipeline_step and step.stack.spark_workers + step.stack.ray_workers > cores
        entry["oversubscribed"] = oversubscribed
        steps.append(entry)
    summary: dict[str, Any] = {"test": plan.test, "profile": plan.profile, "steps": steps}
    if plan.test in SCALED:
        knob, capacity = SCALED[plan.test]
        measured = []
        for entry in steps:
            value = entry["metrics"].get(capacity, {}).get("mean")
            if value is not None and not math.isnan(value):
                measured.append((entry[knob], value))
        summary["scaling"] = [vars(p) for p in scaling_points(measured)]
        summary["scaling_metric"] = capacity
        summary["demand_workers"] = fewest_sufficient({e[knob]: bool(e["sustained"]) for e in steps})
    bottlenecks = [e["bottleneck"] for e in steps if e["bottleneck"]]
    summary["bottleneck"] = bottlenecks[-1] if bottlenecks else None  # the heaviest step's
    if any(e["oversubscribed"] for e in steps):
        summary["note"] = (
            f"some steps run more Spark and Ray workers than the machine's {cores} cores: "
            "they oversubscribe the CPU, so their scaling is bounded by the machine, not the pipeline"
        )
    return summary


SEARCH_TESTS = ("sustainable", "reference")
PLAN_FILE = "plan.pickle"


@dataclass(frozen=True)
class StepTicket:
    """One unit of a run that can execute on its own (an Airflow mapped task, say); JSON-ready."""

    run_id: str
    index: int
    label: str

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "index": self.index, "label": self.label}


def run_test(
    plan: TestPlan,
    base: StackConfig,
    store: ResultsStore,
    out_dir: Path,
    progress: Callable[[str], None] = print,
    keep_up: bool = False,
    state_dir: Path | None = None,
) -> RunResult:
    """Run a test plan end to end against the local stack; always stores what it measured."""
    tickets = begin_run(plan, base, store, out_dir, progress, state_dir)
    run_id = tickets[0].run_id
    try:
        for ticket in tickets:
            run_ticket(run_id, ticket.index, base, store, out_dir, progress, state_dir)
        return finish_run(run_id, store, out_dir, progress)
    except BaseException as exc:
        abort_run(run_id, store, out_dir, f"{type(exc).__name__}: {exc}", progress)
        raise
    finally:
        if not keep_up:
            Bench(base, plan.steps[0].stack, out_dir / run_id, progress, state_dir).stack.down()


# A run split into parts: begin_run, then run_ticket for each ticket (in order; each may run in
# its own process, and again after a failure), then finish_run. Between the parts the run lives
# in the results store (metrics as each step completes) and in its folder (plan, step outcomes).
def _run_dir(out_dir: Path, run_id: str) -> Path:
    return out_dir / run_id


def _outcome_file(out_dir: Path, run_id: str, index: int) -> Path:
    return _run_dir(out_dir, run_id) / "outcomes" / f"{index:03d}.pickle"


def _tickets_of(plan: TestPlan, run_id: str) -> list[StepTicket]:
    if plan.test in SEARCH_TESTS:
        return [StepTicket(run_id, 0, "rate search")]
    return [StepTicket(run_id, i, step.label) for i, (step, _) in enumerate(with_api_load(plan))]


def begin_run(
    plan: TestPlan,
    base: StackConfig,
    store: ResultsStore,
    out_dir: Path,
    progress: Callable[[str], None] = print,
    state_dir: Path | None = None,
) -> list[StepTicket]:
    """Open a run in the store (with its manifest) and return its tickets, one per step."""
    config = bench_config(base, plan.steps[0].stack, state_dir)
    manifest = build_manifest(config, plan.to_dict())
    run_id = store.start_run(plan.test, plan.profile, plan.to_dict(), manifest)
    folder = _run_dir(out_dir, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PLAN_FILE).write_bytes(pickle.dumps((plan, manifest)))
    progress(
        f"run {run_id}: {plan.test} ({plan.profile} profile, {len(plan.steps)} step(s) x {plan.repetitions})"
    )
    return _tickets_of(plan, run_id)


def _load_plan(out_dir: Path, run_id: str) -> tuple[TestPlan, dict[str, Any]]:
    path = _run_dir(out_dir, run_id) / PLAN_FILE
    if not path.exists():
        raise FileNotFoundError(f"run {run_id}: no plan at {path}; was the run begun with begin_run?")
    return pickle.loads(path.read_bytes())


def run_ticket(
    run_id: str,
    index: int,
    base: StackConfig,
    store: ResultsStore,
    out_dir: Path,
    progress: Callable[[str], None] = print,
    state_dir: Path | None = None,
    kafka_admin: Callable[[], Any] | None = None,
    docker_client: Callable[[], Any] | None = None,
) -> list[StepOutcome]:
    """Run one ticket of a begun run: bring the stack into the step's shape, measure, store.

    Starts (and primes) only what is not running, so a ticket runs the same after the one
    before it, on a stack left up by a set-up task, or alone after a crash. A rerun of a
    ticket replaces its outcomes; the store keeps both repetitions' rows under its step.
    """
    plan, _ = _load_plan(out_dir, run_id)
    tickets = _tickets_of(plan, run_id)
    if not 0 <= index < len(tickets):
        raise IndexError(f"run {run_id}: no step {index} (it has {len(tickets)})")
    hooks = {"kafka_admin": kafka_admin, "docker_client": docker_client}
    step, users = (plan.steps[0], 0) if plan.test in SEARCH_TESTS else with_api_load(plan)[index]
    if plan.test not in SEARCH_TESTS:
        progress(f"run {run_id}: step {index + 1}/{len(tickets)}: {tickets[index].label}")
    bench = Bench(base, step.stack, _run_dir(out_dir, run_id), progress, state_dir, **hooks)
    skipped = bench.skip_reason(plan, step)
    if skipped:
        progress(f"run {run_id}: step {tickets[index].label} skipped: {skipped}")
        outcomes = [StepOutcome(step=step, repetition=0, station_prefix="", skipped=skipped)]
    elif plan.test in SEARCH_TESTS:
        outcomes = _run_search_test(plan, bench, store, run_id, progress)
    else:
        if plan.test == "brokers":
            progress(f"Kafka with {step.stack.brokers} broker(s)")
            bench.reconfigure_brokers(step.stack.brokers)
            bench.set_benchmark_partitions(step.stack.partitions)
            outcomes = _repetitions(plan, bench, store, run_id, step, pipeline=False)
        elif plan.test == "partitions":
            # With the pipeline running the steps also measure Spark on the grown topic (they must
            # then ascend: Kafka cannot shrink a topic under the streaming job); otherwise only
            # Kafka is started and measured, as in the guide's section 5.3.
            pipeline = bench.stack.status().running(STREAMING_JOB) > 0
            if not pipeline:
                bench.up((KAFKA,))
            bench.set_benchmark_partitions(step.stack.partitions)
            outcomes = _repetitions(plan, bench, store, run_id, step, pipeline=pipeline)
        else:
            bench.ensure_up(step, plan.drain_timeout_s)
            bench.shape_stack(step.stack)
            outcomes = _repetitions(plan, bench, store, run_id, step, api_users=users)
    path = _outcome_file(out_dir, run_id, index)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(outcomes))
    return outcomes


def _run_search_test(
    plan: TestPlan, bench: Bench, store: ResultsStore, run_id: str, progress: Callable[[str], None]
) -> list[StepOutcome]:
    first_index = 0
    if plan.test == "reference":
        ceilings = _run_reference(plan, bench, store, run_id, progress)
        (bench.out_dir / "ceilings.pickle").write_bytes(pickle.dumps(ceilings))
        first_index = 1
    bench.ensure_up(plan.steps[0], plan.drain_timeout_s)
    return _run_search(plan, bench, store, run_id, progress, first_index)


def finish_run(
    run_id: str, store: ResultsStore, out_dir: Path, progress: Callable[[str], None] = print
) -> RunResult:
    """Summarise a run from its tickets' outcomes, close it in the store and export its JSON."""
    plan, manifest = _load_plan(out_dir, run_id)
    tickets = _tickets_of(plan, run_id)
    missing = [t.label for t in tickets if not _outcome_file(out_dir, run_id, t.index).exists()]
    if missing:
        raise RuntimeError(f"run {run_id}: step(s) not run: {', '.join(missing)}")
    outcomes: list[StepOutcome] = []
    for ticket in tickets:
        outcomes += pickle.loads(_outcome_file(out_dir, run_id, ticket.index).read_bytes())
    cores = int(
        manifest.get("machine", {}).get("usable_cores") or manifest.get("machine", {}).get("cores") or 1
    )
    result = RunResult(run_id=run_id, test=plan.test, status="error", outcomes=outcomes)
    result.summary = summarize(plan, outcomes, cores)
    if plan.api_load.users:
        result.summary["api_load_impact"] = api_load_impact(outcomes)
    faults = [fault for outcome in outcomes for fault in outcome.faults]
    if faults:
        result.summary["faults"] = faults
    bad_input = [outcome.bad_input for outcome in outcomes if outcome.bad_input]
    if bad_input:
        result.summary["bad_input"] = bad_input
    if plan.test in SEARCH_TESTS:
        result.summary["search"] = _search_summary(outcomes)
        _record_search_result(store, run_id, result.summary["search"], len(outcomes) + 1)
    ceilings_file = _run_dir(out_dir, run_id) / "ceilings.pickle"
    if plan.test == "reference" and ceilings_file.exists():
        result.summary["reference"] = reference_summary(pickle.loads(ceilings_file.read_bytes()), outcomes)
    failed = [o for o in outcomes if o.accounting and o.accounting.get("lost_messages", 0) > 0]
    failed += [o for o in outcomes if o.bad_input and not o.bad_input["passed"]]
    result.status = "failed" if failed else "passed"
    store.finish_run(run_id, result.status, result.summary)
    result.json_path = _export(run_id, store, out_dir, progress)
    return result


def abort_run(
    run_id: str, store: ResultsStore, out_dir: Path, error: str, progress: Callable[[str], None] = print
) -> None:
    """Close a run that could not complete as an error; what it measured so far stays stored."""
    store.finish_run(run_id, "error", {"error": error})
    _export(run_id, store, out_dir, progress)


def _export(run_id: str, store: ResultsStore, out_dir: Path, progress: Callable[[str], None]) -> Path:
    path = out_dir / f"{run_id}.json"
    path.write_text(json.dumps(store.export_run(run_id), indent=2, default=str))
    progress(f"results: {path} (store {store.url})")
    return path


def _repetitions(
    plan: TestPlan, bench: Bench, store: ResultsStore, run_id: str, step: Step, **options: Any
) -> list[StepOutcome]:
    """Run one step `plan.repetitions` times, storing each outcome as soon as it exists."""
    outcomes = []
    for repetition in range(plan.repetitions):
        outcome = bench.run_step(plan, step, repetition, **options)
        if step.faults:
            # A fault must not leak into the next repetition or step.
            left_down = bench.heal(step, plan.drain_timeout_s)
            for fault in outcome.faults:
                fault["left_down_after_step"] = left_down
        record_outcome(store, run_id, outcome)
        outcomes.append(outcome)
    return outcomes


def with_api_load(plan: TestPlan) -> list[tuple[Step, int]]:
    """Each step, and with Locust users configured, each step again under API query load.

    Running the same step without and with query load answers whether serving
    queries slows ingestion; the pair is adjacent so the machine's state is alike.
    """
    users = plan.api_load.users
    if not users:
        return [(step, 0) for step in plan.steps]
    expanded: list[tuple[Step, int]] = []
    for step in plan.steps:
        expanded.append((replace(step, index=len(expanded)), 0))
        expanded.append((replace(step, index=len(expanded), label=f"{step.label}+api{users}"), users))
    return expanded


def api_load_impact(outcomes: list[StepOutcome]) -> list[dict[str, Any]]:
    """For each step run without and with API load: the headline numbers side by side."""
    names = ("latency.e2e.p95", "latency.t6_kafka_api.p95", "throughput.end_to_end", "lag.api.max")
    pairs = []
    quiet = [o for o in outcomes if not o.api_users]
    for loaded in (o for o in outcomes if o.api_users):
        base_label = loaded.step.label.rsplit("+api", 1)[0]
        twin = next(
            (q for q in quiet if q.step.label == base_label and q.repetition == loaded.repetition), None
        )
        if twin is None:
            continue
        pairs.append(
            {
                "step": base_label,
                "repetition": loaded.repetition,
                "users": loaded.api_users,
                "api_rps": loaded.value("api_load.rps"),
                "api_p95_ms": loaded.value("api_load.p95"),
                "api_error_rate": loaded.value("api_load.error_rate"),
                **{f"{name} without": twin.value(name) for name in names},
                **{f"{name} with": loaded.value(name) for name in names},
            }
        )
    return pairs


def _run_reference(
    plan: TestPlan, bench: Bench, store: ResultsStore, run_id: str, progress
) -> ReferenceResult:
    step = plan.steps[0]
    progress("reference: stopping the pipeline's services; starting the infrastructure alone")
    bench.stack.down()
    bench.up(INFRASTRUCTURE)
    ceilings = measure_ceilings(
        bench.config,
        record_size=step.load.message_bytes or NATURAL_MESSAGE_BYTES,
        stations=step.load.stations,
        progress=progress,
    )
    store.record_metrics(run_id, "reference ceilings", 0, 0, ceilings.metrics())
    return ceilings


def reference_summary(ceilings: ReferenceResult, outcomes: list[StepOutcome]) -> dict[str, Any]:
    """The pipeline's best sustained step against the ceilings, and what the harness cost."""
    held = [o for o in outcomes if o.sustained]
    best = max(held, key=lambda o: o.step.load.rate) if held else None
    harness_cpu = mean_ci([o.value("resources.cpu.mean", "harness") for o in outcomes]).mean
    machine_cpu = mean_ci([o.value("resources.machine.cpu.mean") for o in outcomes]).mean
    cores = max(1.0, outcomes[0].value("resources.machine.cores")) if outcomes else 1.0
    summary: dict[str, Any] = {
        "kafka_producer_perf_msg_per_s": ceilings.kafka.get("rate"),
        "kafka_producer_perf_p99_ms": ceilings.kafka.get("p99"),
        "spark_rate_noop_rows_per_s": ceilings.spark.get("rows_per_second_wall"),
        "pipeline_sustainable_msg_per_s": best.step.load.rate if best else None,
        "harness_cpu_percent_of_a_core": harness_cpu,
        # The harness's share of all the CPU the machine spent while the pipeline ran.
        "harness_share_of_machine_cpu_percent": harness_cpu / (cores * machine_cpu) * 100
        if machine_cpu
        else None,
    }
    if best is not None:
        for name in ("latency.e2e.p95", "latency.window_close.p95", "latency.t5_inference.p95"):
            summary[f"{name} at the sustainable rate (ms)"] = best.value(name)
    return summary


def _run_search(
    plan: TestPlan, bench: Bench, store: ResultsStore, run_id: str, progress, first_index: int = 0
) -> list[StepOutcome]:
    assert plan.search is not None
    base_step = plan.steps[0]
    bench.shape_stack(base_step.stack)
    search = RateSearch(plan.search.low, plan.search.high, plan.search.max_steps, plan.search.resolution)
    outcomes = []
    while (rate := search.next_rate()) is not None:
        step = replace(with_step(base_step, rate=round(rate, 2)), index=first_index + len(outcomes))
        outcome = bench.run_step(plan, step, 0)
        record_outcome(store, run_id, outcome)
        outcomes.append(outcome)
        search.record(step.load.rate, outcome.sustained)
        progress(f"   rate {step.load.rate:g} msg/s: {'held' if outcome.sustained else 'did not hold'}")
    return outcomes


def _search_summary(outcomes: list[StepOutcome]) -> dict[str, Any]:
    held = [o.step.load.rate for o in outcomes if o.sustained]
    failed = [o.step.load.rate for o in outcomes if not o.sustained]
    return {
        "sustainable_rate": max(held) if held else None,
        "lowest_failed_rate": min(failed) if failed else None,
        "lower_bound_only": bool(held) and not failed,
        "probes": [
            {"rate": o.step.load.rate, "sustained": o.sustained, "reasons": o.reasons} for o in outcomes
        ],
    }


def _record_search_result(store: ResultsStore, run_id: str, search: dict[str, Any], index: int) -> None:
    """The sustainable rate as a metric of its own step, so runs can be compared on it over time."""
    rate = search["sustainable_rate"]
    store.record_metrics(
        run_id,
        SEARCH_RESULT_STEP,
        index,
        0,
        [Metric("throughput.sustainable", math.nan if rate is None else rate, "msg/s")],
    )
