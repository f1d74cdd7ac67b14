"""HTTP query load on the serving API with Locust, as a collector that runs beside the pipeline.

This module owns one Locust run and its results: `ApiLoad` starts Locust
headless on `weatherbench/locustfile.py` against the API's URL, waits for it
or stops it early, and `parse_locust_csv` turns Locust's CSV files into
`ApiLoadResult` (requests/s, p50/p95/p99/max latency, failures, per endpoint
and in total) and into flat `(name, value, unit)` metrics.

Locust always runs in a subprocess, never inside the engine: importing
Locust monkey-patches the standard library (sockets, threads, time) for
gevent, which would change the behaviour of everything else in the process
(Kafka clients, the results store, Airflow). The subprocess runs in its own
session, so stopping it signals its whole process group and nothing is
left behind.

What the numbers are:

* latencies are client-side, request sent to body read, in ms;
* p50/p95/p99 come from Locust's own response-time histogram, which rounds
  each sample to about 2 significant digits above 100 ms (147 -> 150 ms,
  3432 -> 3400 ms; exact to 1 ms below 100 ms), so they are approximations
  at that resolution. A rounded percentile can exceed the exact maximum by
  up to half a bucket; it is capped at the maximum (no true percentile can
  exceed it). max and avg are exact;
* requests/s is Locust's whole-run average: requests / (last request -
  start of the run);
* a failure is a real error: connection error, timeout, unexpected status,
  or a body that is not the endpoint's JSON. A 404 "no predictions for
  station" from /stations/{id}/latest (the station's first window has not
  closed yet) is a success counted under its own endpoint name,
  `/stations/[id]/latest (404)` (see the locustfile);
* failures do not make Locust exit non-zero (`--exit-code-on-error 0`):
  they are results. A non-zero exit means Locust itself failed (bad
  locustfile or options) and raises `ApiLoadError` with its stderr.
"""

from __future__ import annotations

import ast
import contextlib
import csv
import logging
import math
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from weatherbench.collectors.base import Collector
from weatherbench.metrics import Metric

log = logging.getLogger(__name__)

LOCUSTFILE = Path(__file__).resolve().parent.parent / "locustfile.py"
CSV_PREFIX = "locust"  # out_dir/locust_stats.csv, _failures.csv, _exceptions.csv, _stats_history.csv
STDOUT_FILE = "locust.stdout"
STDERR_FILE = "locust.stderr"
# Seconds Locust gives running requests to finish after the run time or a SIGTERM.
STOP_TIMEOUT_S = 5
# SIGTERM -> SIGKILL: Locust's stop timeout plus time to write its files and exit.
STOP_GRACE_S = STOP_TIMEOUT_S + 10.0
AGGREGATED = "Aggregated"
# Locust's request name for "404, no data yet" answers (weatherbench/locustfile.py).
NO_DATA_ENDPOINT = "/stations/[id]/latest (404)"
# Environment that would change the run behind the command line's back.
_FOREIGN_ENV_PREFIXES = ("LOCUST_", "WB_LOAD_")
_STATION_PREFIX = re.compile(r"^[A-Za-z0-9_.~-]{1,63}$")


class ApiLoadError(RuntimeError):
    """Locust could not run, or left no statistics to read."""


