"""Prometheus around the stack: what it scrapes, how its server runs here, and how it is queried.

Owns the scrape configuration: one job per component's metrics endpoint (the Kafka brokers'
JMX exporter agents, the Spark master, workers, streaming driver and executors, the streaming
job's own series, the Ray nodes, the inference driver, the serving API, the producer, the
benchmark harness, the machine), for two layouts of the same configuration:

* `local`: the local backend's processes on their configured hosts and ports; the scalable
  workers are listed in file_sd target files that `write_worker_targets` rewrites on every
  scale, so Prometheus follows a resize without a reload and no removed worker shows as down;
* `compose`: docker-compose.yml's services by name; worker replicas are found by DNS (every
  replica of a service answers to its name), containers by cAdvisor.

Also: the Prometheus server and node exporter command lines (Debian's packages), the alert
rules file (include/prometheus/alerts.yml), and `PrometheusClient`, a small client of the
HTTP API used by readiness checks, tests and the benchmark's Prometheus collector.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import LOOPBACK, REPO_ROOT, StackConfig
from pipeline.stack.base import PROMETHEUS

PROMETHEUS_DIR = REPO_ROOT / "include" / "prometheus"
ALERT_RULES = PROMETHEUS_DIR / "alerts.yml"
COMPOSE_CONFIG = PROMETHEUS_DIR / "prometheus-compose.yml"
LAYOUTS = ("local", "compose")
# In docker-compose.yml: where the clients of the stack and the monitoring itself run.
COMPOSE_HOSTS = {
    "harness": "airflow-scheduler",  # benchmark tasks run in the scheduler (LocalExecutor)
    "producer": "producer",
    "node": "node-exporter",
    "prometheus": PROMETHEUS,
    "cadvisor": "cadvisor:8080",
}
SPARK_WORKER_SERVICE = "spark-worker"
RAY_WORKER_SERVICE = "ray-worker"


class MonitoringError(RuntimeError):
    """Prometheus could not be configured, started or queried; the message says why."""


def _static(targets: list[str], labels: dict[str, str] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"targets": targets}
    if labels:
        entry["labels"] = labels
    return entry


def _job(name: str, *, path: str = "/metrics", **discovery: Any) -> dict[str, Any]:
    job: dict[str, Any] = {"job_name": name}
    if path != "/metrics":
        job["metrics_path"] = path
    job.update(discovery)
    return job


def spark_worker_ui_port(config: StackConfig, index: int) -> int:
    return config.spark.worker_ui_port_base + index - 1


def ray_worker_metrics_port(config: StackConfig, index: int) -> int:
    return config.ray.metrics_port + index


def scrape_jobs(config: StackConfig, layout: str = "local", targets_dir: Path | None = None) -> list[dict]:
    """Prometheus scrape_configs for every metrics endpoint of the stack and its clients."""
    if layout not in LAYOUTS:
        raise MonitoringError(f"unknown monitoring layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    k, s, r, m = config.kafka, config.spark, config.ray, config.monitoring
    compose = layout == "compose"

    def host(role: str) -> str:
        return COMPOSE_HOSTS[role] if compose else LOOPBACK

    def workers(service: str, port: int) -> dict[str, Any]:
        # Replicas of a compose service share its DNS name; local workers are listed in a file.
        if compose:
            return {"dns_sd_configs": [{"names": [service], "type": "A", "port": port}]}
        assert targets_dir is not None, "the local layout lists its workers in target files"
        return {"file_sd_configs": [{"files": [str(targets_dir / f"{service}.json")]}]}

    spark_worker_port = spark_worker_ui_port(config, 1)
    ray_worker_port = ray_worker_metrics_port(config, 1)
    jobs = [
        _job(
            "kafka",
            static_configs=[
                _static([f"{k.node_host(node)}:{k.node_metrics_port(node)}"], {"broker": str(node)})
                for node in k.node_ids
            ],
        ),
        _job(
            "spark-master",
            path="/metrics/master/prometheus",
            static_configs=[_static([f"{s.master_host}:{s.master_ui_port}"])],
        ),
        _job(
            "spark-applications",
            path="/metrics/applications/prometheus",
            static_configs=[_static([f"{s.master_host}:{s.master_ui_port}"])],
        ),
        _job("spark-worker", path="/metrics/prometheus", **workers(SPARK_WORKER_SERVICE, spark_worker_port)),
        _job(
            "spark-driver",
            path="/metrics/prometheus",
            static_configs=[_static([f"{s.streaming_host}:{s.driver_ui_port}"])],
        ),
        _job(
            "spark-executors",
            path="/metrics/executors/prometheus",
            static_configs=[_static([f"{s.streaming_host}:{s.driver_ui_port}"])],
        ),
        _job("spark-streaming", static_configs=[_static([f"{s.streaming_host}:{s.metrics_port}"])]),
        _job(
            "ray",
            static_configs=[_static([f"{r.head_host}:{r.metrics_port}"], {"node": "head"})],
        ),
        _job("ray-worker", **workers(RAY_WORKER_SERVICE, ray_worker_port)),
        _job(
            "inference",
            static_configs=[_static([f"{config.inference.host}:{config.inference.metrics_port}"])],
        ),
        _job("api", static_configs=[_static([f"{config.api.host}:{config.api.port}"])]),
        _job("producer", static_configs=[_static([f"{host('producer')}:{m.producer_port}"])]),
        _job("harness", static_configs=[_static([f"{host('harness')}:{m.harness_port}"])]),
        _job("node", static_configs=[_static([f"{host('node')}:{m.node_exporter_port}"])]),
        _job("prometheus", static_configs=[_static([f"{host('prometheus')}:{m.prometheus_port}"])]),
    ]
    if compose:
        jobs.append(_job("cadvisor", static_configs=[_static([COMPOSE_HOSTS["cadvisor"]])]))
    return jobs


def prometheus_config(
    config: StackConfig, layout: str = "local", targets_dir: Path | None = None, rules: Path | None = None
) -> dict[str, Any]:
    """The whole prometheus.yml: global intervals, the alert rules, every scrape job."""
    interval = f"{config.monitoring.scrape_interval_s}s"
    return {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            # A slow JMX or Spark servlet answer must end before the next scrape is due.
            "scrape_timeout": f"{max(1, config.monitoring.scrape_interval_s - 1)}s",
            "external_labels": {"stack": "weatherbench"},
        },
        "rule_files": [str(rules or ALERT_RULES)],
        "scrape_configs": scrape_jobs(config, layout, targets_dir),
    }


def compose_config_text(config: StackConfig) -> str:
    """include/prometheus/prometheus-compose.yml as it follows from docker-compose.yml's settings."""
    body = prometheus_config(config, "compose", rules=Path("/etc/prometheus/alerts.yml"))
    header = (
        "# Prometheus of docker-compose.yml. Generated from the stack configuration with the\n"
        "# compose environment (python -m pipeline monitoring-config --layout compose); a test\n"
        "# checks that it matches, so edit the configuration, not this file.\n"
    )
    return header + yaml.safe_dump(body, sort_keys=False)


