"""Stack and pipeline configuration: ports, topics, sizes and paths.

One typed object, loaded from include/stack/local.yaml, overridable per key
by environment variables (WB_<SECTION>_<KEY>) or by the caller. Every process
of the stack (broker, Spark, Ray, streaming job, inference driver, API) reads
its settings from here, so a port or topic name is defined exactly once.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = REPO_ROOT / "include" / "stack" / "local.yaml"
ENV_PREFIX = "WB_"


class ConfigError(ValueError):
    """A configuration value is missing, unknown or out of range."""


# Broker i (1-based) of a multi-broker cluster listens on the configured ports plus
# (i - 1) * KAFKA_PORT_STEP: 19092/19093, 19102/19103, 19112/19113 by default. A step of 10
# keeps each node's PLAINTEXT and CONTROLLER ports next to each other and clear of the
# neighbouring node's, and the whole cluster inside 19092-19113, far from the other ports.
KAFKA_PORT_STEP = 10
# Cluster sizes the local backend can form: one combined node, or a three-voter KRaft
# quorum (a majority survives one lost node, which is what fault tests inject).
KAFKA_BROKER_COUNTS = (1, 3)
# How far the newest event times of a healthy stream may trail the wall clock, on top of the
# window and watermark, before a record counts as far-late (spark.late_limit: auto). Live
# Open-Meteo observations carry the start of a 15-minute interval as their event time
# (pipeline.producer.openmeteo) and are polled once a minute; a producer retries an unreachable
# broker for up to a minute. Two intervals cover all of that with room to spare.
LATE_SLACK_MS = 30 * 60_000
LATE_LIMIT_AUTO = "auto"
LOOPBACK = "127.0.0.1"
STACK_BACKENDS = ("local", "compose", "external")
BACKEND_VARIABLE = "WB_STACK_BACKEND"
# network.advertise: the address of this host as its name resolves (a container's own IP).
ADVERTISE_AUTO = "auto"


@dataclass
class NetworkConfig:
    """How the processes of the stack listen and what address they give of themselves.

    The local backend keeps everything on loopback (the defaults). In containers every server
    binds all interfaces and advertises its own address; the other components are then reached
    by the hosts in their sections (kafka.host, spark.master_host, ray.head_host, ...).
    """

    bind: str = LOOPBACK  # address servers listen on: "0.0.0.0" in a container
    # This process's address as the others reach it (a Spark driver or worker, a Ray node):
    # a host name or IP, or "auto" for the address the host's own name resolves to.
    advertise: str = LOOPBACK

    @property
    def advertised_address(self) -> str:
        if self.advertise.strip().lower() != ADVERTISE_AUTO:
            return self.advertise
        import socket

        return socket.gethostbyname(socket.gethostname())


@dataclass
class KafkaConfig:
    # Host of broker i; "{node}" stands for its node number (containers: "kafka-{node}").
    host: str = LOOPBACK
    # Bootstrap servers of a cluster this stack did not start ("h1:9092,h2:9092"); empty: the
    # brokers above, derived from host and the ports.
    bootstrap: str = ""
    bootstrap_port: int = 19092
    controller_port: int = 19093
    metrics_port: int = 19094  # the Prometheus JMX exporter agent of node i: this + 10 * (i - 1)
    brokers: int = 1
    heap_mb: int = 512  # per broker
    partitions: int = 4
    retention_hours: int = 24
    raw_topic: str = "weather-raw"
    features_topic: str = "weather-features"
    predictions_topic: str = "weather-predictions"
    deadletter_topic: str = "weather-deadletter"
    progress_topic: str = "weather-spark-progress"
    # Benchmarks send here, not to raw_topic, so production observations are not mixed
    # with synthetic load; the streaming job reads both.
    benchmark_topic: str = "weather-raw-benchmark"

    @property
    def node_ids(self) -> list[int]:
        """KRaft node ids of the brokers, 1..brokers (each node is broker and controller)."""
        return list(range(1, self.brokers + 1))

    def node_host(self, node: int = 1) -> str:
        """The host broker `node` is reached at."""
        return self.host.replace("{node}", str(node))

    def broker_port(self, node: int = 1) -> int:
        """PLAINTEXT (client) port of broker `node`."""
        return self.bootstrap_port + KAFKA_PORT_STEP * (node - 1)

    def node_controller_port(self, node: int = 1) -> int:
        """CONTROLLER (KRaft quorum) port of node `node`."""
        return self.controller_port + KAFKA_PORT_STEP * (node - 1)

    def node_metrics_port(self, node: int = 1) -> int:
        """Prometheus port (JMX exporter agent) of node `node`."""
        return self.metrics_port + KAFKA_PORT_STEP * (node - 1)

    @property
    def bootstrap_servers(self) -> str:
        """Every broker's address, so a client still connects while any one broker is down."""
        if self.bootstrap.strip():
            return self.bootstrap.strip()
        return ",".join(f"{self.node_host(node)}:{self.broker_port(node)}" for node in self.node_ids)

    @property
    def controller_quorum(self) -> str:
        """Every controller's address (controller.quorum.bootstrap.servers)."""
        return ",".join(f"{self.node_host(node)}:{self.node_controller_port(node)}" for node in self.node_ids)

    @property
    def replication_factor(self) -> int:
        """Replicas per partition of the pipeline's (and Kafka's internal) topics."""
        return min(3, self.brokers)

    @property
    def min_insync_replicas(self) -> int:
        """With 3 replicas, acks=all needs 2 in sync: one broker may fail without stopping writes."""
        return 2 if self.replication_factor >= 3 else 1

    def node_ports(self, node: int) -> dict[str, int]:
        """The two ports of one node by owner; a single broker keeps its unnumbered names."""
        suffix = "" if self.brokers == 1 else f" {node}"
        return {
            f"kafka broker{suffix}": self.broker_port(node),
            f"kafka controller{suffix}": self.node_controller_port(node),
            f"kafka metrics{suffix}": self.node_metrics_port(node),
        }

    def ports(self) -> dict[str, int]:
        """Ports of every node by owner."""
        return {owner: port for node in self.node_ids for owner, port in self.node_ports(node).items()}

    @property
    def pipeline_topics(self) -> list[str]:
        return [
            self.raw_topic,
            self.features_topic,
            self.predictions_topic,
            self.deadletter_topic,
            self.progress_topic,
            self.benchmark_topic,
        ]

    @property
    def input_topics(self) -> list[str]:
        """The raw topics the streaming job reads: production observations and benchmark load."""
        return [self.raw_topic, self.benchmark_topic]


