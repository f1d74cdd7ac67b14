"""Workload files: both shipped profiles resolve, and bad fields fail with their path named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.producer.badrecords import BAD_KINDS
from weatherbench.workloads import TESTS, WORKLOAD_DIR, WorkloadError, load_workload


@pytest.mark.parametrize("profile", ["quick", "full"])
def test_shipped_profiles_resolve_every_test(profile: str) -> None:
    workload = load_workload(profile)
    assert set(workload.tests) == set(TESTS)
    for test in TESTS:
        plan = workload.plan(test)
        assert plan.steps, test
        for step in plan.steps:
            assert step.load.topic == "weather-raw-benchmark"
            assert step.stack.trigger_ms <= step.stack.window_ms


def test_full_profile_uses_the_guide_sizes() -> None:
    full = load_workload("full")
    assert full.plan("latency").steps[0].stack.window == "5 minutes"
    assert [s.stack.spark_workers for s in full.plan("scalability-spark").steps] == [1, 2, 4, 8]
    assert [s.stack.ray_workers for s in full.plan("scalability-ray").steps] == [1, 2, 4, 8]
    assert [s.stack.partitions for s in full.plan("partitions").steps] == [2, 4, 8]
    assert [s.load.stations for s in full.plan("scalability-load").steps] == [1, 10, 50, 100]


def test_overrides_apply_to_every_step_and_steps_win_over_them() -> None:
    plan = load_workload("quick").plan("scalability-spark", {"duration_s": 33, "spark_workers": 5})
    assert all(step.load.duration_s == 33 for step in plan.steps)
    # The step's own spark_workers wins over the flat override.
    assert [step.stack.spark_workers for step in plan.steps] == [1, 2]
    replaced = load_workload("quick").plan("throughput", {"steps": [{"stations": 100, "rate": 100}]})
    assert [(s.load.stations, s.load.rate) for s in replaced.steps] == [(100, 100.0)]
    assert replaced.steps[0].label == "rate=100,stations=100"


def write_variant(tmp_path: Path, mutate) -> Path:
    raw = yaml.safe_load((WORKLOAD_DIR / "quick.yaml").read_text())
    mutate(raw)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r["defaults"]["load"].update(rate=-5), r"tests\.\w[\w-]*\.load\.rate: must be >= 0.001"),
        (
            lambda r: r["tests"]["throughput"]["steps"].append({"stations": 0}),
            r"tests\.throughput\.steps\[3\]\.stations: must be >= 1",
        ),
        (
            lambda r: r["tests"]["scalability-spark"]["steps"].append({"spark_workers": 2.5}),
            r"steps\[2\]\.spark_workers: must be a whole number",
        ),
        (lambda r: r["defaults"]["stack"].update(window="soon"), r"\.window: must be a duration"),
        (
            lambda r: r["defaults"]["load"].update(source="radio"),
            r"\.source: must be one of synthetic, replay",
        ),
        (lambda r: r["tests"].update(nonsense={}), r"tests: unknown field\(s\) nonsense"),
        (
            lambda r: r["tests"]["partitions"]["steps"].append({"partitons": 3}),
            r"steps\[3\]: unknown field\(s\) partitons",
        ),
        (lambda r: r["defaults"]["stack"].update(brokers=2), r"\.brokers: must be 1 or 3"),
        (lambda r: r["defaults"]["load"].update(message_bytes=20_000), r"message_bytes: must be <= 10000"),
        (lambda r: r["tests"]["sustainable"]["search"].update(high=1), r"search\.high: must be above low"),
        (lambda r: r["defaults"]["load"].pop("topic"), r"missing field\(s\) topic"),
    ],
)
def test_bad_fields_are_named(tmp_path: Path, mutate, message: str) -> None:
    with pytest.raises(WorkloadError, match=message):
        load_workload(write_variant(tmp_path, mutate))


def test_bad_override_and_unknown_test_are_named() -> None:
    workload = load_workload("quick")
    with pytest.raises(WorkloadError, match=r"overrides: unknown field\(s\) worker\b"):
        workload.plan("latency", {"worker": 3})
    with pytest.raises(WorkloadError, match=r"duration_s: must be >= 1"):
        workload.plan("latency", {"duration_s": 0})
    with pytest.raises(WorkloadError, match="unknown test 'speed'"):
        workload.plan("speed")


def test_missing_profile_lists_the_available_ones() -> None:
    with pytest.raises(WorkloadError, match=r"no such file .*profiles: full, quick"):
        load_workload("medium")


def test_bad_input_test_mixes_every_kind_into_a_short_step() -> None:
    plan = load_workload("quick").plan("bad-input")
    (step,) = plan.steps
    assert step.load.bad_input is not None
    assert step.load.bad_input.fraction == 0.05
    assert step.load.bad_input.kinds == BAD_KINDS
    assert (step.load.stations, step.load.rate, step.load.total_s) == (10, 20, 60)
    assert step.label == "5% bad input"
    # Other tests send good records only, and a step may set its own mix (all kinds by default).
    assert load_workload("quick").plan("latency").steps[0].load.bad_input is None
    stepped = load_workload("quick").plan("latency", {"steps": [{"bad_input": {"fraction": 0.5}}, {}]})
    assert stepped.steps[0].load.bad_input.kinds == BAD_KINDS
    assert [s.label for s in stepped.steps] == ["50% bad input", "baseline"]


def _set_bad_input(**bad_input):
    def mutate(raw):
        raw["tests"]["bad-input"]["load"]["bad_input"] = bad_input

    return mutate


@pytest.mark.parametrize(
    ("bad_input", "message"),
    [
        ({"fraction": 0, "kinds": ["late"]}, r"bad_input\.fraction: must be in \(0, 0\.5\]"),
        ({"fraction": 0.7}, r"bad_input\.fraction: must be in \(0, 0\.5\] .*got 0\.7"),
        ({"fraction": "5%"}, r"bad_input\.fraction: must be a number"),
        ({"kinds": ["late"]}, r"bad_input: missing field\(s\) fraction"),
        ({"fraction": 0.1, "kinds": ["late", "garbled"]}, r"bad_input\.kinds\[1\]: 'garbled' is not one of"),
        ({"fraction": 0.1, "kinds": []}, r"bad_input\.kinds: must be a non-empty list"),
        ({"fraction": 0.1, "kinds": "late"}, r"bad_input\.kinds: must be a non-empty list"),
        ({"fraction": 0.1, "kinds": ["late", "late"]}, r"bad_input\.kinds: lists late more than once"),
        ({"fraction": 0.1, "share": 2}, r"bad_input: unknown field\(s\) share"),
    ],
)
def test_bad_input_fields_are_named(tmp_path: Path, bad_input: dict, message: str) -> None:
    with pytest.raises(WorkloadError, match=rf"tests\.bad-input\.load\.{message}"):
        load_workload(write_variant(tmp_path, _set_bad_input(**bad_input)))
