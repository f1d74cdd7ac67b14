"""Kafka as one node or a 3-node KRaft cluster: node properties, storage formatting, instance naming.

The running cluster (ISR, broker failure) is tested in tests/integration/test_07_kafka_cluster.py.
"""

import base64
from types import SimpleNamespace

import pytest

from pipeline.config import load_config
from pipeline.kafka_topics import TopicError, describe_topic
from pipeline.stack.base import StackError
from pipeline.stack.local import LocalStack
from pipeline.stack.process import PidRecord


def local_stack(tmp_path, brokers: int = 1) -> LocalStack:
    return LocalStack(
        load_config(environ={}, overrides={"state_dir": str(tmp_path), "kafka": {"brokers": brokers}})
    )


def test_one_broker_keeps_its_single_node_properties_and_layout(tmp_path):
    stack = local_stack(tmp_path)
    props = stack.kafka_node_properties(1)
    assert props["node.id"] == "1"
    assert props["process.roles"] == "broker,controller"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["log.dirs"] == str(tmp_path / "kafka" / "data")
    for key in (
        "default.replication.factor",
        "min.insync.replicas",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
    ):
        assert props[key] == "1", key
    proc = stack._kafka(1)
    assert proc.name == "kafka"
    assert proc.argv[-1] == str(tmp_path / "kafka" / "server.properties")


