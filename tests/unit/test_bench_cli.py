"""benchmark_system: the guide's section 9 commands map to test plans; bad options are named."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from weatherbench.cli import UsageError, build_parser, main, plan_from_args, print_summary
from weatherbench.workloads import WorkloadError


def plan(*argv: str):
    return plan_from_args(build_parser().parse_args(list(argv)))


def test_latency_with_duration() -> None:
    result = plan("--test", "latency", "--duration", "300")
    assert result.test == "latency"
    assert result.steps[0].load.duration_s == 300


def test_throughput_runs_one_step_at_the_given_stations() -> None:
    result = plan("--test", "throughput", "--stations", "100", "--duration", "60")
    assert [(s.load.stations, s.load.rate, s.load.duration_s) for s in result.steps] == [(100, 100.0, 60.0)]


@pytest.mark.parametrize("component", ["spark", "ray"])
def test_scalability_over_workers(component: str) -> None:
    result = plan("--test", "scalability", "--component", component, "--workers", "1,2,4,8")
    assert result.test == f"scalability-{component}"
    assert [getattr(s.stack, f"{component}_workers") for s in result.steps] == [1, 2, 4, 8]


def test_scalability_over_load() -> None:
    result = plan("--test", "scalability", "--load", "1,10,50,100")
    assert result.test == "scalability-load"
    assert [(s.load.stations, s.load.rate) for s in result.steps] == [(1, 1), (10, 10), (50, 50), (100, 100)]


def test_partition_scaling_as_in_section_5_3() -> None:
    result = plan("--partitions", "2,4,8", "--stations", "50", "--rate", "50", "--duration", "120")
    assert result.test == "partitions"
    assert [s.stack.partitions for s in result.steps] == [2, 4, 8]
    assert {(s.load.stations, s.load.rate, s.load.duration_s) for s in result.steps} == {(50, 50.0, 120.0)}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--test", "scalability", "--component", "spark", "--workers", "1,two"],
            "--workers: expected comma-separated",
        ),
        (
            ["--test", "scalability", "--component", "spark", "--workers", "0,2"],
            "--workers: every value must be >= 1",
        ),
        (["--test", "scalability"], "--test scalability: give --component"),
        (["--test", "brokers", "--brokers", "1,2"], "--brokers: the local backend runs 1 or 3"),
        (["--test", "latency", "--component", "gpu"], "--component: latency takes one of"),
        (["--test", "resources", "--component", "redis"], "--component: resources takes one of"),
        ([], "--test: required"),
    ],
)
def test_bad_options_are_named(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        plan(*argv)


def test_bad_values_fail_through_workload_validation() -> None:
    with pytest.raises(WorkloadError, match="duration_s: must be >= 1"):
        plan("--test", "latency", "--duration", "0")
    with pytest.raises(WorkloadError, match=r"spark_workers: must be <= 8"):
        plan("--test", "scalability", "--component", "spark", "--workers", "1,16")


def test_main_reports_bad_parameters_before_touching_anything(capsys, tmp_path: Path) -> None:
    code = main(["--test", "throughput", "--stations", "0", "--results-url", f"sqlite:///{tmp_path}/r.db"])
    assert code == 2
    assert "stations: must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "r.db").exists()  # nothing was stored, no stack was started


def test_benchmark_engine_never_imports_airflow() -> None:
    package = Path(__file__).resolve().parents[2] / "plugins" / "weatherbench"
    offenders = []
    for path in package.rglob("*.py"):
        if "airflow" in path.relative_to(package).parts:
            continue  # the Airflow adapters live in their own subpackage
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] == "airflow"]
    assert offenders == []


def test_bad_input_test_and_its_table(capsys) -> None:
    result = plan("--test", "bad-input", "--duration", "30")
    assert result.test == "bad-input"
    assert [(s.label, s.load.duration_s, s.load.bad_input.fraction) for s in result.steps] == [
        ("5% bad input", 30.0, 0.05)
    ]
    kinds = [
        {"kind": "late", "sent": 4, "dead_lettered": 3, "wrong_reason": 0, "missing": 1, "reasons": ["late"]},
    ]
    check = {
        "step": "5% bad input",
        "repetition": 0,
        "fraction": 0.05,
        "sent": 4,
        "passed": False,
        "kinds": kinds,
        "unexpected": 0,
        "good_lost": 0,
        "dropped_by_watermark": 2.0,
    }
    summary = {"test": "bad-input", "profile": "quick", "steps": [], "bad_input": [check]}
    print_summary(summary, build_parser().parse_args(["--test", "bad-input"]), [])
    out = capsys.readouterr().out
    assert "== bad input, 5% bad input (repetition 0): 4 bad records, 5% of the stream: FAILED" in out
    assert "late               4              3             0        1  late" in out
    assert "good records dead-lettered: 0; good records lost: 0; dropped by the watermark" in out
