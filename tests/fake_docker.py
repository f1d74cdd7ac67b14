"""A fake Docker Engine for tests: the Engine API over HTTP on 127.0.0.1, with in-memory state.

This module owns an in-memory model of what a Docker engine knows about containers, networks and
image names, and serves the part of the Engine API (versions 1.24 to 1.45) that the ``docker``
SDK uses to list, inspect, create, start, stop, kill, restart, pause, wait for and remove
containers, and to read their stats and logs. The real SDK (and so Airflow's ``DockerHook``)
connects to ``engine.base_url`` (``tcp://127.0.0.1:<port>``) just as it connects to a real
engine, so the code under test runs unchanged, and no process or container is ever started.
Containers can carry the labels and network aliases that docker compose v2 gives them
(``add_compose_service``), so a backend that finds compose containers by label can be tested.

Where it deliberately differs from a real engine (to keep tests fast and deterministic):

- a "graceful" stop always works at once with exit code 0; no stop timeout is waited out;
- restart policies are recorded but never acted on;
- stats only change when the test calls ``set_stats`` (each call is one collector tick), and
  ``stream=true`` sends the current sample once and then ends instead of one per second;
- ``logs?follow=true`` sends what has been logged so far and then ends;
- a container keeps its IP address across stop and start (it is shown only while it runs);
- images are never pulled: any image name is accepted and "exists" once a container uses it.

Anything else answers 501 with a JSON message naming the method and path, so a test shows
plainly which endpoint is missing.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import ipaddress
import itertools
import json
import logging
import math
import re
import secrets
import signal
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple, Self
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger(__name__)

API_VERSION = "1.45"
MIN_API_VERSION = "1.24"
ENGINE_VERSION = "26.1.4"
COMPOSE_VERSION = "2.27.0"
DEFAULT_IMAGE = "weatherbench:latest"
DEFAULT_NETWORK = "weatherbench_default"

# Go's zero time.Time, which the engine prints for "never" (e.g. FinishedAt of a fresh container).
ZERO_TIME = "0001-01-01T00:00:00Z"
# The engine reports a paused or restarting container as Running too.
_RUNNING_STATES = frozenset({"running", "paused", "restarting"})
_VALID_STATES = frozenset({"created", "restarting", "running", "removing", "paused", "exited", "dead"})
# Signals whose default action ends the process; any other is delivered and the process lives on.
_TERMINATING_SIGNALS = frozenset({signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT})
_CONTAINER_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
_VERSION_PREFIX = re.compile(r"/v(\d+)\.(\d+)(/.*)")
_HEX = re.compile(r"(sha256:)?[0-9a-f]+")
_STREAM_TYPES = {"stdout": 1, "stderr": 2}  # the type byte of the multiplexed log stream
# With no pids limit, cgroup v2 reports "max", which the engine prints as the largest uint64.
_NO_PIDS_LIMIT = 2**64 - 1
_ETHERNET_MTU = 1500
_NAME_ADJECTIVES = ("brave", "eager", "jolly", "quirky", "sleepy", "wizardly")
_NAME_SURNAMES = ("hopper", "lovelace", "ritchie", "thompson", "torvalds", "turing")


def format_timestamp(ns: int) -> str:
    """Format like Go's time.RFC3339Nano, as the engine does: nanoseconds, trailing zeros dropped."""
    if ns <= 0:
        return ZERO_TIME
    seconds, nanos = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{nanos:09d}".rstrip("0")
    return f"{text}.{fraction}Z" if fraction else f"{text}Z"


def _human_duration(seconds: float) -> str:
    """go-units' HumanDuration, which the engine uses for the Status column of `docker ps`."""
    whole_seconds = int(seconds)
    if whole_seconds < 1:
        return "Less than a second"
    if whole_seconds == 1:
        return "1 second"
    if whole_seconds < 60:
        return f"{whole_seconds} seconds"
    minutes = whole_seconds // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)  # Go's Duration.Round(time.Hour) rounds half away from zero
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def _bool_param(value: str | None, default: bool = False) -> bool:
    """The engine's httputils.BoolValue: anything but an explicit "no" spelling is true."""
    if value is None:
        return default
    return value.strip().lower() not in ("", "0", "no", "false", "none")


def _int_param(query: Mapping[str, str], name: str, default: int) -> int:
    value = query.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise EngineError(400, f"invalid value for {name}: {value!r}") from None


def _normalize_image(name: str) -> str:
    """Add the implicit ":latest" tag, so "weatherbench" and "weatherbench:latest" are one image."""
    if "@" in name or ":" in name.rsplit("/", 1)[-1]:
        return name
    return f"{name}:latest"


def _image_id(name: str) -> str:
    return "sha256:" + hashlib.sha256(_normalize_image(name).encode()).hexdigest()


def _search(pattern: str, text: str) -> bool:
    try:
        return re.search(pattern, text) is not None
    except re.error as error:
        raise EngineError(400, f"invalid filter regular expression {pattern!r}: {error}") from None


def _labels_match(labels: Mapping[str, str], wanted: Sequence[str]) -> bool:
    """Every wanted "key" must be present and every "key=value" must be equal, as the engine does."""
    for condition in wanted:
        key, has_value, value = condition.partition("=")
        if key not in labels or (has_value and labels[key] != value):
            return False
    return True


def _parse_signal(value: str) -> signal.Signals:
    text = value.strip().upper()
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals[text if text.startswith("SIG") else f"SIG{text}"]
    except (KeyError, ValueError):
        raise EngineError(400, f"Invalid signal: {value}") from None


