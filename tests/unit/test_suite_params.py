"""Suite parameters: a bad value is refused with the parameter's name; good ones become the right plans."""

from __future__ import annotations

import pytest

from weatherbench.suite import (
    ParamError,
    SuiteParams,
    check_params,
    check_training_params,
    parse_fault,
    plan_for,
)

NIGHTLY = ("latency", "throughput", "scalability-spark", "scalability-ray", "fault-tolerance", "resources")


@pytest.mark.parametrize(
    ("raw", "param", "text"),
    [
        ({"profile": "huge"}, "profile", "'huge' is not one of"),
        ({"tests": []}, "tests", "choose at least one"),
        ({"tests": ["latency", "recovery"]}, "tests", "recovery not offered here"),
        ({"duration_s": 2}, "duration_s", "between 5 and"),
        ({"duration_s": 7.5}, "duration_s", "whole number"),
        ({"warmup_s": -1}, "warmup_s", "between 0 and"),
        ({"stations": 0}, "stations", "between 1 and"),
        ({"rate": 0}, "rate", "above 0"),
        ({"rate": "fast"}, "rate", "above 0"),
        ({"spark_workers": [1, 0]}, "spark_workers", "between 1 and 8"),
        ({"ray_workers": [2, 2]}, "ray_workers", "twice"),
        ({"load_steps": ["ten"]}, "load_steps", "whole numbers"),
        ({"faults": ["explode kafka"]}, "faults", "action 'explode'"),
        ({"faults": ["kill zookeeper"]}, "faults", "component 'zookeeper'"),
        ({"faults": ["kill the spark worker please"]}, "faults", "is not a fault"),
        ({"faults": ["kill spark-worker 1"], "fault_at_s": 500}, "fault_at_s", "after each step's load ends"),
        ({"recipients": "not-an-address"}, "recipients", "not an e-mail address"),
    ],
)
def test_a_bad_value_is_refused_naming_its_parameter(raw: dict, param: str, text: str) -> None:
    with pytest.raises(ParamError) as caught:
        check_params({"tests": list(NIGHTLY), **raw}, NIGHTLY)
    assert caught.value.param == param
    assert str(caught.value).startswith(f"parameter {param!r}: ")
    assert text in str(caught.value)


def test_partitions_must_ascend_and_brokers_be_one_or_three() -> None:
    offered = ("partitions", "brokers")
    with pytest.raises(ParamError, match="'partitions': must ascend"):
        check_params({"partitions": [8, 4]}, offered)
    with pytest.raises(ParamError, match="'brokers': the local backend runs 1 or 3"):
        check_params({"brokers": [2]}, offered)


def test_a_profile_field_the_overrides_break_is_blamed_on_the_parameter() -> None:
    # The profile's faults hit 50 s into each step; 10 s steps end before that.
    with pytest.raises(ParamError) as caught:
        check_params({"tests": ["fault-tolerance"], "duration_s": 5, "warmup_s": 5}, NIGHTLY)
    assert caught.value.param == "faults"
    assert "after the step's load ends" in str(caught.value)


def test_step_lists_become_one_step_each() -> None:
    params = check_params(
        {
            "tests": list(NIGHTLY),
            "duration_s": 20,
            "warmup_s": 5,
            "load_steps": [10, 50],
            "spark_workers": [1, 2],
            "ray_workers": [2, 1],
            "faults": ["kill spark-worker 1 for 15s", "restart kafka"],
            "fault_at_s": 12,
            "fault_duration_s": 40,
        },
        NIGHTLY,
    )
    throughput = plan_for("throughput", params)
    assert [(s.load.stations, s.load.rate) for s in throughput.steps] == [(10, 10.0), (50, 50.0)]
    assert [s.stack.spark_workers for s in plan_for("scalability-spark", params).steps] == [1, 2]
    assert [s.stack.ray_workers for s in plan_for("scalability-ray", params).steps] == [2, 1]
    faults = plan_for("fault-tolerance", params)
    assert [s.label for s in faults.steps] == ["kill spark-worker-1", "restart kafka"]
    first = faults.steps[0].faults[0]
    assert (first.component, first.which, first.action, first.at_s, first.down_s) == (
        "spark-worker",
        1,
        "kill",
        12.0,
        15.0,
    )
    assert faults.steps[0].load.duration_s == 40  # fault steps run longer
    assert plan_for("latency", params).steps[0].load.duration_s == 20


def test_empty_fields_keep_the_profile_values() -> None:
    params = check_params({"tests": ["latency", "recovery"]}, ("latency", "recovery"))
    assert plan_for("latency", params) == plan_for("latency", SuiteParams())
    recovery = plan_for("recovery", params)
    assert recovery.steps[-1].stack.brokers == 3  # the profile's 3-broker step keeps its shape


def test_fault_time_alone_moves_the_profile_faults_keeping_their_steps() -> None:
    params = check_params({"tests": ["recovery"], "fault_at_s": 20}, ("recovery",))
    plan = plan_for("recovery", params)
    profile = plan_for("recovery", SuiteParams(tests=("recovery",)))
    assert [s.label for s in plan.steps] == [s.label for s in profile.steps]
    assert {f.at_s for s in plan.steps for f in s.faults} == {20.0}
    assert plan.steps[-1].stack.brokers == 3


def test_fault_text_forms() -> None:
    assert parse_fault("restart kafka", 30) == {"at_s": 30, "component": "kafka", "action": "restart"}
    assert parse_fault("Kill ray-worker-2 for 7.5s", 10) == {
        "at_s": 10,
        "component": "ray-worker",
        "action": "kill",
        "which": 2,
        "down_s": 7.5,
    }


def test_checked_params_round_trip_through_xcom_form() -> None:
    params = check_params({"tests": ["latency"], "recipients": "a@example.com, b@example.com"}, NIGHTLY)
    assert params.recipients == ("a@example.com", "b@example.com")
    assert SuiteParams.from_dict(params.to_dict()) == params
    assert SuiteParams.from_dict({**params.to_dict(), "horizon_minutes": 60}) == params


def test_training_params() -> None:
    assert check_training_params({"horizon_minutes": 120})["horizon_minutes"] == 120
    with pytest.raises(ParamError, match="'horizon_minutes': must be a whole number of hours"):
        check_training_params({"horizon_minutes": 90})
    with pytest.raises(ParamError, match="'rollout_timeout_s'"):
        check_training_params({"rollout_timeout_s": 1})
