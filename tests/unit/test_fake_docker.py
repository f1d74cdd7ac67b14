"""The fake Docker engine (tests/fake_docker.py), driven only through the real docker SDK.

Every call goes over HTTP through ``docker.DockerClient``, ``docker.APIClient`` or Airflow's
``DockerHook``, so these tests pin down that the fake speaks the Engine API as the SDK expects.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest

from tests.fake_docker import ZERO_TIME, FakeDockerEngine

MIB = 1024 * 1024
GIB = 1024 * MIB
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
RFC3339_NANO = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z")


def timestamp_ns(text: str) -> int:
    """Parse the engine's RFC 3339 timestamps; plain string comparison breaks on trimmed zeros."""
    matched = RFC3339_NANO.fullmatch(text)
    assert matched, f"not an RFC 3339 timestamp: {text!r}"
    seconds = int(datetime.strptime(matched.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp())
    return seconds * 1_000_000_000 + int((matched.group(2) or "0").ljust(9, "0"))


def docker_stats_cpu_percent(stats: dict[str, Any]) -> float:
    """CPU % exactly as `docker stats` computes it (calculateCPUPercentUnix in docker/cli)."""
    cpu, precpu = stats["cpu_stats"], stats["precpu_stats"]
    cpu_delta = cpu["cpu_usage"]["total_usage"] - precpu["cpu_usage"]["total_usage"]
    system_delta = cpu.get("system_cpu_usage", 0) - precpu.get("system_cpu_usage", 0)
    online_cpus = cpu.get("online_cpus") or len(cpu["cpu_usage"].get("percpu_usage") or [])
    if system_delta > 0 and cpu_delta > 0:
        return cpu_delta / system_delta * online_cpus * 100.0
    return 0.0


def docker_stats_memory(stats: dict[str, Any]) -> tuple[int, float]:
    """Memory in use and its % of the limit, as `docker stats` shows them on cgroup v2."""
    memory = stats["memory_stats"]
    used = memory["usage"] - memory["stats"]["inactive_file"]
    return used, used / memory["limit"] * 100.0


def assert_port_released(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def engine_threads(port: int) -> list[str]:
    return [thread.name for thread in threading.enumerate() if thread.name.endswith(f":{port}")]


@pytest.fixture
def engine() -> Iterator[FakeDockerEngine]:
    with FakeDockerEngine() as running_engine:
        port = running_engine.port
        yield running_engine
    # Checked here so every test, passing or failing, proves it left nothing behind.
    assert engine_threads(port) == []
    assert_port_released(port)


@pytest.fixture
def client(engine: FakeDockerEngine) -> Iterator[docker.DockerClient]:
    docker_client = docker.DockerClient(base_url=engine.base_url, timeout=10)
    try:
        yield docker_client
    finally:
        docker_client.close()


@pytest.fixture
def api(engine: FakeDockerEngine) -> Iterator[docker.APIClient]:
    api_client = docker.APIClient(base_url=engine.base_url, version="auto", timeout=10)
    try:
        yield api_client
    finally:
        api_client.close()


def names(containers: list[Any]) -> list[str]:
    return [container.name for container in containers]


# --------------------------------------------------------------------------------------------------
# Lifecycle of the server


def test_serves_on_a_free_port_and_releases_it_and_its_threads_on_exit() -> None:
    with FakeDockerEngine() as engine:
        port = engine.port
        assert engine.base_url == f"tcp://127.0.0.1:{port}"
        # Left open on purpose: stopping must end connections a client's pool keeps alive.
        api_client = docker.APIClient(base_url=engine.base_url, version="auto", timeout=10)
        assert api_client.ping() is True
        assert api_client.version()["ApiVersion"] == "1.45"
        assert any(name.startswith("fake-docker-connection") for name in engine_threads(port))
    try:
        assert engine_threads(port) == []
        assert_port_released(port)
        with pytest.raises(RuntimeError, match="not running"):
            _ = engine.base_url
    finally:
        api_client.close()


def test_stops_even_when_the_with_block_raises() -> None:
    with pytest.raises(ZeroDivisionError), FakeDockerEngine() as engine:
        port = engine.port
        docker.APIClient(base_url=engine.base_url, version="1.45", timeout=10).ping()
        _ = 1 / 0
    assert engine_threads(port) == []
    assert_port_released(port)


def test_api_version_prefix_is_optional_and_versions_out_of_range_are_refused(
    engine: FakeDockerEngine, api: docker.APIClient
) -> None:
    engine.add_container("wb-api-1")
    versioned = api.get(f"{api.base_url}/v1.41/containers/json")
    unversioned = api.get(f"{api.base_url}/containers/json")
    assert versioned.status_code == unversioned.status_code == 200
    assert [entry["Names"] for entry in versioned.json()] == [["/wb-api-1"]]
    assert versioned.json() == unversioned.json()
    assert versioned.headers["Api-Version"] == "1.45"

    version = api.version()
    assert (version["ApiVersion"], version["MinAPIVersion"]) == ("1.45", "1.24")

    too_new = docker.APIClient(base_url=engine.base_url, version="1.99", timeout=10)
    try:
        with pytest.raises(docker.errors.APIError) as refused:
            too_new.containers()
    finally:
        too_new.close()
    assert refused.value.status_code == 400
    assert (
        refused.value.explanation == "client version 1.99 is too new. Maximum supported API version is 1.45"
    )


def test_info_counts_containers_by_state(engine: FakeDockerEngine, client: docker.DockerClient) -> None:
    engine.add_container("running-one")
    engine.add_container("paused-one")
    engine.add_container("created-one", running=False)
    client.containers.get("paused-one").pause()
    info = client.info()
    assert (info["Containers"], info["ContainersRunning"], info["ContainersPaused"]) == (3, 1, 1)
    assert info["ContainersStopped"] == 1
    assert info["NCPU"] == engine.ncpu
    assert info["MemTotal"] == engine.mem_total


# --------------------------------------------------------------------------------------------------
# Listing and inspecting


def test_lists_compose_containers_by_their_labels(
    engine: FakeDockerEngine, client: docker.DockerClient
) -> None:
    engine.add_compose_service("weatherbench", "inference", replicas=3, command=["python", "-m", "inference"])
    engine.add_compose_service("weatherbench", "api", command=["uvicorn", "app:app"])
    engine.add_compose_service("otherbench", "inference")
    engine.add_container("not-compose", labels={"tier": "batch"})

    inference = client.containers.list(
        filters={"label": [f"{PROJECT_LABEL}=weatherbench", f"{SERVICE_LABEL}=inference"]}
    )
    # The engine lists newest first.
    assert names(inference) == [
        "weatherbench-inference-3",
        "weatherbench-inference-2",
        "weatherbench-inference-1",
    ]
    assert sorted(container.labels["com.docker.compose.container-number"] for container in inference) == [
        "1",
        "2",
        "3",
    ]
    labels = inference[0].labels
    assert labels["com.docker.compose.oneoff"] == "False"
    assert labels["com.docker.compose.project.config_files"] == "/work/main/docker-compose.yml"
    assert labels["com.docker.compose.project.working_dir"] == "/work/main"
    assert labels["com.docker.compose.version"] == "2.27.0"
    assert re.fullmatch(r"[0-9a-f]{64}", labels["com.docker.compose.config-hash"])
    assert {container.labels["com.docker.compose.config-hash"] for container in inference} == {
        labels["com.docker.compose.config-hash"]
    }

    assert len(client.containers.list(filters={"label": f"{PROJECT_LABEL}=weatherbench"})) == 4
    assert len(client.containers.list(filters={"label": PROJECT_LABEL})) == 5  # key only: any compose project
    assert names(client.containers.list(filters={"label": "tier=batch"})) == ["not-compose"]

    network = inference[0].attrs["NetworkSettings"]["Networks"]["weatherbench_default"]
    assert network["Aliases"] == ["weatherbench-inference-3", "inference"]
    assert network["IPAddress"].startswith("172.")


def test_scaling_a_compose_service_numbers_replicas_on(
    engine: FakeDockerEngine, client: docker.DockerClient
) -> None:
    engine.add_compose_service("wb", "worker", replicas=2)
    engine.add_compose_service("wb", "worker", replicas=1)
    numbers = sorted(
        int(container.labels["com.docker.compose.container-number"])
        for container in client.containers.list(filters={"label": f"{SERVICE_LABEL}=worker"})
    )
    assert numbers == [1, 2, 3]
    assert client.containers.get("wb-worker-3").labels[PROJECT_LABEL] == "wb"


def test_list_shows_running_ones_unless_all_or_a_status_filter(
    engine: FakeDockerEngine, client: docker.DockerClient, api: docker.APIClient
) -> None:
    engine.add_compose_service("wb", "worker", replicas=2, command=["python", "-m", "worker"])
    engine.add_container("wb-oneshot", running=False)
    client.containers.get("wb-worker-2").stop()

    assert names(client.containers.list()) == ["wb-worker-1"]
    assert names(client.containers.list(all=True)) == ["wb-oneshot", "wb-worker-2", "wb-worker-1"]
    assert names(client.containers.list(filters={"status": "exited"})) == ["wb-worker-2"]
    assert names(client.containers.list(filters={"status": ["created", "running"]})) == [
        "wb-oneshot",
        "wb-worker-1",
    ]
    assert names(client.containers.list(all=True, filters={"name": "^wb-worker"})) == [
        "wb-worker-2",
        "wb-worker-1",
    ]
    assert names(client.containers.list(all=True, filters={"exited": 0})) == ["wb-worker-2"]

    running, stopped, created = (
        api.containers(filters={"name": name}, all=True)[0]
        for name in ("wb-worker-1", "wb-worker-2", "wb-oneshot")
    )
    assert running["Names"] == ["/wb-worker-1"]
    assert running["Image"] == "weatherbench:latest"
    assert running["Command"] == "python -m worker"
    assert abs(running["Created"] - time.time()) < 60
    assert (running["State"], running["Status"]) == ("running", "Up Less than a second")
    assert running["NetworkSettings"]["Networks"]["wb_default"]["IPAddress"].startswith("172.")
    assert (stopped["State"], stopped["Status"]) == ("exited", "Exited (0) Less than a second ago")
    assert stopped["NetworkSettings"]["Networks"]["wb_default"]["IPAddress"] == ""
    assert (created["State"], created["Status"]) == ("created", "Created")

    with pytest.raises(docker.errors.APIError) as bad_status:
        client.containers.list(filters={"status": "sleeping"})
    assert (bad_status.value.status_code, bad_status.value.explanation) == (
        400,
        "invalid filter 'status=sleeping'",
    )
    with pytest.raises(docker.errors.APIError) as bad_key:
        client.containers.list(filters={"colour": "blue"})
    assert (bad_key.value.status_code, bad_key.value.explanation) == (400, "invalid filter 'colour'")


def test_inspect_reports_state_config_limits_and_network(
    engine: FakeDockerEngine, client: docker.DockerClient
) -> None:
    container_id = engine.add_container(
        "wb-api-1",
        command=["uvicorn", "app:app"],
        labels={"tier": "api"},
        env=["MODE=test"],
        memory_limit=512 * MIB,
        nano_cpus=1_500_000_000,
        network="weatherbench_default",
        ip="172.18.0.5",
        hostname="api",
    )
    attrs = client.api.inspect_container("wb-api-1")
    assert re.fullmatch(r"[0-9a-f]{64}", container_id)
    assert (attrs["Id"], attrs["Name"], attrs["RestartCount"]) == (container_id, "/wb-api-1", 0)
    state = attrs["State"]
    assert (state["Status"], state["Running"], state["Paused"], state["Restarting"]) == (
        "running",
        True,
        False,
        False,
    )
    assert (state["OOMKilled"], state["Dead"], state["ExitCode"]) == (False, False, 0)
    assert state["Pid"] > 0
    assert abs(timestamp_ns(state["StartedAt"]) - time.time_ns()) < 60 * 10**9
    assert state["FinishedAt"] == ZERO_TIME
    assert timestamp_ns(attrs["Created"]) <= timestamp_ns(state["StartedAt"])
    config = attrs["Config"]
    assert config["Image"] == "weatherbench:latest"
    assert (config["Cmd"], config["Env"], config["Hostname"]) == (
        ["uvicorn", "app:app"],
        ["MODE=test"],
        "api",
    )
    assert config["Labels"] == {"tier": "api"}
    host_config = attrs["HostConfig"]
    assert (host_config["Memory"], host_config["NanoCpus"]) == (512 * MIB, 1_500_000_000)
    assert host_config["NetworkMode"] == "weatherbench_default"
    assert host_config["RestartPolicy"] == {"Name": "no", "MaximumRetryCount": 0}
    network = attrs["NetworkSettings"]["Networks"]["weatherbench_default"]
    assert (network["IPAddress"], network["Gateway"], network["IPPrefixLen"]) == (
        "172.18.0.5",
        "172.18.0.1",
        16,
    )

    by_prefix = client.containers.get(container_id[:12])
    assert (by_prefix.id, by_prefix.name, by_prefix.status) == (container_id, "wb-api-1", "running")
    assert by_prefix.labels == {"tier": "api"}
    assert by_prefix.image.tags == ["weatherbench:latest"]
    assert engine.container("wb-api-1") == attrs


def test_default_hostname_is_the_short_id(engine: FakeDockerEngine, client: docker.DockerClient) -> None:
    container_id = engine.add_container("plain")
    assert client.containers.get("plain").attrs["Config"]["Hostname"] == container_id[:12]


def test_unknown_container_is_not_found_with_the_engine_message(client: docker.DockerClient) -> None:
    with pytest.raises(docker.errors.NotFound) as missing:
        client.containers.get("ghost")
    assert missing.value.status_code == 404
    assert missing.value.explanation == "No such container: ghost"


def test_an_ambiguous_id_prefix_is_refused(engine: FakeDockerEngine, client: docker.DockerClient) -> None:
    # 17 random ids over 16 hex digits: at least two share their first digit.
    ids = [engine.add_container(f"box-{index}") for index in range(17)]
    shared_first_digit = next(digit for digit in "0123456789abcdef" if sum(i[0] == digit for i in ids) > 1)
    with pytest.raises(docker.errors.APIError) as ambiguous:
        client.containers.get(shared_first_digit)
    assert ambiguous.value.status_code == 400
    assert ambiguous.value.explanation == f"multiple IDs found with provided prefix: {shared_first_digit}"


# --------------------------------------------------------------------------------------------------
# Lifecycle of containers


def test_kill_exits_with_128_plus_the_signal_and_refuses_a_stopped_container(
    engine: FakeDockerEngine, client: docker.DockerClient
) -> None:
    first, second, third = engine.add_compose_service("wb", "inference", replicas=3)
    started_at = timestamp_ns(engine.container(first)["State"]["StartedAt"])

    client.containers.get(first).kill()
    state = engine.container(first)["State"]
    assert (state["Status"], state["Running"], state["ExitCode"], state["Pid"]) == ("exited", False, 137, 0)
    assert timestamp_ns(state["FinishedAt"]) > started_at

    client.containers.get(second).kill(signal="SIGTERM")
    assert engine.container(second)["State"]["ExitCode"] == 143
    assert ("POST", f"/containers/{second}/kill", {"signal": "SIGTERM"}) in engine.requests

    # A signal whose default action is not to terminate reaches the process, which carries on.
    client.containers.get(third).kill(signal="SIGHUP")
    assert engine.container(third)["State"]["Running"] is True

    with pytest.raises(docker.errors.APIError) as not_running:
        client.api.kill("wb-inference-1")
    assert not_running.value.status_code == 409
    assert not_running.value.explanation == (
        f"Cannot kill container: wb-inference-1: Container {first} is not running"
    )
    with pytest.raises(docker.errors.APIError) as bad_signal:
        client.api.kill(third, signal="SIGBOGUS")
    assert (bad_signal.value.status_code, bad_signal.value.explanation) == (400, "Invalid signal: SIGBOGUS")


def test_stop_exits_gracefully_and_stopping_again_is_not_modified(
    engine: FakeDockerEngine, client: docker.DockerClient, api: docker.APIClient
) -> None:
    container_id = engine.add_container("wb-api-1")
    container = client.containers.get(container_id)
    container.stop(timeout=3)
    container.reload()
    assert (container.status, container.attrs["State"]["ExitCode"]) == ("exited", 0)
    assert engine.requests[-2] == ("POST", f"/containers/{container_id}/stop", {"t": "3"})

    container.stop()  # a 304 is not an error for the SDK, as with a real engine
    assert api.post(api._url("/containers/{0}/stop", container_id)).status_code == 304


def test_start_and_restart_set_new_start_times(
    engine: FakeDockerEngine, client: docker.DockerClient, api: docker.APIClient
) -> None:
    container_id = engine.add_container("wb-spark-1", running=False)
    container = client.containers.get(container_id)
    assert (container.status, container.attrs["State"]["StartedAt"], container.attrs["State"]["Pid"]) == (
        "created",
        ZERO_TIME,
        0,
    )

    container.start()
    first_start = engine.container(container_id)["State"]
    assert (first_start["Status"], first_start["ExitCode"]) == ("running", 0)
    assert first_start["Pid"] > 0
    assert api.post(api._url("/containers/{0}/start", container_id)).status_code == 304

    container.kill()
    killed = engine.container(container_id)["State"]
    container.start()
    restarted_after_kill = engine.container(container_id)["State"]
    assert restarted_after_kill["ExitCode"] == 0
    # The engine keeps the last FinishedAt when the container starts again.
    assert restarted_after_kill["FinishedAt"] == killed["FinishedAt"]
    assert timestamp_ns(restarted_after_kill["StartedAt"]) > timestamp_ns(first_start["StartedAt"])

    container.restart(timeout=1)
    after_restart = engine.container(container_id)
    assert after_restart["State"]["Status"] == "running"
    assert timestamp_ns(after_restart["State"]["StartedAt"]) > timestamp_ns(restarted_after_kill["StartedAt"])
    assert after_restart["State"]["Pid"] not in (0, restarted_after_kill["Pid"])
    assert after_restart["RestartCount"] == 0
    assert ("POST", f"/containers/{container_id}/restart", {"t": "1"}) in engine.requests

    container.stop()
    container.restart()  # restarting a stopped container starts it
    assert engine.container(container_id)["State"]["Running"] is True


def test_pause_and_unpause(
    engine: FakeDockerEngine, client: docker.DockerClient, api: docker.APIClient
) -> None:
    container_id = engine.add_container("wb-kafka-1")
    container = client.containers.get(container_id)
    container.pause()
    state = engine.container(container_id)["State"]
    assert (state["Status"], state["Running"], state["Paused"]) == ("paused", True, True)
    # A paused container is still "up", so `docker ps` lists it without --all.
    [entry] = api.containers()
    assert entry["State"] == "paused"
    assert entry["Status"].endswith("(Paused)")

    for action, message in (
        (container.pause, f"Container {container_id} is already paused"),
        (container.start, "cannot start a paused container, try unpause instead"),
    ):
        with pytest.raises(docker.errors.APIError) as refused:
            action()
        assert (refused.value.status_code, refused.value.explanation) == (409, message)

    container.unpause()
    assert engine.container(container_id)["State"]["Status"] == "running"
    with pytest.raises(docker.errors.APIError) as not_paused:
        container.unpause()
    assert not_paused.value.explanation == f"Container {container_id} is not paused"
    container.stop()
    with pytest.raises(docker.errors.APIError) as not_running:
        container.pause()
    assert (not_running.value.status_code, not_running.value.explanation) == (
        409,
        f"Container {container_id} is not running",
    )


def test_removing_a_running_container_needs_force(
    engine: FakeDockerEngine, client: docker.DockerClient
) -> None:
    running_id = engine.add_container("wb-api-1")
    stopped_id = engine.add_container("wb-batch-1", running=False)
    running = client.containers.get(running_id)

    with pytest.raises(docker.errors.APIError) as refused:
        running.remove()
    assert refused.value.status_code == 409
    assert refused.value.explanation == (
        'cannot remove container "/wb-api-1": container is running: '
        "stop the container before removing or force remove"
    )
    assert engine.container(running_id)["State"]["Running"] is True

    running.remove(force=True, v=True)
    assert engine.requests[-1] == (
        "DELETE",
        f"/containers/{running_id}",
        {"v": "True", "link": "False", "force": "True"},
    )
    with pytest.raises(KeyError, match="No such container"):
        engine.container(running_id)
    with pytest.raises(docker.errors.NotFound):
        client.containers.get("wb-api-1")

    client.containers.get(stopped_id).remove()
    assert client.containers.list(all=True) == []
    with pytest.raises(docker.errors.NotFound) as gone:
        client.api.remove_container(stopped_id)
    assert gone.value.explanation == f"No such container: {stopped_id}"


def test_wait_returns_the_exit_code_once_the_process_exits(
    engine: FakeDockerEngine, client: docker.DockerClient
) -> None:
    container_id = engine.add_container("wb-job-1")
    crash = threading.Timer(0.3, engine.simulate_exit, args=(container_id, 137), kwargs={"oom_killed": True})
    crash.start()
    try:
        started = time.monotonic()
        result = client.containers.get(container_id).wait(timeout=10)
    finally:
        crash.cancel()
        crash.join()
    assert result["StatusCode"] == 137
    assert time.monotonic() - started >= 0.25  # it really waited for the exit
    state = engine.container(container_id)["State"]
    assert (state["Status"], state["OOMKilled"], state["ExitCode"]) == ("exited", True, 137)
    # Already stopped: answers at once.
    assert client.api.wait(container_id, timeout=5) == {"StatusCode": 137}


# --------------------------------------------------------------------------------------------------
# Creating


def test_create_keeps_labels_env_limits_and_network(
    engine: FakeDockerEngine, client: docker.DockerClient, api: docker.APIClient
) -> None:
    engine.add_network("weatherbench_default", subnet="172.20.0.0/16")
    compose_labels = {PROJECT_LABEL: "weatherbench", SERVICE_LABEL: "loadgen"}
    container = client.containers.create(
        "weatherbench:latest",
        ["python", "-m", "pipeline.loadgen"],
        name="weatherbench-loadgen-1",
        labels=compose_labels,
        environment={"RATE": "100"},
        mem_limit="256m",
        nano_cpus=500_000_000,
        network="weatherbench_default",
        hostname="loadgen",
    )
    assert container.status == "created"
    attrs = container.attrs
    assert attrs["Config"]["Labels"] == compose_labels
    assert attrs["Config"]["Env"] == ["RATE=100"]
    assert attrs["Config"]["Cmd"] == ["python", "-m", "pipeline.loadgen"]
    assert attrs["Config"]["Hostname"] == "loadgen"
    assert (attrs["HostConfig"]["Memory"], attrs["HostConfig"]["NanoCpus"]) == (256 * MIB, 500_000_000)
    assert attrs["HostConfig"]["NetworkMode"] == "weatherbench_default"
    assert attrs["NetworkSettings"]["Networks"]["weatherbench_default"]["IPAddress"] == ""

    container.start()
    container.reload()
    assert container.attrs["NetworkSettings"]["Networks"]["weatherbench_default"]["IPAddress"] == "172.20.0.2"
    assert names(client.containers.list(filters={"label": f"{SERVICE_LABEL}=loadgen"})) == [
        "weatherbench-loadgen-1"
    ]

    raw = api.post(api._url("/containers/create"), params={"name": "raw-one"}, json={"Image": "busybox"})
    assert raw.status_code == 201
    assert raw.json() == {"Id": engine.container("raw-one")["Id"], "Warnings": []}

    with pytest.raises(docker.errors.APIError) as duplicate:
        client.containers.create("weatherbench:latest", name="weatherbench-loadgen-1")
    assert duplicate.value.status_code == 409
    assert duplicate.value.explanation.startswith(
        'Conflict. The container name "/weatherbench-loadgen-1" is already in use '
        f'by container "{container.id}"'
    )
    with pytest.raises(docker.errors.NotFound) as no_network:
        client.containers.create("weatherbench:latest", name="lost", network="nope")
    assert no_network.value.explanation == "network nope not found"
    with pytest.raises(docker.errors.APIError) as bad_name:
        client.containers.create("weatherbench:latest", name="no spaces")
    assert bad_name.value.status_code == 400


def test_run_detached_starts_the_container(engine: FakeDockerEngine, client: docker.DockerClient) -> None:
    container = client.containers.run(
        "busybox", "sleep 60", detach=True, name="sleeper", labels={"purpose": "test"}
    )
    container.reload()
    assert container.status == "running"
    assert container.attrs["Config"]["Cmd"] == ["sleep", "60"]
    # Without a network the engine uses the default bridge, and fills the legacy address fields.
    assert container.attrs["HostConfig"]["NetworkMode"] == "bridge"
    assert container.attrs["NetworkSettings"]["IPAddress"].startswith("172.17.0.")
    assert engine.container("sleeper")["Config"]["Labels"] == {"purpose": "test"}


# --------------------------------------------------------------------------------------------------
# Stats


def test_stats_give_the_cpu_and_memory_docker_stats_would_show(
    engine: FakeDockerEngine, client: docker.DockerClient
) -> None:
    container_id = engine.add_container("wb-inference-1", memory_limit=1 * GIB)
    engine.set_stats(
        container_id,
        cpu_total_ns=1_000_000_000,
        system_ns=100_000_000_000,
        online_cpus=4,
        memory_usage=600 * MIB,
        inactive_file=100 * MIB,
        rx_bytes=1_000,
        tx_bytes=2_000,
    )
    # 2 s of CPU while the host's 4 CPUs spent 4 s in total: 2 of 4 CPUs busy, so 200 %.
    engine.set_stats(
        container_id, cpu_total_ns=3_000_000_000, system_ns=104_000_000_000, rx_bytes=5_000, tx_bytes=9_000
    )

    stats = client.containers.get(container_id).stats(stream=False)
    assert docker_stats_cpu_percent(stats) == pytest.approx(200.0)
    assert stats["precpu_stats"]["cpu_usage"]["total_usage"] == 1_000_000_000
    assert stats["precpu_stats"]["system_cpu_usage"] == 100_000_000_000
    assert stats["cpu_stats"]["online_cpus"] == 4
    used, percent = docker_stats_memory(stats)
    assert used == 500 * MIB
    assert percent == pytest.approx(500 / 1024 * 100)
    assert stats["memory_stats"]["limit"] == 1 * GIB
    assert (stats["networks"]["eth0"]["rx_bytes"], stats["networks"]["eth0"]["tx_bytes"]) == (5_000, 9_000)
    assert timestamp_ns(stats["read"]) > timestamp_ns(stats["preread"])
    assert (stats["name"], stats["id"]) == ("/wb-inference-1", container_id)
    assert set(stats) >= {"blkio_stats", "pids_stats"}
    assert engine.requests[-1] == ("GET", f"/containers/{container_id}/stats", {"stream": "False"})

    # The next tick: 0.5 s of CPU over 2 s of host time on 4 CPUs is 100 %.
    engine.set_stats(container_id, cpu_total_ns=3_500_000_000, system_ns=106_000_000_000)
    assert docker_stats_cpu_percent(client.api.stats(container_id, stream=False)) == pytest.approx(100.0)


def test_stats_one_shot_stream_and_stopped_container(
    engine: FakeDockerEngine, client: docker.DockerClient
) -> None:
    container_id = engine.add_container("wb-api-1")
    engine.set_stats(container_id, cpu_total_ns=5_000, system_ns=80_000, memory_usage=10 * MIB)

    one_shot = client.api.stats(container_id, stream=False, one_shot=True)
    assert one_shot["cpu_stats"]["cpu_usage"]["total_usage"] == 5_000
    assert one_shot["precpu_stats"]["cpu_usage"]["total_usage"] == 0
    assert "system_cpu_usage" not in one_shot["precpu_stats"]
    assert one_shot["preread"] == ZERO_TIME
    assert one_shot["memory_stats"]["limit"] == engine.mem_total  # no limit: the host's memory

    streamed = list(client.api.stats(container_id, decode=True))
    assert len(streamed) == 1
    assert streamed[0]["cpu_stats"]["system_cpu_usage"] == 80_000

    client.api.stop(container_id)
    stopped = client.api.stats(container_id, stream=False)
    assert (stopped["read"], stopped["memory_stats"]) == (ZERO_TIME, {})
    assert "networks" not in stopped
    assert docker_stats_cpu_percent(stopped) == 0.0

    with pytest.raises(KeyError, match="No such container: ghost"):
        engine.set_stats("ghost", cpu_total_ns=1)


# --------------------------------------------------------------------------------------------------
# Logs, networks and the test helpers


def test_logs_are_multiplexed_per_stream(engine: FakeDockerEngine, client: docker.DockerClient) -> None:
    container_id = engine.add_container("wb-producer-1")
    engine.append_log(container_id, "line one\nline two\n")
    engine.append_log(container_id, "oops", stderr=True)
    container = client.containers.get(container_id)

    assert container.logs() == b"line one\nline two\noops\n"
    assert container.logs(stdout=False) == b"oops\n"
    assert container.logs(stderr=False, tail=1) == b"line two\n"
    stamped = container.logs(timestamps=True).decode().splitlines()
    assert [line.split(" ", 1)[1] for line in stamped] == ["line one", "line two", "oops"]
    assert all(timestamp_ns(line.split(" ", 1)[0]) > 0 for line in stamped)


def test_networks_list_and_inspect(engine: FakeDockerEngine, client: docker.DockerClient) -> None:
    [kafka_id] = engine.add_compose_service("wb", "kafka")
    [network] = client.networks.list(names=["wb_default"])
    assert network.attrs["Labels"][PROJECT_LABEL] == "wb"
    inspected = client.networks.get(network.id).attrs
    subnet = inspected["IPAM"]["Config"][0]["Subnet"]
    assert subnet.endswith("/16")
    ip = engine.container(kafka_id)["NetworkSettings"]["Networks"]["wb_default"]["IPAddress"]
    assert inspected["Containers"][kafka_id]["Name"] == "wb-kafka-1"
    assert inspected["Containers"][kafka_id]["IPv4Address"] == f"{ip}/16"
    assert {net.name for net in client.networks.list()} >= {"bridge", "host", "none", "wb_default"}
    with pytest.raises(docker.errors.NotFound) as missing:
        client.networks.get("nope")
    assert missing.value.explanation == "network nope not found"


def test_fail_next_injects_one_error_for_the_next_matching_request(
    engine: FakeDockerEngine, client: docker.DockerClient
) -> None:
    container_id = engine.add_container("wb-api-1")
    engine.fail_next("POST", r"/containers/[^/]+/kill$", 500, "injected: daemon hiccup")
    engine.fail_next("GET", r"^/containers/json$", 503, "injected: busy")
    container = client.containers.get(container_id)  # not a match: answered normally

    with pytest.raises(docker.errors.APIError) as injected:
        container.kill()
    assert (injected.value.status_code, injected.value.explanation) == (500, "injected: daemon hiccup")
    assert engine.container(container_id)["State"]["Running"] is True
    container.kill()  # used up: the next kill goes through
    assert engine.container(container_id)["State"]["ExitCode"] == 137

    with pytest.raises(docker.errors.APIError) as busy:
        client.containers.list()
    assert busy.value.status_code == 503
    assert client.containers.list(all=True)[0].id == container_id


def test_unsupported_endpoints_answer_501_naming_method_and_path(
    engine: FakeDockerEngine, client: docker.DockerClient
) -> None:
    container_id = engine.add_container("wb-api-1")
    with pytest.raises(docker.errors.APIError) as top:
        client.api.top(container_id)
    assert top.value.status_code == 501
    assert top.value.explanation == f"fake docker engine does not support GET /containers/{container_id}/top"
    with pytest.raises(docker.errors.APIError) as images:
        client.images.list()
    assert images.value.explanation == "fake docker engine does not support GET /images/json"


def test_requests_are_recorded_without_the_version_prefix(
    engine: FakeDockerEngine, client: docker.DockerClient
) -> None:
    client.containers.list(all=True, filters={"label": [f"{PROJECT_LABEL}=wb"]})
    # DockerClient asks for the version first (version="auto"), without the prefix.
    assert engine.requests[0] == ("GET", "/version", {})
    method, path, query = engine.requests[-1]
    assert (method, path) == ("GET", "/containers/json")
    assert query["all"] == "1"
    assert json.loads(query["filters"]) == {"label": [f"{PROJECT_LABEL}=wb"]}
    engine.clear_requests()
    assert engine.requests == []


# --------------------------------------------------------------------------------------------------
# Airflow


def test_airflow_docker_hook_talks_to_the_fake_engine(
    engine: FakeDockerEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{tmp_path / 'airflow.db'}")
    from airflow.providers.docker.hooks.docker import DockerHook

    worker_ids = engine.add_compose_service("weatherbench", "spark-worker", replicas=2)
    # No connection id: the hook then skips the registry login and only needs base_url.
    hook = DockerHook(docker_conn_id=None, base_url=engine.base_url, timeout=10)
    hook_client = hook.get_conn()
    try:
        assert hook.client_created
        assert hook_client.api_version == "1.45"
        listed = hook_client.containers(filters={"label": [f"{SERVICE_LABEL}=spark-worker"]})
        assert sorted(entry["Id"] for entry in listed) == sorted(worker_ids)
        hook_client.kill(worker_ids[0])
    finally:
        hook_client.close()
    assert engine.container(worker_ids[0])["State"]["ExitCode"] == 137
    assert [request[:2] for request in engine.requests[:2]] == [("GET", "/version"), ("GET", "/_ping")]
