"""`benchmark_system`: the benchmark guide's section 9 commands against the local stack.

    benchmark_system --test latency --duration 300
    benchmark_system --test latency --component spark
    benchmark_system --test throughput --stations 100 --duration 60
    benchmark_system --test scalability --component spark --workers 1,2,4,8
    benchmark_system --test scalability --component ray --workers 1,2,4,8
    benchmark_system --test scalability --load 1,10,50,100
    benchmark_system --test resources --component kafka
    benchmark_system --test sustainable
    benchmark_system --partitions 2,4,8 --stations 50 --rate 50 --duration 120
    benchmark_system --test brokers --brokers 1,3
    benchmark_system --test reference     # sustainable rate next to Kafka's and Spark's own ceilings
    benchmark_system --test fault-tolerance --component spark-worker   # faults under load (every one
    benchmark_system --test recovery --component spark                 #   without --component)
    benchmark_system --test bad-input     # bad records mixed into load: dead-lettered with their reason?
    benchmark_system runs                 # stored runs, newest first
    benchmark_system show RUN_ID          # one stored run's summary
    benchmark_system report --run RUN_ID [--run RUN_ID ...] [--email ADDR]   # PDF + HTML report
    benchmark_system compare BASE_RUN RUN # headline metrics of RUN against BASE_RUN, and a report
    benchmark_system mail-sink start|stop|status   # the local SMTP sink writing reports/mail/*.eml
    benchmark_system import FILE.json ... # runs exported elsewhere (reports/results/*.json) into the store
    benchmark_system --test latency --report --email ADDR   # run, then report and e-mail

The workload profile (`--profile quick|full` or `--workload FILE`) gives
every default; options override it. Progress prints while it runs; results
go to the results store (`--results-url`, env WB_RESULTS_URL, default a
SQLite file under .state/results) and to a JSON file. Parameters are checked
before the stack is touched. Reports compare each run with the same test's
previous runs and flag regressions; e-mail goes to the SMTP server in
WB_SMTP_URL or AIRFLOW_CONN_SMTP_DEFAULT, else to the local SMTP sink.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.config import REPO_ROOT, ConfigError, load_config
from weatherbench.audit import gap_text
from weatherbench.report.regressions import DEFAULT_BASELINE_RUNS, DEFAULT_RELATIVE_THRESHOLD
from weatherbench.workloads import Fault, TestPlan, WorkloadError, load_workload

DEFAULT_OUTPUT_DIR = REPO_ROOT / "reports" / "results"
DEFAULT_REPORT_DIR = REPO_ROOT / "reports"
GUIDE_TESTS = (
    "latency",
    "throughput",
    "scalability",
    "resources",
    "sustainable",
    "partitions",
    "brokers",
    "reference",
    "fault-tolerance",
    "recovery",
    "bad-input",
)
# Stages shown by `--test latency --component X`.
COMPONENT_STAGES = {
    "kafka": ("t1_producer", "producer_ack", "t2_kafka_spark", "t4_kafka_ray", "t6_kafka_api"),
    "spark": ("t2_kafka_spark", "t3_spark", "window_close"),
    "ray": ("t4_kafka_ray", "t5_inference"),
    "api": ("t6_kafka_api", "e2e"),
}
RESOURCE_COMPONENTS = (
    "kafka",
    "spark-master",
    "spark-worker",
    "ray-head",
    "ray-worker",
    "streaming-job",
    "inference",
    "api",
    "harness",
)


COMMANDS = ("run", "runs", "show", "report", "compare", "mail-sink", "import")


class UsageError(ValueError):
    """A command-line parameter is invalid; the message names it."""


def int_list(option: str, text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(
            f"{option}: expected comma-separated whole numbers such as 1,2,4,8, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{option}: every value must be >= 1, got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="benchmark_system",
        description="Benchmarks of the weather pipeline (the benchmark guide's section 9).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n")[1],
    )
    parser.add_argument("command", nargs="?", choices=COMMANDS, default="run")
    parser.add_argument(
        "arguments",
        nargs="*",
        metavar="ARG",
        help="show RUN_ID | report RUN_ID... | compare BASE_RUN RUN | mail-sink start|stop|status | "
        "import FILE...",
    )
    parser.add_argument(
        "--test", choices=GUIDE_TESTS, help="which benchmark (default: partitions if --partitions)"
    )
    parser.add_argument(
        "--component", help="latency: kafka|spark|ray|api; scalability: spark|ray; resources: one component"
    )
    parser.add_argument(
        "--profile", default="quick", help="workload profile under include/workloads (quick, full)"
    )
    parser.add_argument("--workload", type=Path, help="a workload file instead of a profile")
    parser.add_argument("--duration", type=float, help="measured seconds per step, after the warm-up")
    parser.add_argument(
        "--warmup", type=float, help="warm-up seconds per step (excluded from latency and lag trend)"
    )
    parser.add_argument("--stations", type=int, help="stations (throughput: one step at this many)")
    parser.add_argument("--rate", type=float, help="offered messages per second, all stations together")
    parser.add_argument("--workers", help="scalability: worker counts, e.g. 1,2,4,8")
    parser.add_argument("--load", help="scalability: load steps in stations (= msg/s), e.g. 1,10,50,100")
    parser.add_argument("--partitions", help="partition counts of the benchmark topic, e.g. 2,4,8")
    parser.add_argument("--brokers", help="broker counts, 1 and/or 3")
    parser.add_argument("--repetitions", type=int, help="repetitions of every step")
    parser.add_argument("--users", type=int, help="Locust users querying the serving API during each step")
    parser.add_argument("--output", type=Path, help="results JSON file (default reports/results/<run>.json)")
    parser.add_argument("--results-url", help="results store URL (default env WB_RESULTS_URL or SQLite)")
    parser.add_argument("--state-dir", type=Path, help="state directory of the benchmark stack")
    parser.add_argument("--keep-up", action="store_true", help="leave the benchmark stack running afterwards")
    parser.add_argument(
        "--broker", help="ignored: the stack's own Kafka is used (kept for the guide's scripts)"
    )
    reports = parser.add_argument_group("reports")
    reports.add_argument("--run", action="append", default=[], help="report: a run to include (repeatable)")
    reports.add_argument("--report", action="store_true", help="after a test run, build its report")
    reports.add_argument("--email", help="e-mail the report to these addresses (comma-separated)")
    reports.add_argument("--report-dir", type=Path, help="where reports go (default reports/)")
    reports.add_argument(
        "--baseline-runs",
        type=int,
        default=DEFAULT_BASELINE_RUNS,
        help=f"regressions: compare with this many previous runs (default {DEFAULT_BASELINE_RUNS})",
    )
    reports.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_RELATIVE_THRESHOLD,
        help="regressions: smallest relative change that counts, a fraction "
        f"(default {DEFAULT_RELATIVE_THRESHOLD})",
    )
    reports.add_argument("--sink-dir", type=Path, help="mail-sink start: where .eml files go (reports/mail)")
    return parser


def plan_from_args(args: argparse.Namespace) -> TestPlan:
    """Turn options into a validated test plan, or raise UsageError/WorkloadError naming the option."""
    workload = load_workload(args.workload or args.profile)
    test = args.test or ("partitions" if args.partitions else None)
    if test is None:
        raise UsageError("--test: required (one of " + ", ".join(GUIDE_TESTS) + "), or --partitions")
    overrides: dict[str, Any] = {}
    for option, key in (("duration", "duration_s"), ("warmup", "warmup_s"), ("repetitions", "repetitions")):
        value = getattr(args, option)
        if value is not None:
            overrides[key] = value
    if args.users is not None:
        overrides["users"] = args.users
    if args.rate is not None:
        overrides["rate"] = args.rate
    if args.stations is not None:
        overrides["stations"] = args.stations
    if test == "scalability":
        if args.load:
            test = "scalability-load"
            overrides["steps"] = [{"stations": n, "rate": n} for n in int_list("--load", args.load)]
        elif args.component in ("spark", "ray"):
            test = f"scalability-{args.component}"
            if args.workers:
                key = f"{args.component}_workers"
                overrides["steps"] = [{key: n} for n in int_list("--workers", args.workers)]
        else:
            raise UsageError("--test scalability: give --component spark|ray (with --workers) or --load")
    elif test == "throughput" and args.stations is not None:
        # The guide's throughput runs: N stations at one message per station per second.
        overrides["steps"] = [{"stations": args.stations, "rate": args.rate or float(args.stations)}]
        overrides.pop("stations")
        overrides.pop("rate", None)
    elif test == "partitions" and args.partitions:
        overrides["steps"] = [{"partitions": n} for n in int_list("--partitions", args.partitions)]
    elif test == "brokers" and args.brokers:
        counts = int_list("--brokers", args.brokers)
        if any(c not in (1, 3) for c in counts):
            raise UsageError(f"--brokers: the local backend runs 1 or 3 brokers, got {args.brokers!r}")
        overrides["steps"] = [{"brokers": n} for n in counts]
    if test == "latency" and args.component and args.component not in COMPONENT_STAGES:
        raise UsageError(
            f"--component: latency takes one of {', '.join(COMPONENT_STAGES)}, got {args.component!r}"
        )
    if test == "resources" and args.component and args.component not in RESOURCE_COMPONENTS:
        raise UsageError(
            f"--component: resources takes one of {', '.join(RESOURCE_COMPONENTS)}, got {args.component!r}"
        )
    if test == "reference":
        # The sustainable-throughput search, preceded by the reference ceilings of the same machine.
        return dataclasses.replace(workload.plan("sustainable", overrides), test="reference")
    plan = workload.plan(test, overrides)
    if test in ("fault-tolerance", "recovery") and args.component:
        plan = fault_steps_of(plan, args.component)
    return plan


def fault_steps_of(plan: TestPlan, component: str) -> TestPlan:
    """Only the steps whose faults hit `component`: `spark-worker`, `ray-worker1` (instance 1), `spark`."""
    numbered = re.fullmatch(r"(.+?)-?(\d+)", component)
    name, which = (numbered.group(1), int(numbered.group(2))) if numbered else (component, None)

    def hits(fault: Fault) -> bool:
        if which is not None and fault.which not in (None, which):
            return False
        return fault.component == name or fault.component.startswith(f"{name}-")

    chosen = [step for step in plan.steps if any(hits(f) for f in step.faults)]
    if not chosen:
        offered = sorted({f.component for step in plan.steps for f in step.faults})
        raise UsageError(
            f"--component: no {plan.test} step faults {component!r}; the workload has: {', '.join(offered)}"
        )
    steps = tuple(dataclasses.replace(step, index=i) for i, step in enumerate(chosen))
    return dataclasses.replace(plan, steps=steps)


def _fmt(value: Any, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit == "ms":
        return f"{value / 1000:.2f} s" if abs(value) >= 1000 else f"{value:.1f} ms"
    return f"{value:,.1f}"


def print_summary(summary: dict[str, Any], args: argparse.Namespace, metrics: list[dict[str, Any]]) -> None:
    steps = summary.get("steps", [])
    print(f"\n== {summary.get('test')} ({summary.get('profile')} profile)")
    kafka_only = all(entry["sustained"] is None for entry in steps)
    headline = KAFKA_COLUMNS if kafka_only else PIPELINE_COLUMNS
    _print_table(steps, headline)
    _print_details(summary, args, metrics)
    _print_bad_input(summary)
    _print_faults(summary)


PIPELINE_COLUMNS = [
    ("throughput.offered", "offered msg/s"),
    ("throughput.achieved", "achieved msg/s"),
    ("throughput.end_to_end", "served msg/s"),
    ("latency.e2e.p95", "e2e p95"),
    ("latency.window_close.p95", "window-close p95"),
    ("latency.t5_inference.p95", "inference p95"),
    ("lag.spark.max", "spark lag max"),
    ("kafka.balance_score", "balance %"),
]
KAFKA_COLUMNS = [
    ("throughput.offered", "offered msg/s"),
    ("throughput.achieved", "achieved msg/s"),
    ("producer.ack_latency.p50", "ack p50"),
    ("producer.ack_latency.p99", "ack p99"),
    ("latency.t1_producer.p99", "T1 p99"),
    ("kafka.balance_score", "balance %"),
    ("kafka.topic.replication_factor", "replication"),
    ("kafka.topic.min_isr_seen", "min ISR"),
]


def _print_table(steps: list[dict[str, Any]], headline: list[tuple[str, str]]) -> None:
    header = f"{'step':28s}" + "".join(f"{label:>18s}" for _, label in headline) + "  verdict"
    print(header)
    for entry in steps:
        cells = []
        for name, _ in headline:
            metric = entry["metrics"].get(name)
            text = _fmt(metric["mean"], metric["unit"]) if metric else "n/a"
            if metric and metric.get("ci95") is not None:
                text += f" ±{_fmt(metric['ci95'], metric['unit'])}"
            cells.append(f"{text:>18s}")
        verdict = {True: "sustained", False: "NOT sustained", None: ""}[entry["sustained"]]
        if entry.get("bottleneck"):
            # A step that held its load only shows which tier came closest to saturating.
            role = "nearest to saturation" if entry["sustained"] else "bottleneck"
            verdict += f" ({role}: {entry['bottleneck']})"
        print(f"{entry['label']:28s}" + "".join(cells) + f"  {verdict}")


def _print_details(summary: dict[str, Any], args: argparse.Namespace, metrics: list[dict[str, Any]]) -> None:
    steps = summary.get("steps", [])
    if summary.get("test") == "partitions" or args.partitions:
        print("\n== partition distribution (messages per partition; balance 100% = perfectly even)")
        for entry in steps:
            counts = entry["partition_counts"]
            balance = entry["metrics"].get("kafka.balance_score", {}).get("mean")
            row = "  ".join(f"p{k}={v}" for k, v in counts.items())
            print(f"   {entry['partitions']:2d} partitions: balance {_fmt(balance)}%   {row}")
    if "scaling" in summary:
        print(f"\n== scaling of {summary['scaling_metric']} against ideal linear")
        for point in summary["scaling"]:
            print(
                f"   {point['workers']} workers: {point['throughput']:.1f}  speed-up {point['speedup']:.2f}x"
                f" (ideal {point['ideal']:.0f}x, efficiency {100 * point['efficiency']:.0f}%)"
            )
        print(f"   demand: fewest workers that sustained the load: {summary.get('demand_workers') or 'none'}")
    if "search" in summary:
        search = summary["search"]
        bound = " (lower bound: the highest probe held)" if search["lower_bound_only"] else ""
        print(f"\n== sustainable throughput: {search['sustainable_rate']} msg/s{bound}")
    for pair in summary.get("api_load_impact", []):
        print(
            f"\n== serving-API query load ({pair['users']} Locust users, {_fmt(pair['api_rps'])} req/s, "
            f"p95 {_fmt(pair['api_p95_ms'], 'ms')}, errors {_fmt(pair['api_error_rate'])}%) on step "
            f"{pair['step']}: without -> with"
        )
        for name in ("latency.e2e.p95", "latency.t6_kafka_api.p95", "throughput.end_to_end", "lag.api.max"):
            unit = "ms" if name.startswith("latency") else ""
            without, with_load = pair[f"{name} without"], pair[f"{name} with"]
            print(f"   {name:28s} {_fmt(without, unit):>10s} -> {_fmt(with_load, unit):>10s}")
    reference = summary.get("reference")
    if reference:
        print("\n== the pipeline against reference ceilings measured in the same run")
        print(f"   Kafka ProducerPerformance:     {_fmt(reference['kafka_producer_perf_msg_per_s'])} msg/s")
        print(f"   Spark rate -> noop:            {_fmt(reference['spark_rate_noop_rows_per_s'])} rows/s")
        print(f"   pipeline sustainable:          {_fmt(reference['pipeline_sustainable_msg_per_s'])} msg/s")
        print(
            f"   harness overhead:   {_fmt(reference['harness_cpu_percent_of_a_core'])}% of a core "
            f"({_fmt(reference['harness_share_of_machine_cpu_percent'])}% of the machine's CPU use)"
        )
    if summary.get("bottleneck"):
        print(f"== bottleneck tier: {summary['bottleneck']}")
    if summary.get("note"):
        print(f"== note: {summary['note']}")
    component = args.component
    if args.test == "latency" and component:
        print(f"\n== {component} latency stages")
        for stage in COMPONENT_STAGES[component]:
            values = {
                m["metric"].rsplit(".", 1)[1]: m["value"]
                for m in metrics
                if m["metric"].startswith(f"latency.{stage}.")
            }
            if values:
                cells = "  ".join(
                    f"{key} {_fmt(values.get(key), 'ms'):>10s}" for key in ("p50", "p95", "p99", "max")
                )
                print(f"   {stage:16s} {cells}")
    if args.test == "resources":
        print("\n== resources per component (mean / max)")
        rows = [m for m in metrics if m["metric"].startswith(("resources.cpu.", "resources.rss."))]
        for name in sorted({m["component"] for m in rows}):
            if component and name != component:
                continue
            get = {m["metric"]: _fmt(m["value"]) for m in rows if m["component"] == name}
            cpu = f"{get.get('resources.cpu.mean', 'n/a'):>6s} / {get.get('resources.cpu.max', 'n/a'):>6s}"
            rss = f"{get.get('resources.rss.mean', 'n/a'):>8s} / {get.get('resources.rss.max', 'n/a'):>8s}"
            print(f"   {name:14s} CPU {cpu} % of a core   RSS {rss} MB")


FAULT_COLUMNS = [
    ("outputs_resume_s", "outputs"),
    ("spark_first_batch_s", "spark 1st"),
    ("ray_actors_back_s", "ray back"),
    ("slo_recovery_s", "SLO"),
    ("recovery_s", "E2E recovery"),
    ("normal_latency_s", "latency normal"),
]


def _print_faults(summary: dict[str, Any]) -> None:
    """Recovery seconds after each fault ("never": not within the step), loss and duplicates."""
    faults = summary.get("faults") or []
    if not faults:
        return
    print("\n== faults (seconds after the fault)")
    print(f"{'fault':28s}" + "".join(f"{label:>15s}" for _, label in FAULT_COLUMNS) + "   lost  dup  where")
    for fault in faults:
        cells = []
        for key, _ in FAULT_COLUMNS:
            value = fault.get(key)
            cells.append(f"{'never' if value is None else _fmt(value):>15s}")
        where = gap_text(fault.get("gaps"))
        label = f"{fault.get('kind', '')} {fault.get('target', '')}"
        damage = f" {fault.get('lost', 0):6d} {fault.get('duplicated', 0):4d}  {where}"
        print(f"{label:28s}" + "".join(cells) + damage)
        if fault.get("error"):
            print(f"   error: {fault['error']}")


def _print_bad_input(summary: dict[str, Any]) -> None:
    """Per step with bad input: each kind sent, dead-lettered with its reason, with another, missing."""
    for check in summary.get("bad_input", []):
        print(
            f"\n== bad input, {check['step']} (repetition {check['repetition']}): "
            f"{check['sent']} bad records, {check['fraction'] * 100:g}% of the stream: "
            + ("PASSED" if check["passed"] else "FAILED")
        )
        print(
            f"   {'kind':14s}{'sent':>6s}{'dead-lettered':>15s}{'other reason':>14s}{'missing':>9s}  reason"
        )
        for kind in check["kinds"]:
            print(
                f"   {kind['kind']:14s}{kind['sent']:6d}{kind['dead_lettered']:15d}{kind['wrong_reason']:14d}"
                f"{kind['missing']:9d}  {', '.join(kind['reasons'])}"
            )
        print(
            f"   good records dead-lettered: {check['unexpected']}; good records lost: {check['good_lost']}; "
            "dropped by the watermark (late, inside the far-late limit): "
            + _fmt(check["dropped_by_watermark"])
        )


def _report(
    store: Any, args: argparse.Namespace, run_ids: list[str], baseline: list[str] | None = None
) -> int:
    """Build (and maybe e-mail) the report of these runs; prints where it went and what it found."""
    from weatherbench.report import build_report
    from weatherbench.report.content import regression_sentence

    recipients = None
    if args.email:
        from weatherbench.mail import parse_recipients

        recipients = parse_recipients(args.email)  # a bad address fails before the report is built
    out_dir = args.report_dir or DEFAULT_REPORT_DIR
    result = build_report(
        store,
        run_ids,
        out_dir,
        baseline_runs=args.baseline_runs,
        relative=args.threshold,
        baseline_run_ids=baseline,
    )
    print(f"\n== report: {result.status.label}, {len(result.regressions)} regression(s)")
    for comparison in result.regressions:
        print(f"   {regression_sentence(comparison)}")
    print(f"   PDF:  {result.pdf}\n   HTML: {result.html}\n   built in {result.build_seconds:.1f} s")
    if recipients:
        from weatherbench.report.delivery import deliver_report

        delivery = deliver_report(result, recipients)
        where = f" (stored under {delivery.sink_dir})" if delivery.sink_dir else ""
        print(
            f"   e-mailed to {', '.join(delivery.receipt.accepted)} via {delivery.settings.describe()}{where}"
        )
        print(f"   subject: {result.subject}")
        if delivery.receipt.refused:
            print(f"   refused: {', '.join(delivery.receipt.refused)}", file=sys.stderr)
            return 1
    return 0


def _compare(store: Any, args: argparse.Namespace) -> int:
    if len(args.arguments) != 2:
        raise UsageError("compare: give two run ids, the baseline first: compare BASE_RUN RUN")
    from weatherbench.report.data import RunData
    from weatherbench.report.regressions import detect_regressions
    from weatherbench.report.targets import format_value

    base_id, run_id = args.arguments
    base, run = store.get_run(base_id), RunData.load(store, run_id)
    if base.test != run.test:
        raise UsageError(f"compare: {base_id} is a {base.test} run and {run_id} a {run.test} run")
    print(f"== {run_id} against {base_id}")
    print(f"{'metric':34s}{'step':18s}{'baseline':>14s}{'this run':>14s}{'change':>9s}  verdict")
    for c in detect_regressions(store, run, relative=args.threshold, baseline_run_ids=[base_id]):
        unit = c.headline.unit
        base_text = format_value(c.median, unit) if c.baseline else "n/a"
        change = "" if c.relative_change != c.relative_change else f"{c.relative_change:+.0%}"
        print(
            f"{c.headline.label:34s}{c.step[:17]:18s}{base_text:>14s}{format_value(c.value, unit):>14s}"
            f"{change:>9s}  {c.change.value}"
        )
    return _report(store, args, [run_id], baseline=[base_id])


def _import(store: Any, files: list[str]) -> int:
    """Store runs from result files (another machine's, a CI artifact); runs already stored are skipped."""
    from weatherbench.store import UnknownRunError

    if not files:
        raise UsageError("import: give one or more result files (reports/results/<run>.json)")
    for name in files:
        try:
            exported = json.loads(Path(name).read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"import: cannot read {name}: {exc}") from None
        run_id = (exported.get("run") or {}).get("run_id", "?") if isinstance(exported, dict) else "?"
        try:
            store.get_run(run_id)
            print(f"{run_id}: already stored, skipped")
            continue
        except UnknownRunError:
            pass
        print(f"{store.import_run(exported)}: imported from {name}")
    return 0


def _mail_sink(args: argparse.Namespace) -> int:
    from weatherbench.mail import sink_port
    from weatherbench.mailsink import sink_status, start_sink, stop_sink
    from weatherbench.report.delivery import SINK_OUT_DIR, SINK_STATE_DIR

    action = args.arguments[0] if args.arguments else "status"
    if action == "start":
        info = start_sink(args.sink_dir or SINK_OUT_DIR, sink_port(), SINK_STATE_DIR)
        print(f"mail sink pid {info.pid} on {info.host}:{info.port}, writing {info.out_dir}")
    elif action == "stop":
        print("mail sink stopped" if stop_sink(SINK_STATE_DIR) else "no mail sink was running")
    elif action == "status":
        info = sink_status(SINK_STATE_DIR)
        print(
            "no mail sink running"
            if info is None
            else f"mail sink pid {info.pid} on {info.host}:{info.port}, writing {info.out_dir}"
        )
    else:
        raise UsageError(f"mail-sink: expected start, stop or status, got {action!r}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from weatherbench.mail import MailError
    from weatherbench.report import ReportError
    from weatherbench.store import ResultsStore, StoreError

    try:
        if args.command == "runs":
            store = ResultsStore(args.results_url)
            for run in store.runs(test=args.test, limit=50):
                print(f"{run.run_id:40s} {run.test:18s} {run.status:8s} {run.started_at}")
            return 0
        if args.command == "show":
            if len(args.arguments) != 1:
                raise UsageError("show: give one RUN_ID (see `benchmark_system runs`)")
            store = ResultsStore(args.results_url)
            run = store.get_run(args.arguments[0])
            args.test = args.test or run.test.split("-")[0]
            rows = [
                {"metric": m.metric, "value": m.value, "component": m.component}
                for m in store.metrics(run.run_id)
            ]
            print_summary(run.summary or {}, args, rows)
            return 0
        if args.command == "report":
            run_ids = args.run + args.arguments
            if not run_ids:
                raise UsageError(
                    "report: give at least one run: report --run RUN_ID (see `benchmark_system runs`)"
                )
            return _report(ResultsStore(args.results_url), args, run_ids)
        if args.command == "compare":
            return _compare(ResultsStore(args.results_url), args)
        if args.command == "mail-sink":
            return _mail_sink(args)
        if args.command == "import":
            return _import(ResultsStore(args.results_url), args.arguments)
        if args.arguments:
            raise UsageError(f"unexpected argument(s) {' '.join(args.arguments)!r}: options start with --")
        if args.email:
            from weatherbench.mail import parse_recipients

            parse_recipients(args.email)  # a bad address fails before the stack is touched
        plan = plan_from_args(args)
        base = load_config()
    except (UsageError, WorkloadError, ConfigError, MailError, ReportError, StoreError) as exc:
        print(f"benchmark_system: error: {exc}", file=sys.stderr)
        return 2
    from weatherbench.experiments import run_test

    def stop_on_sigterm(signum: int, _frame: Any) -> None:
        # SIGTERM (a killed task, `kill PID`) unwinds like Ctrl-C: the run is stored as an error
        # and the benchmark stack is stopped, instead of dying with both left behind.
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop_on_sigterm)

    store = ResultsStore(args.results_url)

    def progress(message: str) -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        print(f"[{stamp}] {message}", flush=True)

    out_dir = args.output.parent if args.output else DEFAULT_OUTPUT_DIR
    result = run_test(plan, base, store, out_dir, progress, keep_up=args.keep_up, state_dir=args.state_dir)
    if args.output and result.json_path and result.json_path != args.output:
        result.json_path.replace(args.output)
        result.json_path = args.output
        print(f"results: {args.output}")
    exported = json.loads(result.json_path.read_text()) if result.json_path else {}
    print_summary(result.summary, args, exported.get("metrics", []))
    code = 0 if result.status == "passed" else 1
    if args.report or args.email:
        try:
            code = max(code, _report(store, args, [result.run_id]))
        except (MailError, ReportError) as exc:
            print(f"benchmark_system: error: {exc}", file=sys.stderr)
            return 1
    return code
