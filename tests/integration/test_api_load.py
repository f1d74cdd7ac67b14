"""API load collector against the real serving API: a Locust run, and a run where nothing listens.

The API serves a seeded prediction store (`--no-consumer`: no Kafka needed)
from a temporary state dir on a free loopback port. Three of the five
queried stations have predictions, so `/stations/{id}/latest` answers both
200 and the expected "no data yet" 404. Every process started here is
stopped through its process group in a finalizer, and the port is checked
free afterwards.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.api.app import db_path_for
from pipeline.api.store import Incoming, PredictionStore
from pipeline.config import load_config, service_environ
from pipeline.producer.loadgen import station_id
from weatherbench.collectors.api_load import NO_DATA_ENDPOINT, ApiLoad, ApiLoadSpec

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PREFIX = "apiload"
STATIONS = 5
WITH_DATA = 3  # stations 0..2 have predictions; 3 and 4 answer 404 "no data yet"
WINDOWS = 6
WS = 1_767_225_600_000
STEP = 300_000
ENDPOINTS = {
    "/stations/[id]/latest",
    NO_DATA_ENDPOINT,
    "/stations/[id]/predictions",
    "/predictions",
    "/health",
    "/stats",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    # SO_REUSEADDR: connections in TIME_WAIT do not count, a listening socket does.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def seed_store(path: Path) -> None:
    items = [
        Incoming(
            {
                "station_id": station_id(PREFIX, k),
                "window_start": WS + w * STEP,
                "window_end": WS + (w + 1) * STEP,
                "model_version": 1,
                "predicted_temperature_c": 10.0 + k + w / 10,
            },
            kafka_time=WS + (w + 1) * STEP,
            partition=0,
            offset=k * WINDOWS + w,
        )
        for k in range(WITH_DATA)
        for w in range(WINDOWS)
    ]
    with PredictionStore(path) as store:
        assert store.upsert_many(items).inserted == len(items)


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    """SIGTERM to the process group, SIGKILL after the grace period."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signum)
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


@dataclass
class Api:
    url: str
    port: int
    pid: int


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    state = tmp_path_factory.mktemp("api-load-state")
    port = free_port()
    config = load_config(environ={}, overrides={"state_dir": str(state), "api": {"port": port}})
    stack_file = config.dump(state / "stack.yaml")
    seed_store(db_path_for(config))
    logs = state / "logs"
    logs.mkdir()
    with (logs / "api.out").open("wb") as out, (logs / "api.err").open("wb") as err:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.api",
                "--config",
                str(stack_file),
                "--port",
                str(port),
                "--no-consumer",
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            env=service_environ(),  # no WB_* overrides on top of the stack file
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        url = config.api.url
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                tail = (logs / "api.err").read_text()[-2000:]
                pytest.fail(f"the API exited with {proc.returncode}: {tail}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail("the API did not answer /health within 60 s")
            time.sleep(0.25)
        yield Api(url=url, port=port, pid=proc.pid)
    finally:
        stop_group(proc)
    assert proc.returncode == 0, (logs / "api.err").read_text()[-2000:]
    assert port_is_free(port)


def request_counts(url: str) -> Counter[tuple[str, str]]:
    """Requests the API has timed, by (route template, status), without its /metrics scrapes."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    counts: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "weather_api_request_seconds_count" and sample.labels["route"] != "/metrics":
                counts[(sample.labels["route"], sample.labels["status"])] += int(sample.value)
    return counts


def test_real_load_on_the_api(api: Api, tmp_path: Path) -> None:
    spec = ApiLoadSpec(users=5, spawn_rate=5, duration_s=10, station_prefix=PREFIX, stations=STATIONS)
    before = request_counts(api.url)
    load = ApiLoad(api.url, spec, tmp_path / "load")
    with load:
        result = load.wait(timeout_s=120)
    assert not load.running()
    served = request_counts(api.url) - before

    assert result.total.requests > 0
    assert result.total.failures == 0, result.errors
    assert result.errors == []
    assert result.exceptions == 0
    assert result.users == 5
    assert {e.name for e in result.endpoints} == ENDPOINTS
    for stats in [result.total, *result.endpoints]:
        assert stats.requests > 0, stats.name
        assert stats.method == ("" if stats is result.total else "GET")
        assert 0 < stats.p50_ms <= stats.p95_ms <= stats.p99_ms <= stats.max_ms, stats
        assert stats.rps > 0

    # What Locust counted is what the API served, to the request (its final statistics
    # are complete, not its last once-a-second snapshot), and the 404s are the API's.
    assert result.total.requests == sum(served.values())
    latest = result.endpoint("/stations/[id]/latest")
    no_data = result.endpoint(NO_DATA_ENDPOINT)
    assert latest is not None and no_data is not None
    assert served[("/stations/{station_id}/latest", "200")] == latest.requests
    assert served[("/stations/{station_id}/latest", "404")] == no_data.requests
    assert {status for _route, status in served} <= {"200", "404"}

    metrics = {name: (value, unit) for name, value, unit in result.metrics()}
    assert metrics["api_load.error_rate"] == (0.0, "%")
    assert metrics["api_load.rps"] == (result.total.rps, "req/s")
    assert metrics["api_load.no_data_404"] == (float(no_data.requests), "requests")
    for file in ("locust_stats.csv", "locust_failures.csv", "locust_stats_history.csv", "locust.stderr"):
        assert (tmp_path / "load" / file).is_file()


def test_nothing_listening_is_all_connection_errors(tmp_path: Path) -> None:
    port = free_port()  # bound and released: nothing listens on it
    spec = ApiLoadSpec(users=2, spawn_rate=2, duration_s=3, station_prefix=PREFIX, stations=STATIONS)
    load = ApiLoad(f"http://127.0.0.1:{port}", spec, tmp_path / "load")
    with load:
        result = load.wait(timeout_s=120)
    assert not load.running()

    assert result.total.requests > 0
    assert result.total.failures == result.total.requests
    assert result.total.error_rate == 100.0
    assert {n: v for n, v, _u in result.metrics()}["api_load.error_rate"] == 100.0
    assert result.errors
    assert {e["error_type"] for e in result.errors} == {"ConnectionError"}
    assert sum(e["count"] for e in result.errors) == result.total.failures
    assert all(e["source"] == "failure" for e in result.errors)
    assert port_is_free(port)


def test_stop_ends_a_long_run_early_with_its_statistics(api: Api, tmp_path: Path) -> None:
    spec = ApiLoadSpec(users=2, spawn_rate=2, duration_s=600, station_prefix=PREFIX, stations=STATIONS)
    load = ApiLoad(api.url, spec, tmp_path / "load")
    with load:
        time.sleep(5)
        began = time.monotonic()
        result = load.stop()
        stopped_in = time.monotonic() - began
    assert not load.running()
    assert stopped_in < 15
    assert result.total.requests > 0
    assert result.total.failures == 0, result.errors
    pid = load.pid
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole process group is gone