def test_three_brokers_each_get_their_node_id_ports_and_log_dir(tmp_path):
    stack = local_stack(tmp_path, brokers=3)
    nodes = {node: stack.kafka_node_properties(node) for node in (1, 2, 3)}
    quorum = "127.0.0.1:19093,127.0.0.1:19103,127.0.0.1:19113"
    for node, props in nodes.items():
        step = 10 * (node - 1)
        assert props["node.id"] == str(node)
        assert props["process.roles"] == "broker,controller"
        assert props["controller.quorum.bootstrap.servers"] == quorum
        assert "controller.quorum.voters" not in props  # the voters are fixed by formatting
        assert props["listeners"] == (
            f"PLAINTEXT://127.0.0.1:{19092 + step},CONTROLLER://127.0.0.1:{19093 + step}"
        )
        assert props["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{19092 + step}"
        assert props["log.dirs"] == str(tmp_path / "kafka" / f"broker-{node}" / "data")
        assert props["default.replication.factor"] == "3"
        assert props["min.insync.replicas"] == "2"
        assert props["offsets.topic.replication.factor"] == "3"
        assert props["transaction.state.log.replication.factor"] == "3"
        assert props["transaction.state.log.min.isr"] == "2"
        proc = stack._kafka(node)
        assert proc.name == f"kafka-{node}"
        assert proc.argv[-1] == str(tmp_path / "kafka" / f"broker-{node}" / "server.properties")
        assert f"-Xmx{stack.config.kafka.heap_mb}m" in proc.argv
    assert len({p["log.dirs"] for p in nodes.values()}) == 3


def _meta(path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def test_three_nodes_are_formatted_as_one_cluster_with_a_three_voter_quorum(tmp_path):
    stack = local_stack(tmp_path, brokers=3)
    stack._prepare_kafka()
    metas = {n: _meta(tmp_path / "kafka" / f"broker-{n}" / "data" / "meta.properties") for n in (1, 2, 3)}
    assert len({m["cluster.id"] for m in metas.values()}) == 1
    assert {n: m["node.id"] for n, m in metas.items()} == {1: "1", 2: "2", 3: "3"}
    directory_ids = {m["directory.id"] for m in metas.values()}
    assert len(directory_ids) == 3
    # Every node's initial metadata checkpoint holds the same voter set: all three directory ids.
    raw_ids = [base64.urlsafe_b64decode(d + "==") for d in directory_ids]
    for node in (1, 2, 3):
        log_dir = tmp_path / "kafka" / f"broker-{node}" / "data" / "__cluster_metadata-0"
        checkpoint = (log_dir / "00000000000000000000-0000000000.checkpoint").read_bytes()
        assert all(raw in checkpoint for raw in raw_ids), f"node {node} lacks a voter"
    stack._prepare_kafka()  # formatted: nothing happens again
    assert _meta(tmp_path / "kafka" / "broker-2" / "data" / "meta.properties") == metas[2]


def test_a_partly_formatted_cluster_is_not_reformatted(tmp_path):
    stack = local_stack(tmp_path, brokers=3)
    data = tmp_path / "kafka" / "broker-1" / "data"
    data.mkdir(parents=True)
    (data / "meta.properties").write_text("node.id=1\n")
    with pytest.raises(StackError, match=r"formatted for brokers \[1\] but not \[2, 3\].*down --purge"):
        stack._prepare_kafka()


def test_kill_and_restart_address_one_broker_and_default_to_broker_one(tmp_path):
    one = local_stack(tmp_path / "one")
    assert one._resolve("kafka", None).name == "kafka"
    assert one._resolve("kafka", 1).name == "kafka"
    with pytest.raises(StackError, match="kafka has a single instance; got which=2"):
        one._resolve("kafka", 2)
    three = local_stack(tmp_path / "three", brokers=3)
    assert three._resolve("kafka", None).name == "kafka-1"
    assert three._resolve("kafka", 3).name == "kafka-3"
    with pytest.raises(StackError, match=r"kafka has 3 brokers \(kafka\.brokers\); got which=4"):
        three._resolve("kafka", 4)


def test_status_lists_every_broker_with_its_address(tmp_path):
    stack = local_stack(tmp_path, brokers=3)
    status = stack.status()
    kafka = [i for i in status.instances if i.component == "kafka"]
    assert [i.instance for i in kafka] == ["kafka-1", "kafka-2", "kafka-3"]
    assert [i.detail for i in kafka] == [
        "node 1, 127.0.0.1:19092",
        "node 2, 127.0.0.1:19102",
        "node 3, 127.0.0.1:19112",
    ]
    assert not any(i.running for i in kafka)
    assert status.extra["kafka_bootstrap_servers"] == stack.config.kafka.bootstrap_servers


def test_a_running_cluster_of_another_size_is_refused(tmp_path):
    import sys

    from pipeline.stack.process import ManagedProcess

    single = ManagedProcess(
        "kafka",
        [sys.executable, "-c", "import time; time.sleep(600)"],
        pid_dir=tmp_path / "pids",
        log_dir=tmp_path / "logs",
    )
    single.start()
    try:
        stack = local_stack(tmp_path, brokers=3)
        with pytest.raises(StackError, match=r"Kafka instances \['kafka'\] of a cluster of another size"):
            stack._start_kafka()
        assert "kafka" in [i.instance for i in stack.status().instances if i.running]
    finally:
        single.stop(timeout=5)


def test_foreground_runs_the_requested_broker(tmp_path):
    stack = local_stack(tmp_path, brokers=3)
    proc = stack.foreground("kafka", 2)
    assert proc.name == "kafka-2"
    assert all((tmp_path / "kafka" / f"broker-{n}" / "data" / "meta.properties").exists() for n in (1, 2, 3))
    with pytest.raises(StackError, match="got which=4"):
        stack.foreground("kafka", 4)


def test_pid_names_are_ordered_by_node(tmp_path):
    stack = local_stack(tmp_path, brokers=3)
    stack.pid_dir.mkdir(parents=True)
    for name in ("kafka-10", "kafka-2", "kafka", "kafka-x", "spark-worker-1"):
        record = PidRecord(name=name, pid=1, create_time=0.0, argv=[], log="")
        (stack.pid_dir / f"{name}.json").write_text(str(record.__dict__).replace("'", '"'))
    assert stack._kafka_pid_names() == ["kafka", "kafka-2", "kafka-10"]


class FakeAdmin:
    """list_topics() as confluent_kafka returns it, for one topic."""

    def __init__(self, partitions, error=None):
        self.topic = SimpleNamespace(partitions=partitions, error=error)

    def list_topics(self, topic=None, timeout=None):
        return SimpleNamespace(topics={topic: self.topic})


def test_describe_topic_reports_leader_replicas_and_isr_per_partition():
    part = lambda leader, replicas, isrs: SimpleNamespace(leader=leader, replicas=replicas, isrs=isrs)  # noqa: E731
    admin = FakeAdmin({1: part(3, [3, 1, 2], [3, 1]), 0: part(1, [1, 2, 3], [1, 2, 3])})
    state = describe_topic(admin, "t")
    assert [p.partition for p in state.partitions] == [0, 1]
    assert state.partitions[1].leader == 3
    assert state.partitions[1].replicas == (3, 1, 2)
    assert state.partitions[1].isr == (3, 1)
    assert state.min_isr_size == 2
    assert state.under_replicated == [1]
    assert state.leaderless == []
    assert state.to_dict()["partitions"][0] == {
        "partition": 0,
        "leader": 1,
        "replicas": [1, 2, 3],
        "isr": [1, 2, 3],
    }
    with pytest.raises(TopicError, match="cannot describe topic t"):
        describe_topic(FakeAdmin({}, error="UNKNOWN_TOPIC_OR_PART"), "t")
