"""docker-compose.yml, checked structurally and against the local configuration.

No Docker engine runs here, so the file is validated as data: every service is complete and
refers only to what exists; every component of the stack interface is a service; the stack
variables give each component the host of its service and the same ports and topics as
include/stack/local.yaml; health checks, published ports, Prometheus, Grafana and the SMTP
sink use the configured ports; memory and CPU limits leave room for the configured heaps,
object stores and cores; and every pipeline service's command builds the local backend's
process for that component.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.config import REPO_ROOT, load_config
from pipeline.stack.base import COMPONENTS, MONITORING, SCALABLE, SPARK_HISTORY
from pipeline.stack.compose import SERVICES as COMPONENT_SERVICES
from pipeline.stack.compose import compose_environment, kafka_service
from pipeline.stack.local import LocalStack
from pipeline.stack.monitoring import ALERT_RULES, COMPOSE_CONFIG, COMPOSE_HOSTS, compose_config_text
from weatherbench.mail import DEFAULT_SINK_PORT

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
SERVICES: dict[str, dict] = COMPOSE["services"]
KAFKA_3 = "kafka-3"  # the profile of the 3-broker cluster
OUR_IMAGE = "weatherbench:latest"


def stack_config(brokers: int = 1, **overrides):
    env = compose_environment(COMPOSE_FILE, {"WB_KAFKA_BROKERS": str(brokers)})
    return load_config(environ=env, overrides=overrides)


def active(profile: str | None) -> dict[str, dict]:
    """The services `docker compose [--profile P] up` starts: those without a profile, plus P's."""
    return {n: s for n, s in SERVICES.items() if not s.get("profiles") or profile in s["profiles"]}


def component_services() -> dict[str, list[str]]:
    """Service -> its `component NAME ...` command, for the pipeline's own containers."""
    return {n: s["command"] for n, s in SERVICES.items() if (s.get("command") or [""])[0] == "component"}


def mem_mb(text: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg])", str(text).lower()).groups()
    return float(number) * {"k": 1 / 1024, "m": 1, "g": 1024}[unit]


def probe_target(service: str) -> tuple[str, int]:
    test = " ".join(SERVICES[service]["healthcheck"]["test"])
    match = re.search(r"\('([\w.-]+)', (\d+)\)", test) or re.search(r"http://([\w.-]+):(\d+)/", test)
    return match.group(1), int(match.group(2))


# ------------------------------------------------------------------ structure
def test_the_project_has_a_fixed_name_the_backend_looks_for():
    assert COMPOSE["name"] == load_config(environ={}).compose.project


def test_every_service_has_an_image_a_command_or_entrypoint_and_known_dependencies():
    volumes = set(COMPOSE["volumes"])
    for name, svc in SERVICES.items():
        assert svc.get("image"), name
        if svc["image"] == OUR_IMAGE:
            assert svc.get("command") or svc.get("entrypoint"), name
        for dependency in svc.get("depends_on", {}):
            assert dependency in SERVICES, f"{name} depends on unknown service {dependency}"
        for mount in svc.get("volumes", []):
            source = mount.split(":", 1)[0]
            if not source.startswith(("/", ".")):
                assert source in volumes, f"{name}: volume {source} is not declared"
            elif source.startswith("./"):
                assert (REPO_ROOT / source).exists() or source == "./reports", f"{name}: {source} missing"
        # Replicas cannot share a fixed container name.
        if "deploy" in svc:
            assert "container_name" not in svc, name


def test_our_image_is_built_from_the_repositorys_dockerfile():
    built = [svc for svc in SERVICES.values() if "build" in svc]
    assert built and all(svc["build"] == "." and svc["image"] == OUR_IMAGE for svc in built)
    assert (REPO_ROOT / "Dockerfile").exists()


def test_a_default_stack_depends_only_on_services_it_starts():
    for profile in (None, KAFKA_3):
        started = active(profile)
        for name, svc in started.items():
            for dependency in svc.get("depends_on", {}):
                assert dependency in started, f"{name} (profile {profile}) waits on {dependency}, not started"


