"""Local ("embedded") stack backend: every component as a supervised process on this machine.

Owns how each component is launched here: the KRaft broker(s) from Maven jars,
Spark standalone daemons from the pyspark wheel, Ray nodes from the ray
wheel, and the pipeline's own services (streaming job, inference driver,
serving API). All files live under the state dir:

    <state>/pids/<instance>.json   pid, session, start time (see process.py)
    <state>/pids/<instance>.state  a supervised service's child, restarts, last exits (supervisor.py)
    <state>/logs/<instance>.log    stdout+stderr of each process
    <state>/kafka/                 server.properties and data/ of the single broker, or
    <state>/kafka/broker-<i>/      of broker i of a 3-broker cluster (kafka.brokers = 3)
    <state>/spark/                 worker and scratch dirs
    <state>/checkpoints/           streaming checkpoints
    <state>/api/                   the serving API's database
    <state>/models/                versioned model files

Kafka runs as one combined broker+controller node (instance "kafka") or as a 3-node
KRaft cluster (instances "kafka-1".."kafka-3", replication factor 3, min ISR 2).
kill/restart act on one broker (`which`, default broker 1); the broker count is fixed
at `up`, so `scale("kafka", n)` is refused.

The pipeline's services (streaming job, inference driver, API) run under a supervisor
(`supervisor.enabled`, default on) that starts them again when they die. For them,
`kill` is a crash: SIGKILL to the service's own processes, and the supervisor brings it
back after its back-off. `kill(graceful=True)` is an operator's stop, like `systemctl
stop`: SIGTERM through the supervisor, which then exits too, and the service stays down
until `restart` or `up`. `restart` stops both and starts both again.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from pipeline.config import REPO_ROOT, StackConfig, service_environ
from pipeline.stack.base import (
    ALL_COMPONENTS,
    API,
    COMPONENTS,
    INFERENCE,
    KAFKA,
    MONITORING,
    NODE_EXPORTER,
    PROMETHEUS,
    RAY_HEAD,
    RAY_WORKER,
    SCALABLE,
    SERVICES,
    SPARK_HISTORY,
    SPARK_MASTER,
    SPARK_WORKER,
    STREAMING_JOB,
    InstanceStatus,
    PortBusyError,
    Stack,
    StackError,
    StackStatus,
    UnsupportedOperation,
    check_component,
)
from pipeline.stack.monitoring import (
    MonitoringError,
    PrometheusClient,
    node_exporter_argv,
    prometheus_argv,
    write_local_config,
    write_worker_targets,
)
from pipeline.stack.process import (
    ManagedProcess,
    ProcessError,
    port_in_use,
    port_owner,
    stop_all,
)
from pipeline.stack.supervisor import STATE_SUFFIX, SupervisedProcess, recorded

log = logging.getLogger(__name__)
KAFKA_LOG4J = REPO_ROOT / "include" / "kafka" / "log4j2.properties"
VENV_BIN = Path(sys.executable).parent
# Stop order for `down`: consumers before producers of their input, compute before Kafka.
DOWN_ORDER = (
    API,
    INFERENCE,
    STREAMING_JOB,
    "spark-batch",
    SPARK_HISTORY,
    RAY_WORKER,
    RAY_HEAD,
    SPARK_WORKER,
    SPARK_MASTER,
    KAFKA,
    # Last: it watches the others stop.
    *MONITORING,
)


# Master: /metrics/master/prometheus (workers, apps) and /metrics/applications/prometheus;
# worker: /metrics/prometheus (cores and memory in use, executors).
SPARK_DAEMON_METRICS = """\
*.sink.prometheusServlet.class=org.apache.spark.metrics.sink.PrometheusServlet
*.sink.prometheusServlet.path=/metrics/prometheus
master.sink.prometheusServlet.path=/metrics/master/prometheus
applications.sink.prometheusServlet.path=/metrics/applications/prometheus
"""
KAFKA_JMX_EXPORTER_CONFIG = REPO_ROOT / "include" / "kafka" / "jmx-exporter.yaml"


def _http_json(url: str, timeout: float = 2.0) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _kafka_uuid() -> str:
    """A random Kafka Uuid in its text form (url-safe base64, no padding): cluster and directory ids."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if missing), held for the with-block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def java_major_version() -> int:
    java = shutil.which("java")
    if not java:
        raise StackError("Java not found on PATH: the Kafka broker and Spark need Java 17 or newer")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise StackError(f"cannot read the Java version from: {out.strip()[:200]}")
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major


