"""Results store on a temporary SQLite file: round trips, history, validation, NaN, export, URLs."""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from pipeline.config import REPO_ROOT
from tests.store_checks import check_history, check_non_finite, check_round_trip
from weatherbench.store import (
    Metric,
    ResultsStore,
    StoreError,
    StoreInputError,
    UnknownRunError,
    resolve_url,
)


@pytest.fixture
def db_file(tmp_path: Path) -> Path:
    # A directory that does not exist yet: the store creates it.
    return tmp_path / "results" / "nested" / "results.db"


@pytest.fixture
def db_url(db_file: Path) -> str:
    return f"sqlite:///{db_file}"


@pytest.fixture
def store(db_url: str) -> Iterator[ResultsStore]:
    with ResultsStore(db_url) as s:
        yield s


@pytest.fixture
def run_id(store: ResultsStore) -> str:
    return store.start_run("latency", "quick", {"rate": 20}, {"git": {"commit": "c0ffee"}})


# -- shared backend checks ---------------------------------------------------------------------------


def test_round_trip(db_url: str, db_file: Path) -> None:
    run_id = check_round_trip(lambda: ResultsStore(db_url))
    assert db_file.is_file()
    with sqlite3.connect(db_file) as raw:
        assert raw.execute("SELECT count(*) FROM results WHERE run_id = ?", (run_id,)).fetchone() == (16,)


def test_history(db_url: str) -> None:
    check_history(lambda: ResultsStore(db_url))


def test_non_finite_values(db_url: str) -> None:
    check_non_finite(lambda: ResultsStore(db_url))


# -- runs --------------------------------------------------------------------------------------------


def test_made_up_run_id_names_time_and_test(store: ResultsStore) -> None:
    run_id = store.start_run("Latency AB/1", "quick", {}, {})
    run = store.get_run(run_id)
    match = re.fullmatch(r"(\d{8}T\d{6}Z)-latency-ab-1-([0-9a-f]{4})", run_id)
    assert match, run_id
    assert match.group(1) == run.started_at.strftime("%Y%m%dT%H%M%SZ")
    assert run.status == "running" and run.finished_at is None and run.summary is None


def test_run_ids_are_unique_for_quick_successive_runs(store: ResultsStore) -> None:
    ids = [store.start_run("latency", "quick", {}, {}) for _ in range(30)]
    assert len(set(ids)) == len(ids)


def test_explicit_run_id_is_kept_and_must_be_new(store: ResultsStore) -> None:
    assert store.start_run("latency", "quick", {}, {}, run_id="my-run.1") == "my-run.1"
    with pytest.raises(StoreError, match=r"run_id 'my-run.1' already exists"):
        store.start_run("latency", "quick", {}, {}, run_id="my-run.1")
    with pytest.raises(StoreInputError, match="run_id 'a/b'"):
        store.start_run("latency", "quick", {}, {}, run_id="a/b")


def test_runs_newest_first_filtered_and_limited(store: ResultsStore) -> None:
    made = [(store.start_run(test, "quick", {}, {}), test) for test in ("a", "b", "a", "b", "a")]
    newest_first = list(reversed(made))
    assert [r.run_id for r in store.runs()] == [rid for rid, _ in newest_first]
    assert [r.run_id for r in store.runs(test="a")] == [rid for rid, t in newest_first if t == "a"]
    assert [r.run_id for r in store.runs(limit=2)] == [rid for rid, _ in newest_first[:2]]
    assert store.runs(test="none") == []
    with pytest.raises(StoreInputError, match="limit"):
        store.runs(limit=0)


def test_start_run_copies_its_documents(store: ResultsStore) -> None:
    parameters = {"workers": [1, 2]}
    run_id = store.start_run("latency", "quick", parameters, {})
    parameters["workers"].append(4)
    assert store.get_run(run_id).parameters == {"workers": [1, 2]}


def test_git_commit_comes_from_the_manifest(store: ResultsStore) -> None:
    with_commit = store.start_run("t", "quick", {}, {"git": {"commit": "abc123", "dirty": True}})
    without = store.start_run("t", "quick", {}, {"git": {"commit": None, "dirty": None}})
    assert store.get_run(with_commit).git_commit == "abc123"
    assert store.get_run(without).git_commit is None