def test_every_component_is_a_service_of_the_compose_backend():
    started = {cmd[1] for name, cmd in component_services().items() if not SERVICES[name].get("profiles")}
    assert started == {*COMPONENTS, SPARK_HISTORY}
    for component, service in COMPONENT_SERVICES.items():
        assert service in SERVICES, f"{component} -> {service}"
        if component not in MONITORING:
            assert component_services()[service][1] == component
    assert [kafka_service(n) for n in load_config(environ={"WB_KAFKA_BROKERS": "3"}).kafka.node_ids] == [
        name for name in SERVICES if name.startswith("kafka-")
    ]


def test_worker_services_are_replicas_as_many_as_the_local_config_runs():
    config = load_config(environ={})
    for component, count in (("spark-worker", config.spark.workers), ("ray-worker", config.ray.workers)):
        svc = SERVICES[component]
        assert component in SCALABLE
        assert svc["deploy"]["replicas"] == count
        assert "--replica" in svc["command"]


# ------------------------------------------------------------------ the configuration they agree on
def test_stack_hosts_are_the_services_that_run_those_components():
    config = stack_config(brokers=3)
    assert config.network.bind == "0.0.0.0"
    assert config.network.advertise == "auto"
    for node in config.kafka.node_ids:
        assert config.kafka.node_host(node) == kafka_service(node)
    assert config.spark.master_host in SERVICES
    assert SERVICES[config.spark.streaming_host]["command"][1] == "streaming-job"
    assert SERVICES[config.ray.head_host]["command"][1] == "ray-head"
    assert SERVICES[config.inference.host]["command"][1] == "inference"
    assert SERVICES[config.api.host]["command"][1] == "api"
    assert SERVICES[config.spark.history_host]["command"][1] == SPARK_HISTORY
    assert config.monitoring.prometheus_host in SERVICES
    assert config.monitoring.enabled


def test_ports_and_topics_are_the_local_configurations():
    local, compose = load_config(environ={}), stack_config()
    for section in ("kafka", "spark", "ray", "inference", "api", "monitoring"):
        ours, theirs = getattr(local, section), getattr(compose, section)
        for key, value in vars(ours).items():
            if key.endswith("_port") or key.endswith("_topic") or key.endswith("_base"):
                assert getattr(theirs, key) == value, f"{section}.{key}"


def test_health_checks_probe_each_service_on_its_configured_port():
    config = stack_config(brokers=3)
    for node in config.kafka.node_ids:
        assert probe_target(kafka_service(node)) == (kafka_service(node), config.kafka.broker_port(node))
    assert probe_target("spark-master") == ("spark-master", config.spark.master_ui_port)
    assert probe_target("ray-head") == ("ray-head", config.ray.gcs_port)
    assert probe_target("spark-history") == ("spark-history", config.spark.history_port)


def test_published_ports_are_the_configured_ones():
    config = stack_config()
    published = {name: [int(p.split(":")[0]) for p in svc.get("ports", [])] for name, svc in SERVICES.items()}
    assert published["spark-master"] == [config.spark.master_ui_port]
    assert published["ray-head"] == [config.ray.dashboard_port]
    assert published["api"] == [config.api.port]
    assert published["prometheus"] == [config.monitoring.prometheus_port]
    assert published["grafana"] == [config.monitoring.grafana_port]
    assert published["spark-history"] == [config.spark.history_port]
    for svc in SERVICES.values():
        for mapping in svc.get("ports", []):
            outside, inside = mapping.split(":")
            assert outside == inside  # the same port inside and out: nothing to translate


def test_kafka_3_profile_runs_three_brokers_from_one_variable():
    assert COMPOSE["x-stack-environment"]["WB_KAFKA_BROKERS"] == "${WB_KAFKA_BROKERS:-1}"
    assert stack_config(brokers=1).kafka.brokers == 1
    assert sorted(n for n in active(KAFKA_3) if n.startswith("kafka-")) == ["kafka-1", "kafka-2", "kafka-3"]
    assert [n for n in active(None) if n.startswith("kafka-")] == ["kafka-1"]
    for name in ("kafka-1", "kafka-2", "kafka-3"):
        command = SERVICES[name]["command"]
        assert command[:2] == ["component", "kafka"] and int(command[3]) == int(name[-1])


