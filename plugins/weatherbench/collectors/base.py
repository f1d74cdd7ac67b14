"""The collector protocol: something that measures while a step runs.

A collector is started when a step's load starts and stopped when the step
ends; it then hands over its metrics and time series. `PollingCollector`
samples on a background thread at a fixed period; a sample that fails (a
component mid-restart) is counted, not fatal, because a benchmark that dies
with the thing it measures reports nothing.
"""

from __future__ import annotations

import logging
import threading
import time

from weatherbench.metrics import Metric, Series

log = logging.getLogger(__name__)


class Collector:
    """Measures during one step. Subclasses override start/stop/metrics/series."""

    name = "collector"

    def __init__(self) -> None:
        self.started_ms = 0  # wall clock of start(); series times are seconds since it

    def start(self) -> None:
        self.started_ms = int(time.time() * 1000)

    def stop(self) -> None:
        """Stop measuring; metrics() and series() are valid afterwards."""

    def metrics(self) -> list[Metric]:
        return []

    def series(self) -> list[Series]:
        return []

    def seconds_since_start(self, wall_ms: float) -> float:
        return (wall_ms - self.started_ms) / 1000.0


class PollingCollector(Collector):
    """Calls sample() every `interval_s` on a daemon thread between start() and stop()."""

    def __init__(self, interval_s: float = 1.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.failed_samples = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self, now_ms: int) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.sample(int(time.time() * 1000))
            except Exception as exc:  # keep measuring; the count shows in the results
                self.failed_samples += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.debug("%s sample failed: %s", self.name, exc)
            next_at += self.interval_s
            # Fixed-rate schedule: a slow sample does not shift every later one.
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def start(self) -> None:
        super().start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"collector-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