def test_finish_run_sets_status_time_and_summary(store: ResultsStore, run_id: str) -> None:
    started = store.get_run(run_id).started_at
    store.finish_run(run_id, "failed", {"slo": "p95 > 20 s"})
    run = store.get_run(run_id)
    assert run.status == "failed"
    assert run.summary == {"slo": "p95 > 20 s"}
    assert started <= run.finished_at <= started + timedelta(minutes=1)


def test_missing_summary_is_sql_null(store: ResultsStore, run_id: str, db_file: Path) -> None:
    store.finish_run(run_id, "error")
    assert store.get_run(run_id).summary is None
    with sqlite3.connect(db_file) as raw:
        assert raw.execute("SELECT summary IS NULL FROM runs WHERE run_id = ?", (run_id,)).fetchone() == (1,)


# -- errors ------------------------------------------------------------------------------------------


def test_unknown_run_is_a_key_error_naming_the_id(store: ResultsStore) -> None:
    calls = [
        lambda: store.get_run("nope-1"),
        lambda: store.metrics("nope-1"),
        lambda: store.series("nope-1"),
        lambda: store.histograms("nope-1"),
        lambda: store.export_run("nope-1"),
        lambda: store.finish_run("nope-1", "passed"),
        lambda: store.record_metrics("nope-1", "s", 0, 0, [Metric("m", 1.0, "ms")]),
        lambda: store.record_series("nope-1", "s", 0, 0, "lag", "messages", [(0.0, 1.0)]),
        lambda: store.record_histogram("nope-1", "s", 0, 0, "lat", "ms", 1, "HIST"),
    ]
    for call in calls:
        with pytest.raises(UnknownRunError) as caught:
            call()
        assert isinstance(caught.value, KeyError)
        assert str(caught.value) == "unknown run_id 'nope-1'"


@pytest.mark.parametrize("status", ["running", "done", "PASSED", ""])
def test_finish_run_rejects_a_status_outside_the_final_ones(
    store: ResultsStore, run_id: str, status: str
) -> None:
    with pytest.raises(StoreInputError, match=r"status .*passed, failed, error"):
        store.finish_run(run_id, status)
    assert store.get_run(run_id).status == "running"


def test_a_finished_run_takes_no_more_results(store: ResultsStore, run_id: str) -> None:
    store.record_metrics(run_id, "s", 0, 0, [Metric("m", 1.0, "ms")])
    store.finish_run(run_id, "passed")
    finished = re.escape(f"run {run_id} is passed")
    with pytest.raises(StoreError, match=finished):
        store.record_metrics(run_id, "s", 0, 1, [Metric("m", 2.0, "ms")])
    with pytest.raises(StoreError, match=finished):
        store.record_series(run_id, "s", 0, 1, "lag", "messages", [(0.0, 1.0)])
    with pytest.raises(StoreError, match=finished):
        store.record_histogram(run_id, "s", 0, 1, "lat", "ms", 1, "HIST")
    with pytest.raises(StoreError, match=finished):
        store.finish_run(run_id, "failed")
    assert store.get_run(run_id).status == "passed"
    assert [m.value for m in store.metrics(run_id)] == [1.0]


@pytest.mark.parametrize(
    ("step", "step_index", "repetition", "field"),
    [
        ("", 0, 0, "step"),
        ("s", -1, 0, "step_index"),
        ("s", 0, -1, "repetition"),
        ("s", True, 0, "step_index"),
        ("s", 0, 1.0, "repetition"),
        (3, 0, 0, "step"),
    ],
)
def test_bad_step_coordinates_name_the_field(
    store: ResultsStore, run_id: str, step: object, step_index: object, repetition: object, field: str
) -> None:
    with pytest.raises(StoreInputError, match=rf"^{field} "):
        store.record_metrics(run_id, step, step_index, repetition, [Metric("m", 1.0, "ms")])  # type: ignore[arg-type]
    with pytest.raises(StoreInputError, match=rf"^{field} "):
        store.record_series(run_id, step, step_index, repetition, "lag", "messages", [])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ([Metric("ok", 1.0, "ms"), Metric("", 1.0, "ms")], r"metrics\[1\]\.name must not be empty"),
        ([Metric("  ", 1.0, "ms")], r"metrics\[0\]\.name must not be empty"),
        ([Metric("m", "12", "ms")], r"metrics\[0\]\.value \(m\) must be a number"),  # type: ignore[arg-type]
        ([Metric("m", True, "ms")], r"metrics\[0\]\.value \(m\) must be a number"),
        ([Metric("m", 1.0, None)], r"metrics\[0\]\.unit \(m\) must be a string"),  # type: ignore[arg-type]
        ([Metric("m", 1.0, "ms", "c"), Metric("m", 2.0, "ms", "c")], r"metrics\[1\]: metric 'm' .* twice"),
        ([("m", 1.0, "ms")], r"metrics\[0\] must be a Metric"),
        ([Metric("x" * 201, 1.0, "ms")], r"metrics\[0\]\.name is 201 characters long; at most 200"),
    ],
)
def test_bad_metrics_name_the_field_and_record_nothing(
    store: ResultsStore, run_id: str, metrics: list[Metric], message: str
) -> None:
    with pytest.raises(StoreInputError, match=message):
        store.record_metrics(run_id, "s", 0, 0, metrics)
    assert store.metrics(run_id) == []