# ------------------------------------------------------------------ resources
def test_memory_and_cpu_limits_fit_the_configured_sizes():
    config = stack_config()
    limit = {name: mem_mb(svc["mem_limit"]) for name, svc in SERVICES.items() if "mem_limit" in svc}
    for name in (n for n in SERVICES if n.startswith("kafka-")):
        assert limit[name] >= config.kafka.heap_mb * 1.5, name  # heap, metaspace, page buffers
    assert limit["spark-master"] >= config.spark.daemon_heap_mb * 1.5
    assert limit["spark-history"] >= config.spark.history_heap_mb * 1.5
    # A worker container holds its daemon and the executors it launches.
    assert limit["spark-worker"] >= config.spark.daemon_heap_mb + config.spark.worker_memory_mb
    assert SERVICES["spark-worker"]["cpus"] == config.spark.worker_cores
    assert limit["streaming-job"] >= config.spark.driver_memory_mb * 1.5
    assert SERVICES["ray-worker"]["cpus"] == config.ray.worker_cpus
    for name, store_mb in (
        ("ray-head", config.ray.head_object_store_mb),
        ("ray-worker", config.ray.worker_object_store_mb),
        ("inference", config.ray.worker_object_store_mb),
    ):
        assert mem_mb(SERVICES[name]["shm_size"]) >= store_mb, name  # Ray's object store lives in /dev/shm
        assert limit[name] >= store_mb + 400, name
    for name, svc in active(None).items():
        if svc["image"] == OUR_IMAGE and svc.get("restart") != "no":
            assert "mem_limit" in svc, f"{name} has no memory limit"


# ------------------------------------------------------------------ monitoring
def test_the_committed_prometheus_configuration_is_the_generated_one():
    assert COMPOSE_CONFIG.read_text() == compose_config_text(stack_config())


