"""The trigger form of the benchmark DAGs: every parameter titled, described and in a section.

Each function returns one `Param` with the default a DAG gives it. The schema catches what
the form can (types, ranges); the DAG's first task (CheckParamsOperator, weatherbench.suite)
checks the rest and names the parameter, so a run triggered from the CLI or the API with a
bad value fails there, before the stack is touched. Empty (null) load fields mean "the
profile's value" (include/workloads/<profile>.yaml).
"""

from __future__ import annotations

from collections.abc import Sequence

from airflow.sdk import Param

from weatherbench.workloads import FAULT_ACTIONS, FAULT_COMPONENTS, MAX_WORKERS

LOAD = "Profile and load"
TESTS = "Tests"
SCALING = "Scaling steps"
FAULTS = "Faults"
REPORT = "Report"


def profile(default: str = "quick") -> Param:
    return Param(
        default,
        type="string",
        enum=["quick", "full"],
        title="Workload profile",
        description="quick: 10-second windows and short steps (minutes in all); full: the guide's sizes "
        "(5-minute windows, long steps). Every empty field below takes the profile's value.",
        section=LOAD,
    )


def tests(offered: Sequence[str], default: Sequence[str] | None = None) -> Param:
    return Param(
        list(default if default is not None else offered),
        type="array",
        items={"type": "string", "enum": list(offered)},
        examples=list(offered),
        title="Tests to run",
        description="The benchmark guide's tests, run in this DAG's order on one stack; "
        "a test left out is skipped.",
        section=TESTS,
    )


def duration_s(default: int | None = None) -> Param:
    return Param(
        default,
        type=["null", "integer"],
        minimum=5,
        maximum=86_400,
        title="Measured seconds per step",
        description="Load time of each step after the warm-up. Empty: the profile's.",
        section=LOAD,
    )


def warmup_s(default: int | None = None) -> Param:
    return Param(
        default,
        type=["null", "integer"],
        minimum=0,
        maximum=3_600,
        title="Warm-up seconds per step",
        description="Load sent before measuring starts; excluded from every figure. Empty: the profile's.",
        section=LOAD,
    )


def stations(default: int | None = None) -> Param:
    return Param(
        default,
        type=["null", "integer"],
        minimum=1,
        maximum=100_000,
        title="Weather stations",
        description="Simulated stations sending observations (one 5-minute window each per window). "
        "Empty: the profile's.",
        section=LOAD,
    )


def rate(default: float | None = None) -> Param:
    return Param(
        default,
        type=["null", "number"],
        exclusiveMinimum=0,
        title="Offered rate (messages/s)",
        description="Open-loop send rate of all stations together; latency counts from the intended "
        "send time. Empty: the profile's.",
        section=LOAD,
    )


def load_steps(default: Sequence[int]) -> Param:
    return Param(
        list(default),
        type="array",
        items={"type": "integer", "minimum": 1},
        title="Load steps (stations, at 1 msg/s each)",
        description="Throughput steps: each runs N stations sending one message per second.",
        section=SCALING,
    )


def workers(component: str, default: Sequence[int]) -> Param:
    return Param(
        list(default),
        type="array",
        items={"type": "integer", "minimum": 1, "maximum": MAX_WORKERS},
        title=f"{component} worker counts",
        description=f"One step per count: the {component} workers are resized between steps under the "
        "same load; more workers than cores oversubscribes the machine and the report says so.",
        section=SCALING,
    )


def partitions(default: Sequence[int]) -> Param:
    return Param(
        list(default),
        type="array",
        items={"type": "integer", "minimum": 1, "maximum": 64},
        title="Partition counts",
        description="One step per partition count of the benchmark topic, ascending "
        "(Kafka cannot shrink a topic).",
        section=SCALING,
    )


def brokers(default: Sequence[int]) -> Param:
    return Param(
        list(default),
        type="array",
        items={"type": "integer", "enum": [1, 3]},
        title="Kafka broker counts",
        description="One step per cluster size: 1 broker, or 3 with replication factor 3 and min ISR 2.",
        section=SCALING,
    )


def faults(default: Sequence[str]) -> Param:
    return Param(
        list(default),
        type="array",
        items={"type": "string"},
        title="Faults (one step each)",
        description=f"One per line: ACTION COMPONENT [N] [for Ss], e.g. `kill spark-worker 1 for 15s`. "
        f"Actions: {', '.join(FAULT_ACTIONS)}; components: {', '.join(FAULT_COMPONENTS)}. "
        "Empty: the profile's faults.",
        section=FAULTS,
    )


def fault_at_s(default: int | None = None) -> Param:
    return Param(
        default,
        type=["null", "integer"],
        minimum=0,
        title="Fault time (s into each step)",
        description="When each fault hits, counted from the start of the step's load (warm-up "
        "included); it must leave time to recover before the step ends. Empty: the profile's.",
        section=FAULTS,
    )


def fault_duration_s(default: int | None = None) -> Param:
    return Param(
        default,
        type=["null", "integer"],
        minimum=5,
        maximum=86_400,
        title="Measured seconds per fault step",
        description="Fault steps run longer than the others so the recovery is inside the step. "
        "Empty: the same as the other steps.",
        section=FAULTS,
    )


def recipients(default: str = "benchmarks@localhost") -> Param:
    return Param(
        default,
        type=["null", "string"],
        title="Report recipients",
        description="Comma-separated e-mail addresses that get the PDF report; empty: no e-mail "
        "(the report stays in reports/). Mail goes through the weatherbench_smtp connection "
        "(the local SMTP sink, writing reports/mail/*.eml, unless configured).",
        section=REPORT,
    )