def test_same_metric_of_another_component_or_repetition_is_distinct(store: ResultsStore, run_id: str) -> None:
    store.record_metrics(
        run_id, "s", 0, 0, [Metric("cpu", 1.0, "%", "spark"), Metric("cpu", 2.0, "%", "ray")]
    )
    store.record_metrics(run_id, "s", 0, 1, [Metric("cpu", 3.0, "%", "spark")])
    got = {(m.repetition, m.component): m.value for m in store.metrics(run_id)}
    assert got == {(0, "spark"): 1.0, (0, "ray"): 2.0, (1, "spark"): 3.0}


def test_a_point_is_recorded_once(store: ResultsStore, run_id: str) -> None:
    store.record_metrics(run_id, "s", 0, 0, [Metric("cpu", 1.0, "%", "spark")])
    with pytest.raises(StoreError, match=r"already recorded: cpu\[spark\]"):
        store.record_metrics(run_id, "s", 0, 0, [Metric("new", 5.0, "%"), Metric("cpu", 2.0, "%", "spark")])
    store.record_series(run_id, "s", 0, 0, "lag", "messages", [(0.0, 1.0)])
    with pytest.raises(StoreError, match="series 'lag' already recorded"):
        store.record_series(run_id, "s", 0, 0, "lag", "messages", [(0.0, 2.0)])
    store.record_histogram(run_id, "s", 0, 0, "lat", "ms", 1, "HIST")
    with pytest.raises(StoreError, match="histograms 'lat' already recorded"):
        store.record_histogram(run_id, "s", 0, 0, "lat", "ms", 2, "HIST2")
    # The failed call recorded nothing, not even its new metric.
    assert [(m.metric, m.value) for m in store.metrics(run_id)] == [("cpu", 1.0)]


def test_a_step_index_keeps_one_label(store: ResultsStore, run_id: str) -> None:
    store.record_metrics(run_id, "workers=1", 0, 0, [Metric("m", 1.0, "ms")])
    with pytest.raises(StoreInputError, match=r"already has step 'workers=1' at step_index 0"):
        store.record_metrics(run_id, "workers=2", 0, 1, [Metric("m", 1.0, "ms")])
    with pytest.raises(StoreInputError, match=r"already has step 'workers=1' at step_index 0"):
        store.record_histogram(run_id, "workers=1", 1, 0, "lat", "ms", 1, "HIST")
    # Other runs are free to label their steps differently.
    other = store.start_run("latency", "quick", {}, {})
    store.record_metrics(other, "workers=2", 0, 0, [Metric("m", 1.0, "ms")])


