"""Locust user for HTTP query load on the serving API (loaded by the locust command only).

This file owns what one simulated API client does: which endpoints it calls,
how often, with which parameters, and what counts as a failed request. It is
loaded by the `locust` command in its own process (see
`weatherbench.collectors.api_load`, which starts it and reads its CSVs):
importing Locust monkey-patches the standard library for gevent, so nothing
else may import this module. For the same reason `plugins/.airflowignore`
keeps Airflow's plugin loader, which imports every .py file under plugins/,
away from it.

Tasks (weights): GET /stations/{id}/latest (10), GET
/stations/{id}/predictions?limit= (3), GET /predictions?limit=50&station_prefix=
(2), GET /health (1), GET /stats (1). Requests are named by endpoint template
(`/stations/[id]/latest`, ...) so statistics aggregate per endpoint, not per
station.

A failure means a real error: a connection error, a timeout, an unexpected
status (5xx, 422, an unknown route's 404) or a body that is not the JSON the
endpoint promises. Failure messages name no station or URL, so Locust keeps
one row per endpoint and kind of error: "ConnectionError: [Errno 111]
Connection refused", "ReadTimeout: timed out", "HTTP 503", "bad body: ...".
One answer is not an error: early in a run a station's
first window has not closed yet and `/stations/{id}/latest` answers 404 with
the API's "no predictions for station" message. Those requests are successes
reported under their own name, `/stations/[id]/latest (404)`, so the latency
of real answers stays separate and the count of "no data yet" stays visible.

Configuration (environment, read once at start-up):

* WB_LOAD_STATIONS            comma-separated station ids; or
* WB_LOAD_STATION_PREFIX, WB_LOAD_STATION_COUNT
                              ids f"{prefix}-{index:04d}" for index < count, as the
                              load generator names them (default "st", 10)
* WB_LOAD_THROUGHPUT          task runs per second per user (constant_throughput);
                              unset or 0: wait between WB_LOAD_WAIT_MIN_S and
                              WB_LOAD_WAIT_MAX_S (default 0.05 and 0.2 s)
* WB_LOAD_HISTORY_LIMIT       `limit` of /stations/{id}/predictions (default 12)
* WB_LOAD_TIMEOUT_S           per-request timeout (default 10 s)

At exit the final statistics are written again to the `--csv` files (see
`_write_final_csv`): Locust itself only rewrites them once a second, so its
files would miss the requests of the last second.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from locust import HttpUser, between, constant_throughput, events, task
from locust.clients import ResponseContextManager
from locust.env import Environment
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

log = logging.getLogger("weatherbench.locustfile")

LATEST = "/stations/[id]/latest"
LATEST_NO_DATA = "/stations/[id]/latest (404)"
STATION_PREDICTIONS = "/stations/[id]/predictions"
PREDICTIONS = "/predictions"
HEALTH = "/health"
STATS = "/stats"
PAGE_LIMIT = 50
# The API's 404 body for a station without rows (pipeline/api/app.py); any other 404 is a real error.
NO_DATA_DETAIL = "no predictions for station"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name}: expected a number, got {raw!r}") from None


def station_ids_from_env(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The station ids to query, from WB_LOAD_STATIONS or WB_LOAD_STATION_PREFIX + WB_LOAD_STATION_COUNT."""
    listed = [s.strip() for s in environ.get("WB_LOAD_STATIONS", "").split(",") if s.strip()]
    if listed:
        return listed
    prefix = environ.get("WB_LOAD_STATION_PREFIX", "st")
    count = int(environ.get("WB_LOAD_STATION_COUNT", "10"))
    # Same format as pipeline.producer.loadgen.station_id (not imported: this file must stay
    # importable by Locust alone, without the project on its path).
    return [f"{prefix}-{index:04d}" for index in range(count)]


def query_prefix_from_env(stations: list[str], environ: Mapping[str, str] = os.environ) -> str | None:
    """The `station_prefix` of /predictions queries: the run's stations and no other run's.

    None (no filter) if listed stations share no prefix.
    """
    prefix = environ.get("WB_LOAD_STATION_PREFIX", "").strip()
    if prefix:
        # With the dash: prefix "st" must not also match another run's "st2-0001".
        return f"{prefix}-"
    # Character by character on purpose: station ids are not paths.
    return os.path.commonprefix(stations) or None  # noqa: RUF071


