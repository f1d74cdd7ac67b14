"""Resource use per component, sampled every second: CPU, memory, disk, network.

Per component (Kafka, Spark master/workers with their executors, Ray head/
workers with their actors, streaming job driver, inference driver, API, and
the benchmark harness itself): CPU in percent of one core (from the change in
user+system CPU time of every process of the component between samples)
and resident memory (RSS summed over its processes; pages shared between
processes count once per process, so the sum overstates). Machine-wide:
CPU and memory utilisation in percent of the whole machine (the guide's
section 10 targets). Disk: bytes under the Kafka log dirs, the streaming
checkpoints and the model store. Network: loopback bytes per second (every
component talks over loopback here, so per-component network is not
separable; the total is what the machine carried).

With the compose backend the components are containers: their CPU and memory come from the
engine's container stats (`containers`: CPU seconds used and memory less page cache, per
container), summed per component like processes. On an external cluster the harness's
machine is not the cluster's, so its machine-wide figures are left out (`machine=False`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import psutil

from weatherbench.collectors.base import PollingCollector
from weatherbench.metrics import Metric, Series, summary_metrics

HARNESS = "harness"
PID_REFRESH_S = 5.0  # components restart during fault tests: re-read their pids this often


def directory_bytes(path: Path) -> int:
    """Bytes of the regular files under path (0 if it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:  # a segment rolled or a checkpoint file was replaced meanwhile
                continue
    return total


class ResourceSampler(PollingCollector):
    name = "resources"

    def __init__(
        self,
        processes: Callable[[], dict[str, list[int]]],
        disk_paths: dict[str, Path],
        interval_s: float = 1.0,
        disk_every: int = 5,
        containers: Callable[[], dict[str, list[tuple[str, float, int]]]] | None = None,
        machine: bool = True,
    ) -> None:
        super().__init__(interval_s)
        self._list_processes = processes
        self._list_containers = containers
        self._container_seen: dict[str, tuple[float, float]] = {}  # name -> (cpu seconds, at)
        self.machine = machine
        self.disk_paths = disk_paths
        self.disk_every = disk_every
        self._procs: dict[str, dict[int, psutil.Process]] = {}
        self._cpu_seen: dict[int, float] = {}  # pid -> cpu seconds at the last sample
        self._pids_at = 0.0
        self._samples = 0
        self._last_sample_ms = 0
        self._net_last: int | None = None
        self.cpu: dict[str, Series] = {}
        self.rss: dict[str, Series] = {}
        self.disk: dict[str, Series] = {}
        self.machine_cpu = Series("resources.machine.cpu", "%")
        self.machine_memory = Series("resources.machine.memory", "%")
        self.loopback = Series("resources.network.loopback", "bytes/s")

    def _refresh_pids(self, now_s: float) -> None:
        if self._procs and now_s - self._pids_at < PID_REFRESH_S:
            return
        by_component = dict(self._list_processes())
        by_component[HARNESS] = [os.getpid()]
        procs: dict[str, dict[int, psutil.Process]] = {}
        for component, pids in by_component.items():
            known = self._procs.get(component, {})
            procs[component] = {}
            for pid in pids:
                try:
                    procs[component][pid] = known.get(pid) or psutil.Process(pid)
                except psutil.NoSuchProcess:
                    continue
        self._procs = procs
        self._pids_at = now_s

    def start(self) -> None:
        psutil.cpu_percent(None)  # the first call only sets the reference point
        super().start()

    def sample(self, now_ms: int) -> None:
        t = self.seconds_since_start(now_ms)
        elapsed = (now_ms - self._last_sample_ms) / 1000 if self._last_sample_ms else None
        self._last_sample_ms = now_ms
        self._refresh_pids(now_ms / 1000)
        for component, procs in self._procs.items():
            cpu_seconds = 0.0
            counted = 0.0
            rss = 0
            for pid, proc in list(procs.items()):
                try:
                    times = proc.cpu_times()
                    total = times.user + times.system
                    rss += proc.memory_info().rss
                except psutil.Error:
                    procs.pop(pid, None)
                    continue
                if pid in self._cpu_seen:
                    cpu_seconds += max(0.0, total - self._cpu_seen[pid])
                    counted += 1
                self._cpu_seen[pid] = total
            self.rss.setdefault(component, Series(f"resources.{component}.rss", "MB")).points.append(
                (t, rss / 1e6)
            )
            if elapsed and counted:
                self.cpu.setdefault(component, Series(f"resources.{component}.cpu", "%")).points.append(
                    (t, 100.0 * cpu_seconds / elapsed)
                )
        if self._list_containers is not None:
            self._sample_containers(t, now_ms / 1000)
        if self.machine:
            self.machine_cpu.points.append((t, psutil.cpu_percent(None)))
            self.machine_memory.points.append((t, psutil.virtual_memory().percent))
        loopback = psutil.net_io_counters(pernic=True).get("lo")
        if loopback is not None:
            carried = loopback.bytes_sent  # on loopback every byte sent is also received
            if self._net_last is not None and elapsed:
                self.loopback.points.append((t, (carried - self._net_last) / elapsed))
            self._net_last = carried
        if self._samples % self.disk_every == 0:
            for name, path in self.disk_paths.items():
                self.disk.setdefault(name, Series(f"resources.disk.{name}", "MB")).points.append(
                    (t, directory_bytes(path) / 1e6)
                )
        self._samples += 1

    def _sample_containers(self, t: float, now_s: float) -> None:
        """Per component: memory summed over its containers, CPU as the rate since the last sample."""
        assert self._list_containers is not None
        for component, entries in self._list_containers().items():
            rate, counted, memory = 0.0, 0, 0
            for name, cpu_s, in_use in entries:
                memory += in_use
                seen = self._container_seen.get(name)
                # A restarted container starts its CPU count again: no rate across that.
                if seen is not None and cpu_s >= seen[0] and now_s > seen[1]:
                    rate += (cpu_s - seen[0]) / (now_s - seen[1])
                    counted += 1
                self._container_seen[name] = (cpu_s, now_s)
            self.rss.setdefault(component, Series(f"resources.{component}.rss", "MB")).points.append(
                (t, memory / 1e6)
            )
            if counted:
                self.cpu.setdefault(component, Series(f"resources.{component}.cpu", "%")).points.append(
                    (t, 100.0 * rate)
                )

    def series(self) -> list[Series]:
        return [
            *self.cpu.values(),
            *self.rss.values(),
            *self.disk.values(),
            self.machine_cpu,
            self.machine_memory,
            self.loopback,
        ]

    def metrics(self) -> list[Metric]:
        result: list[Metric] = []
        for component, series in self.cpu.items():
            result += summary_metrics("resources.cpu", series.values(), "% of a core", component)
        for component, series in self.rss.items():
            result += summary_metrics("resources.rss", series.values(), "MB", component)
        for name, series in self.disk.items():
            values = series.values()
            result.append(Metric("resources.disk.end", values[-1] if values else float("nan"), "MB", name))
            if len(values) >= 2:
                result.append(Metric("resources.disk.growth", values[-1] - values[0], "MB", name))
        if self.machine:
            result += summary_metrics("resources.machine.cpu", self.machine_cpu.values(), "%")
            result += summary_metrics("resources.machine.memory", self.machine_memory.values(), "%")
            result += summary_metrics("resources.network.loopback", self.loopback.values(), "bytes/s")
            result.append(Metric("resources.machine.cores", float(psutil.cpu_count() or 0), "cores"))
        result.append(Metric("resources.failed_samples", float(self.failed_samples), "samples"))
        return result
