"""Suite parameters: what a person asks a benchmark DAG for, checked and turned into test plans.

A DAG run's parameters (its trigger form) are flat: a profile, which tests, load sizes, the
step lists of the scaling tests, the fault list and the report's recipients. `check_params`
validates every one of them before anything touches the stack and raises `ParamError` naming
the parameter; `plan_for` then resolves one test of the suite into the workload's `TestPlan`
with those parameters applied, like the CLI's options do.

Faults are written the way a person says them: `kill spark-worker 1`, `restart kafka`,
`kill ray-worker 1 for 15s` (the instance number and the down time are optional).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from weatherbench.mail import MailError, parse_recipients
from weatherbench.workloads import (
    FAULT_ACTIONS,
    FAULT_COMPONENTS,
    MAX_WORKERS,
    WORKLOAD_DIR,
    TestPlan,
    WorkloadError,
    load_workload,
)

# The step list each scaling test takes from the parameters, and the step field it sets.
STEP_LISTS = {
    "throughput": ("load_steps", None),
    "scalability-load": ("load_steps", None),
    "scalability-spark": ("spark_workers", "spark_workers"),
    "scalability-ray": ("ray_workers", "ray_workers"),
    "partitions": ("partitions", "partitions"),
    "brokers": ("brokers", "brokers"),
}
FAULT_TESTS = ("fault-tolerance", "recovery")
MAX_PARTITIONS = 64
MAX_STATIONS = 100_000
_FAULT = re.compile(
    r"(?P<action>[a-z]+)\s+(?P<component>[a-z-]+?)(?:[\s-]+(?P<which>\d+))?"
    r"(?:\s+for\s+(?P<down>\d+(?:\.\d+)?)\s*s)?"
)


class ParamError(ValueError):
    """A parameter is invalid; the message starts with its name."""

    def __init__(self, param: str, problem: str) -> None:
        super().__init__(f"parameter {param!r}: {problem}")
        self.param = param


@dataclass(frozen=True)
class SuiteParams:
    """A DAG run's checked parameters (None: the profile's value)."""

    profile: str = "quick"
    tests: tuple[str, ...] = ()
    duration_s: int | None = None
    warmup_s: int | None = None
    stations: int | None = None
    rate: float | None = None
    repetitions: int | None = None
    load_steps: tuple[int, ...] = ()
    spark_workers: tuple[int, ...] = ()
    ray_workers: tuple[int, ...] = ()
    partitions: tuple[int, ...] = ()
    brokers: tuple[int, ...] = ()
    faults: tuple[str, ...] = ()
    fault_at_s: int | None = None
    fault_duration_s: int | None = None  # fault steps run longer, to see the recovery
    recipients: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (lists for tuples): how the checked parameters travel between tasks."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SuiteParams:
        """From to_dict's form; keys of other parameters (a DAG's own) are left out."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in names})


def parse_fault(text: str, at_s: float, param: str = "faults") -> dict[str, Any]:
    """`kill spark-worker 1 for 15s` -> a workload fault mapping; ParamError if it is not one."""
    match = _FAULT.fullmatch(str(text).strip().lower())
    if match is None:
        raise ParamError(
            param,
            f"{text!r} is not a fault; write it as `ACTION COMPONENT [N] [for Ss]`, "
            "e.g. `kill spark-worker 1`",
        )
    if match["action"] not in FAULT_ACTIONS:
        raise ParamError(
            param, f"{text!r}: action {match['action']!r} is not one of {', '.join(FAULT_ACTIONS)}"
        )
    if match["component"] not in FAULT_COMPONENTS:
        raise ParamError(
            param, f"{text!r}: component {match['component']!r} is not one of {', '.join(FAULT_COMPONENTS)}"
        )
    fault: dict[str, Any] = {"at_s": at_s, "component": match["component"], "action": match["action"]}
    if match["which"] is not None:
        fault["which"] = int(match["which"])
    if match["down"] is not None:
        fault["down_s"] = float(match["down"])
    return fault


def _whole(param: str, value: Any, minimum: int, maximum: int, optional: bool = True) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise ParamError(param, f"must be a whole number, got {value!r}")
    if not minimum <= value <= maximum:
        raise ParamError(param, f"must be between {minimum} and {maximum}, got {value!r}")
    return int(value)


def _whole_list(param: str, value: Any, minimum: int, maximum: int) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # a text field: "1, 2, 4"
        value = [part for part in re.split(r"[\s,]+", value) if part]
    if not isinstance(value, Sequence):
        raise ParamError(param, f"must be a list of whole numbers, got {value!r}")
    numbers = []
    for item in value:
        try:
            number = float(item)
        except (TypeError, ValueError):
            raise ParamError(param, f"must be a list of whole numbers, got {item!r} in it") from None
        numbers.append(_whole(param, number, minimum, maximum, optional=False))
    if len(set(numbers)) != len(numbers):
        raise ParamError(param, f"lists a value twice: {list(value)!r}")
    return tuple(n for n in numbers if n is not None)


def _text_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.splitlines()
    return tuple(str(item).strip() for item in value if str(item).strip())