class LocalStack(Stack):
    backend = "local"

    def __init__(self, config: StackConfig) -> None:
        super().__init__(config)
        self.state = config.state_dir
        self.pid_dir = self.state / "pids"
        self.log_dir = self.state / "logs"
        self.startup_seconds: dict[str, float] = {}  # per step of the last up(), for reports

    # ------------------------------------------------------------------ helpers
    def _proc(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        return ManagedProcess(name, argv, pid_dir=self.pid_dir, log_dir=self.log_dir, env=env, cwd=REPO_ROOT)

    def _service(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        """A pipeline service's process: under a supervisor unless supervisor.enabled is off."""
        if not self.config.supervisor.enabled:
            return self._proc(name, argv, env)
        return SupervisedProcess(
            name,
            argv,
            pid_dir=self.pid_dir,
            log_dir=self.log_dir,
            env=env,
            cwd=REPO_ROOT,
            settings=self.config.supervisor,
        )

    def _base_env(self) -> dict[str, str]:
        env = service_environ()
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        # Loopback cluster: one explicit auth mode for head, workers and drivers
        # (a stray ~/.ray/auth_token would otherwise switch token auth on for some).
        env["RAY_AUTH_MODE"] = "disabled"
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env["SPARK_LOCAL_IP"] = self.config.network.advertised_address
        return env

    def _instances(self, component: str) -> list[int]:
        """Indexes of instances of a scalable component that have a pid file and are alive."""
        found = []
        for path in self.pid_dir.glob(f"{component}-*.json"):
            match = re.fullmatch(rf"{component}-(\d+)", path.stem)
            if match and self._scalable_proc(component, int(match.group(1))).is_running():
                found.append(int(match.group(1)))
        return sorted(found)

    def _scalable_proc(self, component: str, index: int) -> ManagedProcess:
        return self._spark_worker(index) if component == SPARK_WORKER else self._ray_worker(index)

    def _check_ports(self, owners: dict[str, int]) -> None:
        for owner, port in owners.items():
            if port_in_use(port):
                raise PortBusyError(
                    f"port {port} needed by the {owner} is already in use by {port_owner(port)}; "
                    f"stop that process or set another port (see include/stack/local.yaml, WB_* variables)"
                )

    # ------------------------------------------------------------------ Kafka
    # One broker is one combined KRaft node named "kafka" with its files in <state>/kafka (the
    # layout the single-broker stack has always had). With kafka.brokers = 3, nodes 1..3 are
    # instances "kafka-1".."kafka-3", each with server.properties and data/ in
    # <state>/kafka/broker-<i>, all formatted with one cluster id and one three-voter quorum.
    def _kafka_dir(self) -> Path:
        return self.state / "kafka"

    def _kafka_node_dir(self, node: int) -> Path:
        if self.config.kafka.brokers == 1:
            return self._kafka_dir()
        return self._kafka_dir() / f"broker-{node}"

    def _kafka_node_name(self, node: int) -> str:
        return KAFKA if self.config.kafka.brokers == 1 else f"{KAFKA}-{node}"

    def _check_kafka_node(self, node: int) -> None:
        k = self.config.kafka
        if node in k.node_ids:
            return
        if k.brokers == 1:
            raise StackError(f"{KAFKA} has a single instance; got which={node}")
        raise StackError(f"{KAFKA} has {k.brokers} brokers (kafka.brokers); got which={node}")

    def _kafka_pid_names(self) -> list[str]:
        """Kafka instances with a pid file ("kafka" or "kafka-<i>"), by node number."""
        if not self.pid_dir.is_dir():
            return []
        names = [p.stem for p in self.pid_dir.glob(f"{KAFKA}*.json")]
        kafka = [n for n in names if n == KAFKA or re.fullmatch(rf"{KAFKA}-\d+", n)]
        return sorted(kafka, key=lambda n: int(n.rsplit("-", 1)[1]) if "-" in n else 1)

    def _kafka_jars(self) -> str:
        jars = self.config.jars_dir / "kafka"
        if not any(jars.glob("kafka_2.13-*.jar")):
            raise StackError(f"Kafka broker jars not found in {jars}: run `make setup` (Maven fetches them)")
        return f"{jars}/*"

    def kafka_node_properties(self, node: int = 1) -> dict[str, str]:
        """server.properties of one node: a combined broker and KRaft controller.

        Every node lists all controllers in controller.quorum.bootstrap.servers (KIP-853
        dynamic quorum, as the single node always used): the voter set itself is fixed
        when the storage is formatted (--standalone for one node, --initial-controllers
        for three), so the same properties serve both sizes.
        """
        k = self.config.kafka
        bind = self.config.network.bind
        replicas = str(k.replication_factor)
        min_isr = str(k.min_insync_replicas)
        return {
            "process.roles": "broker,controller",
            "node.id": str(node),
            "controller.quorum.bootstrap.servers": k.controller_quorum,
            "listeners": (
                f"PLAINTEXT://{bind}:{k.broker_port(node)},CONTROLLER://{bind}:{k.node_controller_port(node)}"
            ),
            "advertised.listeners": f"PLAINTEXT://{k.node_host(node)}:{k.broker_port(node)}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self._kafka_node_dir(node) / "data"),
            "num.partitions": str(k.partitions),
            "auto.create.topics.enable": "false",
            # Topics created without an explicit factor (and Kafka's internal ones) are
            # replicated like the pipeline's; with 3 replicas, acks=all needs 2 in sync.
            "default.replication.factor": replicas,
            "min.insync.replicas": min_isr,
            "offsets.topic.replication.factor": replicas,
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": min_isr,
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": str(k.retention_hours),
        }

    def _kafka_properties(self, node: int = 1) -> Path:
        path = self._kafka_node_dir(node) / "server.properties"
        path.parent.mkdir(parents=True, exist_ok=True)
        props = self.kafka_node_properties(node)
        path.write_text("".join(f"{key}={value}\n" for key, value in props.items()))
        return path

    def _java(self, heap_mb: int, main: str, *args: str) -> list[str]:
        return [
            "java",
            f"-Xms{heap_mb}m",
            f"-Xmx{heap_mb}m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
            f"-Dkafka.logs.dir={self.log_dir}",
            "-cp",
            self._kafka_jars(),
            main,
            *args,
        ]

    def _jmx_exporter_jar(self, required: bool = True) -> Path | None:
        """The Prometheus JMX exporter agent every broker runs with (its MBeans as Prometheus text)."""
        folder = self.config.jars_dir / "jmx-exporter"
        jars = sorted(folder.glob("jmx_prometheus_javaagent-*.jar"))
        if not jars and required:
            raise StackError(
                f"Prometheus JMX exporter agent not found in {folder}: run `make setup` (Maven fetches it)"
            )
        return jars[-1] if jars else None

    def _kafka(self, node: int = 1) -> ManagedProcess:
        props = self._kafka_node_dir(node) / "server.properties"
        argv = self._java(self.config.kafka.heap_mb, "kafka.Kafka", str(props))
        # Only a start needs the agent (it checks); status and stop build the command too.
        agent = self._jmx_exporter_jar(required=False)
        if agent is not None:
            port = self.config.kafka.node_metrics_port(node)
            argv.insert(
                1, f"-javaagent:{agent}={self.config.network.bind}:{port}:{KAFKA_JMX_EXPORTER_CONFIG}"
            )
        return self._proc(self._kafka_node_name(node), argv, self._base_env())

    def _prepare_kafka(self) -> None:
        """Write every node's server.properties; format the storage on first use (KRaft needs a cluster id).

        All nodes are formatted together, with one cluster id. Three nodes get a fixed
        three-voter quorum through --initial-controllers (node@host:port:directory-id, the
        same list for every node): each node's storage carries the directory id it is
        known by, so a node restarted after a crash rejoins as the same voter.

        Why KIP-853 voters rather than a static controller.quorum.voters: the single node
        has always been formatted --standalone with controller.quorum.bootstrap.servers,
        and a node may set only one of the two properties; with --initial-controllers both
        sizes share one set of properties and one kraft.version. A node whose storage was
        lost cannot be formatted again alone (it would join with a new directory id, not
        as the voter it was), hence the error on a partly formatted cluster.

        A lock keeps concurrent callers (three containers sharing one volume) from
        formatting twice.
        """
        nodes = self.config.kafka.node_ids
        for node in nodes:
            self._kafka_properties(node)
        with _file_lock(self._kafka_dir() / ".format.lock"):
            formatted = [n for n in nodes if (self._kafka_node_dir(n) / "data" / "meta.properties").exists()]
            if len(formatted) == len(nodes):
                return
            if formatted:
                missing = sorted(set(nodes) - set(formatted))
                raise StackError(
                    f"Kafka storage under {self._kafka_dir()} is formatted for brokers {formatted} but not "
                    f"{missing}: a voter cannot be re-formatted alone; run `python -m pipeline down --purge`"
                )
            cluster_id = _kafka_uuid()
            if len(nodes) == 1:
                quorum = "--standalone"
            else:
                k = self.config.kafka
                voters = ",".join(
                    f"{n}@{k.node_host(n)}:{k.node_controller_port(n)}:{_kafka_uuid()}" for n in nodes
                )
                quorum = f"--initial-controllers={voters}"
            with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
                for future in [pool.submit(self._format_kafka_node, n, cluster_id, quorum) for n in nodes]:
                    future.result()

    def _format_kafka_node(self, node: int, cluster_id: str, quorum: str) -> None:
        # "--cluster-id=ID", not "-t ID": a random id may begin with "-", which as a separate
        # argument would be parsed as an unknown option.
        argv = self._java(
            256,
            "kafka.tools.StorageTool",
            "format",
            quorum,
            f"--cluster-id={cluster_id}",
            "-c",
            str(self._kafka_node_dir(node) / "server.properties"),
        )
        fmt = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if fmt.returncode != 0:
            raise StackError(
                f"formatting Kafka storage of node {node} failed: {fmt.stdout[-800:]} {fmt.stderr[-800:]}"
            )

    def _refuse_other_kafka_size(self) -> None:
        """Refuse to start while brokers of a cluster of another size run from this state dir."""
        k = self.config.kafka
        ours = {self._kafka_node_name(n) for n in k.node_ids}
        others = [n for n in self._kafka_pid_names() if n not in ours and self._pid_only(n).is_running()]
        if others:
            raise StackError(
                f"Kafka instances {others} of a cluster of another size are running from {self.state}, "
                f"but kafka.brokers is {k.brokers}: run `python -m pipeline down` first "
                "(the broker count is fixed when the cluster starts)"
            )

    def _start_kafka(self, nodes: tuple[int, ...] | None = None) -> None:
        """Start the given nodes (default: all) that are not running; wait until they have registered."""
        k = self.config.kafka
        self._refuse_other_kafka_size()
        for node in nodes or ():
            self._check_kafka_node(node)
        procs = {node: self._kafka(node) for node in nodes or k.node_ids}
        starting = [node for node, proc in procs.items() if not proc.is_running()]
        if not starting:
            return
        self._jmx_exporter_jar()
        self._check_ports({owner: port for n in starting for owner, port in k.node_ports(n).items()})
        self._prepare_kafka()
        # All nodes start before any is waited for: no node finishes starting (registers as
        # a broker) until a majority of the quorum runs and has elected a leader.
        for node in starting:
            procs[node].start()
        from pipeline.kafka_topics import admin_client, cluster_complete

        # Probe the ports first: a client pointed at a closed port logs every reconnect attempt.
        for node in starting:
            procs[node].wait_healthy(
                lambda node=node: port_in_use(k.broker_port(node)), 120, f"Kafka broker {node} to listen"
            )
        # Wait for every running node, not only the new ones: up after a partial start
        # completes the cluster, and a restarted node counts once the others see it.
        expected = [node for node in k.node_ids if self._kafka(node).is_running()]
        admin = admin_client(k.bootstrap_servers, timeout_s=3)

        def registered() -> bool:
            for node in starting:
                procs[node].check_alive()
            return cluster_complete(admin, expected, timeout_s=3)

        what = "the Kafka broker" if k.brokers == 1 else f"Kafka brokers {expected} to register"
        procs[starting[0]].wait_healthy(registered, 90, what)

    def _stop_kafka(self, names: list[str], timeout: float = 30) -> None:
        """Stop Kafka nodes one at a time, each gracefully while the quorum can still act.

        A broker's controlled shutdown waits for the active controller to approve it (after
        moving its partition leaderships away); in a 3-node cluster that needs 2 running
        controllers. The last node of a cluster (or any node with no majority left) would
        wait there for the broker's fixed 5-minute shutdown timeout (Kafka 4.1; nodes stopped
        all at once can end up there too), so it is killed instead: its log is intact (the
        page cache survives the process) and Kafka recovers it on the next start.
        """
        all_names = self._kafka_pid_names()
        size = max([self.config.kafka.brokers] + [int(n.rsplit("-", 1)[1]) for n in all_names if n != KAFKA])
        majority = size // 2 + 1
        for name in names:
            proc = self._pid_only(name)
            if not proc.is_running():
                proc.stop(timeout=timeout)  # also reaps leftovers of its session and the pid file
                continue
            alive = sum(1 for n in self._kafka_pid_names() if self._pid_only(n).is_running())
            if alive >= majority:
                proc.stop(timeout=timeout)
            else:
                log.info("%s: no controller majority left for a controlled shutdown; killing it", name)
                proc.kill()

    def ensure_topics(self) -> None:
        from pipeline.kafka_topics import ensure_pipeline_topics

        ensure_pipeline_topics(self.config.kafka)

    # ------------------------------------------------------------------ Spark
    def _spark_metrics_conf(self) -> Path:
        """metrics.properties of the Spark daemons: Prometheus text on the master's and workers' UIs."""
        path = self.state / "spark" / "conf" / "metrics.properties"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != SPARK_DAEMON_METRICS:
            path.write_text(SPARK_DAEMON_METRICS)
        return path

    def _spark_env(self) -> dict[str, str]:
        env = self._base_env()
        env["SPARK_DAEMON_JAVA_OPTS"] = f"-Dspark.metrics.conf={self._spark_metrics_conf()}"
        env["SPARK_DAEMON_MEMORY"] = f"{self.config.spark.daemon_heap_mb}m"
        env["SPARK_LOG_DIR"] = str(self.log_dir)
        env["SPARK_NO_DAEMONIZE"] = "1"
        env["PYSPARK_PYTHON"] = sys.executable
        return env

    def _spark_master(self) -> ManagedProcess:
        s = self.config.spark
        argv = [
            str(VENV_BIN / "spark-class"),
            "org.apache.spark.deploy.master.Master",
            # The master binds the address of its own host name: the name in the master URL.
            "--host",
            s.master_host,
            "--port",
            str(s.master_port),
            "--webui-port",
            str(s.master_ui_port),
        ]
        env = self._spark_env()
        # A restarted master reads back the workers and applications it had, so a running
        # streaming job keeps its executors (without this a new master kills them as unknown).
        env["SPARK_MASTER_OPTS"] = " ".join(
            (
                "-Dspark.deploy.recoveryMode=FILESYSTEM",
                f"-Dspark.deploy.recoveryDirectory={self._spark_recovery_dir()}",
            )
        )
        return self._proc(SPARK_MASTER, argv, env)

    def _spark_history(self) -> ManagedProcess:
        """The History Server over our applications' event logs (the directory they write to)."""
        from pipeline.spark_submit import spark_dirs

        s = self.config.spark
        events = spark_dirs(self.config)["events"]
        events.mkdir(parents=True, exist_ok=True)
        env = self._spark_env()
        env["SPARK_DAEMON_MEMORY"] = f"{s.history_heap_mb}m"
        env["SPARK_HISTORY_OPTS"] = " ".join(
            (
                f"-Dspark.history.fs.logDirectory={events.resolve().as_uri()}",
                f"-Dspark.history.ui.port={s.history_port}",
                "-Dspark.history.fs.update.interval=5s",
                "-Dspark.history.fs.cleaner.enabled=true",
                f"-Dspark.history.fs.cleaner.maxAge={s.history_retention}",
                # A long streaming job's rolled log is compacted to its last files.
                "-Dspark.history.fs.eventLog.rolling.maxFilesToRetain=4",
                "-Dspark.history.retainedApplications=20",
            )
        ).strip()
        argv = [str(VENV_BIN / "spark-class"), "org.apache.spark.deploy.history.HistoryServer"]
        return self._proc(SPARK_HISTORY, argv, env)

    def _start_spark_history(self) -> None:
        proc = self._spark_history()
        if proc.is_running():
            return
        s = self.config.spark
        self._check_ports({"spark history server": s.history_port})
        proc.start()
        proc.wait_healthy(
            lambda: _http_json(f"{s.history_url}/api/v1/version", timeout=2) is not None,
            90,
            "the Spark History Server",
        )

    def _spark_recovery_dir(self) -> Path:
        return self.state / "spark" / "recovery"

    def _spark_worker(self, index: int, replica: str = "") -> ManagedProcess:
        """Worker `index`; a `replica` (a container's name) keeps index 1's ports, its own work dir."""
        s = self.config.spark
        work_dir = self.state / "spark" / f"worker-{replica or index}"
        argv = [
            str(VENV_BIN / "spark-class"),
            "org.apache.spark.deploy.worker.Worker",
            s.master_url,
            "--host",
            self.config.network.advertised_address,
            "--cores",
            str(s.worker_cores),
            "--memory",
            f"{s.worker_memory_mb}m",
            "--webui-port",
            str(s.worker_ui_port_base + index - 1),
            "--work-dir",
            str(work_dir),
        ]
        return self._proc(f"{SPARK_WORKER}-{index}", argv, self._spark_env())

    def spark_master_state(self) -> dict:
        return _http_json(f"{self.config.spark.master_ui_url}/json/")  # type: ignore[return-value]

    def _alive_spark_worker_ports(self) -> set[int]:
        state = self.spark_master_state()
        return {
            int(w["webuiaddress"].rsplit(":", 1)[1])
            for w in state.get("workers", [])
            if w.get("state") == "ALIVE"
        }

    def _start_spark_master(self) -> None:
        proc = self._spark_master()
        if proc.is_running():
            return
        if not self._pid_only(STREAMING_JOB).is_running():
            # Nothing to recover: a stale record would hold the master in RECOVERING, waiting
            # for workers and applications that are gone.
            shutil.rmtree(self._spark_recovery_dir(), ignore_errors=True)
        s = self.config.spark
        self._check_ports({"spark master": s.master_port, "spark master ui": s.master_ui_port})
        proc.start()
        proc.wait_healthy(lambda: self.spark_master_state().get("status") == "ALIVE", 90, "the Spark master")

    def _start_spark_worker(self, index: int) -> None:
        proc = self._spark_worker(index)
        if proc.is_running():
            return
        ui_port = self.config.spark.worker_ui_port_base + index - 1
        self._check_ports({f"spark worker {index} ui": ui_port})
        (self.state / "spark" / f"worker-{index}").mkdir(parents=True, exist_ok=True)
        proc.start()
        proc.wait_healthy(
            lambda: ui_port in self._alive_spark_worker_ports(), 90, f"Spark worker {index} to register"
        )

    # ------------------------------------------------------------------ Ray
    def ray_temp_dir(self) -> Path:
        # Ray puts Unix sockets under its temp dir; socket paths must stay short
        # (108 bytes), so this lives in /tmp rather than under a deep clone path.
        return Path("/tmp") / f"wb-ray-{self.config.ray.gcs_port}"

    def _ray_env(self) -> dict[str, str]:
        env = self._base_env()
        r = self.config.ray
        env["RAY_health_check_period_ms"] = str(r.health_check_period_ms)
        env["RAY_health_check_failure_threshold"] = str(r.health_check_failure_threshold)
        return env

    def _ray_head(self) -> ManagedProcess:
        r = self.config.ray
        argv = [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--disable-usage-stats",
            f"--node-ip-address={self.config.network.advertised_address}",
            f"--port={r.gcs_port}",
            "--num-cpus=0",  # no actors on the head: workers are what we scale
            f"--dashboard-agent-listen-port={r.agent_port_base}",
            f"--min-worker-port={r.worker_port_min}",
            f"--max-worker-port={r.worker_port_max}",
            f"--object-store-memory={r.head_object_store_mb * 1_000_000}",
            f"--include-dashboard={'true' if r.include_dashboard else 'false'}",
            f"--dashboard-host={self.config.network.bind}",
            f"--dashboard-port={r.dashboard_port}",
            f"--ray-client-server-port={r.client_server_port}",
            f"--metrics-export-port={r.metrics_port}",
            f"--temp-dir={self.ray_temp_dir()}",
        ]
        return self._proc(RAY_HEAD, argv, self._ray_env())

    def _ray_worker(self, index: int, replica: str = "") -> ManagedProcess:
        """Worker node `index`; a `replica` (a container's name) keeps index 1's ports."""
        r = self.config.ray
        argv = [
            str(VENV_BIN / "ray"),
            "start",
            "--block",
            "--disable-usage-stats",
            f"--address={r.address}",
            f"--node-ip-address={self.config.network.advertised_address}",
            f"--num-cpus={r.worker_cpus}",
            # Nodes on one host each need their own agent port (the default is shared).
            f"--dashboard-agent-listen-port={r.agent_port_base + index}",
            f"--min-worker-port={r.worker_port_min}",
            f"--max-worker-port={r.worker_port_max}",
            f"--object-store-memory={r.worker_object_store_mb * 1_000_000}",
            f"--metrics-export-port={r.metrics_port + index}",
            f"--resources={json.dumps({f'wb_ray_worker_{replica or index}': 1})}",
        ]
        return self._proc(f"{RAY_WORKER}-{index}", argv, self._ray_env())

    def ray_nodes(self) -> list[dict]:
        """Alive Ray nodes as seen by the GCS: node id, head flag, resources."""
        from ray._raylet import GcsClient  # GCS query without starting a driver (ray.init takes ~8 s)

        client = GcsClient(address=self.config.ray.address)
        nodes = []
        for node_id, info in client.get_all_node_info(timeout=5).items():
            if info.state != 0:  # 0 = ALIVE
                continue
            nodes.append(
                {
                    "node_id": node_id.hex(),
                    "is_head": info.is_head_node,
                    "resources": dict(info.resources_total),
                }
            )
        return nodes

    def _ray_worker_alive(self, index: int) -> bool:
        return any(f"wb_ray_worker_{index}" in n["resources"] for n in self.ray_nodes())

    def _start_ray_head(self) -> None:
        proc = self._ray_head()
        if proc.is_running():
            return
        r = self.config.ray
        ports = {
            "ray gcs": r.gcs_port,
            "ray dashboard": r.dashboard_port,
            "ray client server": r.client_server_port,
        }
        self._check_ports(ports)
        shutil.rmtree(self.ray_temp_dir(), ignore_errors=True)
        proc.start()
        # Probe the port first: a GCS client pointed at a closed port blocks for its own timeouts.
        proc.wait_healthy(lambda: port_in_use(r.gcs_port), 120, "the Ray GCS to listen")
        proc.wait_healthy(lambda: any(n["is_head"] for n in self.ray_nodes()), 60, "the Ray head node")

    def _start_ray_worker(self, index: int, attempts: int = 2) -> None:
        proc = self._ray_worker(index)
        if proc.is_running():
            return
        for attempt in range(1, attempts + 1):
            proc.start()
            try:
                proc.wait_healthy(
                    lambda: self._ray_worker_alive(index), 120, f"Ray worker node {index} to join"
                )
                return
            except ProcessError:
                # `ray start` gives up after 30 s of registration on a busy machine; one more try.
                proc.stop()
                if attempt == attempts:
                    raise
                log.warning("Ray worker node %d failed to start (attempt %d); retrying", index, attempt)

    # ------------------------------------------------------------------ pipeline services
    def _streaming_job(self) -> ManagedProcess:
        from pipeline.spark_submit import spark_env, spark_submit_argv

        argv = spark_submit_argv(
            self.config,
            REPO_ROOT / "pipeline" / "streaming" / "job.py",
            app_name="weather-streaming",
            ui_port=self.config.spark.driver_ui_port,
            extra_args=["--config", str(self.config.stack_file)],
        )
        return self._service(STREAMING_JOB, argv, spark_env(self.config, base=self._base_env()))

    def _inference(self) -> ManagedProcess:
        argv = [
            sys.executable,
            "-m",
            "pipeline.inference.driver",
            "--config",
            str(self.config.stack_file),
            "--metrics-port",
            str(self.config.inference.metrics_port),
        ]
        return self._service(INFERENCE, argv, self._ray_env())

    def _api(self) -> ManagedProcess:
        argv = [sys.executable, "-m", "pipeline.api", "--config", str(self.config.stack_file)]
        return self._service(API, argv, self._base_env())

    def _progress_file(self) -> Path:
        return self.log_dir / "spark-progress.jsonl"

    def _streaming_ready(self, since: float) -> bool:
        """Both streaming queries have reported progress since `since` (epoch seconds)."""
        path = self._progress_file()
        if not path.exists() or path.stat().st_mtime < since:
            return False
        names = set()
        for line in path.read_text().splitlines()[-50:]:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            # "started" comes before any batch ran; progress/idle mean a trigger completed.
            if event.get("event") in ("progress", "idle") and event.get("received_at_ms", 0) / 1000 >= since:
                names.add(event.get("name"))
        return len(names - {None}) >= 2

    def _start_streaming_job(self) -> None:
        proc = self._streaming_job()
        if proc.is_running():
            return
        self._check_ports(
            {
                "spark streaming driver ui": self.config.spark.driver_ui_port,
                "spark streaming metrics": self.config.spark.metrics_port,
            }
        )
        started = time.time()
        proc.start()
        proc.wait_healthy(
            lambda: self._streaming_ready(started), 240, "the Spark streaming job's first batches"
        )

    def _start_inference(self) -> None:
        proc = self._inference()
        if proc.is_running():
            return
        self._check_ports({"inference metrics": self.config.inference.metrics_port})
        proc.start()
        proc.wait_healthy(
            lambda: port_in_use(self.config.inference.metrics_port), 120, "the inference driver"
        )

    def _start_api(self) -> None:
        proc = self._api()
        if proc.is_running():
            return
        self._check_ports({"serving api": self.config.api.port})
        proc.start()
        proc.wait_healthy(
            lambda: _http_json(f"{self.config.api.url}/health", timeout=2) is not None, 60, "the serving API"
        )

    # ------------------------------------------------------------------ monitoring
    def _prometheus(self) -> ManagedProcess:
        return self._proc(PROMETHEUS, prometheus_argv(self.config, write_local_config(self.config)))

    def _node_exporter(self) -> ManagedProcess:
        return self._proc(NODE_EXPORTER, node_exporter_argv(self.config))

    def _write_worker_targets(self) -> None:
        """Prometheus's list of workers: the instances that run now (a removed one is not 'down')."""
        if self.config.monitoring.enabled:
            write_worker_targets(self.config, self._instances(SPARK_WORKER), self._instances(RAY_WORKER))

    def _start_monitoring(self) -> None:
        m = self.config.monitoring
        self._write_worker_targets()
        try:
            exporter, server = self._node_exporter(), self._prometheus()
        except MonitoringError as exc:
            raise StackError(str(exc)) from None
        for name, proc, port in (
            ("node exporter", exporter, m.node_exporter_port),
            ("prometheus", server, m.prometheus_port),
        ):
            if proc.is_running():
                continue
            self._check_ports({name: port})
            proc.start()
        client = PrometheusClient(m.prometheus_url)
        server.wait_healthy(client.ready, 60, "Prometheus to be ready")
        exporter.wait_healthy(lambda: port_in_use(m.node_exporter_port), 30, "the node exporter")

    # ------------------------------------------------------------------ foreground (containers)
    def foreground(
        self, component: str, index: int = 1, replica: bool = False, join_ray: bool = False
    ) -> ManagedProcess:
        """The process of one instance, prepared to run in the foreground (one per container).

        docker-compose.yml runs each component through this, so a container runs exactly
        the command the local backend would, with the same configuration. `replica`: one of
        the identical containers of a scaled worker service, which cannot know an index: it
        takes instance 1's ports (each container has its own) and its host name for the rest.
        `join_ray`: the inference driver first joins the Ray cluster as a node without CPUs,
        since a Ray driver needs a node on its own host (the head runs in another container).
        """
        check_component(component, (*COMPONENTS, SPARK_HISTORY))
        self.state.mkdir(parents=True, exist_ok=True)
        self.config.dump()
        if component == KAFKA:
            # Container i runs node i; every container formats under the same lock, so
            # the first to get there formats the whole cluster and the others find it done.
            self._check_kafka_node(index)
            self._jmx_exporter_jar()
            self._prepare_kafka()
            return self._kafka(index)
        if component in SCALABLE:
            name = socket.gethostname() if replica else ""
            (self.state / "spark" / f"worker-{name or index}").mkdir(parents=True, exist_ok=True)
            if component == SPARK_WORKER:
                return self._spark_worker(1 if replica else index, name)
            return self._ray_worker(1 if replica else index, name)
        builders: dict[str, Callable[[], ManagedProcess]] = {
            SPARK_MASTER: self._spark_master,
            SPARK_HISTORY: self._spark_history,
            RAY_HEAD: self._ray_head,
            STREAMING_JOB: self._streaming_job,
            INFERENCE: self._inference,
            API: self._api,
        }
        proc = builders[component]()
        # A container's restart policy is its supervisor: run the service itself in the foreground.
        proc = proc.unsupervised() if isinstance(proc, SupervisedProcess) else proc
        if component == INFERENCE and join_ray:
            join = shlex.join(self._ray_join_argv())
            proc.argv = ["sh", "-c", f"{join} && exec {shlex.join(proc.argv)}"]
        return proc

    def _ray_join_argv(self) -> list[str]:
        """`ray start` of a node without CPUs on this host, returning once it has joined."""
        r = self.config.ray
        return [
            str(VENV_BIN / "ray"),
            "start",
            "--disable-usage-stats",
            f"--address={r.address}",
            f"--node-ip-address={self.config.network.advertised_address}",
            "--num-cpus=0",
            f"--object-store-memory={r.worker_object_store_mb * 1_000_000}",
            f"--metrics-export-port={r.metrics_port + 1}",
        ]

    # ------------------------------------------------------------------ Stack API
    def up(self, components: tuple[str, ...] = COMPONENTS) -> None:
        for component in components:
            check_component(component, ALL_COMPONENTS)
        if {KAFKA, SPARK_MASTER, SPARK_WORKER, STREAMING_JOB} & set(components) and java_major_version() < 17:
            raise StackError("Java 17 or newer is required (Kafka 4 and Spark 4)")
        self.state.mkdir(parents=True, exist_ok=True)
        self.config.dump()
        monitoring = [c for c in components if c in MONITORING]
        if self.config.monitoring.enabled or monitoring:
            # First, so Prometheus sees every other component come up.
            self._run_steps([("monitoring", self._start_monitoring)])
        # Kafka, Spark and Ray do not depend on each other: their chains start in
        # parallel (JVM and Ray start-up is mostly waiting). Services need all three.
        chains: list[list[tuple[str, Callable[[], None]]]] = []
        if KAFKA in components:
            chains.append([(KAFKA, self._start_kafka), ("topics", self.ensure_topics)])
        spark: list[tuple[str, Callable[[], None]]] = []
        if SPARK_MASTER in components:
            spark.append((SPARK_MASTER, self._start_spark_master))
        if SPARK_WORKER in components:
            spark.append((SPARK_WORKER, partial(self._start_many, SPARK_WORKER, self.config.spark.workers)))
        if SPARK_HISTORY in components or (self.config.spark.history_server and SPARK_MASTER in components):
            spark.append((SPARK_HISTORY, self._start_spark_history))
        ray: list[tuple[str, Callable[[], None]]] = []
        if RAY_HEAD in components:
            ray.append((RAY_HEAD, self._start_ray_head))
        if RAY_WORKER in components:
            ray.append((RAY_WORKER, partial(self._start_many, RAY_WORKER, self.config.ray.workers)))
        chains += [chain for chain in (spark, ray) if chain]
        with ThreadPoolExecutor(max_workers=max(1, len(chains))) as pool:
            for future in [pool.submit(self._run_steps, chain) for chain in chains]:
                future.result()
        self._write_worker_targets()
        starters = {
            STREAMING_JOB: self._start_streaming_job,
            INFERENCE: self._start_inference,
            API: self._start_api,
        }
        services = [(name, starters[name]) for name in (STREAMING_JOB, INFERENCE, API) if name in components]
        if INFERENCE in components:
            # The actors need a model. Train one first if there is none: before the streaming
            # job starts, since a running streaming job holds every worker core.
            services.insert(0, ("model", self._ensure_model))
        self._run_steps(services)

    def _ensure_model(self) -> None:
        from pipeline.jobs import run_training
        from pipeline.model import current_version

        if current_version(self.config.model_dir) is None:
            if self._instances(SPARK_WORKER) == [] or not self._spark_master().is_running():
                raise StackError(
                    "no model to serve and no Spark cluster to train one: start spark-master and workers"
                )
            result = run_training(self.config)
            log.info(
                "trained model v%s: %s", result.get("version"), json.dumps(result.get("metrics", result))
            )

    def _run_steps(self, steps: list[tuple[str, Callable[[], None]]]) -> None:
        for name, start in steps:
            began = time.monotonic()
            try:
                start()
            except ProcessError as exc:
                raise StackError(str(exc)) from None
            self.startup_seconds[name] = round(time.monotonic() - began, 2)
            log.info("%s ready in %.1f s", name, self.startup_seconds[name])

    def _start_many(self, component: str, count: int) -> None:
        """Start instances 1..count of a scalable component.

        Spark workers start together. Ray nodes start one at a time: each spawns
        several agents, and `ray start` gives a node a fixed 30 s to register,
        which parallel starts on two cores can exceed.
        """
        if component == RAY_WORKER:
            for index in range(1, count + 1):
                self._start_ray_worker(index)
            return
        with ThreadPoolExecutor(max_workers=max(1, count)) as pool:
            for future in [pool.submit(self._start_spark_worker, i) for i in range(1, count + 1)]:
                future.result()

    def down(self, purge: bool = False) -> None:
        # Kafka goes last (DOWN_ORDER), node by node: see _stop_kafka.
        stop_all(self.pid_dir, order=DOWN_ORDER, timeout=30, exclude=(KAFKA,))
        self._stop_kafka(self._kafka_pid_names())
        stop_all(self.pid_dir, timeout=30)  # anything else left with a pid file
        for state in self.pid_dir.glob(f"*{STATE_SUFFIX}"):  # of supervisors that gave up or were killed
            state.unlink(missing_ok=True)
        shutil.rmtree(self.ray_temp_dir(), ignore_errors=True)
        if purge:
            for sub in ("kafka", "spark", "checkpoints", "api", "logs"):
                shutil.rmtree(self.state / sub, ignore_errors=True)
        # A killed process releases its sockets when its last thread is gone; allow a moment.
        deadline = time.monotonic() + 10
        leftover = {owner: port for owner, port in self.config.ports().items() if port_in_use(port)}
        while leftover and time.monotonic() < deadline:
            time.sleep(0.2)
            leftover = {owner: port for owner, port in leftover.items() if port_in_use(port)}
        if leftover:
            raise StackError(
                f"after down, ports are still bound: {leftover} ({port_owner(next(iter(leftover.values())))})"
            )

    def _all_procs(self) -> list[tuple[str, ManagedProcess]]:
        """Every instance the stack knows of (running or with a pid file), in start order."""
        names = {p.stem for p in self.pid_dir.glob("*.json")} if self.pid_dir.is_dir() else set()

        def instances(component: str) -> list[tuple[str, ManagedProcess]]:
            indexes = sorted(int(m.group(1)) for n in names if (m := re.fullmatch(rf"{component}-(\d+)", n)))
            return [(component, self._scalable_proc(component, i)) for i in indexes]

        configured = [self._kafka_node_name(n) for n in self.config.kafka.node_ids]
        # Brokers of a cluster of another size (started with another kafka.brokers) still show.
        strays = [n for n in self._kafka_pid_names() if n not in configured]
        return [
            *[(KAFKA, self._kafka(n)) for n in self.config.kafka.node_ids],
            *[(KAFKA, self._pid_only(name)) for name in strays],
            (SPARK_MASTER, self._spark_master()),
            *instances(SPARK_WORKER),
            (RAY_HEAD, self._ray_head()),
            *instances(RAY_WORKER),
            *[(service, self._pid_only(service)) for service in SERVICES],
            # Monitoring and the History Server show when they are part of this stack: enabled,
            # or started by name.
            *[
                (name, self._pid_only(name))
                for name in MONITORING
                if self.config.monitoring.enabled or name in names
            ],
            *(
                [(SPARK_HISTORY, self._pid_only(SPARK_HISTORY))]
                if self.config.spark.history_server or SPARK_HISTORY in names
                else []
            ),
        ]

    def _pid_only(self, name: str) -> ManagedProcess:
        """A handle for status/stop/kill that does not need the launch command to be buildable.

        Supervised or not as the running instance was started, whatever the configuration says now.
        """
        return recorded(name, pid_dir=self.pid_dir, log_dir=self.log_dir)

    def status(self) -> StackStatus:
        k = self.config.kafka
        status = StackStatus(
            backend=self.backend,
            extra={"state_dir": str(self.state), "kafka_bootstrap_servers": k.bootstrap_servers},
        )
        details = {
            self._kafka_node_name(n): f"node {n}, {k.node_host(n)}:{k.broker_port(n)}" for n in k.node_ids
        }
        for component, proc in self._all_procs():
            members = proc.members()
            rss = 0
            for member in members:
                try:
                    rss += member.memory_info().rss
                except Exception:  # the process may exit while we look
                    continue
            running, pid, detail = proc.is_running(), proc.pid, details.get(proc.name, "")
            if isinstance(proc, SupervisedProcess):
                # The service runs when its child does (not while the supervisor waits to restart it).
                child = proc.child() if running else None
                running, pid, detail = child is not None, child.pid if child else None, proc.detail()
            status.instances.append(
                InstanceStatus(
                    component=component,
                    instance=proc.name,
                    running=running,
                    pid=pid,
                    rss_bytes=rss,
                    processes=len(members),
                    detail=detail,
                )
            )
        return status

    def processes(self) -> dict[str, list[int]]:
        pids: dict[str, list[int]] = {}
        for component, proc in self._all_procs():
            # A supervisor is not part of the service it watches: its few MB stay out of the figures.
            members = proc.service_members() if isinstance(proc, SupervisedProcess) else proc.members()
            pids.setdefault(component, []).extend(member.pid for member in members)
        return pids

    def supervised(self, component: str) -> bool:
        check_component(component)
        if component not in SERVICES:
            return False
        proc = self._pid_only(component)
        if proc.record() is not None:  # as the running instance was started
            return isinstance(proc, SupervisedProcess)
        return self.config.supervisor.enabled

    def started_at(self, component: str, which: int | None = None) -> float | None:
        try:
            proc = self._resolve(component, which)
        except StackError:
            return None
        if isinstance(proc, SupervisedProcess):
            return proc.child_started_at()
        rec = proc.record()
        return rec.create_time if rec and rec.process() else None

    def scale(self, component: str, count: int) -> None:
        if component == KAFKA:
            raise UnsupportedOperation(
                f"cannot scale {KAFKA} to {count}: the broker count is chosen at `up` with kafka.brokers "
                "(1 or 3, e.g. WB_KAFKA_BROKERS=3), because the KRaft quorum's voters are fixed when the "
                "storage is formatted; run `down --purge`, then `up` with the other count. To take one "
                "broker out and back, use kill/restart kafka --which N"
            )
        check_component(component, SCALABLE)
        if count < 0:
            raise StackError(f"cannot scale {component} to {count}: the count must be >= 0")
        running = self._instances(component)
        start = self._start_spark_worker if component == SPARK_WORKER else self._start_ray_worker
        try:
            for index in range(1, count + 1):
                if index not in running:
                    start(index)
        except ProcessError as exc:
            raise StackError(str(exc)) from None
        for index in running:
            if index > count:
                self._scalable_proc(component, index).stop(timeout=30)
        if component == SPARK_WORKER:
            self.config.spark.workers = count
        else:
            self.config.ray.workers = count
        self.config.dump()
        self._write_worker_targets()

    def _resolve(self, component: str, which: int | None) -> ManagedProcess:
        check_component(component, ALL_COMPONENTS)
        if component in SCALABLE:
            running = self._instances(component)
            if which is None:
                if not running:
                    raise StackError(f"no {component} is running")
                which = running[-1]
            return self._scalable_proc(component, which)
        if component == KAFKA:
            # Broker 1 by default, so `kill kafka` then `restart kafka` act on the same node.
            node = 1 if which is None else which
            self._check_kafka_node(node)
            return self._kafka(node)
        if which not in (None, 1):
            raise StackError(f"{component} has a single instance; got which={which}")
        return {
            SPARK_MASTER: self._spark_master,
            RAY_HEAD: self._ray_head,
            STREAMING_JOB: lambda: self._pid_only(STREAMING_JOB),
            INFERENCE: lambda: self._pid_only(INFERENCE),
            API: lambda: self._pid_only(API),
            PROMETHEUS: self._prometheus,
            NODE_EXPORTER: self._node_exporter,
            SPARK_HISTORY: self._spark_history,
        }[component]()

    def kill(self, component: str, which: int | None = None, graceful: bool = False) -> str:
        proc = self._resolve(component, which)
        if not proc.is_running():
            raise StackError(f"{proc.name} is not running")
        if graceful and component == KAFKA:
            self._stop_kafka([proc.name])
        elif graceful:
            # An operator's stop. A supervised service stops with its supervisor (SIGTERM passed on)
            # and stays down until restart/up, like `systemctl stop`.
            proc.stop(timeout=30)
        else:
            # A crash. A supervised service's own processes get SIGKILL; its supervisor starts it again.
            try:
                proc.kill()
            except ProcessError as exc:
                raise StackError(str(exc)) from None
        return proc.name

    def restart(self, component: str, which: int | None = None) -> None:
        proc = self._resolve(component, which)
        if proc.is_running() and component == KAFKA:
            self._stop_kafka([proc.name])
        elif proc.is_running():
            proc.stop(timeout=30)
        try:
            if component in SCALABLE:
                index = int(proc.name.rsplit("-", 1)[1])
                (self._start_spark_worker if component == SPARK_WORKER else self._start_ray_worker)(index)
            elif component == KAFKA and self.config.kafka.brokers > 1:
                # Only this broker: the others keep running (or stay down if they were killed).
                self._start_kafka((which or 1,))
            else:
                self.up((component,))
        except ProcessError as exc:
            raise StackError(str(exc)) from None
