"""Stack configuration: file, environment and override layering; errors name the bad key."""

from pathlib import Path

import pytest

from pipeline.config import LATE_SLACK_MS, ConfigError, duration_ms, load_config


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


def test_kafka_is_one_broker_by_default():
    kafka = load_config(environ={}).kafka
    assert kafka.brokers == 1
    assert kafka.bootstrap_servers == "127.0.0.1:19092"
    assert kafka.controller_quorum == "127.0.0.1:19093"
    assert (kafka.replication_factor, kafka.min_insync_replicas) == (1, 1)
    assert kafka.ports() == {"kafka broker": 19092, "kafka controller": 19093, "kafka metrics": 19094}


def test_three_brokers_get_stepped_ports_all_listed_and_distinct():
    config = load_config(environ={"WB_KAFKA_BROKERS": "3"})
    kafka = config.kafka
    assert kafka.brokers == 3
    assert kafka.bootstrap_servers == "127.0.0.1:19092,127.0.0.1:19102,127.0.0.1:19112"
    assert kafka.controller_quorum == "127.0.0.1:19093,127.0.0.1:19103,127.0.0.1:19113"
    assert (kafka.replication_factor, kafka.min_insync_replicas) == (3, 2)
    expected = {
        "kafka broker 1": 19092,
        "kafka controller 1": 19093,
        "kafka broker 2": 19102,
        "kafka controller 2": 19103,
        "kafka broker 3": 19112,
        "kafka controller 3": 19113,
        "kafka metrics 1": 19094,
        "kafka metrics 2": 19104,
        "kafka metrics 3": 19114,
    }
    ports = config.ports()
    assert {owner: port for owner, port in ports.items() if owner.startswith("kafka")} == expected
    assert len(set(ports.values())) == len(ports)  # no two owners share a port


def test_three_broker_ports_take_part_in_the_collision_check():
    with pytest.raises(ConfigError, match="spark master and kafka broker 2 both use port 19102"):
        load_config(environ={"WB_KAFKA_BROKERS": "3"}, overrides={"spark": {"master_port": 19102}})
    # The same port is free for Spark while Kafka runs one broker.
    assert load_config(environ={}, overrides={"spark": {"master_port": 19102}}).spark.master_port == 19102


@pytest.mark.parametrize("count", ["2", "0", "5"])
def test_unsupported_broker_counts_are_rejected_with_the_field_name(count):
    with pytest.raises(ConfigError, match=rf"kafka\.brokers: expected 1 or 3, got {count}"):
        load_config(environ={"WB_KAFKA_BROKERS": count})


def test_supervisor_settings_are_layered_and_checked():
    assert load_config(environ={}).supervisor.enabled is True
    config = load_config(environ={"WB_SUPERVISOR_ENABLED": "false", "WB_SUPERVISOR_MAX_RESTARTS": "2"})
    assert config.supervisor.enabled is False
    assert config.supervisor.max_restarts == 2
    with pytest.raises(ConfigError, match=r"supervisor\.backoff_initial_s must be > 0"):
        load_config(environ={}, overrides={"supervisor": {"backoff_initial_s": 0}})
    with pytest.raises(ConfigError, match=r"supervisor\.max_restarts must be >= 0"):
        load_config(environ={}, overrides={"supervisor": {"max_restarts": -1}})


def test_far_late_limit_defaults_to_window_plus_watermark_plus_slack():
    spark = load_config(environ={}).spark
    assert spark.late_limit == "auto"
    assert spark.late_limit_ms == duration_ms(spark.window) + duration_ms(spark.watermark) + LATE_SLACK_MS
    # Live Open-Meteo observations are stamped with the start of a 15-minute interval and polled
    # every minute: the default never dead-letters one that arrives that old.
    assert spark.late_limit_ms > 16 * 60_000
    short = load_config(environ={}, overrides={"spark": {"window": "10 seconds", "watermark": "3 seconds"}})
    assert short.spark.late_limit_ms == 13_000 + LATE_SLACK_MS


def test_far_late_limit_can_be_set_and_is_checked():
    config = load_config(environ={"WB_SPARK_LATE_LIMIT": "2 hours"})
    assert config.spark.late_limit_ms == 7_200_000
    with pytest.raises(ConfigError, match=r"spark\.late_limit: '3 minutes' is shorter than window"):
        load_config(environ={}, overrides={"spark": {"late_limit": "3 minutes"}})
    with pytest.raises(ConfigError, match=r"spark\.late_limit.*cannot read duration"):
        load_config(environ={}, overrides={"spark": {"late_limit": "soon"}})


def test_loopback_is_the_default_for_every_address():
    config = load_config(environ={})
    assert (config.network.bind, config.network.advertised_address) == ("127.0.0.1", "127.0.0.1")
    assert config.spark.master_ui_url == "http://127.0.0.1:8090"
    assert config.spark.streaming_ui_url == "http://127.0.0.1:4050"
    assert config.ray.address == "127.0.0.1:6390"
    assert config.api.url == "http://127.0.0.1:8088"
    assert config.inference.metrics_url == "http://127.0.0.1:9102/metrics"


def test_container_hosts_name_each_broker_and_service():
    environ = {
        "WB_NETWORK_BIND": "0.0.0.0",
        "WB_KAFKA_HOST": "kafka-{node}",
        "WB_KAFKA_BROKERS": "3",
        "WB_SPARK_MASTER_HOST": "spark-master",
        "WB_RAY_HEAD_HOST": "ray-head",
        "WB_API_HOST": "api",
    }
    config = load_config(environ=environ)
    assert config.kafka.bootstrap_servers == "kafka-1:19092,kafka-2:19102,kafka-3:19112"
    assert config.kafka.controller_quorum == "kafka-1:19093,kafka-2:19103,kafka-3:19113"
    assert config.spark.master_url == "spark://spark-master:7177"
    assert config.ray.address == "ray-head:6390"
    assert config.api.url == "http://api:8088"


def test_explicit_bootstrap_servers_win_over_the_derived_ones():
    config = load_config(environ={"WB_KAFKA_BOOTSTRAP": " b1.example:9092,b2.example:9092 "})
    assert config.kafka.bootstrap_servers == "b1.example:9092,b2.example:9092"


def test_auto_advertise_resolves_this_hosts_name():
    import socket

    config = load_config(environ={"WB_NETWORK_ADVERTISE": "auto"})
    assert config.network.advertised_address == socket.gethostbyname(socket.gethostname())


def test_metrics_ports_of_clients_take_part_in_the_collision_check():
    with pytest.raises(ConfigError, match="benchmark harness metrics and serving api both use port 8088"):
        load_config(environ={"WB_MONITORING_HARNESS_PORT": "8088"})
