"""Workload files: what a benchmark runs, declared in YAML under include/workloads/.

A workload file is one profile (quick, full, or a user's own): `defaults`
(load, stack shape, SLOs, repetitions) and `tests`, each of which may
override the defaults and list `steps`. A step is a flat mapping of load or
stack fields (`{spark_workers: 2}`, `{stations: 50, rate: 50}`). The load may
mix bad records into the stream: `bad_input: {fraction: 0.05, kinds: [...]}`
(kinds of pipeline.producer.badrecords; all of them when omitted).
`Workload.plan(test, overrides)` resolves one test into a `TestPlan` whose
steps are fully specified. Every field is validated; an error names the file
and the field path (`quick.yaml: tests.throughput.steps[1].rate: ...`).
This module only reads and checks declarations; experiments run them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import REPO_ROOT, duration_ms
from pipeline.producer.badrecords import BAD_KINDS, MAX_BAD_FRACTION

WORKLOAD_DIR = REPO_ROOT / "include" / "workloads"
TESTS = (
    "latency",
    "throughput",
    "sustainable",
    "scalability-spark",
    "scalability-ray",
    "scalability-load",
    "partitions",
    "brokers",
    "resources",
    "fault-tolerance",
    "recovery",
    "bad-input",
)
SOURCES = ("synthetic", "replay")
FAULT_ACTIONS = ("kill", "stop", "restart")  # SIGKILL; graceful stop; graceful stop and start again
FAULT_COMPONENTS = (
    "kafka",
    "spark-master",
    "spark-worker",
    "ray-worker",
    "streaming-job",
    "inference",
    "api",
)
MAX_MESSAGE_BYTES = 10_000  # the message contract: JSON under 10 KB
MAX_WORKERS = 8


class WorkloadError(ValueError):
    """A workload file or override is invalid; the message names the field."""


@dataclass(frozen=True)
class BadInputSettings:
    """Bad records mixed into a step's load: their share of everything sent, and their kinds."""

    fraction: float  # in (0, MAX_BAD_FRACTION]
    kinds: tuple[str, ...]  # each of BAD_KINDS at most once; they take equal shares

    @property
    def label(self) -> str:
        return f"{self.fraction * 100:g}% bad input"


@dataclass(frozen=True)
class LoadSettings:
    stations: int
    rate: float  # messages per second, all stations together
    duration_s: float  # measured part, after the warm-up
    warmup_s: float
    source: str
    message_bytes: int  # 0 = natural size
    topic: str
    station_prefix: str
    bad_input: BadInputSettings | None = None

    @property
    def total_s(self) -> float:
        return self.warmup_s + self.duration_s


@dataclass(frozen=True)
class StackShape:
    window: str
    watermark: str
    trigger: str
    partitions: int
    spark_workers: int
    ray_workers: int
    brokers: int

    @property
    def window_ms(self) -> int:
        return duration_ms(self.window)

    @property
    def watermark_ms(self) -> int:
        return duration_ms(self.watermark)

    @property
    def trigger_ms(self) -> int:
        return duration_ms(self.trigger)


@dataclass(frozen=True)
class Slo:
    e2e_p95_ms: float
    window_close_p95_ms: float
    producer_p95_ms: float
    spark_lag_max: float
    ray_lag_max: float
    lag_slope_fraction: float  # lag may grow by at most this fraction of the offered rate


@dataclass(frozen=True)
class ApiLoadSettings:
    users: int
    spawn_rate: float


@dataclass(frozen=True)
class SearchSettings:
    low: float  # a rate expected to be sustainable
    high: float  # a rate expected not to be
    max_steps: int
    resolution: float  # stop when (high - low) / low is below this


@dataclass(frozen=True)
class Fault:
    """One fault on a step's timeline, like a Trogdor fault spec."""

    at_s: float  # seconds after the step's load started
    component: str
    action: str  # kill | stop | restart
    which: int | None = None  # instance number of scalable components (and Kafka brokers)
    down_s: float | None = None  # start it again after this long; None = at the end of the step

    @property
    def label(self) -> str:
        instance = f"-{self.which}" if self.which is not None else ""
        return f"{self.action} {self.component}{instance}"