@dataclass
class SparkConfig:
    master_host: str = LOOPBACK  # the standalone master's host, as workers and drivers reach it
    streaming_host: str = LOOPBACK  # where the streaming job's driver (its UI and metrics) runs
    master_port: int = 7177
    master_ui_port: int = 8090
    worker_ui_port_base: int = 8091
    workers: int = 2
    worker_cores: int = 1
    worker_memory_mb: int = 1024
    daemon_heap_mb: int = 256
    executor_memory_mb: int = 512
    driver_memory_mb: int = 768
    driver_ui_port: int = 4050
    metrics_port: int = 9104  # the streaming job's own series (lag, batch time, state) for Prometheus
    # Our applications write Spark event logs (under state_dir/spark/events) for the History Server,
    # which `up` starts when history_server is on (or when asked for spark-history by name).
    event_log: bool = True
    history_server: bool = False
    history_host: str = LOOPBACK
    history_port: int = 18180
    history_retention: str = "7d"  # event logs older than this are deleted by the History Server
    # Opening an application replays its event log into memory: up to four rolled 16-MB files
    # of a long streaming job, which thrash in the 256 MB that the master and workers get.
    history_heap_mb: int = 768
    shuffle_partitions: int = 4
    window: str = "5 minutes"
    watermark: str = "1 minute"
    trigger: str = "10 seconds"
    max_offsets_per_trigger: int = 100000
    # A valid record whose event time is older than its Kafka append time minus this goes to the
    # dead-letter topic (reason "late") instead of the windows: "auto" or a duration.
    late_limit: str = LATE_LIMIT_AUTO

    @property
    def master_url(self) -> str:
        return f"spark://{self.master_host}:{self.master_port}"

    @property
    def master_ui_url(self) -> str:
        return f"http://{self.master_host}:{self.master_ui_port}"

    @property
    def history_url(self) -> str:
        return f"http://{self.history_host}:{self.history_port}"

    @property
    def streaming_ui_url(self) -> str:
        """The streaming job's driver UI (REST API, Prometheus servlet)."""
        return f"http://{self.streaming_host}:{self.driver_ui_port}"

    @property
    def late_limit_ms(self) -> int:
        """The far-late limit in ms; "auto" is window + watermark + LATE_SLACK_MS.

        The watermark trails the newest event time by the watermark delay, and a window closes
        once the watermark passes its end. While the newest event times trail the clock by less
        than LATE_SLACK_MS, a record older than window + watermark + slack therefore belongs to a
        window that has already closed: Spark would drop it and only count it; the job dead-letters it.
        """
        if self.late_limit.strip().lower() == LATE_LIMIT_AUTO:
            return duration_ms(self.window) + duration_ms(self.watermark) + LATE_SLACK_MS
        return duration_ms(self.late_limit)