def check_params(raw: Mapping[str, Any], offered_tests: Sequence[str]) -> SuiteParams:
    """Validate a DAG run's parameters; ParamError names the first bad one. Nothing is started."""
    profiles = sorted(p.stem for p in WORKLOAD_DIR.glob("*.yaml"))
    profile = raw.get("profile") or "quick"
    if profile not in profiles:
        raise ParamError("profile", f"{profile!r} is not one of {', '.join(profiles)}")
    tests = _text_list(raw.get("tests", offered_tests))
    if not tests:
        raise ParamError("tests", "choose at least one test")
    unknown = [t for t in tests if t not in offered_tests]
    if unknown:
        raise ParamError(
            "tests", f"{', '.join(unknown)} not offered here; choose from {', '.join(offered_tests)}"
        )
    rate = raw.get("rate")
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 < rate <= 1e6
    ):
        raise ParamError("rate", f"must be a number of messages per second above 0, got {rate!r}")
    try:
        given = raw.get("recipients")
        recipients = tuple(parse_recipients(given)) if given else ()
    except MailError as exc:
        raise ParamError("recipients", str(exc)) from None
    params = SuiteParams(
        profile=profile,
        tests=tests,
        duration_s=_whole("duration_s", raw.get("duration_s"), 5, 86_400),
        warmup_s=_whole("warmup_s", raw.get("warmup_s"), 0, 3_600),
        stations=_whole("stations", raw.get("stations"), 1, MAX_STATIONS),
        rate=None if rate is None else float(rate),
        repetitions=_whole("repetitions", raw.get("repetitions"), 1, 100),
        load_steps=_whole_list("load_steps", raw.get("load_steps"), 1, MAX_STATIONS),
        spark_workers=_whole_list("spark_workers", raw.get("spark_workers"), 1, MAX_WORKERS),
        ray_workers=_whole_list("ray_workers", raw.get("ray_workers"), 1, MAX_WORKERS),
        partitions=_whole_list("partitions", raw.get("partitions"), 1, MAX_PARTITIONS),
        brokers=_whole_list("brokers", raw.get("brokers"), 1, 3),
        faults=_text_list(raw.get("faults")),
        fault_at_s=_whole("fault_at_s", raw.get("fault_at_s"), 0, 86_400),
        fault_duration_s=_whole("fault_duration_s", raw.get("fault_duration_s"), 5, 86_400),
        recipients=recipients,
    )
    if list(params.partitions) != sorted(params.partitions):
        # Kafka cannot shrink a topic under the running streaming job.
        raise ParamError(
            "partitions", f"must ascend (Kafka cannot shrink a topic), got {list(params.partitions)}"
        )
    if any(b not in (1, 3) for b in params.brokers):
        raise ParamError("brokers", f"the local backend runs 1 or 3 brokers, got {list(params.brokers)}")
    for test in tests:
        plan_for(test, params)  # every chosen test must resolve, so a bad value fails now
    return params


def _overrides(test: str, params: SuiteParams) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for key in ("duration_s", "warmup_s", "stations", "rate", "repetitions"):
        value = getattr(params, key)
        if value is not None:
            overrides[key] = value
    if test in FAULT_TESTS and params.fault_duration_s is not None:
        overrides["duration_s"] = params.fault_duration_s
    if test in STEP_LISTS:
        param, knob = STEP_LISTS[test]
        values = getattr(params, param)
        if values:
            if knob is None:  # load steps: N stations at one message per station per second
                overrides.pop("stations", None)
                overrides.pop("rate", None)
                overrides["steps"] = [{"stations": n, "rate": n} for n in values]
            else:
                overrides["steps"] = [{knob: n} for n in values]
    return overrides


def plan_for(test: str, params: SuiteParams) -> TestPlan:
    """One test of the suite as a plan: the profile's workload with the parameters applied."""
    workload = load_workload(params.profile)
    overrides = _overrides(test, params)
    if test in FAULT_TESTS and (params.faults or params.fault_at_s is not None):
        total_s = workload.plan(test, {**overrides, "steps": [{}]}).steps[0].load.total_s
        at_s = params.fault_at_s
        if at_s is None:  # the profile's fault time
            at_s = workload.plan(test).steps[0].faults[0].at_s
        if at_s >= total_s:
            raise ParamError(
                "fault_at_s",
                f"{at_s:g} s is after each step's load ends (warm-up + duration = {total_s:g} s)",
            )
        if params.faults:
            overrides["steps"] = [{"faults": [parse_fault(text, at_s)]} for text in params.faults]
        else:  # the profile's fault steps, with their faults moved to fault_at_s
            overrides["steps"] = [
                {**raw, "faults": [{**fault, "at_s": at_s} for fault in raw.get("faults", [])]}
                for raw in workload.tests[test].get("steps", [])
            ]
    try:
        return workload.plan(test, overrides)
    except WorkloadError as exc:
        raise ParamError(_param_named_in(str(exc), test), str(exc)) from None


def _param_named_in(message: str, test: str) -> str:
    """The parameter a workload error is about, from the field it names."""
    if "steps[" in message or "steps:" in message:
        if test in FAULT_TESTS:
            return "faults"
        return STEP_LISTS.get(test, ("steps", None))[0]
    for key in ("fault_duration_s", "duration_s", "warmup_s", "stations", "rate", "repetitions"):
        if key in message:
            return key
    return "profile"


MAX_HORIZON_MINUTES = 24 * 60


def check_training_params(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The batch-layer DAG's parameters: a profile (for the stack's shape) and the forecast horizon."""
    profiles = sorted(p.stem for p in WORKLOAD_DIR.glob("*.yaml"))
    profile = raw.get("profile") or "quick"
    if profile not in profiles:
        raise ParamError("profile", f"{profile!r} is not one of {', '.join(profiles)}")
    horizon = _whole(
        "horizon_minutes", raw.get("horizon_minutes", 60), 60, MAX_HORIZON_MINUTES, optional=False
    )
    if horizon is None or horizon % 60:
        raise ParamError(
            "horizon_minutes", f"must be a whole number of hours (the data is hourly), got {horizon}"
        )
    timeout = _whole("rollout_timeout_s", raw.get("rollout_timeout_s", 180), 10, 3_600, optional=False)
    return {
        **SuiteParams(profile=profile).to_dict(),
        "horizon_minutes": horizon,
        "rollout_timeout_s": timeout,
    }