STATIONS = station_ids_from_env()
if not STATIONS:
    raise SystemExit("no stations to query: set WB_LOAD_STATIONS or WB_LOAD_STATION_COUNT >= 1")
QUERY_PREFIX = query_prefix_from_env(STATIONS)
HISTORY_LIMIT = int(_env_float("WB_LOAD_HISTORY_LIMIT", 12))
TIMEOUT_S = _env_float("WB_LOAD_TIMEOUT_S", 10.0)
THROUGHPUT = _env_float("WB_LOAD_THROUGHPUT", 0.0)
WAIT_MIN_S = _env_float("WB_LOAD_WAIT_MIN_S", 0.05)
WAIT_MAX_S = _env_float("WB_LOAD_WAIT_MAX_S", 0.2)


# Failure messages, grouped by Locust per (method, name, message): they name no station and
# no URL, so each endpoint has one row per kind of error. The text before the first ':' is
# the error's type for the collector ("ConnectionError", "HTTP 503", "bad body").
BAD_BODY = "bad body"


def transport_error_message(error: Exception) -> str:
    """`<exception type>: <cause>` without the URL, e.g. "ConnectionError: [Errno 111] Connection refused"."""
    text = str(error)
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if errno:
        detail = errno.group(0).strip()
    elif "timed out" in text:
        detail = "timed out"
    else:
        detail = re.sub(r"url: \S+", "url: [url]", text)
        detail = re.sub(r"/stations/[^/?\s'\"]+", "/stations/[id]", detail)
    return f"{type(error).__name__}: {detail}"


def _json_body(resp: ResponseContextManager) -> Any:
    """The decoded body, or None after marking the request failed."""
    try:
        return resp.json()
    except ValueError:
        resp.failure(f"{BAD_BODY}: invalid JSON")
        return None


def _finish(resp: ResponseContextManager, problem: str | None) -> None:
    if problem is None:
        resp.success()
    else:
        resp.failure(f"{BAD_BODY}: {problem}")


def _settled(resp: ResponseContextManager) -> bool:
    """Marks transport errors and unexpected statuses failed; True if the caller must still judge."""
    if resp.error is not None:  # connection refused or reset, timeout: no HTTP answer at all
        resp.failure(transport_error_message(resp.error))
        return True
    if resp.status_code != 200:
        resp.failure(f"HTTP {resp.status_code}")
        return True
    return False


