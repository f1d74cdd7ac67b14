"""Local backend: clear errors for missing Java or jars and bad requests; Kafka storage formatting."""

import uuid

import pytest

from pipeline.config import load_config
from pipeline.stack.base import StackError, UnsupportedOperation
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
    with pytest.raises(
        StackError, match="unknown component 'spark-master'; expected one of: spark-worker, ray-w"
    ):
        stack.scale("spark-master", 3)
    # Kafka's broker count is fixed when its quorum is formatted: the refusal says where to set it.
    with pytest.raises(UnsupportedOperation, match=r"cannot scale kafka to 3: .*kafka\.brokers"):
        stack.scale("kafka", 3)
    with pytest.raises(StackError, match="count must be >= 0"):
        stack.scale("spark-worker", -1)


def test_kafka_storage_formats_with_a_cluster_id_that_starts_with_a_dash(monkeypatch, tmp_path):
    # base64 of a first byte 0xF8 begins with "-": the id must not be parsed as an option.
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(bytes=b"\xf8" + bytes(15)))
    stack = LocalStack(load_config(environ={}, overrides={"state_dir": str(tmp_path)}))
    stack._prepare_kafka()
    meta = (tmp_path / "kafka" / "data" / "meta.properties").read_text()
    assert "cluster.id=-" in meta


def test_container_network_settings_reach_the_broker_properties(tmp_path):
    config = load_config(
        environ={},
        overrides={
            "state_dir": str(tmp_path),
            "network": {"bind": "0.0.0.0"},
            "kafka": {"host": "kafka-{node}", "brokers": 3},
        },
    )
    props = LocalStack(config).kafka_node_properties(2)
    assert props["listeners"] == "PLAINTEXT://0.0.0.0:19102,CONTROLLER://0.0.0.0:19103"
    # Clients are told the broker's name in the network, never the wildcard it binds.
    assert props["advertised.listeners"] == "PLAINTEXT://kafka-2:19102"
    assert props["controller.quorum.bootstrap.servers"] == "kafka-1:19093,kafka-2:19103,kafka-3:19113"