@dataclass(frozen=True)
class Step:
    index: int
    label: str  # what the step changes, e.g. "spark_workers=2"
    load: LoadSettings
    stack: StackShape
    faults: tuple[Fault, ...] = ()


@dataclass(frozen=True)
class TestPlan:
    test: str
    profile: str
    description: str
    repetitions: int
    steps: tuple[Step, ...]
    slo: Slo
    api_load: ApiLoadSettings
    drain_timeout_s: float
    search: SearchSettings | None = None
    source_file: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)  # the overrides, as given

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


STEP_FIELDS = {f.name for f in fields(LoadSettings)} | {f.name for f in fields(StackShape)}
OPTIONAL_LOAD_FIELDS = {"bad_input"}
_DURATION = re.compile(r"^\s*\d+(\.\d+)?\s*(ms|milliseconds?|s|seconds?|m|min|minutes?|h|hours?)\s*$")


def _check(where: str, ok: bool, message: str) -> None:
    if not ok:
        raise WorkloadError(f"{where}: {message}")


def _number(where: str, value: Any, *, minimum: float, integer: bool = False, maximum: float | None = None):
    _check(
        where,
        isinstance(value, int | float) and not isinstance(value, bool),
        f"must be a number, got {value!r}",
    )
    if integer:
        _check(where, float(value).is_integer(), f"must be a whole number, got {value!r}")
        value = int(value)
    _check(where, value >= minimum, f"must be >= {minimum:g}, got {value!r}")
    if maximum is not None:
        _check(where, value <= maximum, f"must be <= {maximum:g}, got {value!r}")
    return value


def _duration(where: str, value: Any) -> str:
    _check(
        where,
        isinstance(value, str) and bool(_DURATION.match(value)),
        f"must be a duration such as '10 seconds' or '5 minutes', got {value!r}",
    )
    return value.strip()