@dataclass
class RayConfig:
    head_host: str = LOOPBACK
    gcs_port: int = 6390
    dashboard_port: int = 8265
    client_server_port: int = 6391
    worker_port_min: int = 21000
    agent_port_base: int = 52400  # dashboard agent HTTP port of node i is base + i (head: i = 0)
    metrics_port: int = 9120  # Prometheus port of the head node; worker node i: this + i
    worker_port_max: int = 22999
    include_dashboard: bool = True
    workers: int = 2
    worker_cpus: int = 1
    head_object_store_mb: int = 200
    worker_object_store_mb: int = 100
    health_check_period_ms: int = 1000
    health_check_failure_threshold: int = 5

    @property
    def address(self) -> str:
        return f"{self.head_host}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str | None:
        return f"http://{self.head_host}:{self.dashboard_port}" if self.include_dashboard else None


@dataclass
class InferenceConfig:
    host: str = LOOPBACK  # where the inference driver runs (its metrics endpoint)
    consumer_group: str = "weather-inference"
    batch_size: int = 500
    call_timeout_s: float = 60.0
    # A call still unanswered after this is sent to a second actor too (0 = never):
    # it bounds the stall of a batch whose actor's node died before Ray notices.
    hedge_after_s: float = 2.0
    # The pool never shrinks below this many actors: spare capacity, so a lost node's
    # actor is restarted on a surviving node instead of being dropped with it.
    min_actors: int = 2
    metrics_port: int = 9102

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"


@dataclass
class ApiConfig:
    host: str = LOOPBACK
    port: int = 8088
    consumer_group: str = "weather-api"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass
class MonitoringConfig:
    """Prometheus around the stack: the local backend runs a server and a node exporter when enabled.

    Every component exposes its metrics whether or not this is on; `enabled` decides whether
    `up` also starts Prometheus (Debian's package) to scrape them, and whether benchmark steps
    read its series.
    """

    enabled: bool = False
    prometheus_host: str = LOOPBACK  # where the Prometheus server runs, for queries
    prometheus_port: int = 9190
    node_exporter_port: int = 9110  # machine CPU, memory, disk and network
    harness_port: int = 9108  # a benchmark run's load generator and progress, while it runs
    producer_port: int = 9106  # `python -m pipeline.producer` (Open-Meteo or load)
    grafana_port: int = 3300  # docker-compose.yml only
    scrape_interval_s: int = 5
    retention: str = "7d"

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.prometheus_host}:{self.prometheus_port}"


@dataclass
class ComposeConfig:
    """The compose backend: which docker compose project's containers it manages, through which engine."""

    project: str = "weatherbench"  # docker-compose.yml's `name`
    docker_url: str = "unix:///var/run/docker.sock"
    docker_timeout_s: float = 60.0


@dataclass
class ModelConfig:
    dir: str = "models"


@dataclass
class SupervisorConfig:
    """How the local backend keeps the pipeline's services running (see pipeline/stack/supervisor.py).

    With `enabled`, the streaming job, the inference driver and the serving API each run
    under a supervisor that starts them again when they exit without being asked to.
    """

    enabled: bool = True
    backoff_initial_s: float = 1.0  # wait before the first restart; doubles per restart
    backoff_max_s: float = 30.0
    reset_after_s: float = 30.0  # a child that stayed up this long starts the back-off over
    max_restarts: int = 5  # more exits than this within restart_window_s: give up
    restart_window_s: float = 120.0
    # SIGTERM to SIGKILL. Below the local backend's own 30-s stop timeout, after which it
    # kills the whole session (supervisor included) without the supervisor's log line.
    stop_timeout_s: float = 25.0