@dataclass(frozen=True)
class ApiLoadSpec:
    """One Locust run: how many users, how fast they start, how long, which stations they query.

    `stations` ids are f"{station_prefix}-{index:04d}", as the load generator
    names them. `throughput_per_user` (task runs per second per user) switches
    from think time (0.05-0.2 s between requests) to a constant rate per user.
    Locust's run time is whole seconds: `duration_s` is rounded up.
    """

    users: int
    spawn_rate: float
    duration_s: float
    station_prefix: str
    stations: int
    throughput_per_user: float | None = None
    request_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        def positive(name: str, value: Any, integer: bool = False) -> None:
            ok_type = isinstance(value, int) if integer else isinstance(value, int | float)
            if isinstance(value, bool) or not ok_type or not math.isfinite(value) or value <= 0:
                kind = "an integer" if integer else "a number"
                raise ValueError(f"{name} must be {kind} > 0, got {value!r}")

        positive("users", self.users, integer=True)
        positive("spawn_rate", self.spawn_rate)
        positive("duration_s", self.duration_s)
        positive("stations", self.stations, integer=True)
        positive("request_timeout_s", self.request_timeout_s)
        if self.throughput_per_user is not None:
            positive("throughput_per_user", self.throughput_per_user)
        if not isinstance(self.station_prefix, str) or not _STATION_PREFIX.match(self.station_prefix):
            # It goes into URL paths and the API's station_prefix filter (at most 64 characters).
            raise ValueError(
                f"station_prefix must be 1-63 characters of letters, digits, '_', '.', '~' or '-', "
                f"got {self.station_prefix!r}"
            )

    @property
    def run_time_s(self) -> int:
        return max(1, math.ceil(self.duration_s))

    def environ(self) -> dict[str, str]:
        """The locustfile's settings (it reads them from its environment)."""
        env = {
            "WB_LOAD_STATION_PREFIX": self.station_prefix,
            "WB_LOAD_STATION_COUNT": str(self.stations),
            "WB_LOAD_TIMEOUT_S": repr(float(self.request_timeout_s)),
        }
        if self.throughput_per_user is not None:
            env["WB_LOAD_THROUGHPUT"] = repr(float(self.throughput_per_user))
        return env


@dataclass
class EndpointStats:
    """One row of Locust's statistics: an endpoint (by request name), or the total ("Aggregated")."""

    name: str
    method: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    avg_ms: float

    @property
    def error_rate(self) -> float:
        """Failed requests in percent; NaN without requests."""
        return 100.0 * self.failures / self.requests if self.requests else math.nan


@dataclass
class ApiLoadResult:
    """A finished run: the total, each endpoint, and the distinct errors with their counts.

    `errors` has one dict per distinct error: `source` ("failure": a request
    failed; "exception": the locustfile itself raised), `method`, `name`
    (endpoint; empty for exceptions), `error_type` ("ConnectionError",
    "ReadTimeout", "HTTP 503", "bad body", ...; "exception" for locustfile
    errors), `message` and `count`, most frequent first. `duration_s` is the span Locust's rates cover
    (requests / requests per second); `users` the peak user count seen.
    """

    total: EndpointStats
    endpoints: list[EndpointStats]
    errors: list[dict[str, Any]]
    duration_s: float
    users: int
    exceptions: int = field(default=0)  # locustfile errors (not request failures), total count

    def endpoint(self, name: str) -> EndpointStats | None:
        return next((e for e in self.endpoints if e.name == name), None)

    def metrics(self) -> list[tuple[str, float, str]]:
        """Flat (name, value, unit) metrics: totals as api_load.*, endpoints as api_load.endpoint.<slug>.*.

        Latency metrics are NaN when no request was made, and so is error_rate.
        """
        no_data = self.endpoint(NO_DATA_ENDPOINT)
        out: list[tuple[str, float, str]] = [
            ("api_load.users", float(self.users), "users"),
            ("api_load.duration", self.duration_s, "s"),
            ("api_load.requests", float(self.total.requests), "requests"),
            ("api_load.failures", float(self.total.failures), "requests"),
            ("api_load.error_rate", self.total.error_rate, "%"),
            ("api_load.no_data_404", float(no_data.requests if no_data else 0), "requests"),
            ("api_load.exceptions", float(self.exceptions), "exceptions"),
            *_latency_metrics("api_load", self.total),
        ]
        for endpoint in self.endpoints:
            base = f"api_load.endpoint.{endpoint_slug(endpoint.name)}"
            out += [
                (f"{base}.requests", float(endpoint.requests), "requests"),
                (f"{base}.failures", float(endpoint.failures), "requests"),
                *_latency_metrics(base, endpoint),
            ]
        return out


