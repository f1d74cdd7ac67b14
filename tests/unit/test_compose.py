"""docker-compose.yml describes the local configuration's stack, and every service's command builds.

Services without a profile are the default stack (one Kafka broker); the kafka-3 profile adds
brokers 2 and 3, run with WB_KAFKA_BROKERS=3 like the local backend's 3-broker cluster.
"""

import re

import pytest
import yaml

from pipeline.config import REPO_ROOT, load_config
from pipeline.stack.base import COMPONENTS, SCALABLE
from pipeline.stack.local import LocalStack

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
KAFKA_3 = "kafka-3"  # the profile of the 3-broker cluster


def profile_services(profile: str | None) -> dict[str, dict]:
    """The services `docker compose [--profile P] up` starts: those without a profile, plus P's."""
    return {n: s for n, s in SERVICES.items() if not s.get("profiles") or profile in s["profiles"]}


def brokers_of(service: dict) -> int:
    """kafka.brokers in a container of this service when its profile is the one enabled."""
    return 3 if KAFKA_3 in service.get("profiles", []) else 1


def kafka_indexes(services: dict[str, dict]) -> dict[str, int]:
    return {
        name: int(cmd[cmd.index("--index") + 1]) if "--index" in cmd else 1
        for name, svc in services.items()
        if (cmd := svc["command"])[:2] == ["component", "kafka"]
    }


def component_commands() -> dict[str, list[str]]:
    return {name: svc["command"] for name, svc in SERVICES.items() if svc["command"][0] == "component"}


def test_every_service_runs_our_image_on_the_host_network():
    for name, svc in SERVICES.items():
        assert svc["image"] == "weatherbench:latest", name
        assert svc["network_mode"] == "host", name


def test_every_component_is_a_service_and_worker_counts_match_the_local_config():
    config = load_config(environ={})
    started = [cmd[1] for name, cmd in component_commands().items() if not SERVICES[name].get("profiles")]
    assert set(started) == set(COMPONENTS)
    assert started.count("kafka") == config.kafka.brokers
    assert started.count("spark-worker") == config.spark.workers
    assert started.count("ray-worker") == config.ray.workers
    for name, cmd in component_commands().items():
        if cmd[1] in SCALABLE:
            assert name == f"{cmd[1]}-{cmd[cmd.index('--index') + 1]}"


def test_health_checks_probe_the_configured_ports():
    config = load_config(environ={})
    probes = {
        name: " ".join(svc["healthcheck"]["test"]) for name, svc in SERVICES.items() if "healthcheck" in svc
    }
    assert "19092" in probes["kafka"] and config.kafka.bootstrap_port == int(
        re.search(r"'127\.0\.0\.1', (\d+)", probes["kafka"]).group(1)
    )
    assert int(re.search(r":(\d+)/json", probes["spark-master"]).group(1)) == config.spark.master_ui_port
    assert int(re.search(r"'127\.0\.0\.1', (\d+)", probes["ray-head"]).group(1)) == config.ray.gcs_port


@pytest.mark.parametrize("command", list(component_commands().values()), ids=list(component_commands()))
def test_each_service_command_builds_the_local_backends_process(tmp_path, command):
    component = command[1]
    index = int(command[3]) if "--index" in command else 1
    service = next(svc for svc in SERVICES.values() if svc["command"] == command)
    overrides = {"state_dir": str(tmp_path), "kafka": {"brokers": brokers_of(service)}}
    stack = LocalStack(load_config(environ={}, overrides=overrides))
    proc = stack.foreground(component, index)
    assert proc.argv and proc.argv[0]
    assert (tmp_path / "stack.yaml").exists()
    if component == "kafka" and brokers_of(service) == 1:
        assert (tmp_path / "kafka" / "data" / "meta.properties").exists()  # storage formatted
    elif component == "kafka":
        assert (tmp_path / "kafka" / f"broker-{index}" / "data" / "meta.properties").exists()


def test_the_kafka_3_profile_runs_the_local_three_broker_cluster():
    config = load_config(environ={"WB_KAFKA_BROKERS": "3"})
    # Every container gets the broker count from the same variable, 1 unless set.
    assert COMPOSE["x-component"]["environment"]["WB_KAFKA_BROKERS"] == "${WB_KAFKA_BROKERS:-1}"
    assert list(kafka_indexes(profile_services(None)).values()) == [1]
    brokers = kafka_indexes(profile_services(KAFKA_3))
    assert sorted(brokers.values()) == config.kafka.node_ids
    for name, index in brokers.items():
        probe = " ".join(SERVICES[name]["healthcheck"]["test"])
        port = int(re.search(r"'127\.0\.0\.1', (\d+)", probe).group(1))
        assert port == config.kafka.broker_port(index), name
        assert SERVICES[name]["environment"]["WB_KAFKA_BROKERS"].startswith("${WB_KAFKA_BROKERS")