@dataclass
class StackConfig:
    state_dir: Path = field(default_factory=lambda: REPO_ROOT / ".state")
    # Where the stack runs: local processes, docker compose's containers, or an existing cluster.
    backend: str = "local"
    network: NetworkConfig = field(default_factory=NetworkConfig)
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    monitoring: MonitoringConfig = field(default_factory=MonitoringConfig)
    compose: ComposeConfig = field(default_factory=ComposeConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)

    @property
    def model_dir(self) -> Path:
        return self.state_dir / self.model.dir

    @property
    def jars_dir(self) -> Path:
        """JVM dependencies fetched by `make setup`; shared by every state dir."""
        return Path(os.environ.get("WB_JARS_DIR", REPO_ROOT / ".state" / "jars"))

    @property
    def stack_file(self) -> Path:
        """The resolved configuration written by `up`, read by every service process."""
        return self.state_dir / "stack.yaml"

    def dump(self, path: Path | None = None) -> Path:
        target = path or self.stack_file
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
        return target

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["state_dir"] = str(self.state_dir)
        return data

    def ports(self) -> dict[str, int]:
        """Every fixed TCP port the stack binds, by owner (for busy-port checks)."""
        ports = {
            **self.kafka.ports(),
            "spark master": self.spark.master_port,
            "spark master ui": self.spark.master_ui_port,
            "spark history server": self.spark.history_port,
            "ray gcs": self.ray.gcs_port,
            "ray client server": self.ray.client_server_port,
            "serving api": self.api.port,
            "inference metrics": self.inference.metrics_port,
            "spark streaming metrics": self.spark.metrics_port,
            "ray head metrics": self.ray.metrics_port,
            "prometheus": self.monitoring.prometheus_port,
            "node exporter": self.monitoring.node_exporter_port,
        }
        if self.ray.include_dashboard:
            ports["ray dashboard"] = self.ray.dashboard_port
        return ports