def test_bad_series_and_histograms_name_the_field(store: ResultsStore, run_id: str) -> None:
    with pytest.raises(StoreInputError, match=r"points \(lag\)\[1\] value is inf"):
        store.record_series(run_id, "s", 0, 0, "lag", "messages", [(0.0, 1.0), (1.0, math.inf)])
    with pytest.raises(StoreInputError, match=r"points \(lag\)\[0\] time must be finite"):
        store.record_series(run_id, "s", 0, 0, "lag", "messages", [(math.nan, 1.0)])
    with pytest.raises(StoreInputError, match=r"points \(lag\)\[0\] must be a \(t, value\) pair"):
        store.record_series(run_id, "s", 0, 0, "lag", "messages", [(0.0, 1.0, 2.0)])
    with pytest.raises(StoreInputError, match=r"^name must not be empty"):
        store.record_series(run_id, "s", 0, 0, "", "messages", [])
    with pytest.raises(StoreInputError, match=r"count \(lat\) must be >= 0"):
        store.record_histogram(run_id, "s", 0, 0, "lat", "ms", -1, "HIST")
    with pytest.raises(StoreInputError, match=r"encoded \(lat\) must be str"):
        store.record_histogram(run_id, "s", 0, 0, "lat", "ms", 1, b"HIST")  # type: ignore[arg-type]
    with pytest.raises(StoreInputError, match=r"encoded \(lat\) must not be empty"):
        store.record_histogram(run_id, "s", 0, 0, "lat", "ms", 1, "")
    assert store.series(run_id) == [] and store.histograms(run_id) == []


def test_series_points_may_be_any_iterable_of_pairs(store: ResultsStore, run_id: str) -> None:
    store.record_series(run_id, "s", 0, 0, "lag", "messages", iter([[0, 1], (0.5, 2)]))  # type: ignore[arg-type]
    assert store.series(run_id)[0].points == [(0.0, 1.0), (0.5, 2.0)]


def test_documents_must_be_json(store: ResultsStore) -> None:
    with pytest.raises(StoreInputError, match=r"parameters\.tags: set is not JSON"):
        store.start_run("t", "quick", {"tags": {"a"}}, {})
    with pytest.raises(StoreInputError, match=r"manifest\.machine: key 1 is not a string"):
        store.start_run("t", "quick", {}, {"machine": {1: "x"}})
    with pytest.raises(StoreInputError, match=r"parameters must be a dict"):
        store.start_run("t", "quick", [], {})  # type: ignore[arg-type]
    with pytest.raises(StoreInputError, match=r"^test must not be empty"):
        store.start_run(" ", "quick", {}, {})
    with pytest.raises(StoreInputError, match=r"^profile must be a string"):
        store.start_run("t", None, {}, {})  # type: ignore[arg-type]
    assert store.runs() == []


def test_threads_share_a_store(store: ResultsStore, run_id: str) -> None:
    def record(repetition: int) -> None:
        for step_index in range(5):
            metrics = [Metric("m", float(repetition * 10 + step_index), "ms")]
            store.record_metrics(run_id, f"step{step_index}", step_index, repetition, metrics)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(record, range(4)))
    got = {(m.step_index, m.repetition): m.value for m in store.metrics(run_id)}
    assert got == {(i, r): float(r * 10 + i) for i in range(5) for r in range(4)}


# -- NaN storage, export, schema ---------------------------------------------------------------------


def test_non_finite_values_are_null_with_a_marker(store: ResultsStore, run_id: str, db_file: Path) -> None:
    values = {"a": math.nan, "b": math.inf, "c": -math.inf, "d": 4.0, "e": 0.0}
    store.record_metrics(run_id, "s", 0, 0, [Metric(k, v, "ms") for k, v in values.items()])
    with sqlite3.connect(db_file) as raw:
        rows = dict(
            (metric, (value, marker))
            for metric, value, marker in raw.execute("SELECT metric, value, non_finite FROM results")
        )
        # SQL aggregates see only the finite values.
        average = raw.execute("SELECT avg(value), count(value) FROM results").fetchone()
    assert rows == {
        "a": (None, "nan"),
        "b": (None, "inf"),
        "c": (None, "-inf"),
        "d": (4.0, None),
        "e": (0.0, None),
    }
    assert average == (2.0, 2)