def test_promtool_accepts_the_compose_configuration(tmp_path: Path):
    # The rule file as mounted in the container, here at the repository's copy.
    body = yaml.safe_load(COMPOSE_CONFIG.read_text())
    body["rule_files"] = [str(ALERT_RULES)]
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(body))
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: `make setup` installs Debian's prometheus package"
    result = subprocess.run([promtool, "check", "config", str(config_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


def test_prometheus_grafana_and_exporters_listen_where_the_configuration_says():
    config = stack_config()
    prometheus = " ".join(SERVICES["prometheus"]["command"])
    assert f"--web.listen-address=0.0.0.0:{config.monitoring.prometheus_port}" in prometheus
    assert f"--storage.tsdb.retention.time={config.monitoring.retention}" in prometheus
    assert SERVICES["grafana"]["environment"]["GF_SERVER_HTTP_PORT"] == str(config.monitoring.grafana_port)
    exporter = " ".join(SERVICES["node-exporter"]["command"])
    assert f":{config.monitoring.node_exporter_port}" in exporter
    assert COMPOSE_HOSTS["node"] == "node-exporter" and COMPOSE_HOSTS["harness"] in SERVICES
    datasource = yaml.safe_load(
        (REPO_ROOT / "include/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    assert (
        datasource["url"] == f"http://{config.monitoring.prometheus_host}:{config.monitoring.prometheus_port}"
    )
    mounts = {m.split(":")[0]: m.split(":")[1] for m in SERVICES["prometheus"]["volumes"]}
    assert mounts["./include/prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    assert yaml.safe_load(COMPOSE_CONFIG.read_text())["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_grafana_dashboards_are_complete_and_use_the_provisioned_data_source():
    datasource = yaml.safe_load(
        (REPO_ROOT / "include/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    boards = sorted((REPO_ROOT / "include/grafana/dashboards").glob("*.json"))
    assert {b.stem for b in boards} >= {
        "weatherbench-kafka",
        "weatherbench-spark",
        "weatherbench-ray",
        "weatherbench-resources",
    }
    for path in boards:
        board = json.loads(path.read_text())
        assert board["uid"] == path.stem and board["title"]
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == datasource["uid"], f"{path.name}: {panel['title']}"
            assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"{path.name}: {panel['title']}"
    provider = yaml.safe_load(
        (REPO_ROOT / "include/grafana/provisioning/dashboards/weatherbench.yml").read_text()
    )
    mounts = {m.split(":")[0]: m.split(":")[1] for m in SERVICES["grafana"]["volumes"]}
    assert mounts["./include/grafana/dashboards"] == provider["providers"][0]["options"]["path"]


def test_the_mail_sink_and_airflows_smtp_connection_agree():
    sink = SERVICES["mail-sink"]["command"]
    port = int(sink[sink.index("--port") + 1])
    assert port == DEFAULT_SINK_PORT
    smtp = json.loads(COMPOSE["x-airflow"]["environment"]["AIRFLOW_CONN_WEATHERBENCH_SMTP"])
    assert (smtp["host"], smtp["port"]) == ("mail-sink", port)


def test_airflow_runs_the_dags_against_the_compose_backend():
    env = COMPOSE["x-airflow"]["environment"]
    assert env["WB_STACK_BACKEND"] == "compose"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert "/var/run/docker.sock:/var/run/docker.sock" in SERVICES["airflow-scheduler"]["volumes"]
    for name in ("airflow-api-server", "airflow-scheduler", "airflow-dag-processor"):
        assert SERVICES[name]["depends_on"] == {
            "airflow-init": {"condition": "service_completed_successfully"}
        }
    assert SERVICES["airflow-init"]["depends_on"]["postgres"]["condition"] == "service_healthy"


# ------------------------------------------------------------------ commands
@pytest.mark.parametrize("service", list(component_services()), ids=list(component_services()))
def test_each_service_command_builds_the_local_backends_process(tmp_path: Path, service: str):
    command = component_services()[service]
    component = command[1]
    index = int(command[command.index("--index") + 1]) if "--index" in command else 1
    brokers = 3 if KAFKA_3 in SERVICES[service].get("profiles", []) else 1
    stack = LocalStack(stack_config(brokers=brokers, state_dir=str(tmp_path)))
    proc = stack.foreground(
        component, index, replica="--replica" in command, join_ray="--join-ray" in command
    )
    assert proc.argv and proc.argv[0]
    assert (tmp_path / "stack.yaml").exists()
    text = " ".join(proc.argv)
    if component == "kafka":
        node_dir = tmp_path / "kafka" if brokers == 1 else tmp_path / "kafka" / f"broker-{index}"
        props = (node_dir / "server.properties").read_text()
        assert f"advertised.listeners=PLAINTEXT://kafka-{index}:" in props
        assert "listeners=PLAINTEXT://0.0.0.0:" in props
        assert "-javaagent:" in text  # the JMX exporter
    if component == "spark-worker":
        assert "spark://spark-master:" in text
    if component == "ray-worker":
        assert "--address=ray-head:" in text
    if component == "inference":
        assert text.startswith("sh -c ") and "--num-cpus=0" in text and "--address=ray-head:" in text
    if component == SPARK_HISTORY:
        # It reads the event logs the applications write to the shared state volume.
        opts = proc.env["SPARK_HISTORY_OPTS"]
        assert f"-Dspark.history.fs.logDirectory={(tmp_path / 'spark' / 'events').as_uri()}" in opts
        assert f"-Dspark.history.ui.port={stack.config.spark.history_port}" in opts
        assert proc.env["SPARK_DAEMON_MEMORY"] == f"{stack.config.spark.history_heap_mb}m"


def test_kafdrop_and_cadvisor_are_the_optional_tools_profile():
    tools = {name for name, svc in SERVICES.items() if "tools" in svc.get("profiles", [])}
    assert tools == {"kafdrop", "cadvisor"}
    config = stack_config()
    kafdrop = SERVICES["kafdrop"]
    assert kafdrop["environment"]["KAFKA_BROKERCONNECT"] == f"kafka-1:{config.kafka.broker_port(1)}"
    assert set(kafdrop["depends_on"]) <= set(active(None))
    heap = re.search(r"-Xmx(\w+)", kafdrop["environment"]["JVM_OPTS"])[1]
    assert mem_mb(kafdrop["mem_limit"]) > mem_mb(heap)
    # Scraped when it runs; its absence is not a component down.
    rules = [r for g in yaml.safe_load(ALERT_RULES.read_text())["groups"] for r in g["rules"]]
    (down,) = [r for r in rules if r["alert"] == "ComponentDown"]
    assert "cadvisor" in down["expr"]


def test_the_image_installs_what_the_containers_run_and_no_test_tools():
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    assert "make image-setup JARS=/opt/jars" in dockerfile
    assert COMPOSE["x-stack-environment"]["WB_JARS_DIR"] == "/opt/jars"
    makefile = (REPO_ROOT / "Makefile").read_text()
    target = re.search(r"^image-setup:(.*)$", makefile, re.M)
    assert target and "system-deps" not in target.group(1)  # no Chromium or PostgreSQL in the image
    assert "$(STAMP_JARS)" in target.group(1) and "cli" in target.group(1)