# ------------------------------------------------------------------ the local server
def monitoring_dir(config: StackConfig) -> Path:
    return config.state_dir / "prometheus"


def targets_dir(config: StackConfig) -> Path:
    return monitoring_dir(config) / "targets"


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # Prometheus re-reads file_sd files on change: never a half-written one


def write_worker_targets(config: StackConfig, spark_workers: list[int], ray_workers: list[int]) -> None:
    """The file_sd target lists of the scalable workers: exactly the instances that run."""
    files = {
        SPARK_WORKER_SERVICE: [
            _static([f"{LOOPBACK}:{spark_worker_ui_port(config, i)}"], {"worker": str(i)})
            for i in spark_workers
        ],
        RAY_WORKER_SERVICE: [
            _static([f"{LOOPBACK}:{ray_worker_metrics_port(config, i)}"], {"node": f"worker-{i}"})
            for i in ray_workers
        ],
    }
    for service, entries in files.items():
        _write_atomically(targets_dir(config) / f"{service}.json", json.dumps(entries, indent=1))


def write_local_config(config: StackConfig) -> Path:
    """<state>/prometheus/prometheus.yml for the local layout (worker target files written apart)."""
    path = monitoring_dir(config) / "prometheus.yml"
    body = prometheus_config(config, "local", targets_dir(config))
    _write_atomically(path, yaml.safe_dump(body, sort_keys=False))
    return path


def _binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        raise MonitoringError(
            f"{name} not found on PATH: monitoring.enabled needs Debian's prometheus and "
            "prometheus-node-exporter packages (`make setup` installs them)"
        )
    return found


def prometheus_argv(config: StackConfig, config_file: Path) -> list[str]:
    m = config.monitoring
    return [
        _binary("prometheus"),
        f"--config.file={config_file}",
        f"--storage.tsdb.path={monitoring_dir(config) / 'data'}",
        f"--storage.tsdb.retention.time={m.retention}",
        f"--web.listen-address={config.network.bind}:{m.prometheus_port}",
        # POST /-/reload after the configuration changes (a broker count, a new layout).
        "--web.enable-lifecycle",
        "--log.level=warn",
    ]


def node_exporter_argv(config: StackConfig) -> list[str]:
    return [
        _binary("prometheus-node-exporter"),
        f"--web.listen-address={config.network.bind}:{config.monitoring.node_exporter_port}",
        # The machine-wide figures the guide's section 7 and the alert rules use.
        "--collector.disable-defaults",
        "--collector.cpu",
        "--collector.meminfo",
        "--collector.loadavg",
        "--collector.netdev",
        "--collector.filesystem",
        "--collector.diskstats",
        "--collector.stat",
        "--log.level=warn",
    ]


# ------------------------------------------------------------------ queries
@dataclass(frozen=True)
class PrometheusClient:
    """Prometheus's HTTP API: instant and range queries, targets, alerts, readiness."""

    url: str
    timeout_s: float = 10.0

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=self.timeout_s) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # a bad query answers 400 with the reason
            try:
                body = json.loads(exc.read())
            except ValueError:
                raise MonitoringError(f"Prometheus {path}: HTTP {exc.code}") from None
        except (OSError, ValueError) as exc:
            raise MonitoringError(f"Prometheus at {self.url} did not answer {path}: {exc}") from None
        if body.get("status") != "success":
            raise MonitoringError(f"Prometheus {path} {params or ''}: {body.get('error', body)}")
        return body["data"]

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant vector: [{"metric": {...}, "value": [ts, "v"]}, ...]."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        return self._get("/api/v1/query", params)["result"]

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
        """Range matrix: [{"metric": {...}, "values": [[ts, "v"], ...]}, ...]."""
        params = {"query": expr, "start": start, "end": end, "step": step_s}
        return self._get("/api/v1/query_range", params)["result"]

    def targets(self) -> list[dict[str, Any]]:
        return self._get("/api/v1/targets", {"state": "active"})["activeTargets"]

    def alerts(self) -> list[dict[str, Any]]:
        return self._get("/api/v1/alerts")["alerts"]

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self._get("/api/v1/rules")["groups"] for rule in group["rules"]]

    def reload(self) -> None:
        request = urllib.request.Request(f"{self.url}/-/reload", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s):
                pass
        except OSError as exc:
            raise MonitoringError(f"Prometheus at {self.url} did not reload: {exc}") from None
