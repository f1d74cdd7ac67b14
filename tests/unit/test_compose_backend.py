"""Compose backend against a fake Docker engine at the HTTP level (tests/fake_docker.py).

No Docker engine runs here: the backend talks through the real docker SDK (and once through
the docker provider's DockerHook) to a fake engine holding containers labelled as docker compose
labels them. What the system under the containers would say (brokers registered, workers at the
master) is stood in by counting the running containers of the service.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from pipeline.config import load_config
from pipeline.stack import get_stack
from pipeline.stack.base import StackError, UnsupportedOperation
from pipeline.stack.compose import NUMBER_LABEL, SERVICE_LABEL, ComposeStack, kafka_service
from tests.fake_docker import FakeDockerEngine
from weatherbench.collectors.resources import ResourceSampler

PROJECT = "weatherbench"
MB = 1_000_000
PIPELINE = {
    "kafka-1": (1, ["component", "kafka", "--index", "1"]),
    "spark-master": (1, ["component", "spark-master"]),
    "spark-worker": (2, ["component", "spark-worker", "--replica"]),
    "ray-head": (1, ["component", "ray-head"]),
    "ray-worker": (2, ["component", "ray-worker", "--replica"]),
    "streaming-job": (1, ["component", "streaming-job"]),
    "inference": (1, ["component", "inference", "--join-ray"]),
    "api": (1, ["component", "api"]),
}


@pytest.fixture
def engine() -> Iterator[FakeDockerEngine]:
    with FakeDockerEngine() as fake:
        for service, (replicas, command) in PIPELINE.items():
            fake.add_compose_service(
                PROJECT,
                service,
                replicas,
                command,
                env=["WB_NETWORK_BIND=0.0.0.0", f"SERVICE={service}"],
                memory_limit=1536 * 1024 * 1024,
                nano_cpus=1_000_000_000,
                restart_policy="unless-stopped",
            )
        fake.add_compose_service(PROJECT, "airflow-scheduler", 1, ["scheduler"])
        fake.add_compose_service(PROJECT, "prometheus", 1, ["--config.file=/etc/prometheus/prometheus.yml"])
        fake.add_compose_service("another-project", "api", 1, ["component", "api"])
        yield fake


def running_of(engine: FakeDockerEngine, service: str) -> list[dict]:
    with docker.APIClient(base_url=engine.base_url) as client:
        found = client.containers(
            filters={"label": [f"com.docker.compose.project={PROJECT}", f"{SERVICE_LABEL}={service}"]}
        )
    return found


@pytest.fixture
def stack(engine: FakeDockerEngine, tmp_path: Path) -> Iterator[ComposeStack]:
    config = load_config(environ={}, overrides={"state_dir": str(tmp_path), "backend": "compose"})
    services = {"spark-worker": "spark-worker", "ray-worker": "ray-worker", "kafka": kafka_service(1)}
    client = docker.APIClient(base_url=engine.base_url)
    built = get_stack(config, docker_client=client)
    assert isinstance(built, ComposeStack)
    # Stand-in for Kafka's, the Spark master's and Ray's own answer: the running containers.
    built._ready_count = lambda component: len(running_of(engine, services[component]))
    built.ready_timeout_s = 5
    yield built
    client.close()


def names(containers: list[dict]) -> list[str]:
    return sorted(c["Names"][0].lstrip("/") for c in containers)


def test_status_lists_the_pipelines_containers_with_their_memory(stack, engine) -> None:
    engine.set_stats(
        "weatherbench-api-1", memory_usage=300 * MB, inactive_file=100 * MB, memory_limit=512 * MB
    )
    status = stack.status()
    instances = {i.instance: i for i in status.instances}
    pipeline = {f"{PROJECT}-{s}-{n}" for s, (r, _) in PIPELINE.items() for n in range(1, r + 1)}
    # Monitoring is part of the stack interface too; Airflow and other projects are not.
    assert set(instances) == pipeline | {"weatherbench-prometheus-1"}
    assert instances["weatherbench-prometheus-1"].component == "prometheus"
    assert instances["weatherbench-api-1"].component == "api"
    assert instances["weatherbench-api-1"].rss_bytes == 200 * MB  # usage less page cache, as docker stats
    assert status.running("spark-worker") == 2 and status.running("kafka") == 1
    assert status.backend == "compose"


def test_scaling_up_creates_replicas_as_compose_would(stack, engine) -> None:
    stack.scale("spark-worker", 4)
    running = running_of(engine, "spark-worker")
    assert names(running) == [f"weatherbench-spark-worker-{n}" for n in (1, 2, 3, 4)]
    template = engine.container("weatherbench-spark-worker-1")
    for number in (3, 4):
        made = engine.container(f"weatherbench-spark-worker-{number}")
        assert made["Config"]["Labels"][NUMBER_LABEL] == str(number)
        for label in ("com.docker.compose.project", SERVICE_LABEL, "com.docker.compose.oneoff"):
            assert made["Config"]["Labels"][label] == template["Config"]["Labels"][label]
        assert made["Config"]["Cmd"] == template["Config"]["Cmd"]
        assert made["Config"]["Env"] == template["Config"]["Env"]
        assert made["HostConfig"]["Memory"] == template["HostConfig"]["Memory"]
        assert made["HostConfig"]["NanoCpus"] == template["HostConfig"]["NanoCpus"]
        network = made["NetworkSettings"]["Networks"]["weatherbench_default"]
        assert "spark-worker" in network["Aliases"]  # found by the service's name, like its siblings
    assert stack.config.spark.workers == 4
    assert stack.status().running("spark-worker") == 4


def test_scaling_down_removes_the_highest_and_keeps_one_to_scale_from(stack, engine) -> None:
    stack.scale("ray-worker", 3)
    stack.scale("ray-worker", 1)
    assert names(running_of(engine, "ray-worker")) == ["weatherbench-ray-worker-1"]
    with pytest.raises(KeyError):
        engine.container("weatherbench-ray-worker-3")  # removed, not just stopped
    stack.scale("ray-worker", 0)
    assert running_of(engine, "ray-worker") == []
    assert engine.container("weatherbench-ray-worker-1")["State"]["Status"] == "exited"
    # From nothing running: the kept container starts again, and one more is created.
    stack.scale("ray-worker", 2)
    assert names(running_of(engine, "ray-worker")) == [
        "weatherbench-ray-worker-1",
        "weatherbench-ray-worker-2",
    ]


def test_scaling_is_refused_where_compose_cannot_and_checked(stack) -> None:
    with pytest.raises(UnsupportedOperation, match="profile"):
        stack.scale("kafka", 3)
    with pytest.raises(StackError, match="count must be >= 0"):
        stack.scale("spark-worker", -1)
    with pytest.raises(StackError, match="unknown component 'spark-master'"):
        stack.scale("spark-master", 2)


def test_a_replica_that_never_serves_fails_the_scale_with_counts(stack) -> None:
    stack._ready_count = lambda component: 1
    stack.ready_timeout_s = 1
    with pytest.raises(StackError, match=r"spark-worker: 1 of 3 serving after 1 s"):
        stack.scale("spark-worker", 3)


def test_kill_restart_and_graceful_stop_through_the_engine(stack, engine) -> None:
    assert stack.kill("ray-worker") == "weatherbench-ray-worker-2"  # the highest running replica
    state = engine.container("weatherbench-ray-worker-2")["State"]
    assert (state["Running"], state["ExitCode"]) == (False, 137)  # SIGKILL
    assert ("POST", f"/containers/{engine.container('weatherbench-ray-worker-2')['Id']}/kill") in [
        (r.method, r.path) for r in engine.requests
    ]
    with pytest.raises(StackError, match="weatherbench-ray-worker-2 is not running"):
        stack.kill("ray-worker", 2)
    assert stack.started_at("ray-worker", 2) is None
    stack.restart("ray-worker", 2)
    assert engine.container("weatherbench-ray-worker-2")["State"]["Running"]
    assert stack.started_at("ray-worker", 2) is not None
    assert stack.kill("kafka", graceful=True) == "weatherbench-kafka-1-1"
    assert engine.container("weatherbench-kafka-1-1")["State"]["ExitCode"] == 0  # stopped, not killed
    before = engine.container("weatherbench-api-1")["State"]["StartedAt"]
    stack.restart("api")
    assert engine.container("weatherbench-api-1")["State"]["StartedAt"] != before
    with pytest.raises(StackError, match=r"kafka has 1 broker\(s\) \(kafka.brokers\); got which=2"):
        stack.kill("kafka", 2)
    with pytest.raises(StackError, match="api has a single instance; got which=3"):
        stack.kill("api", 3)
    assert not stack.supervised("api")  # a kill through the API is not undone by a restart policy


def test_up_starts_stopped_containers_and_writes_the_stack_file(stack, engine) -> None:
    stack.kill("api")
    stack.kill("streaming-job", graceful=True)
    stack.up(("kafka", "streaming-job", "api"))
    assert engine.container("weatherbench-api-1")["State"]["Running"]
    assert engine.container("weatherbench-streaming-job-1")["State"]["Running"]
    # The containers started from here read the benchmark's shape from the shared volume.
    assert load_config(stack.config.stack_file, environ={}).backend == "compose"


def test_up_without_the_projects_containers_says_to_run_compose(engine, tmp_path) -> None:
    config = load_config(
        environ={"WB_COMPOSE_PROJECT": "not-created"}, overrides={"state_dir": str(tmp_path)}
    )
    stack = ComposeStack(config, client=docker.APIClient(base_url=engine.base_url))
    with pytest.raises(
        StackError,
        match="no container of service api in compose project not-created: run `docker compose up -d`",
    ):
        stack.up(("api",))


def test_down_stops_the_pipeline_but_not_airflow_or_monitoring(stack, engine) -> None:
    stack.down()
    for service in PIPELINE:
        assert running_of(engine, service) == [], service
    assert running_of(engine, "airflow-scheduler") and running_of(engine, "prometheus")
    with docker.APIClient(base_url=engine.base_url) as client:
        other = client.containers(filters={"label": ["com.docker.compose.project=another-project"]})
    assert other, "another project's containers were touched"
    with pytest.raises(UnsupportedOperation, match="docker compose down -v"):
        stack.down(purge=True)


def test_engine_errors_are_named(stack, engine) -> None:
    engine.fail_next("POST", r"/containers/.*/kill", 500, "cannot kill container: permission denied")
    with pytest.raises(
        StackError, match="killing weatherbench-api-1: cannot kill container: permission denied"
    ):
        stack.kill("api")


def test_no_engine_names_the_url_to_set(tmp_path) -> None:
    config = load_config(
        environ={"WB_COMPOSE_DOCKER_URL": "tcp://127.0.0.1:9"}, overrides={"state_dir": str(tmp_path)}
    )
    stack = ComposeStack(config)
    with pytest.raises(StackError, match=r"no Docker engine at tcp://127.0.0.1:9 .*set compose.docker_url"):
        stack.status()


def test_faults_through_the_docker_providers_hook(engine, tmp_path) -> None:
    from airflow.providers.docker.hooks.docker import DockerHook

    config = load_config(environ={}, overrides={"state_dir": str(tmp_path), "backend": "compose"})
    client = DockerHook(docker_conn_id=None, base_url=engine.base_url).get_conn()
    stack = get_stack(config, docker_client=client)
    assert stack.kill("spark-worker", 1) == "weatherbench-spark-worker-1"
    assert engine.container("weatherbench-spark-worker-1")["State"]["ExitCode"] == 137


def test_container_stats_become_resource_series(stack, engine) -> None:
    # Two samples 2 s apart: worker 1 used 1.5 CPU-seconds, worker 2 0.5 (75% and 25% of a core).
    sampler = ResourceSampler(lambda: {}, {}, containers=stack.container_usage, machine=False)
    engine.set_stats("weatherbench-spark-worker-1", cpu_total_ns=10_000_000_000, memory_usage=400 * MB)
    engine.set_stats("weatherbench-spark-worker-2", cpu_total_ns=4_000_000_000, memory_usage=300 * MB)
    sampler.started_ms = 1_000_000
    sampler.sample(1_000_000)
    engine.set_stats("weatherbench-spark-worker-1", cpu_total_ns=11_500_000_000)
    engine.set_stats("weatherbench-spark-worker-2", cpu_total_ns=4_500_000_000)
    sampler.sample(1_002_000)
    cpu = sampler.cpu["spark-worker"].values()
    rss = sampler.rss["spark-worker"].values()
    assert cpu == [pytest.approx(100.0)]  # 1.5 + 0.5 CPU-seconds in 2 s: one core's worth
    assert rss[-1] == pytest.approx(700.0)  # MB, both containers
    metrics = {(m.name, m.component): m.value for m in sampler.metrics()}
    assert metrics[("resources.cpu.max", "spark-worker")] == pytest.approx(100.0)
    assert ("resources.machine.cpu.mean", "") not in metrics  # machine figures left out when asked