def _latency_metrics(base: str, stats: EndpointStats) -> list[tuple[str, float, str]]:
    return [
        (f"{base}.rps", stats.rps, "req/s"),
        (f"{base}.p50", stats.p50_ms, "ms"),
        (f"{base}.p95", stats.p95_ms, "ms"),
        (f"{base}.p99", stats.p99_ms, "ms"),
        (f"{base}.max", stats.max_ms, "ms"),
        (f"{base}.avg", stats.avg_ms, "ms"),
    ]


def endpoint_slug(name: str) -> str:
    """Metric-safe endpoint name: "/stations/[id]/latest (404)" -> "stations_id_latest_404"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "root"


# ----------------------------------------------------------------------------- parsing


def _number(row: dict[str, str], column: str) -> float:
    text = (row.get(column) or "").strip()
    if text in ("", "N/A"):  # Locust writes N/A for percentiles of an entry without requests
        return math.nan
    return float(text)


def _stats_row(row: dict[str, str]) -> EndpointStats:
    max_ms = _number(row, "Max Response Time")
    requests = int(_number(row, "Request Count"))

    def percentile(column: str) -> float:
        value = _number(row, column)
        # Histogram buckets can round above the exact maximum; a percentile never exceeds it.
        return min(value, max_ms) if requests and not math.isnan(value) else value

    return EndpointStats(
        name=row["Name"],
        method=row["Type"],
        requests=requests,
        failures=int(_number(row, "Failure Count")),
        rps=_number(row, "Requests/s"),
        p50_ms=percentile("50%"),
        p95_ms=percentile("95%"),
        p99_ms=percentile("99%"),
        max_ms=max_ms if requests else math.nan,
        avg_ms=_number(row, "Average Response Time") if requests else math.nan,
    )


def _unwrap_failure(error: str) -> str:
    """The message of a failure: CatchResponseError('HTTP 503') -> "HTTP 503" (else the text as is)."""
    match = re.fullmatch(r"CatchResponseError\((.*)\)", error.strip(), flags=re.DOTALL)
    if match:
        try:
            inner = ast.literal_eval(match.group(1))
        except (ValueError, SyntaxError):
            return error
        if isinstance(inner, str):
            return inner
    return error


def _error_type(message: str) -> str:
    """The text before the first ':' or '(': "ConnectionError", "HTTP 503", "bad body"."""
    head = re.split(r"[:(]", message, maxsplit=1)[0].strip()
    return head or "unknown"


def _read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def parse_locust_csv(prefix: Path) -> ApiLoadResult:
    """Read <prefix>_stats.csv, _failures.csv, _exceptions.csv and (if present) _stats_history.csv."""
    base = str(prefix)
    stats_path = Path(base + "_stats.csv")
    if not stats_path.is_file():
        raise ApiLoadError(f"{stats_path}: no Locust statistics file")
    rows = _read_rows(stats_path)
    totals = [r for r in rows if r.get("Name") == AGGREGATED and not r.get("Type")]
    if not totals:
        raise ApiLoadError(f"{stats_path}: no '{AGGREGATED}' row (Locust stopped before writing statistics)")
    total = _stats_row(totals[-1])
    endpoints = [_stats_row(r) for r in rows if r is not totals[-1] and r.get("Name") != AGGREGATED]

    errors: list[dict[str, Any]] = []
    failures_path = Path(base + "_failures.csv")
    if failures_path.is_file():
        for row in _read_rows(failures_path):
            message = _unwrap_failure(row["Error"])
            errors.append(
                {
                    "source": "failure",
                    "method": row["Method"],
                    "name": row["Name"],
                    "error_type": _error_type(message),
                    "message": message,
                    "count": int(row["Occurrences"]),
                }
            )
    exceptions = 0
    exceptions_path = Path(base + "_exceptions.csv")
    if exceptions_path.is_file():
        for row in _read_rows(exceptions_path):
            count = int(row["Count"])
            exceptions += count
            last_line = next(
                (line for line in reversed(row.get("Traceback", "").splitlines()) if line.strip()), ""
            )
            # Locust keeps str(exception) and the stack, not the exception's type: the
            # stack's last line (the raising source line) says where it came from.
            errors.append(
                {
                    "source": "exception",
                    "method": "",
                    "name": "",
                    "error_type": "exception",
                    "message": f"{row['Message']} (at: {last_line.strip()})" if last_line else row["Message"],
                    "count": count,
                }
            )
    errors.sort(key=lambda e: -e["count"])

    users = 0
    history_path = Path(base + "_stats_history.csv")
    if history_path.is_file():
        counts = [int(r["User Count"]) for r in _read_rows(history_path) if r.get("User Count", "").isdigit()]
        users = max(counts, default=0)
    duration_s = total.requests / total.rps if total.requests and total.rps > 0 else 0.0
    return ApiLoadResult(
        total=total,
        endpoints=endpoints,
        errors=errors,
        duration_s=duration_s,
        users=users,
        exceptions=exceptions,
    )


# ----------------------------------------------------------------------------- running


def _tail(path: Path, lines: int = 25, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output)"
    return "\n".join(text.splitlines()[-lines:])[-limit:] or "(no output)"


class ApiLoad:
    """One Locust run against the API at `api_url`, files in `out_dir`.

    `start()` launches it; `wait()` lets it run its duration, `stop()` ends it
    early (SIGTERM to its process group: Locust finishes running requests for
    up to STOP_TIMEOUT_S and writes its final statistics; SIGKILL after
    STOP_GRACE_S). Both return the parsed result, also kept in `result`. As a
    context manager it starts on entry and, on exit, ends the process group
    if it still runs, without parsing (so a failing block is not masked).
    """

    def __init__(
        self,
        api_url: str,
        spec: ApiLoadSpec,
        out_dir: Path,
        *,
        locustfile: Path = LOCUSTFILE,
        stop_grace_s: float = STOP_GRACE_S,
    ) -> None:
        if not re.match(r"^https?://[^/\s]+", api_url):
            raise ValueError(f"api_url must be an http(s) URL, got {api_url!r}")
        self.api_url = api_url.rstrip("/")
        self.spec = spec
        self.out_dir = Path(out_dir)
        self.locustfile = Path(locustfile)
        self.stop_grace_s = stop_grace_s
        self.result: ApiLoadResult | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._signalled: int | None = None  # the last signal this object sent to the group
        self._swept = False

    @property
    def csv_prefix(self) -> Path:
        return self.out_dir / CSV_PREFIX

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def command(self) -> list[str]:
        spec = self.spec
        return [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(self.locustfile),
            "--headless",
            "--host",
            self.api_url,
            "--users",
            str(spec.users),
            "--spawn-rate",
            repr(float(spec.spawn_rate)),
            "--run-time",
            f"{spec.run_time_s}s",
            "--csv",
            str(self.csv_prefix),
            "--csv-full-history",
            "--only-summary",
            "--stop-timeout",
            str(STOP_TIMEOUT_S),
            "--exit-code-on-error",
            "0",
            "--loglevel",
            "WARNING",
        ]

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("this ApiLoad was already started; make a new one per run")
        if not self.locustfile.is_file():
            raise ApiLoadError(f"locustfile not found: {self.locustfile}")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # A previous run's files in the same directory must not be read as this run's.
        for stale in self.out_dir.glob(f"{CSV_PREFIX}_*.csv*"):
            stale.unlink()
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV_PREFIXES)}
        env.update(self.spec.environ())
        command = self.command()
        log.info("starting Locust: %s", " ".join(command))
        with (
            (self.out_dir / STDOUT_FILE).open("wb") as stdout,
            (self.out_dir / STDERR_FILE).open("wb") as stderr,
        ):
            self._proc = subprocess.Popen(
                command,
                # Its own directory: Locust also reads ./locust.conf and ./pyproject.toml.
                cwd=self.out_dir,
                env=env,
                stdin=subprocess.DEVNULL,  # headless Locust still listens for keystrokes
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,  # a process group of its own: stop() signals all of it
            )

    def wait(self, timeout_s: float | None = None) -> ApiLoadResult:
        """Wait for the run to end by itself (its duration plus up to STOP_TIMEOUT_S), then parse.

        Raises TimeoutError if it is still running after `timeout_s` (it keeps
        running: call stop(), or leave the `with` block).
        """
        proc = self._require_started()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"Locust (pid {proc.pid}) still running after {timeout_s} s") from None
        self._sweep_group()
        return self._finish()

    def stop(self) -> ApiLoadResult:
        """End the run now (SIGTERM, then SIGKILL after the grace period) and parse what it measured."""
        self._require_started()
        self._terminate()
        return self._finish()

    def close(self) -> None:
        """End the process group if it still runs; no parsing."""
        if self._proc is not None:
            self._terminate()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _require_started(self) -> subprocess.Popen[bytes]:
        if self._proc is None:
            raise RuntimeError("ApiLoad.start() was not called")
        return self._proc

    def _signal_group(self, signum: int) -> None:
        assert self._proc is not None
        try:
            # The child leads its own session, so its pgid is its pid.
            os.killpg(self._proc.pid, signum)
            self._signalled = signum
        except ProcessLookupError:
            pass

    def _terminate(self) -> None:
        proc = self._require_started()
        if proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_grace_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "Locust (pid %d) ignored SIGTERM for %.0f s: killing it", proc.pid, self.stop_grace_s
                )
                self._signal_group(signal.SIGKILL)
                proc.wait()
        self._sweep_group()

    def _sweep_group(self) -> None:
        # Anything Locust may have left in its group, once, right after the leader is reaped:
        # the group id cannot have been handed to another process group yet (ESRCH if empty).
        assert self._proc is not None
        if self._swept:
            return
        self._swept = True
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, signal.SIGKILL)

    def _finish(self) -> ApiLoadResult:
        proc = self._require_started()
        code = proc.returncode
        stderr_path = self.out_dir / STDERR_FILE
        stopped_by_us = self._signalled is not None and code in (-signal.SIGTERM, -signal.SIGKILL)
        if code != 0 and not stopped_by_us:
            raise ApiLoadError(
                f"locust exited with status {code} (not because of request failures: those exit 0); "
                f"stderr tail:\n{_tail(stderr_path)}"
            )
        try:
            result = parse_locust_csv(self.csv_prefix)
        except ApiLoadError as exc:
            raise ApiLoadError(
                f"{exc}; locust exit status {code}; stderr tail:\n{_tail(stderr_path)}"
            ) from None
        if code == -signal.SIGKILL:
            # Killed before its exit hook: the files are Locust's last periodic snapshot (<= 1 s old).
            log.warning("Locust was killed: its statistics may miss up to its last second of requests")
        self.result = result
        return result


class ApiLoadCollector(Collector):
    """Locust query load on the serving API for the length of a step's load, as a collector."""

    name = "api-load"

    def __init__(self, api_url: str, spec: ApiLoadSpec, out_dir: Path) -> None:
        super().__init__()
        self.load = ApiLoad(api_url, spec, out_dir)
        self.result: ApiLoadResult | None = None

    def start(self) -> None:
        super().start()
        self.load.start()

    def stop(self) -> None:
        # The load ends with the step's load; a step that drains longer finds Locust done.
        try:
            self.result = self.load.stop() if self.load.running() else self.load.wait(timeout_s=30)
        finally:
            self.load.close()

    def metrics(self) -> list[Metric]:
        if self.result is None:
            return []
        return [Metric(name, value, unit, "api") for name, value, unit in self.result.metrics()]
