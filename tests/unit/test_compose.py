"""docker-compose.yml describes the local configuration's stack, and every service's command builds."""

import re

import pytest
import yaml

from pipeline.config import REPO_ROOT, load_config
from pipeline.stack.base import COMPONENTS, SCALABLE
from pipeline.stack.local import LocalStack

COMPOSE = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def component_commands() -> dict[str, list[str]]:
    return {name: svc["command"] for name, svc in SERVICES.items() if svc["command"][0] == "component"}


def test_every_service_runs_our_image_on_the_host_network():
    for name, svc in SERVICES.items():
        assert svc["image"] == "weatherbench:latest", name
        assert svc["network_mode"] == "host", name


def test_every_component_is_a_service_and_worker_counts_match_the_local_config():
    config = load_config(environ={})
    started = [cmd[1] for cmd in component_commands().values()]
    assert set(started) == set(COMPONENTS)
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
    stack = LocalStack(load_config(environ={}, overrides={"state_dir": str(tmp_path)}))
    proc = stack.foreground(component, index)
    assert proc.argv and proc.argv[0]
    assert (tmp_path / "stack.yaml").exists()
    if component == "kafka":
        assert (tmp_path / "kafka" / "data" / "meta.properties").exists()  # storage formatted