def service_environ(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a stack service: without WB_* overrides (except the jars location).

    Services read their settings from the resolved stack file; overrides in the
    caller's environment were applied when it was written and must not apply twice.
    """
    env = os.environ if base is None else base
    return {k: v for k, v in env.items() if not k.startswith(ENV_PREFIX) or k == "WB_JARS_DIR"}


_SECTIONS = {
    "network": NetworkConfig,
    "kafka": KafkaConfig,
    "spark": SparkConfig,
    "ray": RayConfig,
    "inference": InferenceConfig,
    "api": ApiConfig,
    "model": ModelConfig,
    "monitoring": MonitoringConfig,
    "compose": ComposeConfig,
    "supervisor": SupervisorConfig,
}
SECTIONS = tuple(_SECTIONS)  # the configuration's sections, in file order


def _coerce(value: Any, target: Any, name: str) -> Any:
    """Convert a YAML or environment value to the field's declared type."""
    try:
        if target in (int, "int"):
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if target in (float, "float"):
            return float(value)
        if target in (bool, "bool"):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {target}, got {value!r}") from None


def _apply(section_obj: Any, values: dict[str, Any], section: str) -> None:
    known = {f.name: f for f in fields(section_obj)}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown setting (known: {', '.join(sorted(known))})")
        setattr(section_obj, key, _coerce(value, known[key].type, f"{section}.{key}"))


def load_config(
    path: Path | str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    environ: dict[str, str] | None = None,
) -> StackConfig:
    """Build the stack configuration: file, then environment, then overrides."""
    config = StackConfig()
    source = Path(path) if path else DEFAULT_CONFIG_FILE
    raw: dict[str, Any] = {}
    if source.exists():
        raw = yaml.safe_load(source.read_text()) or {}
    elif path:
        raise ConfigError(f"configuration file not found: {source}")

    env = os.environ if environ is None else environ
    layered: dict[str, dict[str, Any]] = {name: dict(raw.get(name) or {}) for name in _SECTIONS}
    state_dir: Any = raw.get("state_dir")
    backend: Any = raw.get("backend")
    for key, value in env.items():
        match = re.fullmatch(rf"{ENV_PREFIX}([A-Z]+)_([A-Z0-9_]+)", key)
        if key == f"{ENV_PREFIX}STATE_DIR":
            state_dir = value
        elif key == BACKEND_VARIABLE:
            backend = value
        elif match and match.group(1).lower() in _SECTIONS:
            layered[match.group(1).lower()][match.group(2).lower()] = value
    for section, values in (overrides or {}).items():
        if section == "state_dir":
            state_dir = values
            continue
        if section == "backend":
            backend = values
            continue
        if section not in _SECTIONS:
            raise ConfigError(f"{section}: unknown configuration section")
        layered[section].update(values)

    unknown = set(raw) - set(_SECTIONS) - {"state_dir", "backend"}
    if unknown:
        raise ConfigError(f"unknown configuration section(s): {', '.join(sorted(unknown))}")
    for section, values in layered.items():
        _apply(getattr(config, section), values, section)
    if state_dir:
        state = Path(state_dir)
        config.state_dir = state if state.is_absolute() else (REPO_ROOT / state)
    if backend:
        config.backend = str(backend)
    validate_config(config)
    return config


def validate_config(config: StackConfig) -> None:
    """Reject values that cannot work before anything is started."""
    if config.backend not in STACK_BACKENDS:
        raise ConfigError(
            f"backend: {config.backend!r} is not one of {', '.join(STACK_BACKENDS)} "
            f"(set it with {BACKEND_VARIABLE})"
        )
    if config.spark.workers < 0 or config.ray.workers < 0:
        raise ConfigError("spark.workers and ray.workers must be >= 0")
    if config.kafka.partitions < 1:
        raise ConfigError("kafka.partitions must be >= 1")
    if config.kafka.brokers not in KAFKA_BROKER_COUNTS:
        raise ConfigError(
            f"kafka.brokers: expected 1 or 3, got {config.kafka.brokers} (1 combined node without "
            "replication, or a 3-node KRaft quorum with replication factor 3)"
        )
    sup = config.supervisor
    if sup.backoff_initial_s <= 0 or sup.backoff_max_s < sup.backoff_initial_s:
        raise ConfigError("supervisor.backoff_initial_s must be > 0 and <= supervisor.backoff_max_s")
    if sup.max_restarts < 0 or sup.restart_window_s <= 0 or sup.stop_timeout_s <= 0:
        raise ConfigError("supervisor.max_restarts must be >= 0, restart_window_s and stop_timeout_s > 0")
    _validate_late_limit(config.spark)
    # Clients of the stack that serve metrics take part in the collision check too.
    ports = {
        **config.ports(),
        "benchmark harness metrics": config.monitoring.harness_port,
        "producer metrics": config.monitoring.producer_port,
        "grafana": config.monitoring.grafana_port,
    }
    seen: dict[int, str] = {}
    for owner, port in ports.items():
        if not 1 <= port <= 65535:
            raise ConfigError(f"{owner} port {port} is out of range")
        if port in seen:
            raise ConfigError(f"{owner} and {seen[port]} both use port {port}")
        seen[port] = owner


def _validate_late_limit(spark: SparkConfig) -> None:
    """A far-late limit must be readable and must not reject records an open window still takes."""
    try:
        limit = spark.late_limit_ms
        open_for = duration_ms(spark.window) + duration_ms(spark.watermark)
    except ConfigError as exc:
        raise ConfigError(f"spark.late_limit / window / watermark: {exc}") from None
    if limit < open_for:
        raise ConfigError(
            f"spark.late_limit: {spark.late_limit!r} is shorter than window + watermark "
            f"({spark.window} + {spark.watermark}): records of windows still open would be "
            f"dead-lettered as late; use at least that, or {LATE_LIMIT_AUTO!r}"
        )


_UNITS_MS = {
    "ms": 1,
    "millisecond": 1,
    "s": 1000,
    "sec": 1000,
    "second": 1000,
    "m": 60_000,
    "min": 60_000,
    "minute": 60_000,
    "h": 3_600_000,
    "hour": 3_600_000,
}


def duration_ms(text: str) -> int:
    """Milliseconds of a Spark-style interval such as "5 minutes", "10 seconds" or "500 ms"."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]+)\s*", text)
    unit = match.group(2).lower() if match else ""
    if unit not in _UNITS_MS and unit.endswith("s"):
        unit = unit[:-1]  # plural: "minutes", "seconds"
    if not match or unit not in _UNITS_MS:
        raise ConfigError(f"cannot read duration {text!r}; use e.g. '5 minutes', '10 seconds', '500 ms'")
    return int(float(match.group(1)) * _UNITS_MS[unit])
