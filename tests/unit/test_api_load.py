"""API load collector: Locust CSV parsing, metrics, spec validation, the Locust command and exit handling.

The CSVs under tests/fixtures/locust/ come from real Locust runs (see its
README); each number parsed is checked against the file read independently
here with the csv module. Locust itself is only ever run in subprocesses:
importing it would monkey-patch this test process for gevent.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.producer.loadgen import station_id
from weatherbench.collectors.api_load import (
    LOCUSTFILE,
    NO_DATA_ENDPOINT,
    ApiLoad,
    ApiLoadError,
    ApiLoadSpec,
    endpoint_slug,
    parse_locust_csv,
)

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "locust"
API_STOPPED = FIXTURES / "api_stopped" / "locust"
TASK_EXCEPTION = FIXTURES / "task_exception" / "locust"
ENDPOINTS = {
    "/stations/[id]/latest",
    NO_DATA_ENDPOINT,
    "/stations/[id]/predictions",
    "/predictions",
    "/health",
    "/stats",
}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def stats_rows(prefix: Path) -> dict[str, dict[str, str]]:
    return {row["Name"]: row for row in read_csv(Path(f"{prefix}_stats.csv"))}


# ----------------------------------------------------------------------------- parsing


def test_every_stats_row_is_parsed_as_written() -> None:
    rows = stats_rows(API_STOPPED)
    result = parse_locust_csv(API_STOPPED)

    assert {e.name for e in result.endpoints} == ENDPOINTS == set(rows) - {"Aggregated"}
    for parsed in [*result.endpoints, result.total]:
        row = rows[parsed.name]
        assert parsed.method == row["Type"]
        assert parsed.requests == int(row["Request Count"])
        assert parsed.failures == int(row["Failure Count"])
        assert parsed.rps == float(row["Requests/s"])
        assert parsed.avg_ms == float(row["Average Response Time"])
        assert parsed.max_ms == float(row["Max Response Time"])
        for attr, column in (("p50_ms", "50%"), ("p95_ms", "95%"), ("p99_ms", "99%")):
            # Histogram percentiles, capped at the exact maximum.
            assert getattr(parsed, attr) == min(float(row[column]), float(row["Max Response Time"]))
        assert parsed.p50_ms <= parsed.p95_ms <= parsed.p99_ms <= parsed.max_ms

    assert result.total.name == "Aggregated"
    assert result.total.method == ""
    assert result.total.requests == sum(e.requests for e in result.endpoints)
    assert result.total.failures == sum(e.failures for e in result.endpoints)
    assert result.duration_s == pytest.approx(result.total.requests / result.total.rps)


def test_a_percentile_rounded_above_the_maximum_is_capped() -> None:
    row = stats_rows(API_STOPPED)["/stations/[id]/latest"]
    # The captured run has this case: the 99% bucket (56 ms) lies above the exact max (55.6 ms).
    assert float(row["99%"]) > float(row["Max Response Time"])
    latest = parse_locust_csv(API_STOPPED).endpoint("/stations/[id]/latest")
    assert latest is not None
    assert latest.p99_ms == float(row["Max Response Time"])


def test_failures_are_parsed_per_endpoint_and_error() -> None:
    failures = read_csv(Path(f"{API_STOPPED}_failures.csv"))
    result = parse_locust_csv(API_STOPPED)
    parsed = {(e["method"], e["name"]): e for e in result.errors}

    assert len(result.errors) == len(failures) > 0
    for row in failures:
        error = parsed[(row["Method"], row["Name"])]
        assert error["source"] == "failure"
        assert error["count"] == int(row["Occurrences"])
        assert error["error_type"] == "ConnectionError"
        assert error["message"] == "ConnectionError: [Errno 111] Connection refused"
        assert error["message"] in row["Error"]
    # Every failure of the run is one of these errors.
    assert sum(e["count"] for e in result.errors) == result.total.failures
    assert [e["count"] for e in result.errors] == sorted((e["count"] for e in result.errors), reverse=True)
    assert result.exceptions == 0


def test_users_is_the_peak_user_count_of_the_history() -> None:
    history = read_csv(Path(f"{API_STOPPED}_stats_history.csv"))
    assert parse_locust_csv(API_STOPPED).users == max(int(r["User Count"]) for r in history) == 3


def test_locustfile_exceptions_are_errors_not_request_failures() -> None:
    exceptions = read_csv(Path(f"{TASK_EXCEPTION}_exceptions.csv"))
    result = parse_locust_csv(TASK_EXCEPTION)

    assert result.exceptions == sum(int(r["Count"]) for r in exceptions) == 2
    assert result.total.failures == 0
    (error,) = result.errors
    assert error["source"] == "exception"
    assert error["error_type"] == "exception"
    assert error["count"] == 2
    assert error["message"] == """'boom' (at: raise KeyError("boom"))"""


def test_missing_or_empty_statistics_raise_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ApiLoadError, match="no Locust statistics file"):
        parse_locust_csv(tmp_path / "locust")
    # What Locust leaves when stopped before its first statistics write: the header only.
    header = Path(f"{API_STOPPED}_stats.csv").read_text().splitlines()[0]
    (tmp_path / "locust_stats.csv").write_text(header + "\n")
    with pytest.raises(ApiLoadError, match="no 'Aggregated' row"):
        parse_locust_csv(tmp_path / "locust")


# ----------------------------------------------------------------------------- metrics


def test_metrics_names_units_and_values() -> None:
    rows = stats_rows(API_STOPPED)
    result = parse_locust_csv(API_STOPPED)
    metrics = result.metrics()
    names = [name for name, _value, _unit in metrics]
    assert len(names) == len(set(names))
    by_name = {name: (value, unit) for name, value, unit in metrics}

    total = rows["Aggregated"]
    expected_rate = 100.0 * int(total["Failure Count"]) / int(total["Request Count"])
    assert by_name["api_load.error_rate"] == (pytest.approx(expected_rate), "%")
    assert by_name["api_load.rps"] == (float(total["Requests/s"]), "req/s")
    assert by_name["api_load.requests"] == (float(total["Request Count"]), "requests")
    assert by_name["api_load.failures"] == (float(total["Failure Count"]), "requests")
    assert by_name["api_load.p95"] == (float(total["95%"]), "ms")
    assert by_name["api_load.max"] == (float(total["Max Response Time"]), "ms")
    assert by_name["api_load.no_data_404"] == (float(rows[NO_DATA_ENDPOINT]["Request Count"]), "requests")
    assert by_name["api_load.users"] == (3.0, "users")
    assert by_name["api_load.exceptions"] == (0.0, "exceptions")
    assert by_name["api_load.duration"][1] == "s"

    latest, no_data = rows["/stations/[id]/latest"], rows[NO_DATA_ENDPOINT]
    latest_requests = float(latest["Request Count"])
    assert by_name["api_load.endpoint.stations_id_latest.requests"] == (latest_requests, "requests")
    assert by_name["api_load.endpoint.stations_id_latest_404.p50"] == (float(no_data["50%"]), "ms")
    for slug in ("stations_id_latest", "stations_id_latest_404", "stations_id_predictions"):
        for stat in ("requests", "failures", "rps", "p50", "p95", "p99", "max", "avg"):
            assert f"api_load.endpoint.{slug}.{stat}" in by_name
    for slug in ("predictions", "health", "stats"):
        assert f"api_load.endpoint.{slug}.p99" in by_name
    assert {unit for _n, _v, unit in metrics} == {"users", "s", "requests", "%", "exceptions", "req/s", "ms"}


def test_error_rate_and_latencies_are_nan_without_requests(tmp_path: Path) -> None:
    text = Path(f"{API_STOPPED}_stats.csv").read_text().splitlines()
    header = text[0]
    columns = header.split(",")
    empty = ["", "Aggregated", "0", "0", "0", "0.0", "0", "0", "0", "0.0", "0.0"]
    empty += ["N/A"] * (len(columns) - len(empty))
    (tmp_path / "locust_stats.csv").write_text(header + "\n" + ",".join(empty) + "\n")
    result = parse_locust_csv(tmp_path / "locust")
    by_name = {name: value for name, value, _unit in result.metrics()}
    assert by_name["api_load.requests"] == 0
    for name in ("api_load.error_rate", "api_load.p50", "api_load.p99", "api_load.max", "api_load.avg"):
        assert math.isnan(by_name[name]), name


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("/stations/[id]/latest", "stations_id_latest"),
        ("/stations/[id]/latest (404)", "stations_id_latest_404"),
        ("/predictions", "predictions"),
        ("/", "root"),
    ],
)
def test_endpoint_slug(name: str, slug: str) -> None:
    assert endpoint_slug(name) == slug


# ----------------------------------------------------------------------------- spec and command

GOOD = {"users": 5, "spawn_rate": 2.5, "duration_s": 10, "station_prefix": "st", "stations": 20}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("users", 0),
        ("users", 2.5),
        ("users", True),
        ("spawn_rate", 0),
        ("spawn_rate", -1.0),
        ("duration_s", 0),
        ("duration_s", math.inf),
        ("stations", 0),
        ("station_prefix", ""),
        ("station_prefix", "a/b"),
        ("station_prefix", "with space"),
        ("station_prefix", "x" * 64),
        ("throughput_per_user", 0),
        ("request_timeout_s", -2),
    ],
)
def test_spec_validation_names_the_bad_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        ApiLoadSpec(**{**GOOD, field: value})


def test_spec_environ_for_the_locustfile() -> None:
    spec = ApiLoadSpec(**GOOD, throughput_per_user=4)
    assert spec.environ() == {
        "WB_LOAD_STATION_PREFIX": "st",
        "WB_LOAD_STATION_COUNT": "20",
        "WB_LOAD_TIMEOUT_S": "10.0",
        "WB_LOAD_THROUGHPUT": "4.0",
    }
    assert "WB_LOAD_THROUGHPUT" not in ApiLoadSpec(**GOOD).environ()


def test_command_is_headless_with_csv_and_whole_second_run_time(tmp_path: Path) -> None:
    load = ApiLoad("http://127.0.0.1:8088/", ApiLoadSpec(**{**GOOD, "duration_s": 9.2}), tmp_path)
    command = load.command()
    assert command[:3] == [sys.executable, "-m", "locust"]

    def value(flag: str) -> str:
        return command[command.index(flag) + 1]

    assert value("-f") == str(LOCUSTFILE)
    assert LOCUSTFILE.is_file()
    assert value("--host") == "http://127.0.0.1:8088"
    assert (value("--users"), value("--spawn-rate"), value("--run-time")) == ("5", "2.5", "10s")
    assert value("--csv") == str(tmp_path / "locust")
    assert value("--exit-code-on-error") == "0"
    assert {"--headless", "--csv-full-history", "--only-summary"} <= set(command)


def test_api_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="api_url"):
        ApiLoad("127.0.0.1:8088", ApiLoadSpec(**GOOD), Path("."))


def test_wait_and_stop_need_start(tmp_path: Path) -> None:
    load = ApiLoad("http://127.0.0.1:8088", ApiLoadSpec(**GOOD), tmp_path)
    with pytest.raises(RuntimeError, match="start"):
        load.wait()
    with pytest.raises(RuntimeError, match="start"):
        load.stop()
    load.close()  # nothing started: nothing to do


def test_a_broken_locustfile_raises_with_locust_stderr(tmp_path: Path) -> None:
    broken = tmp_path / "broken_locustfile.py"
    broken.write_text("raise RuntimeError('locustfile cannot load: missing setting')\n")
    spec = ApiLoadSpec(users=1, spawn_rate=1, duration_s=1, station_prefix="st", stations=1)
    # Port 9 (discard): never contacted, Locust fails while loading the file.
    load = ApiLoad("http://127.0.0.1:9", spec, tmp_path / "out", locustfile=broken)
    with load, pytest.raises(ApiLoadError, match=r"(?s)exited with status 1.*missing setting"):
        load.wait(timeout_s=60)
    assert not load.running()


# ----------------------------------------------------------------------------- the locustfile


def test_locustfile_names_stations_like_the_load_generator() -> None:
    # In a subprocess: importing the locustfile imports Locust, which monkey-patches the process.
    probe = textwrap.dedent(
        f"""
        import locust  # first, as when Locust runs it: it patches ssl before requests loads it
        import importlib.util, json, requests
        spec = importlib.util.spec_from_file_location("locustfile", {str(LOCUSTFILE)!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        try:
            requests.get("http://127.0.0.1:9/stations/st-0001/latest", timeout=2)
        except requests.RequestException as exc:
            refused = module.transport_error_message(exc)
        print(json.dumps({{
            "stations": module.STATIONS,
            "prefix": module.QUERY_PREFIX,
            "listed": module.station_ids_from_env({{"WB_LOAD_STATIONS": "a-1, b-2"}}),
            "listed_prefix": module.query_prefix_from_env(["a-1", "b-2"], {{}}),
            "refused": refused,
        }}))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WB_LOAD_", "LOCUST_"))}
    env.update(WB_LOAD_STATION_PREFIX="bench", WB_LOAD_STATION_COUNT="3")
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["stations"] == [station_id("bench", k) for k in range(3)]
    assert out["prefix"] == "bench-"
    assert out["listed"] == ["a-1", "b-2"]
    assert out["listed_prefix"] is None
    assert out["refused"] == "ConnectionError: [Errno 111] Connection refused"


def test_airflow_plugin_loader_skips_the_locustfile(tmp_path: Path) -> None:
    # Airflow imports every .py file under plugins/; importing the locustfile would
    # monkey-patch the Airflow process for gevent. plugins/.airflowignore leaves out our
    # packages (imported as packages, never by file), the locustfile with them.
    if importlib.util.find_spec("airflow") is None:
        pytest.skip("Airflow is not installed")
    probe = textwrap.dedent(
        f"""
        import json
        from airflow._shared.module_loading import find_path_from_directory
        print(json.dumps(list(find_path_from_directory({str(REPO / "plugins")!r}, ".airflowignore", "glob"))))
        """
    )
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow")}
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", probe],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    files = json.loads(done.stdout.strip().splitlines()[-1])
    assert str(REPO / "plugins" / "README.md") in files  # the loader did walk the folder
    assert str(LOCUSTFILE) not in files
    assert [f for f in files if f.endswith(".py")] == []
