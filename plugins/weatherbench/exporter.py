"""The benchmark harness's own Prometheus endpoint: its load generator and which step runs.

One per process (the CLI, or an Airflow task running steps), served on
monitoring.harness_port from the first step on, for as long as the process lives:
the producer series of every load the harness sends (`weather_producer_*`, the
same names as the producer command's) and `weather_bench_step`, which labels the
step under way, so a dashboard can mark steps on its time axis. If the port is
taken (another harness on the machine), the run goes on without the endpoint. A
process that benchmarks stacks of other ports (tests) serves on each of them.
"""

from __future__ import annotations

import logging
import threading

from prometheus_client import Gauge, start_http_server

from pipeline.config import StackConfig
from pipeline.producer.producer import ProducerMetrics

log = logging.getLogger(__name__)


class HarnessMetrics:
    def __init__(self) -> None:
        self.producer = ProducerMetrics()
        registry = self.producer.registry
        self.step = Gauge(
            "weather_bench_step",
            "1 while the labelled benchmark step sends its load",
            ["run", "test", "step"],
            registry=registry,
        )
        self.offered_rate = Gauge(
            "weather_bench_offered_rate", "Messages per second the running step offers", registry=registry
        )
        self.ports: set[int] = set()  # served, or found taken
        self._lock = threading.Lock()

    def serve(self, config: StackConfig) -> None:
        """Start the endpoint on the configuration's port, once; a busy port is logged, not raised."""
        port = config.monitoring.harness_port
        with self._lock:
            if not port or port in self.ports:
                return
            self.ports.add(port)
            try:
                start_http_server(port, addr=config.network.bind, registry=self.producer.registry)
            except OSError as exc:
                log.warning("harness metrics not served on port %d: %s", port, exc)

    def step_started(self, run: str, test: str, step: str, rate: float) -> None:
        self.step.labels(run, test, step).set(1)
        self.offered_rate.set(rate)

    def step_ended(self, run: str, test: str, step: str) -> None:
        self.step.labels(run, test, step).set(0)
        self.offered_rate.set(0)


HARNESS = HarnessMetrics()