class ApiUser(HttpUser):
    """One API client: mostly latest-prediction lookups, some history and paging, rare health/stats."""

    wait_time = constant_throughput(THROUGHPUT) if THROUGHPUT > 0 else between(WAIT_MIN_S, WAIT_MAX_S)

    @task(10)
    def latest(self) -> None:
        station = random.choice(STATIONS)
        with self.client.get(
            f"/stations/{quote(station, safe='')}/latest", name=LATEST, timeout=TIMEOUT_S, catch_response=True
        ) as resp:
            if resp.status_code == 404:
                body = _json_body(resp)
                if body is None:
                    return
                detail = body.get("detail") if isinstance(body, dict) else None
                if isinstance(detail, str) and detail.startswith(NO_DATA_DETAIL):
                    # The station's first window has not closed yet: an answer, not an error.
                    resp.request_meta["name"] = LATEST_NO_DATA
                    resp.success()
                else:
                    resp.failure("HTTP 404: not the API's no-data answer")
                return
            if _settled(resp):
                return
            body = _json_body(resp)
            if body is None:
                return
            problem = None
            if not isinstance(body, dict) or body.get("station_id") != station:
                problem = "latest: station_id is not the one asked for"
            elif not isinstance(body.get("window_start"), int):
                problem = "latest: window_start missing"
            _finish(resp, problem)

    @task(3)
    def station_predictions(self) -> None:
        station = random.choice(STATIONS)
        with self.client.get(
            f"/stations/{quote(station, safe='')}/predictions",
            params={"limit": HISTORY_LIMIT},
            name=STATION_PREDICTIONS,
            timeout=TIMEOUT_S,
            catch_response=True,
        ) as resp:
            if _settled(resp):
                return
            body = _json_body(resp)
            if body is None:
                return
            items = body.get("items") if isinstance(body, dict) else None
            problem = None
            if not isinstance(items, list) or body.get("station_id") != station:
                problem = "station predictions: not a page of the station asked for"
            elif body.get("count") != len(items) or len(items) > HISTORY_LIMIT:
                problem = "station predictions: count does not match items or exceeds limit"
            elif any(not isinstance(i, dict) or i.get("station_id") != station for i in items):
                problem = "station predictions: an item of another station"
            _finish(resp, problem)

    @task(2)
    def predictions_page(self) -> None:
        with self.client.get(
            "/predictions",
            params={"limit": PAGE_LIMIT, "station_prefix": QUERY_PREFIX},  # requests drops a None
            name=PREDICTIONS,
            timeout=TIMEOUT_S,
            catch_response=True,
        ) as resp:
            if _settled(resp):
                return
            body = _json_body(resp)
            if body is None:
                return
            items = body.get("items") if isinstance(body, dict) else None
            problem = None
            if not isinstance(items, list) or not isinstance(body.get("total"), int):
                problem = "predictions: items or total missing"
            elif len(items) > PAGE_LIMIT:
                problem = "predictions: more items than the limit"
            elif any(
                not isinstance(i, dict) or not str(i.get("station_id", "")).startswith(QUERY_PREFIX or "")
                for i in items
            ):
                problem = "predictions: an item outside station_prefix"
            _finish(resp, problem)

    @task(1)
    def health(self) -> None:
        with self.client.get(HEALTH, name=HEALTH, timeout=TIMEOUT_S, catch_response=True) as resp:
            # 503 = the API reports itself unhealthy (its consumer thread died): a real error.
            if _settled(resp):
                return
            body = _json_body(resp)
            if body is None:
                return
            ok = isinstance(body, dict) and body.get("status") == "ok"
            _finish(resp, None if ok else "health: status is not ok")

    @task(1)
    def stats(self) -> None:
        with self.client.get(STATS, name=STATS, timeout=TIMEOUT_S, catch_response=True) as resp:
            if _settled(resp):
                return
            body = _json_body(resp)
            if body is None:
                return
            ok = isinstance(body, dict) and isinstance(body.get("rows"), int)
            _finish(resp, None if ok else "stats: rows missing")


_environment: Environment | None = None


@events.init.add_listener
def _remember_environment(environment: Environment, **_kwargs: Any) -> None:
    global _environment
    _environment = environment


def _write_final_csv(environment: Environment, prefix: str) -> None:
    """Rewrite <prefix>_stats.csv, _failures.csv and _exceptions.csv with the final statistics.

    Locust's CSV writer rewrites these files once a second and does not write
    them again at exit. Each file is written aside and renamed over the old one:
    Locust's still-open handle then points at the replaced file, so its close
    cannot touch the new content.
    """
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (
        ("_stats.csv", writer.requests_csv),
        ("_failures.csv", writer.failures_csv),
        ("_exceptions.csv", writer.exceptions_csv),
    ):
        target = Path(prefix + suffix)
        partial = target.with_name(target.name + ".partial")
        with partial.open("w", newline="") as handle:
            write(csv.writer(handle))
        os.replace(partial, target)


@events.quit.add_listener
def _on_quit(**_kwargs: Any) -> None:
    # Fired after the users stopped and before Locust exits, also on SIGTERM.
    environment = _environment
    options = getattr(environment, "parsed_options", None)
    prefix = getattr(options, "csv_prefix", None)
    if environment is None or not prefix:
        return
    try:
        _write_final_csv(environment, prefix)
    except OSError as exc:  # the periodic files stay; say why they may lag
        log.error("could not write the final statistics to %s_*.csv: %s", prefix, exc)
