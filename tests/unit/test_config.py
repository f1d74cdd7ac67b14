"""Stack configuration: file, environment and override layering; errors name the bad key."""

from pathlib import Path

import pytest

from pipeline.config import ConfigError, duration_ms, load_config


def test_defaults_come_from_the_repo_file():
    config = load_config(environ={})
    assert config.kafka.raw_topic == "weather-raw"
    assert config.spark.master_url.startswith("spark://127.0.0.1:")
    assert config.state_dir.name == ".state"


def test_environment_overrides_file_and_is_typed():
    config = load_config(environ={"WB_SPARK_WORKERS": "3", "WB_RAY_INCLUDE_DASHBOARD": "false"})
    assert config.spark.workers == 3
    assert config.ray.include_dashboard is False


def test_caller_overrides_win_over_environment(tmp_path: Path):
    config = load_config(
        environ={"WB_SPARK_WORKERS": "3"},
        overrides={"spark": {"workers": 1}, "state_dir": str(tmp_path)},
    )
    assert config.spark.workers == 1
    assert config.state_dir == tmp_path


def test_unknown_key_is_rejected_with_its_name():
    with pytest.raises(ConfigError, match=r"spark\.wrokers: unknown setting"):
        load_config(environ={}, overrides={"spark": {"wrokers": 2}})


def test_mistyped_value_is_rejected_with_its_name():
    with pytest.raises(ConfigError, match=r"kafka\.partitions: expected int"):
        load_config(environ={"WB_KAFKA_PARTITIONS": "four"})


def test_port_collision_is_rejected():
    with pytest.raises(ConfigError, match="both use port 8088"):
        load_config(environ={}, overrides={"spark": {"master_ui_port": 8088}})


def test_dump_round_trips(tmp_path: Path):
    config = load_config(
        environ={}, overrides={"state_dir": str(tmp_path), "spark": {"window": "10 seconds"}}
    )
    again = load_config(config.dump(), environ={})
    assert again.to_dict() == config.to_dict()


@pytest.mark.parametrize(
    ("text", "expected"),
    [("5 minutes", 300_000), ("1 minute", 60_000), ("10 seconds", 10_000), ("500 ms", 500), ("2s", 2000)],
)
def test_duration_ms(text, expected):
    assert duration_ms(text) == expected


def test_duration_rejects_unknown_units():
    with pytest.raises(ConfigError, match="cannot read duration"):
        duration_ms("5 fortnights")
