"""The local backend refuses to start with a clear error when Java or the JVM jars are missing."""

import pytest

from pipeline.config import load_config
from pipeline.stack.base import StackError
from pipeline.stack.local import LocalStack, java_major_version


def test_missing_java_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on this PATH
    with pytest.raises(StackError, match="Java not found on PATH"):
        java_major_version()


def test_installed_java_is_new_enough():
    assert java_major_version() >= 17


def test_missing_kafka_jars_point_to_setup(monkeypatch, tmp_path):
    monkeypatch.setenv("WB_JARS_DIR", str(tmp_path / "no-jars"))
    stack = LocalStack(load_config(environ={}, overrides={"state_dir": str(tmp_path / "state")}))
    with pytest.raises(StackError, match=r"Kafka broker jars not found in .*no-jars/kafka: run `make setup`"):
        stack.up(("kafka",))
    assert not list((tmp_path / "state").glob("pids/*.json"))  # nothing was started


def test_scaling_a_fixed_component_is_refused(tmp_path):
    stack = LocalStack(load_config(environ={}, overrides={"state_dir": str(tmp_path)}))
    with pytest.raises(StackError, match="unknown component 'kafka'; expected one of: spark-worker, ray-w"):
        stack.scale("kafka", 3)
    with pytest.raises(StackError, match="count must be >= 0"):
        stack.scale("spark-worker", -1)