def test_export_run_has_everything(store: ResultsStore, run_id: str) -> None:
    store.record_metrics(run_id, "workers=1", 0, 0, [Metric("lat", 1.5, "ms", "spark")])
    store.record_metrics(run_id, "workers=2", 1, 0, [Metric("lat", 2.5, "ms", "spark")])
    store.record_series(run_id, "workers=1", 0, 0, "lag", "messages", [(0.0, 3.0)])
    store.record_histogram(run_id, "workers=2", 1, 0, "lat", "ms", 7, "HISTenc==")
    store.finish_run(run_id, "passed", {"n": 2})

    exported = json.loads(json.dumps(store.export_run(run_id), allow_nan=False))
    run = store.get_run(run_id)
    assert exported["format"] == "weatherbench.run/1"
    assert exported["run"] == {
        "run_id": run_id,
        "test": "latency",
        "profile": "quick",
        "status": "passed",
        "started_at": run.started_at.isoformat(),
        "finished_at": run.finished_at.isoformat(),
        "git_commit": "c0ffee",
        "parameters": {"rate": 20},
        "manifest": {"git": {"commit": "c0ffee"}},
        "summary": {"n": 2},
    }
    assert datetime.fromisoformat(exported["run"]["started_at"]) == run.started_at
    assert [
        (m["step"], m["step_index"], m["repetition"], m["component"], m["value"]) for m in exported["metrics"]
    ] == [
        ("workers=1", 0, 0, "spark", 1.5),
        ("workers=2", 1, 0, "spark", 2.5),
    ]
    recorded = {m.step_index: m.recorded_at for m in store.metrics(run_id)}
    assert [datetime.fromisoformat(m["recorded_at"]) for m in exported["metrics"]] == [
        recorded[0],
        recorded[1],
    ]
    assert exported["series"] == [
        {
            "step": "workers=1",
            "step_index": 0,
            "repetition": 0,
            "name": "lag",
            "unit": "messages",
            "points": [[0.0, 3.0]],
        }
    ]
    assert exported["histograms"] == [
        {
            "step": "workers=2",
            "step_index": 1,
            "repetition": 0,
            "name": "lat",
            "unit": "ms",
            "count": 7,
            "encoded": "HISTenc==",
        }
    ]


def test_schema_has_the_query_indexes(store: ResultsStore, run_id: str, db_file: Path) -> None:
    with sqlite3.connect(db_file) as raw:
        tables = {name for (name,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        indexed = {
            tuple(col for _, _, col in raw.execute(f"PRAGMA index_info('{name}')"))
            for _, name, *_ in raw.execute("PRAGMA index_list('results')")
        }
        foreign_keys = raw.execute("PRAGMA foreign_key_list('results')").fetchall()
    assert {"runs", "results", "series", "histograms"} <= tables
    assert ("metric", "test") in indexed and ("run_id",) in indexed
    assert [(fk[2], fk[3], fk[4]) for fk in foreign_keys] == [("runs", "run_id", "run_id")]


# -- URLs --------------------------------------------------------------------------------------------


def test_url_argument_then_environment_then_default_file() -> None:
    env = {"WB_RESULTS_URL": "postgresql://u@db.example:5432/results"}
    assert str(resolve_url("sqlite:////tmp/x.db", env)) == "sqlite:////tmp/x.db"
    assert str(resolve_url(None, env)) == env["WB_RESULTS_URL"]
    default = resolve_url(None, {})
    assert default.get_backend_name() == "sqlite"
    assert Path(default.database) == REPO_ROOT / ".state" / "results" / "results.db"
    # An empty variable (e.g. from a compose file) counts as unset.
    assert resolve_url(None, {"WB_RESULTS_URL": "  "}) == default


def test_bad_urls_are_named_without_echoing_them() -> None:
    with pytest.raises(StoreInputError, match="WB_RESULTS_URL is not a database URL") as caught:
        resolve_url(None, {"WB_RESULTS_URL": "not a url :secret"})
    assert "secret" not in str(caught.value)
    with pytest.raises(StoreInputError, match="url argument is empty"):
        resolve_url("", {})
    with pytest.raises(StoreError, match="cannot use results store nosuchdb://u:\\*\\*\\*@h/d"):
        ResultsStore("nosuchdb://u:secret@h/d")


def test_password_is_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WB_RESULTS_URL", "postgresql+psycopg2://bench:s3cret@127.0.0.1:1/results")
    store = ResultsStore()  # no connection is made until first use
    assert "s3cret" not in store.url and "s3cret" not in repr(store) and "s3cret" not in str(store)
    assert store.url == "postgresql+psycopg2://bench:***@127.0.0.1:1/results"


def test_unreachable_database_is_a_store_error() -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    store = ResultsStore("postgresql+psycopg2://bench:s3cret@127.0.0.1:1/results?connect_timeout=5")
    with pytest.raises(
        StoreError, match=r"cannot open results store postgresql\+psycopg2://bench:\*\*\*@"
    ) as caught:
        store.runs()
    assert "s3cret" not in str(caught.value)