def _known(where: str, section: Mapping[str, Any], allowed: set[str]) -> None:
    _check(where, isinstance(section, Mapping), f"must be a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - allowed)
    _check(
        where, not unknown, f"unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
    )


def _load(where: str, raw: Mapping[str, Any]) -> LoadSettings:
    _known(where, raw, {f.name for f in fields(LoadSettings)})
    missing = sorted({f.name for f in fields(LoadSettings)} - OPTIONAL_LOAD_FIELDS - set(raw))
    _check(where, not missing, f"missing field(s) {', '.join(missing)}")
    source = raw["source"]
    _check(f"{where}.source", source in SOURCES, f"must be one of {', '.join(SOURCES)}, got {source!r}")
    for name in ("topic", "station_prefix"):
        value = raw[name]
        _check(
            f"{where}.{name}",
            isinstance(value, str) and bool(re.fullmatch(r"[A-Za-z0-9._-]+", value or "")),
            f"must be a non-empty name of letters, digits, '.', '_' or '-', got {value!r}",
        )
    return LoadSettings(
        stations=_number(f"{where}.stations", raw["stations"], minimum=1, integer=True),
        rate=float(_number(f"{where}.rate", raw["rate"], minimum=0.001)),
        duration_s=float(_number(f"{where}.duration_s", raw["duration_s"], minimum=1)),
        warmup_s=float(_number(f"{where}.warmup_s", raw["warmup_s"], minimum=0)),
        source=source,
        message_bytes=_number(
            f"{where}.message_bytes", raw["message_bytes"], minimum=0, integer=True, maximum=MAX_MESSAGE_BYTES
        ),
        topic=raw["topic"],
        station_prefix=raw["station_prefix"],
        bad_input=_bad_input(f"{where}.bad_input", raw.get("bad_input")),
    )


def _bad_input(where: str, raw: Any) -> BadInputSettings | None:
    """`{fraction, kinds}`; None (absent or null) is a load without bad records."""
    if raw is None:
        return None
    _known(where, raw, {"fraction", "kinds"})
    _check(where, "fraction" in raw, "missing field(s) fraction")
    fraction = float(_number(f"{where}.fraction", raw["fraction"], minimum=-math.inf))
    _check(
        f"{where}.fraction",
        0 < fraction <= MAX_BAD_FRACTION,
        f"must be in (0, {MAX_BAD_FRACTION:g}] (the share of bad records in the stream), got {fraction:g}",
    )
    kinds = raw.get("kinds", list(BAD_KINDS))
    _check(
        f"{where}.kinds",
        isinstance(kinds, list) and bool(kinds),
        f"must be a non-empty list of: {', '.join(BAD_KINDS)}",
    )
    for i, kind in enumerate(kinds):
        _check(f"{where}.kinds[{i}]", kind in BAD_KINDS, f"{kind!r} is not one of {', '.join(BAD_KINDS)}")
    repeated = sorted({kind for kind in kinds if kinds.count(kind) > 1})
    _check(f"{where}.kinds", not repeated, f"lists {', '.join(repeated)} more than once")
    return BadInputSettings(fraction, tuple(kinds))


def _stack(where: str, raw: Mapping[str, Any]) -> StackShape:
    _known(where, raw, {f.name for f in fields(StackShape)})
    missing = sorted({f.name for f in fields(StackShape)} - set(raw))
    _check(where, not missing, f"missing field(s) {', '.join(missing)}")
    brokers = _number(f"{where}.brokers", raw["brokers"], minimum=1, integer=True)
    _check(f"{where}.brokers", brokers in (1, 3), f"must be 1 or 3, got {brokers}")
    shape = StackShape(
        window=_duration(f"{where}.window", raw["window"]),
        watermark=_duration(f"{where}.watermark", raw["watermark"]),
        trigger=_duration(f"{where}.trigger", raw["trigger"]),
        partitions=_number(f"{where}.partitions", raw["partitions"], minimum=1, integer=True, maximum=64),
        spark_workers=_number(
            f"{where}.spark_workers", raw["spark_workers"], minimum=1, integer=True, maximum=MAX_WORKERS
        ),
        ray_workers=_number(
            f"{where}.ray_workers", raw["ray_workers"], minimum=1, integer=True, maximum=MAX_WORKERS
        ),
        brokers=brokers,
    )
    _check(
        f"{where}.trigger",
        shape.trigger_ms <= shape.window_ms,
        f"trigger {shape.trigger} is longer than the window {shape.window}",
    )
    return shape


def _slo(where: str, raw: Mapping[str, Any]) -> Slo:
    names = {f.name for f in fields(Slo)}
    _known(where, raw, names)
    missing = sorted(names - set(raw))
    _check(where, not missing, f"missing field(s) {', '.join(missing)}")
    return Slo(**{name: float(_number(f"{where}.{name}", raw[name], minimum=0)) for name in sorted(names)})


def _merge(base: Mapping[str, Any], override: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = dict(base)
    merged.update(override or {})
    return merged


def _faults(where: str, raw: Any, total_s: float) -> tuple[Fault, ...]:
    _check(where, isinstance(raw, list) and raw, "must be a non-empty list of faults")
    faults = []
    for i, item in enumerate(raw):
        at = f"{where}[{i}]"
        _check(at, isinstance(item, Mapping), "must be a mapping with at_s, component and action")
        _known(at, item, {"at_s", "component", "action", "which", "down_s"})
        missing = sorted({"at_s", "component", "action"} - set(item))
        _check(at, not missing, f"missing field(s) {', '.join(missing)}")
        _check(
            f"{at}.component",
            item["component"] in FAULT_COMPONENTS,
            f"{item['component']!r} is not one of {', '.join(FAULT_COMPONENTS)}",
        )
        _check(
            f"{at}.action",
            item["action"] in FAULT_ACTIONS,
            f"{item['action']!r} is not one of {', '.join(FAULT_ACTIONS)}",
        )
        at_s = float(_number(f"{at}.at_s", item["at_s"], minimum=0))
        _check(f"{at}.at_s", at_s < total_s, f"{at_s:g} s is after the step's load ends ({total_s:g} s)")
        which = item.get("which")
        if which is not None:
            which = _number(f"{at}.which", which, minimum=1, integer=True, maximum=MAX_WORKERS)
        down = item.get("down_s", 0.0 if item["action"] == "restart" else None)
        if down is not None:
            down = float(_number(f"{at}.down_s", down, minimum=0))
        faults.append(Fault(at_s, item["component"], item["action"], which, down))
    return tuple(faults)


def _split_step(where: str, raw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A flat step mapping -> (load fields, stack fields); faults are taken out before."""
    _known(where, raw, STEP_FIELDS)
    _check(where, bool(raw), "a step must change at least one field")
    load_names = {f.name for f in fields(LoadSettings)}
    return (
        {k: v for k, v in raw.items() if k in load_names},
        {k: v for k, v in raw.items() if k not in load_names},
    )


def step_label(raw: Mapping[str, Any]) -> str:
    return ",".join(f"{key}={raw[key]}" for key in sorted(raw)) or "baseline"


@dataclass
class Workload:
    """One parsed workload file."""

    profile: str
    description: str
    defaults: dict[str, Any]
    tests: dict[str, dict[str, Any]]
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    def plan(self, test: str, overrides: Mapping[str, Any] | None = None) -> TestPlan:
        """Resolve one test: defaults, then the test's sections, then the overrides, then each step.

        `overrides` is flat: load or stack fields (`stations`, `duration_s`,
        `spark_workers`...), `repetitions`, or `steps` (a list of step
        mappings replacing the file's). Overrides apply to every step unless a
        step sets the field itself.
        """
        where = self.name
        _check(where, test in TESTS, f"unknown test {test!r}; expected one of: {', '.join(TESTS)}")
        spec = self.tests.get(test)
        _check(f"{where}: tests", spec is not None, f"has no entry for test {test!r}")
        overrides = dict(overrides or {})
        known = STEP_FIELDS | {"repetitions", "steps", "users"}
        _known(f"{where}: overrides", overrides, known)
        load_raw = _merge(self.defaults.get("load", {}), spec.get("load"))
        stack_raw = _merge(self.defaults.get("stack", {}), spec.get("stack"))
        load_names = {f.name for f in fields(LoadSettings)}
        for key, value in overrides.items():
            if key in STEP_FIELDS:
                (load_raw if key in load_names else stack_raw)[key] = value
        # Validate the base before the steps, so an error points at the base field.
        _load(f"{where}: tests.{test}.load", load_raw)
        _stack(f"{where}: tests.{test}.stack", stack_raw)
        raw_steps = overrides.get("steps", spec.get("steps")) or [{}]
        _check(f"{where}: tests.{test}.steps", isinstance(raw_steps, list), "must be a list of mappings")
        steps = []
        for index, raw in enumerate(raw_steps):
            step_where = f"{where}: tests.{test}.steps[{index}]"
            raw = dict(raw) if isinstance(raw, Mapping) else raw
            fault_raw = raw.pop("faults", None) if isinstance(raw, dict) else None
            if raw == {}:
                load_part, stack_part = {}, {}
            else:
                load_part, stack_part = _split_step(step_where, raw)
            load = _load(step_where, _merge(load_raw, load_part))
            faults = () if fault_raw is None else _faults(f"{step_where}.faults", fault_raw, load.total_s)
            label = step_label({key: value for key, value in raw.items() if key != "bad_input"})
            if load.bad_input is not None:
                label = load.bad_input.label + ("" if label == "baseline" else f", {label}")
            if faults:
                label = " + ".join(f.label for f in faults) + ("" if label == "baseline" else f", {label}")
            steps.append(
                Step(
                    index=index,
                    label=label,
                    load=load,
                    stack=_stack(step_where, _merge(stack_raw, stack_part)),
                    faults=faults,
                )
            )
        repetitions = overrides.get(
            "repetitions", spec.get("repetitions", self.defaults.get("repetitions", 1))
        )
        api_raw = _merge(self.defaults.get("api_load", {}), spec.get("api_load"))
        if "users" in overrides:
            api_raw["users"] = overrides["users"]
        _known(f"{where}: api_load", api_raw, {"users", "spawn_rate"})
        search = None
        if test == "sustainable":
            search = _search(f"{where}: tests.{test}.search", spec.get("search"))
        return TestPlan(
            test=test,
            profile=self.profile,
            description=str(spec.get("description", "")),
            repetitions=_number(f"{where}: repetitions", repetitions, minimum=1, integer=True, maximum=100),
            steps=tuple(steps),
            slo=_slo(f"{where}: slo", _merge(self.defaults.get("slo", {}), spec.get("slo"))),
            api_load=ApiLoadSettings(
                users=_number(f"{where}: api_load.users", api_raw.get("users", 0), minimum=0, integer=True),
                spawn_rate=float(
                    _number(f"{where}: api_load.spawn_rate", api_raw.get("spawn_rate", 5), minimum=0.1)
                ),
            ),
            drain_timeout_s=float(
                _number(f"{where}: drain_timeout_s", self.defaults.get("drain_timeout_s", 300), minimum=10)
            ),
            search=search,
            source_file=str(self.path),
            parameters=overrides,
        )


def _search(where: str, raw: Any) -> SearchSettings:
    _check(where, raw is not None, "is required for the sustainable-throughput test")
    names = {f.name for f in fields(SearchSettings)}
    _known(where, raw, names)
    missing = sorted(names - set(raw))
    _check(where, not missing, f"missing field(s) {', '.join(missing)}")
    settings = SearchSettings(
        low=float(_number(f"{where}.low", raw["low"], minimum=0.001)),
        high=float(_number(f"{where}.high", raw["high"], minimum=0.001)),
        max_steps=_number(f"{where}.max_steps", raw["max_steps"], minimum=1, integer=True, maximum=50),
        resolution=float(_number(f"{where}.resolution", raw["resolution"], minimum=0.01)),
    )
    _check(f"{where}.high", settings.high > settings.low, f"must be above low ({settings.low:g})")
    return settings


def resolve_path(profile_or_path: str | Path) -> Path:
    """A profile name (`quick`) resolves under include/workloads/; anything else is a path."""
    candidate = Path(profile_or_path)
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        return candidate
    return WORKLOAD_DIR / f"{profile_or_path}.yaml"


def load_workload(profile_or_path: str | Path) -> Workload:
    path = resolve_path(profile_or_path)
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in WORKLOAD_DIR.glob("*.yaml")))
        raise WorkloadError(f"workload {profile_or_path!s}: no such file {path} (profiles: {available})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise WorkloadError(f"{path.name}: not valid YAML: {exc}") from exc
    _known(path.name, raw or {}, {"profile", "description", "defaults", "tests"})
    raw = raw or {}
    _check(path.name, isinstance(raw.get("profile"), str), "profile: must be a name")
    _known(
        f"{path.name}: defaults",
        raw.get("defaults") or {},
        {"repetitions", "load", "stack", "drain_timeout_s", "api_load", "slo"},
    )
    tests = raw.get("tests") or {}
    _known(f"{path.name}: tests", tests, set(TESTS))
    for name, spec in tests.items():
        _known(
            f"{path.name}: tests.{name}",
            spec or {},
            {"description", "load", "stack", "steps", "repetitions", "search", "slo", "api_load"},
        )
    workload = Workload(
        profile=raw["profile"],
        description=str(raw.get("description", "")),
        defaults=dict(raw.get("defaults") or {}),
        tests={name: dict(spec or {}) for name, spec in tests.items()},
        path=path,
    )
    for name in workload.tests:  # every test must resolve, so a bad file fails at load, not mid-suite
        workload.plan(name)
    return workload


def with_step(step: Step, **changes: Any) -> Step:
    """A copy of a step with load or stack fields changed (a search picks the rate at run time)."""
    load_names = {f.name for f in fields(LoadSettings)}
    load = replace(step.load, **{k: v for k, v in changes.items() if k in load_names})
    stack = replace(step.stack, **{k: v for k, v in changes.items() if k not in load_names})
    return replace(step, load=load, stack=stack, label=step_label(changes))