class EngineError(Exception):
    """An error the engine answers with: an HTTP status and the JSON {"message": ...} body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RecordedRequest(NamedTuple):
    """One request as received: the path has no /v1.NN prefix; each query value is its last one."""

    method: str
    path: str
    query: dict[str, str]


@dataclass
class _Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    # Sent with chunked transfer encoding: the SDK only treats a chunked body as a stream.
    chunks: list[bytes] | None = None


def _json_response(payload: Any, status: int = 200) -> _Response:
    return _Response(status, json.dumps(payload).encode() + b"\n")


def _empty_response(status: int = 204) -> _Response:
    return _Response(status)


@dataclass
class _InjectedFailure:
    method: str
    path_pattern: re.Pattern[str]
    status: int
    message: str


@dataclass
class _StatsSample:
    """One cgroup reading: cumulative counters, as the engine collects them on each tick."""

    read_ns: int = 0
    cpu_total_ns: int = 0
    system_ns: int = 0
    online_cpus: int = 0
    memory_usage: int = 0
    memory_limit: int = 0
    inactive_file: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass
class _Network:
    id: str
    name: str
    driver: str
    subnet: ipaddress.IPv4Network | None
    labels: dict[str, str]
    created_ns: int
    used_ips: set[str] = field(default_factory=set)

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1) if self.subnet else ""

    def reserve_ip(self, requested: str | None) -> str:
        """Reserve the requested address, or the lowest free one after the gateway."""
        if self.subnet is None:
            if requested:
                raise EngineError(400, f"network {self.name} has no IPAM: cannot assign {requested}")
            return ""
        if requested:
            try:
                address = ipaddress.IPv4Address(requested)
            except ValueError:
                raise EngineError(400, f"invalid IPv4 address: {requested}") from None
            if address not in self.subnet or str(address) == self.gateway:
                raise EngineError(400, f"no configured subnet or ip-range contain the IP address {requested}")
            if str(address) in self.used_ips:
                raise EngineError(409, f"Address already in use: {requested} on network {self.name}")
            self.used_ips.add(str(address))
            return str(address)
        for host in itertools.islice(self.subnet.hosts(), 1, None):
            if str(host) not in self.used_ips:
                self.used_ips.add(str(host))
                return str(host)
        raise EngineError(503, f"no available IPv4 addresses on network {self.name}")


@dataclass
class _Endpoint:
    network: _Network
    ip: str
    aliases: list[str]
    endpoint_id: str = ""

    @property
    def mac(self) -> str:
        # Older engines derived the MAC from the IPv4 address the same way; it keeps MACs stable.
        if not self.ip:
            return ""
        return "02:42:" + ":".join(f"{octet:02x}" for octet in ipaddress.IPv4Address(self.ip).packed)


@dataclass
class _LogLine:
    stream_type: int
    at_ns: int
    data: bytes


@dataclass
class _Container:
    id: str
    name: str
    image: str
    cmd: list[str]
    entrypoint: list[str] | None
    env: list[str]
    labels: dict[str, str]
    hostname: str
    domainname: str
    user: str
    working_dir: str
    tty: bool
    memory: int
    nano_cpus: int
    network_mode: str
    restart_policy: dict[str, Any]
    auto_remove: bool
    endpoints: dict[str, _Endpoint]
    created_ns: int
    sequence: int
    config_extra: dict[str, Any] = field(default_factory=dict)
    host_config_extra: dict[str, Any] = field(default_factory=dict)
    status: str = "created"
    exit_code: int = 0
    oom_killed: bool = False
    pid: int = 0
    started_ns: int = 0
    finished_ns: int = 0
    restart_count: int = 0
    sandbox_id: str = ""
    # Counts exits so `wait?condition=next-exit` can tell a new exit from one that already happened.
    exits: int = 0
    stats: _StatsSample = field(default_factory=_StatsSample)
    previous_stats: _StatsSample = field(default_factory=_StatsSample)
    logs: list[_LogLine] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.status in _RUNNING_STATES


Handler = Callable[..., _Response]


class FakeDockerEngine:
    """An in-memory Docker engine serving the Engine API on 127.0.0.1 at an OS-chosen port.

    Use it as a context manager: ``with FakeDockerEngine() as engine: engine.base_url``. The
    helpers (``add_container``, ``add_compose_service``, ``set_stats``, ``fail_next`` ...) set up
    and inspect state from the test; everything else is reached over HTTP, through the SDK.
    """

    def __init__(
        self, *, ncpu: int = 8, mem_total: int = 16 * 1024**3, api_version: str = API_VERSION
    ) -> None:
        self.ncpu = ncpu
        self.mem_total = mem_total
        self.api_version = api_version
        self.engine_id = secrets.token_hex(16).upper()
        # One re-entrant lock guards all state; handlers run under it, so each request is atomic.
        self._lock = threading.RLock()
        self._state_changed = threading.Condition(self._lock)
        self._containers: dict[str, _Container] = {}
        self._networks: dict[str, _Network] = {}
        self._images: dict[str, str] = {}
        self._requests: list[RecordedRequest] = []
        self._failures: list[_InjectedFailure] = []
        self._sequence = itertools.count(1)
        self._pids = itertools.count(1000)
        self._last_ns = 0
        self._created_ns = self._now_ns()
        self._closing = False
        self._server: _EngineHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._create_network("bridge", subnet="172.17.0.0/16", driver="bridge", labels={})
        self._create_network("host", subnet=None, driver="host", labels={})
        self._create_network("none", subnet=None, driver="null", labels={})
        container = r"/containers/(?P<ref>[^/]+)"
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            (method, re.compile(pattern), handler)
            for method, pattern, handler in (
                ("GET", r"/_ping", self._api_ping),
                ("HEAD", r"/_ping", self._api_ping),
                ("GET", r"/version", self._api_version),
                ("GET", r"/info", self._api_info),
                ("GET", r"/containers/json", self._api_list_containers),
                ("POST", r"/containers/create", self._api_create_container),
                ("GET", container + r"/json", self._api_inspect_container),
                ("POST", container + r"/start", self._api_start),
                ("POST", container + r"/stop", self._api_stop),
                ("POST", container + r"/kill", self._api_kill),
                ("POST", container + r"/restart", self._api_restart),
                ("POST", container + r"/pause", self._api_pause),
                ("POST", container + r"/unpause", self._api_unpause),
                ("POST", container + r"/wait", self._api_wait),
                ("DELETE", container, self._api_remove),
                ("GET", container + r"/stats", self._api_stats),
                ("GET", container + r"/logs", self._api_logs),
                ("GET", r"/networks", self._api_list_networks),
                ("GET", r"/networks/(?P<ref>[^/]+)", self._api_inspect_network),
                ("GET", r"/images/(?P<ref>.+)/json", self._api_inspect_image),
            )
        ]

    # ----------------------------------------------------------------------------------------------
    # Lifecycle

    def start(self) -> Self:
        """Bind 127.0.0.1 on a free port and serve from a background thread."""
        if self._server is not None:
            raise RuntimeError("FakeDockerEngine is already running")
        server = _EngineHTTPServer(("127.0.0.1", 0), self)
        try:
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fake-docker-engine:{server.server_address[1]}",
                daemon=True,
            )
            thread.start()
        except BaseException:
            server.server_close()
            raise
        with self._lock:
            self._closing = False
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Stop serving, end open connections and release the port; safe to call more than once."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        with self._lock:
            # Blocked `wait` requests would otherwise keep their connection threads alive.
            self._closing = True
            self._state_changed.notify_all()
        try:
            server.shutdown()
        finally:
            # The SDK keeps connections alive in its pool; end them so no handler thread outlives us.
            server.close_connections(timeout=5.0)
            server.server_close()
            thread.join(timeout=5.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeDockerEngine is not running; use it as a context manager")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """What to pass as ``base_url`` to ``docker.DockerClient`` or ``docker.APIClient``."""
        return f"tcp://127.0.0.1:{self.port}"

    # ----------------------------------------------------------------------------------------------
    # Helpers for tests

    def add_network(
        self,
        name: str,
        *,
        subnet: str | None = None,
        driver: str = "bridge",
        labels: Mapping[str, str] | None = None,
    ) -> str:
        """Create a user-defined network (a free 172.x.0.0/16 unless ``subnet`` is given); its id."""
        with self._lock:
            if self._network_by_name(name) is not None:
                raise ValueError(f"network with name {name} already exists")
            return self._create_network(name, subnet=subnet, driver=driver, labels=dict(labels or {})).id

    def add_container(
        self,
        name: str,
        image: str = DEFAULT_IMAGE,
        command: Sequence[str] | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        env: Sequence[str] | None = None,
        running: bool = True,
        memory_limit: int = 0,
        nano_cpus: int = 0,
        network: str = DEFAULT_NETWORK,
        ip: str | None = None,
        hostname: str | None = None,
        aliases: Sequence[str] | None = None,
        restart_policy: str = "no",
        tty: bool = False,
    ) -> str:
        """Add a container as if created (and, if ``running``, started); returns its 64-hex id.

        The network is created if it does not exist yet (on the /16 around ``ip`` when given).
        """
        with self._lock:
            attached = self._network_by_name(network)
            if attached is None:
                subnet = str(ipaddress.ip_network(f"{ip}/16", strict=False)) if ip else None
                attached = self._create_network(network, subnet=subnet, driver="bridge", labels={})
            try:
                container = self._new_container(
                    name,
                    image,
                    cmd=list(command or []),
                    env=list(env or []),
                    labels=dict(labels or {}),
                    hostname=hostname,
                    memory=memory_limit,
                    nano_cpus=nano_cpus,
                    network_mode=network,
                    attachments=[(attached, list(aliases or []), ip)],
                    restart_policy={"Name": restart_policy, "MaximumRetryCount": 0},
                    tty=tty,
                )
            except EngineError as error:
                raise ValueError(error.message) from None
            if running:
                self._start(container)
            return container.id

    def add_compose_service(
        self,
        project: str,
        service: str,
        replicas: int = 1,
        command: Sequence[str] | None = None,
        *,
        image: str = DEFAULT_IMAGE,
        env: Sequence[str] | None = None,
        labels: Mapping[str, str] | None = None,
        running: bool = True,
        memory_limit: int = 0,
        nano_cpus: int = 0,
        restart_policy: str = "no",
        working_dir: str = "/work/main",
        config_files: str | None = None,
        depends_on: str = "",
        network: str | None = None,
    ) -> list[str]:
        """Add ``replicas`` containers as `docker compose up` (v2) creates them; returns their ids.

        They are named ``{project}-{service}-{n}``, numbered on from any existing replicas (as
        `--scale` does), carry compose's labels, and join ``{project}_default`` under the service
        name as a network alias.
        """
        network_name = network or f"{project}_default"
        compose_files = config_files or f"{working_dir}/docker-compose.yml"
        # Compose hashes the service's resolved config; replicas of one service share the hash.
        service_config = {
            "image": image,
            "command": list(command or []),
            "environment": list(env or []),
            "mem_limit": memory_limit,
            "nano_cpus": nano_cpus,
            "restart": restart_policy,
        }
        config_hash = hashlib.sha256(json.dumps(service_config, sort_keys=True).encode()).hexdigest()
        with self._lock:
            if self._network_by_name(network_name) is None:
                self._create_network(
                    network_name,
                    subnet=None,
                    driver="bridge",
                    labels={
                        "com.docker.compose.network": "default",
                        "com.docker.compose.project": project,
                        "com.docker.compose.version": COMPOSE_VERSION,
                    },
                )
            existing_numbers = [
                int(container.labels.get("com.docker.compose.container-number", "0"))
                for container in self._containers.values()
                if container.labels.get("com.docker.compose.project") == project
                and container.labels.get("com.docker.compose.service") == service
            ]
            first_number = max(existing_numbers, default=0) + 1
            ids = []
            for number in range(first_number, first_number + replicas):
                name = f"{project}-{service}-{number}"
                compose_labels = {
                    "com.docker.compose.config-hash": config_hash,
                    "com.docker.compose.container-number": str(number),
                    "com.docker.compose.depends_on": depends_on,
                    "com.docker.compose.image": _image_id(image),
                    "com.docker.compose.oneoff": "False",
                    "com.docker.compose.project": project,
                    "com.docker.compose.project.config_files": compose_files,
                    "com.docker.compose.project.working_dir": working_dir,
                    "com.docker.compose.service": service,
                    "com.docker.compose.version": COMPOSE_VERSION,
                }
                ids.append(
                    self.add_container(
                        name,
                        image,
                        command,
                        # Compose's own labels win over same-named service labels, as in compose.
                        labels={**(labels or {}), **compose_labels},
                        env=env,
                        running=running,
                        memory_limit=memory_limit,
                        nano_cpus=nano_cpus,
                        network=network_name,
                        aliases=[name, service],
                        restart_policy=restart_policy,
                    )
                )
            return ids

    def container(self, name_or_id: str) -> dict[str, Any]:
        """The container's inspect document (a copy), as GET /containers/{id}/json returns it."""
        with self._lock:
            return self._inspect(self._container_for_helper(name_or_id))

    def set_stats(
        self,
        name_or_id: str,
        *,
        cpu_total_ns: int | None = None,
        system_ns: int | None = None,
        online_cpus: int | None = None,
        memory_usage: int | None = None,
        memory_limit: int | None = None,
        inactive_file: int | None = None,
        rx_bytes: int | None = None,
        tx_bytes: int | None = None,
    ) -> None:
        """Record the next stats sample; the current one becomes ``precpu_stats``.

        Counters are cumulative, as the engine reads them from the cgroup: ``cpu_total_ns`` is
        the container's CPU time, ``system_ns`` the host's (all CPUs). Values left out keep
        their previous value. Starting a container resets its samples, as a new cgroup does.
        """
        updates = {
            "cpu_total_ns": cpu_total_ns,
            "system_ns": system_ns,
            "online_cpus": online_cpus,
            "memory_usage": memory_usage,
            "memory_limit": memory_limit,
            "inactive_file": inactive_file,
            "rx_bytes": rx_bytes,
            "tx_bytes": tx_bytes,
        }
        given = {key: value for key, value in updates.items() if value is not None}
        negative = sorted(key for key, value in given.items() if value < 0)
        if negative:
            raise ValueError(f"stats counters cannot be negative: {', '.join(negative)}")
        with self._lock:
            container = self._container_for_helper(name_or_id)
            container.previous_stats = container.stats
            container.stats = dataclasses.replace(container.stats, read_ns=self._now_ns(), **given)

    def append_log(self, name_or_id: str, text: str, *, stderr: bool = False) -> None:
        """Append output lines to the container's log, as its process would write them."""
        stream_type = _STREAM_TYPES["stderr" if stderr else "stdout"]
        with self._lock:
            container = self._container_for_helper(name_or_id)
            for line in text.splitlines(keepends=True):
                data = line.encode() if line.endswith("\n") else f"{line}\n".encode()
                container.logs.append(_LogLine(stream_type, self._now_ns(), data))

    def simulate_exit(self, name_or_id: str, exit_code: int = 1, *, oom_killed: bool = False) -> None:
        """Make a running container's process exit by itself (a crash, or the OOM killer)."""
        with self._lock:
            container = self._container_for_helper(name_or_id)
            if not container.running:
                raise ValueError(f"container {container.name} is not running")
            self._terminate(container, exit_code, oom_killed=oom_killed)

    def fail_next(
        self, method: str, path_regex: str, status: int = 500, message: str = "injected failure"
    ) -> None:
        """Answer the next request matching ``method`` and ``path_regex`` with this error, once.

        ``path_regex`` is searched (re.search) in the path without its /v1.NN prefix. Several
        injected failures are used up in the order they were added.
        """
        with self._lock:
            self._failures.append(_InjectedFailure(method.upper(), re.compile(path_regex), status, message))

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first, as (method, path, query) tuples."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # ----------------------------------------------------------------------------------------------
    # HTTP entry point

    def handle(self, method: str, target: str, body: bytes) -> _Response:
        """Answer one HTTP request; called from the server's connection threads."""
        split_target = urlsplit(target)
        path = unquote(split_target.path)
        query = {
            key: values[-1] for key, values in parse_qs(split_target.query, keep_blank_values=True).items()
        }
        version_error = None
        versioned = _VERSION_PREFIX.fullmatch(path)
        if versioned:
            path = versioned.group(3)
            version_error = self._check_api_version(int(versioned.group(1)), int(versioned.group(2)))
        with self._lock:
            self._requests.append(RecordedRequest(method, path, query))
            failure = self._take_failure(method, path)
        if failure is not None:
            return _json_response({"message": failure.message}, failure.status)
        if version_error is not None:
            return _json_response({"message": version_error}, 400)
        try:
            handler, arguments = self._route(method, path)
            with self._lock:
                return handler(query, body, **arguments)
        except EngineError as error:
            return _json_response({"message": error.message}, error.status)
        except Exception as error:
            # A bug in the fake should fail the test loudly, not look like a hung engine.
            log.exception("fake docker engine failed on %s %s", method, path)
            return _json_response(
                {"message": f"fake docker engine failed on {method} {path}: {error!r}"}, 500
            )

    def _check_api_version(self, major: int, minor: int) -> str | None:
        requested = (major, minor)
        newest = tuple(int(part) for part in self.api_version.split("."))
        oldest = tuple(int(part) for part in MIN_API_VERSION.split("."))
        if requested > newest:
            return (
                f"client version {major}.{minor} is too new. "
                f"Maximum supported API version is {self.api_version}"
            )
        if requested < oldest:
            return (
                f"client version {major}.{minor} is too old. Minimum supported API version is "
                f"{MIN_API_VERSION}, please upgrade your client to a newer version"
            )
        return None

    def _take_failure(self, method: str, path: str) -> _InjectedFailure | None:
        for index, failure in enumerate(self._failures):
            if failure.method == method and failure.path_pattern.search(path):
                return self._failures.pop(index)
        return None

    def _route(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        for route_method, pattern, handler in self._routes:
            matched = pattern.fullmatch(path)
            if matched and route_method == method:
                return handler, matched.groupdict()
        raise EngineError(501, f"fake docker engine does not support {method} {path}")

    # ----------------------------------------------------------------------------------------------
    # System endpoints

    def _api_ping(self, query: Mapping[str, str], body: bytes) -> _Response:
        return _Response(200, b"OK", "text/plain; charset=utf-8")

    def _api_version(self, query: Mapping[str, str], body: bytes) -> _Response:
        details = {
            "ApiVersion": self.api_version,
            "Arch": "amd64",
            "BuildTime": "2024-06-06T11:00:02.000000000+00:00",
            "Experimental": "false",
            "GitCommit": "de5c9cf",
            "GoVersion": "go1.21.11",
            "KernelVersion": "6.5.0-fake",
            "MinAPIVersion": MIN_API_VERSION,
            "Os": "linux",
        }
        return _json_response(
            {
                "Platform": {"Name": "Docker Engine - Community"},
                "Components": [{"Name": "Engine", "Version": ENGINE_VERSION, "Details": details}],
                "Version": ENGINE_VERSION,
                "ApiVersion": self.api_version,
                "MinAPIVersion": MIN_API_VERSION,
                "GitCommit": details["GitCommit"],
                "GoVersion": details["GoVersion"],
                "Os": "linux",
                "Arch": "amd64",
                "KernelVersion": details["KernelVersion"],
                "BuildTime": details["BuildTime"],
            }
        )

    def _api_info(self, query: Mapping[str, str], body: bytes) -> _Response:
        containers = list(self._containers.values())
        paused = sum(1 for container in containers if container.status == "paused")
        running = sum(1 for container in containers if container.running) - paused
        return _json_response(
            {
                "ID": self.engine_id,
                "Containers": len(containers),
                "ContainersRunning": running,
                "ContainersPaused": paused,
                "ContainersStopped": len(containers) - running - paused,
                "Images": len(self._images),
                "Driver": "overlay2",
                "MemoryLimit": True,
                "SwapLimit": True,
                "CpuCfsPeriod": True,
                "CpuCfsQuota": True,
                "CgroupDriver": "systemd",
                "CgroupVersion": "2",
                "KernelVersion": "6.5.0-fake",
                "OperatingSystem": "Fake Docker Engine (in-memory test double)",
                "OSType": "linux",
                "Architecture": "x86_64",
                "NCPU": self.ncpu,
                "MemTotal": self.mem_total,
                "DockerRootDir": "/var/lib/docker",
                "Name": "fake-docker",
                "Labels": [],
                "ExperimentalBuild": False,
                "ServerVersion": ENGINE_VERSION,
                "Runtimes": {"runc": {"path": "runc"}},
                "DefaultRuntime": "runc",
                "Swarm": {
                    "NodeID": "",
                    "NodeAddr": "",
                    "LocalNodeState": "inactive",
                    "ControlAvailable": False,
                },
                "Warnings": None,
            }
        )

    # ----------------------------------------------------------------------------------------------
    # Container endpoints

    def _api_list_containers(self, query: Mapping[str, str], body: bytes) -> _Response:
        filters = _parse_filters(query.get("filters"), {"label", "name", "status", "id", "network", "exited"})
        for status in filters.get("status", []):
            if status not in _VALID_STATES:
                raise EngineError(400, f"invalid filter 'status={status}'")
        limit = _int_param(query, "limit", -1)
        # A status filter or a limit implies all=true in the engine (`docker ps -f status=exited`).
        include_all = _bool_param(query.get("all")) or "status" in filters or limit > 0
        newest_first = sorted(
            self._containers.values(), key=lambda container: container.sequence, reverse=True
        )
        listed = [
            container
            for container in newest_first
            if (include_all or container.running) and self._container_matches(container, filters)
        ]
        if limit > 0:
            listed = listed[:limit]
        return _json_response([self._list_entry(container) for container in listed])

    def _api_create_container(self, query: Mapping[str, str], body: bytes) -> _Response:
        config = _parse_json_body(body)
        if not isinstance(config, dict) or not config:
            raise EngineError(400, "Config cannot be empty in order to create a container")
        image = config.get("Image") or ""
        if not isinstance(image, str) or not image:
            raise EngineError(400, "invalid reference format")
        name = query.get("name") or self._generate_name()
        host_config = dict(config.get("HostConfig") or {})
        endpoints_config = dict((config.get("NetworkingConfig") or {}).get("EndpointsConfig") or {})
        network_mode = host_config.get("NetworkMode") or "default"
        if network_mode == "default":
            network_mode = next(iter(endpoints_config), "bridge")
        if network_mode.startswith("container:"):
            raise EngineError(501, f"fake docker engine does not model network mode {network_mode}")
        attachments = []
        for network_name in dict.fromkeys([network_mode, *endpoints_config]):
            network = self._find_network(network_name)
            endpoint_config = endpoints_config.get(network_name) or {}
            requested_ip = (endpoint_config.get("IPAMConfig") or {}).get("IPv4Address") or None
            attachments.append((network, list(endpoint_config.get("Aliases") or []), requested_ip))
        restart_policy = dict(host_config.get("RestartPolicy") or {})
        restart_policy = {
            "Name": restart_policy.get("Name") or "no",
            "MaximumRetryCount": int(restart_policy.get("MaximumRetryCount") or 0),
        }
        modelled_config_keys = {"Image", "Cmd", "Entrypoint", "Env", "Labels", "Hostname", "Domainname"}
        modelled_config_keys |= {"User", "WorkingDir", "Tty", "HostConfig", "NetworkingConfig"}
        container = self._new_container(
            name,
            image,
            cmd=_string_list(config.get("Cmd")),
            entrypoint=_string_list(config.get("Entrypoint")) or None,
            env=list(config.get("Env") or []),
            labels=dict(config.get("Labels") or {}),
            hostname=config.get("Hostname") or None,
            domainname=config.get("Domainname") or "",
            user=config.get("User") or "",
            working_dir=config.get("WorkingDir") or "",
            tty=bool(config.get("Tty")),
            memory=int(host_config.get("Memory") or 0),
            nano_cpus=int(host_config.get("NanoCpus") or 0),
            network_mode=network_mode,
            attachments=attachments,
            restart_policy=restart_policy,
            auto_remove=bool(host_config.get("AutoRemove")),
            config_extra={key: value for key, value in config.items() if key not in modelled_config_keys},
            host_config_extra=host_config,
        )
        return _json_response({"Id": container.id, "Warnings": []}, 201)

    def _api_inspect_container(self, query: Mapping[str, str], body: bytes, ref: str) -> _Response:
        return _json_response(self._inspect(self._find_container(ref)))

    def _api_start(self, query: Mapping[str, str], body: bytes, ref: str) -> _Response:
        container = self._find_container(ref)
        if container.status == "paused":
            raise EngineError(409, "cannot start a paused container, try unpause instead")
        if container.running:
            return _empty_response(304)
        self._start(container)
        return _empty_response()

    def _api_stop(self, query: Mapping[str, str], body: bytes, ref: str) -> _Response:
        container = self._find_container(ref)
        _int_param(query, "t", 10)  # validated like the engine, but the stop never has to wait
        if "signal" in query:
            _parse_signal(query["signal"])
        if not container.running:
            return _empty_response(304)
        self._terminate(container, 0)
        return _empty_response()

    def _api_kill(self, query: Mapping[str, str], body: bytes, ref: str) -> _Response:
        container = self._find_container(ref)
        kill_signal = _parse_signal(query.get("signal") or "SIGKILL")
        if not container.running:
            raise EngineError(409, f"Cannot kill container: {ref}: Container {container.id} is not running")
        if kill_signal in _TERMINATING_SIGNALS:
            self._terminate(container, 128 + kill_signal.value)
        return _empty_response()

    def _api_restart(self, query: Mapping[str, str], body: bytes, ref: str) -> _Response:
        container = self._find_container(ref)
        _int_param(query, "t", 10)
        if container.running:
            # A manual restart is not a restart-policy restart: RestartCount stays as it is.
            self._terminate(container, 0, allow_auto_remove=False)
        self._start(container)
        return _empty_response()

    def _api_pause(self, query: Mapping[str, str], body: bytes, ref: str) -> _Response:
        container = self._find_container(ref)
        if not container.running:
            raise EngineError(409, f"Container {container.id} is not running")
        if container.status == "paused":
            raise EngineError(409, f"Container {container.id} is already paused")
        container.status = "paused"
        self._state_changed.notify_all()
        return _empty_response()

    def _api_unpause(self, query: Mapping[str, str], body: bytes, ref: str) -> _Response:
        container = self._find_container(ref)
        if container.status != "paused":
            raise EngineError(409, f"Container {container.id} is not paused")
        container.status = "running"
        self._state_changed.notify_all()
        return _empty_response()

    def _api_wait(self, query: Mapping[str, str], body: bytes, ref: str) -> _Response:
        container = self._find_container(ref)
        condition = query.get("condition") or "not-running"
        if condition not in ("not-running", "next-exit", "removed"):
            raise EngineError(400, f"invalid condition: {condition!r}")
        exits_seen = container.exits

        def satisfied() -> bool:
            if condition == "removed":
                return container.id not in self._containers
            if condition == "next-exit":
                return container.exits > exits_seen
            return not container.running

        while not satisfied():
            if self._closing:
                raise EngineError(503, "fake docker engine is shutting down")
            self._state_changed.wait(timeout=0.5)  # releases the lock while waiting
        return _json_response({"StatusCode": container.exit_code})

    def _api_remove(self, query: Mapping[str, str], body: bytes, ref: str) -> _Response:
        container = self._find_container(ref)
        if _bool_param(query.get("link")):
            raise EngineError(501, "fake docker engine does not model legacy container links")
        if container.running:
            if not _bool_param(query.get("force")):
                if container.status == "paused":
                    reason = "container is paused and must be unpaused first"
                else:
                    reason = (
                        f"container is {container.status}: stop the container before removing or force remove"
                    )
                raise EngineError(409, f'cannot remove container "/{container.name}": {reason}')
            self._terminate(container, 128 + signal.SIGKILL.value, allow_auto_remove=False)
        self._remove(container)
        return _empty_response()

    def _api_stats(self, query: Mapping[str, str], body: bytes, ref: str) -> _Response:
        container = self._find_container(ref)
        stream = _bool_param(query.get("stream"), default=True)
        one_shot = _bool_param(query.get("one-shot"))
        if stream and one_shot:
            raise EngineError(400, "cannot have stream=true and one-shot=true")
        payload = json.dumps(self._stats_document(container, one_shot=one_shot)).encode() + b"\n"
        if stream:
            return _Response(200, chunks=[payload])
        return _Response(200, payload)

    def _api_logs(self, query: Mapping[str, str], body: bytes, ref: str) -> _Response:
        container = self._find_container(ref)
        wanted_streams = {
            stream_type
            for stream_name, stream_type in _STREAM_TYPES.items()
            if _bool_param(query.get(stream_name))
        }
        if not wanted_streams:
            raise EngineError(400, "Bad parameters: you must choose at least one stream")
        try:
            since_ns = int(float(query.get("since") or 0) * 1e9)
            until_ns = int(float(query.get("until") or 0) * 1e9)
        except ValueError:
            raise EngineError(400, "since and until must be Unix timestamps") from None
        lines = [
            line
            for line in container.logs
            if line.stream_type in wanted_streams
            and line.at_ns >= since_ns
            and (until_ns <= 0 or line.at_ns <= until_ns)
        ]
        tail = query.get("tail") or "all"
        # The engine treats a tail it cannot parse as "all", so this does too.
        if tail.isdigit():
            lines = lines[len(lines) - int(tail) :] if int(tail) else []
        with_timestamps = _bool_param(query.get("timestamps"))
        frames = []
        for line in lines:
            data = f"{format_timestamp(line.at_ns)} ".encode() + line.data if with_timestamps else line.data
            # A TTY merges the streams, so its log is raw; otherwise each line is a framed chunk.
            frames.append(
                data if container.tty else struct.pack(">BxxxL", line.stream_type, len(data)) + data
            )
        content_type = (
            "application/vnd.docker.raw-stream"
            if container.tty
            else "application/vnd.docker.multiplexed-stream"
        )
        return _Response(200, b"".join(frames), content_type)

    # ----------------------------------------------------------------------------------------------
    # Network and image endpoints

    def _api_list_networks(self, query: Mapping[str, str], body: bytes) -> _Response:
        filters = _parse_filters(query.get("filters"), {"name", "id", "label", "driver"})
        listed = [
            network
            for network in sorted(self._networks.values(), key=lambda network: network.name)
            if (not filters.get("name") or any(_search(value, network.name) for value in filters["name"]))
            and (not filters.get("id") or any(network.id.startswith(value) for value in filters["id"]))
            and _labels_match(network.labels, filters.get("label", []))
            and (not filters.get("driver") or network.driver in filters["driver"])
        ]
        return _json_response([self._network_document(network, with_containers=False) for network in listed])

    def _api_inspect_network(self, query: Mapping[str, str], body: bytes, ref: str) -> _Response:
        return _json_response(self._network_document(self._find_network(ref), with_containers=True))

    def _api_inspect_image(self, query: Mapping[str, str], body: bytes, ref: str) -> _Response:
        image_id = self._resolve_image(ref)
        return _json_response(
            {
                "Id": image_id,
                "RepoTags": sorted(name for name, known_id in self._images.items() if known_id == image_id),
                "RepoDigests": [],
                "Parent": "",
                "Comment": "",
                "Created": format_timestamp(self._created_ns),
                "DockerVersion": "",
                "Author": "",
                "Config": {"Env": None, "Cmd": None, "Entrypoint": None, "Labels": None},
                "Architecture": "amd64",
                "Os": "linux",
                "Size": 0,
                "RootFS": {"Type": "layers", "Layers": []},
                "Metadata": {"LastTagTime": ZERO_TIME},
            }
        )

    # ----------------------------------------------------------------------------------------------
    # State (all called with the lock held)

    def _now_ns(self) -> int:
        # Strictly increasing, so a restart's StartedAt is always later than the one before.
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        return self._last_ns

    def _create_network(
        self, name: str, *, subnet: str | None, driver: str, labels: dict[str, str]
    ) -> _Network:
        if subnet is not None:
            network_range = ipaddress.IPv4Network(subnet, strict=False)
            if any(
                existing.subnet and existing.subnet.overlaps(network_range)
                for existing in self._networks.values()
            ):
                raise ValueError(f"subnet {network_range} overlaps an existing network")
        elif driver == "bridge":
            network_range = self._free_subnet()
        else:
            network_range = None
        network = _Network(
            id=secrets.token_hex(32),
            name=name,
            driver=driver,
            subnet=network_range,
            labels=labels,
            created_ns=self._now_ns(),
        )
        self._networks[network.id] = network
        return network

    def _free_subnet(self) -> ipaddress.IPv4Network:
        # Like the engine's default address pools: 172.17-31.0.0/16, then 192.168.x.0/20.
        candidates = itertools.chain(
            (ipaddress.IPv4Network(f"172.{second}.0.0/16") for second in range(17, 32)),
            (ipaddress.IPv4Network(f"192.168.{third}.0/20") for third in range(0, 256, 16)),
        )
        taken = [network.subnet for network in self._networks.values() if network.subnet]
        for candidate in candidates:
            if not any(candidate.overlaps(subnet) for subnet in taken):
                return candidate
        raise EngineError(503, "could not find an available, non-overlapping IPv4 address pool")

    def _network_by_name(self, name: str) -> _Network | None:
        return next((network for network in self._networks.values() if network.name == name), None)

    def _find_network(self, ref: str) -> _Network:
        if ref in self._networks:
            return self._networks[ref]
        by_name = self._network_by_name(ref)
        if by_name is not None:
            return by_name
        by_prefix = [network for network in self._networks.values() if ref and network.id.startswith(ref)]
        if len(by_prefix) == 1:
            return by_prefix[0]
        raise EngineError(404, f"network {ref} not found")

    def _find_container(self, ref: str) -> _Container:
        """Resolve like the engine: full id, then name (with or without "/"), then unique id prefix."""
        if ref in self._containers:
            return self._containers[ref]
        name = ref.removeprefix("/")
        for container in self._containers.values():
            if container.name == name:
                return container
        by_prefix = [
            container for container in self._containers.values() if ref and container.id.startswith(ref)
        ]
        if len(by_prefix) == 1:
            return by_prefix[0]
        if len(by_prefix) > 1:
            raise EngineError(400, f"multiple IDs found with provided prefix: {ref}")
        raise EngineError(404, f"No such container: {ref}")

    def _container_for_helper(self, name_or_id: str) -> _Container:
        try:
            return self._find_container(name_or_id)
        except EngineError as error:
            raise KeyError(error.message) from None

    def _resolve_image(self, ref: str) -> str:
        normalized = _normalize_image(ref)
        if normalized in self._images:
            return self._images[normalized]
        if _HEX.fullmatch(ref):
            digits = ref.removeprefix("sha256:")
            matches = {image_id for image_id in self._images.values() if image_id[7:].startswith(digits)}
            if len(matches) == 1:
                return matches.pop()
        raise EngineError(404, f"No such image: {ref}")

    def _generate_name(self) -> str:
        for attempt in itertools.count():
            name = f"{secrets.choice(_NAME_ADJECTIVES)}_{secrets.choice(_NAME_SURNAMES)}"
            if attempt:
                name = f"{name}{attempt}"  # the engine also appends a digit on a clash
            if all(container.name != name for container in self._containers.values()):
                return name
        raise AssertionError("unreachable")

    def _new_container(
        self,
        name: str,
        image: str,
        *,
        cmd: list[str],
        env: list[str],
        labels: dict[str, str],
        hostname: str | None,
        memory: int,
        nano_cpus: int,
        network_mode: str,
        attachments: list[tuple[_Network, list[str], str | None]],
        restart_policy: dict[str, Any],
        entrypoint: list[str] | None = None,
        domainname: str = "",
        user: str = "",
        working_dir: str = "",
        tty: bool = False,
        auto_remove: bool = False,
        config_extra: dict[str, Any] | None = None,
        host_config_extra: dict[str, Any] | None = None,
    ) -> _Container:
        name = name.removeprefix("/")
        if not _CONTAINER_NAME.fullmatch(name):
            raise EngineError(
                400, f"Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )
        for other in self._containers.values():
            if other.name == name:
                raise EngineError(
                    409,
                    f'Conflict. The container name "/{name}" is already in use by container "{other.id}". '
                    "You have to remove (or rename) that container to be able to reuse that name.",
                )
        container_id = secrets.token_hex(32)
        endpoints: dict[str, _Endpoint] = {}
        try:
            for network, aliases, requested_ip in attachments:
                endpoints[network.name] = _Endpoint(network, network.reserve_ip(requested_ip), aliases)
        except EngineError:
            for endpoint in endpoints.values():
                endpoint.network.used_ips.discard(endpoint.ip)
            raise
        self._images.setdefault(_normalize_image(image), _image_id(image))
        container = _Container(
            id=container_id,
            name=name,
            image=image,
            cmd=cmd,
            entrypoint=entrypoint,
            env=env,
            labels=labels,
            hostname=hostname or container_id[:12],  # the engine's default hostname is the short id
            domainname=domainname,
            user=user,
            working_dir=working_dir,
            tty=tty,
            memory=memory,
            nano_cpus=nano_cpus,
            network_mode=network_mode,
            restart_policy=restart_policy,
            auto_remove=auto_remove,
            endpoints=endpoints,
            created_ns=self._now_ns(),
            sequence=next(self._sequence),
            config_extra=dict(config_extra or {}),
            host_config_extra=dict(host_config_extra or {}),
        )
        self._containers[container.id] = container
        return container

    def _start(self, container: _Container) -> None:
        now = self._now_ns()
        container.status = "running"
        container.pid = next(self._pids)
        container.exit_code = 0
        container.oom_killed = False
        container.started_ns = now
        container.sandbox_id = secrets.token_hex(32)
        for endpoint in container.endpoints.values():
            endpoint.endpoint_id = secrets.token_hex(32) if endpoint.ip else ""
        # A new process gets a new cgroup, whose counters start from zero.
        container.previous_stats = _StatsSample()
        container.stats = _StatsSample(read_ns=now, online_cpus=self.ncpu)
        self._state_changed.notify_all()

    def _terminate(
        self,
        container: _Container,
        exit_code: int,
        *,
        oom_killed: bool = False,
        allow_auto_remove: bool = True,
    ) -> None:
        container.status = "exited"
        container.exit_code = exit_code
        container.oom_killed = oom_killed
        container.pid = 0
        container.finished_ns = self._now_ns()
        container.sandbox_id = ""
        container.exits += 1
        if container.auto_remove and allow_auto_remove:
            self._remove(container)
        self._state_changed.notify_all()

    def _remove(self, container: _Container) -> None:
        for endpoint in container.endpoints.values():
            endpoint.network.used_ips.discard(endpoint.ip)
        self._containers.pop(container.id, None)
        self._state_changed.notify_all()

    def _container_matches(self, container: _Container, filters: Mapping[str, list[str]]) -> bool:
        if not _labels_match(container.labels, filters.get("label", [])):
            return False
        names = filters.get("name")
        # The engine matches the name filter as a regular expression, with and without the "/".
        if names and not any(
            _search(pattern, container.name) or _search(pattern, f"/{container.name}") for pattern in names
        ):
            return False
        if filters.get("status") and container.status not in filters["status"]:
            return False
        if filters.get("id") and not any(container.id.startswith(prefix) for prefix in filters["id"]):
            return False
        if filters.get("network") and not any(
            wanted == endpoint.network.name or endpoint.network.id.startswith(wanted)
            for wanted in filters["network"]
            for endpoint in container.endpoints.values()
        ):
            return False
        if filters.get("exited"):
            try:
                exit_codes = {int(code) for code in filters["exited"]}
            except ValueError:
                raise EngineError(400, f"invalid filter 'exited={filters['exited']}'") from None
            if container.status != "exited" or container.exit_code not in exit_codes:
                return False
        return True

    # ----------------------------------------------------------------------------------------------
    # Documents (the JSON the engine returns)

    def _status_text(self, container: _Container) -> str:
        now = time.time_ns()
        if container.status == "created":
            return "Created"
        if container.status == "dead":
            return "Dead"
        if container.status == "restarting":
            since_exit = _human_duration((now - container.finished_ns) / 1e9)
            return f"Restarting ({container.exit_code}) {since_exit} ago"
        if container.running:
            uptime = f"Up {_human_duration((now - container.started_ns) / 1e9)}"
            return f"{uptime} (Paused)" if container.status == "paused" else uptime
        return f"Exited ({container.exit_code}) {_human_duration((now - container.finished_ns) / 1e9)} ago"

    def _endpoint_document(
        self, container: _Container, endpoint: _Endpoint, *, listing: bool
    ) -> dict[str, Any]:
        # While stopped, the engine keeps the endpoint but shows no address, gateway or endpoint id.
        live = container.running and bool(endpoint.ip)
        user_defined = endpoint.network.name not in ("bridge", "host", "none")
        dns_names = [container.name, container.id[:12], *endpoint.aliases] if user_defined and live else None
        return {
            "IPAMConfig": None,
            "Links": None,
            "Aliases": None if listing else (list(endpoint.aliases) or None),
            "MacAddress": endpoint.mac if live else "",
            "DriverOpts": None,
            "NetworkID": endpoint.network.id,
            "EndpointID": endpoint.endpoint_id if live else "",
            "Gateway": endpoint.network.gateway if live else "",
            "IPAddress": endpoint.ip if live else "",
            "IPPrefixLen": endpoint.network.subnet.prefixlen if live and endpoint.network.subnet else 0,
            "IPv6Gateway": "",
            "GlobalIPv6Address": "",
            "GlobalIPv6PrefixLen": 0,
            "DNSNames": dns_names,
        }

    def _list_entry(self, container: _Container) -> dict[str, Any]:
        return {
            "Id": container.id,
            "Names": [f"/{container.name}"],
            "Image": container.image,
            "ImageID": _image_id(container.image),
            "Command": " ".join([*(container.entrypoint or []), *container.cmd]),
            "Created": container.created_ns // 1_000_000_000,
            "Ports": [],
            "Labels": dict(container.labels),
            "State": container.status,
            "Status": self._status_text(container),
            "HostConfig": {"NetworkMode": container.network_mode},
            "NetworkSettings": {
                "Networks": {
                    name: self._endpoint_document(container, endpoint, listing=True)
                    for name, endpoint in container.endpoints.items()
                }
            },
            "Mounts": [],
        }

    def _inspect(self, container: _Container) -> dict[str, Any]:
        command = [*(container.entrypoint or []), *container.cmd]
        files = f"/var/lib/docker/containers/{container.id}"
        networks = {
            name: self._endpoint_document(container, endpoint, listing=False)
            for name, endpoint in container.endpoints.items()
        }
        # The legacy top-level address fields describe the default bridge network only.
        bridge = networks.get("bridge") or {}
        config = {
            "Hostname": container.hostname,
            "Domainname": container.domainname,
            "User": container.user,
            "AttachStdin": False,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": container.tty,
            "OpenStdin": False,
            "StdinOnce": False,
            "Volumes": None,
            "OnBuild": None,
            **copy.deepcopy(container.config_extra),
            "Env": list(container.env),
            "Cmd": list(container.cmd) or None,
            "Image": container.image,
            "WorkingDir": container.working_dir,
            "Entrypoint": list(container.entrypoint) if container.entrypoint else None,
            "Labels": dict(container.labels),
        }
        host_config = {
            "Binds": None,
            "ContainerIDFile": "",
            "LogConfig": {"Type": "json-file", "Config": {}},
            "PortBindings": {},
            "VolumeDriver": "",
            "VolumesFrom": None,
            "CapAdd": None,
            "CapDrop": None,
            "Dns": [],
            "DnsOptions": [],
            "DnsSearch": [],
            "ExtraHosts": [],
            "Privileged": False,
            "PublishAllPorts": False,
            "ReadonlyRootfs": False,
            "ShmSize": 64 * 1024 * 1024,
            "Runtime": "runc",
            "CpuShares": 0,
            "CpuPeriod": 0,
            "CpuQuota": 0,
            "MemoryReservation": 0,
            "PidsLimit": None,
            **copy.deepcopy(container.host_config_extra),
            "NetworkMode": container.network_mode,
            "RestartPolicy": dict(container.restart_policy),
            "AutoRemove": container.auto_remove,
            "Memory": container.memory,
            # With a memory limit and no swap setting, the engine allows as much swap again.
            "MemorySwap": container.host_config_extra.get("MemorySwap") or 2 * container.memory,
            "NanoCpus": container.nano_cpus,
        }
        return {
            "Id": container.id,
            "Created": format_timestamp(container.created_ns),
            "Path": command[0] if command else "",
            "Args": command[1:],
            "State": {
                "Status": container.status,
                "Running": container.running,
                "Paused": container.status == "paused",
                "Restarting": container.status == "restarting",
                "OOMKilled": container.oom_killed,
                "Dead": container.status == "dead",
                "Pid": container.pid,
                "ExitCode": container.exit_code,
                "Error": "",
                "StartedAt": format_timestamp(container.started_ns),
                "FinishedAt": format_timestamp(container.finished_ns),
            },
            "Image": _image_id(container.image),
            "ResolvConfPath": f"{files}/resolv.conf",
            "HostnamePath": f"{files}/hostname",
            "HostsPath": f"{files}/hosts",
            "LogPath": f"{files}/{container.id}-json.log",
            "Name": f"/{container.name}",
            "RestartCount": container.restart_count,
            "Driver": "overlay2",
            "Platform": "linux",
            "MountLabel": "",
            "ProcessLabel": "",
            "AppArmorProfile": "",
            "ExecIDs": None,
            "HostConfig": host_config,
            "Mounts": [],
            "Config": config,
            "NetworkSettings": {
                "Bridge": "",
                "SandboxID": container.sandbox_id,
                "SandboxKey": f"/var/run/docker/netns/{container.sandbox_id[:12]}"
                if container.sandbox_id
                else "",
                "Ports": {},
                "HairpinMode": False,
                "LinkLocalIPv6Address": "",
                "LinkLocalIPv6PrefixLen": 0,
                "SecondaryIPAddresses": None,
                "SecondaryIPv6Addresses": None,
                "EndpointID": bridge.get("EndpointID", ""),
                "Gateway": bridge.get("Gateway", ""),
                "GlobalIPv6Address": "",
                "GlobalIPv6PrefixLen": 0,
                "IPAddress": bridge.get("IPAddress", ""),
                "IPPrefixLen": bridge.get("IPPrefixLen", 0),
                "IPv6Gateway": "",
                "MacAddress": bridge.get("MacAddress", ""),
                "Networks": networks,
            },
        }

    def _stats_document(self, container: _Container, *, one_shot: bool) -> dict[str, Any]:
        identity = {"name": f"/{container.name}", "id": container.id}
        blkio = {
            "io_service_bytes_recursive": None,
            "io_serviced_recursive": None,
            "io_queue_recursive": None,
            "io_service_time_recursive": None,
            "io_wait_time_recursive": None,
            "io_merged_recursive": None,
            "io_time_recursive": None,
            "sectors_recursive": None,
        }
        if not container.running:
            # What the engine answers for a container with no cgroup: zeros and the zero time.
            idle_cpu = _cpu_document(_StatsSample())
            return {
                "read": ZERO_TIME,
                "preread": ZERO_TIME,
                "pids_stats": {},
                "blkio_stats": blkio,
                "num_procs": 0,
                "storage_stats": {},
                "cpu_stats": idle_cpu,
                "precpu_stats": copy.deepcopy(idle_cpu),
                "memory_stats": {},
                **identity,
            }
        current = container.stats
        # one-shot skips the engine's second read, so there is no previous sample to compare with.
        previous = _StatsSample() if one_shot else container.previous_stats
        document: dict[str, Any] = {
            "read": format_timestamp(current.read_ns),
            "preread": format_timestamp(previous.read_ns),
            "pids_stats": {"current": 1, "limit": _NO_PIDS_LIMIT},
            "blkio_stats": {**blkio, "io_service_bytes_recursive": []},
            "num_procs": 0,
            "storage_stats": {},
            "cpu_stats": _cpu_document(current),
            "precpu_stats": _cpu_document(previous),
            "memory_stats": {
                "usage": current.memory_usage,
                "limit": current.memory_limit or container.memory or self.mem_total,
                # cgroup v2 names; `docker stats` subtracts inactive_file to get the memory in use.
                "stats": {
                    "anon": max(current.memory_usage - current.inactive_file, 0),
                    "file": current.inactive_file,
                    "active_anon": 0,
                    "active_file": 0,
                    "inactive_anon": 0,
                    "inactive_file": current.inactive_file,
                    "kernel": 0,
                    "shmem": 0,
                    "pgfault": 0,
                    "pgmajfault": 0,
                },
            },
            **identity,
        }
        if any(endpoint.ip for endpoint in container.endpoints.values()):
            document["networks"] = {
                "eth0": {
                    "rx_bytes": current.rx_bytes,
                    "rx_packets": math.ceil(current.rx_bytes / _ETHERNET_MTU),
                    "rx_errors": 0,
                    "rx_dropped": 0,
                    "tx_bytes": current.tx_bytes,
                    "tx_packets": math.ceil(current.tx_bytes / _ETHERNET_MTU),
                    "tx_errors": 0,
                    "tx_dropped": 0,
                }
            }
        return document

    def _network_document(self, network: _Network, *, with_containers: bool) -> dict[str, Any]:
        attached = {}
        if with_containers:
            for container in self._containers.values():
                endpoint = container.endpoints.get(network.name)
                if endpoint is not None and container.running:
                    prefix = f"/{network.subnet.prefixlen}" if network.subnet and endpoint.ip else ""
                    attached[container.id] = {
                        "Name": container.name,
                        "EndpointID": endpoint.endpoint_id,
                        "MacAddress": endpoint.mac,
                        "IPv4Address": f"{endpoint.ip}{prefix}",
                        "IPv6Address": "",
                    }
        return {
            "Name": network.name,
            "Id": network.id,
            "Created": format_timestamp(network.created_ns),
            "Scope": "local",
            "Driver": network.driver,
            "EnableIPv6": False,
            "IPAM": {
                "Driver": "default",
                "Options": None,
                "Config": [{"Subnet": str(network.subnet), "Gateway": network.gateway}]
                if network.subnet
                else [],
            },
            "Internal": False,
            "Attachable": False,
            "Ingress": False,
            "ConfigFrom": {"Network": ""},
            "ConfigOnly": False,
            "Containers": attached,
            "Options": {},
            "Labels": dict(network.labels),
        }


def _cpu_document(sample: _StatsSample) -> dict[str, Any]:
    document: dict[str, Any] = {
        "cpu_usage": {
            "total_usage": sample.cpu_total_ns,
            # The user/kernel split is arbitrary: `docker stats` only uses total_usage.
            "usage_in_usermode": sample.cpu_total_ns - sample.cpu_total_ns // 4,
            "usage_in_kernelmode": sample.cpu_total_ns // 4,
        },
        "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0},
    }
    # The engine omits these when zero (Go's omitempty), e.g. in the precpu_stats of a first read.
    if sample.system_ns:
        document["system_cpu_usage"] = sample.system_ns
    if sample.online_cpus:
        document["online_cpus"] = sample.online_cpus
    return document


def _parse_json_body(body: bytes) -> Any:
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except json.JSONDecodeError as error:
        raise EngineError(400, f"invalid JSON: {error}") from None


def _parse_filters(raw: str | None, allowed: set[str]) -> dict[str, list[str]]:
    if not raw:
        return {}
    try:
        decoded = json.loads(raw)
    except json.JSONDecodeError as error:
        raise EngineError(400, f"invalid filter: {error}") from None
    if not isinstance(decoded, dict):
        raise EngineError(400, "invalid filter: expected a JSON object")
    filters: dict[str, list[str]] = {}
    for key, values in decoded.items():
        if key not in allowed:
            raise EngineError(400, f"invalid filter '{key}'")
        if isinstance(values, dict):  # the older {"value": true} form, which the engine still accepts
            values = [value for value, enabled in values.items() if enabled]
        elif isinstance(values, str):
            values = [values]
        filters[key] = [str(value) for value in values]
    return filters


def _string_list(value: Any) -> list[str]:
    """The engine's strslice: a JSON string or a list of strings, or null."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(item) for item in value]


class _EngineHTTPServer(ThreadingHTTPServer):
    """The HTTP server, which tracks its connection threads so that stopping can end them."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: FakeDockerEngine) -> None:
        self.engine = engine
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._connections_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall without DNS.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        # ThreadingMixIn does not keep daemon threads, so start and remember them here.
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"fake-docker-connection:{self.server_address[1]}",
            daemon=True,
        )
        with self._connections_lock:
            self._connections[request] = thread
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.pop(request, None)
        super().shutdown_request(request)

    def close_connections(self, timeout: float) -> None:
        """End every open connection (kept alive by clients' pools) and wait for its thread."""
        with self._connections_lock:
            open_connections = list(self._connections.items())
        for connection, _ in open_connections:
            with contextlib.suppress(OSError):  # the client may have gone already
                connection.shutdown(socket.SHUT_RDWR)
        for _, thread in open_connections:
            thread.join(timeout)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients dropping connections mid-response is normal here; don't spray tracebacks.
        log.debug("fake docker engine connection from %s ended with an error", client_address, exc_info=True)


class _RequestHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 keep-alive, as the SDK's connection pool expects from a real engine.
    protocol_version = "HTTP/1.1"
    # An idle kept-alive connection closes after this long, so no thread lingers forever.
    timeout = 30
    server: _EngineHTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; with Nagle's algorithm and the client's
        # delayed ACK each response would stall ~40 ms. Go (and so the engine) disables it too.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def version_string(self) -> str:
        return f"Docker/{ENGINE_VERSION} (linux)"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("fake docker engine: " + format, *args)

    def _serve(self) -> None:
        response = self.server.engine.handle(self.command, self.path, self._read_body())
        self.send_response(response.status)
        self.send_header("Api-Version", self.server.engine.api_version)
        self.send_header("Docker-Experimental", "false")
        self.send_header("Ostype", "linux")
        if response.status in (204, 304):
            self.end_headers()
            return
        self.send_header("Content-Type", response.content_type)
        if response.chunks is not None:
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if self.command != "HEAD":
                for chunk in response.chunks:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    def _read_body(self) -> bytes:
        # The whole body must be read, or the next request on a kept-alive connection is garbage.
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""
