"""Checks of the results store that every database backend must pass (SQLite unit tests, PostgreSQL).

Each check writes through one ResultsStore, closes it, and reads back through
a fresh one from open_store, so it proves what the database kept, not what a
store object remembers. Test names carry a random tag, so checks can share a
database without seeing each other's runs.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

from weatherbench.store import Metric, ResultsStore

OpenStore = Callable[[], ResultsStore]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def check_round_trip(open_store: OpenStore) -> str:
    """A run with two steps x two repetitions of metrics, series and histograms, read back whole."""
    test = unique("latency")
    parameters = {"rate": 20, "workers": [1, 2], "window": {"seconds": 10, "watermark_s": 3.5}}
    manifest = {"git": {"commit": "0123456789abcdef", "dirty": False}, "host": "bench-ü", "cores": 2}
    summary = {"verdict": "ok", "p95_ms": 104.5, "steps": ["workers=1", "workers=2"]}

    expected_metrics: dict[tuple[int, int, str, str], tuple[str, float, str]] = {}
    expected_series: dict[tuple[int, int, str], tuple[str, str, list[tuple[float, float]]]] = {}
    expected_histograms: dict[tuple[int, int, str], tuple[str, str, int, str]] = {}

    before = datetime.now(UTC)
    with open_store() as store:
        run_id = store.start_run(test, "quick", parameters, manifest)
        for step_index, workers in enumerate((1, 2)):
            step = f"workers={workers}"
            for repetition in range(2):
                metrics = [
                    # Values that survive only an exact float round trip.
                    Metric("latency.e2e.p95", 100.0 / 3 / workers + repetition, "ms"),
                    Metric("throughput.achieved", 20.25 * workers, "msg/s", "spark"),
                    Metric("cpu", 0.1 + repetition / 7, "%", "ray"),
                    Metric("cpu", 1e-300 * workers, "%", "spark"),
                ]
                assert store.record_metrics(run_id, step, step_index, repetition, metrics) == len(metrics)
                for m in metrics:
                    expected_metrics[(step_index, repetition, m.name, m.component)] = (step, m.value, m.unit)

                points = [(i * 0.5, float(i * workers + repetition)) for i in range(5)]
                store.record_series(run_id, step, step_index, repetition, "lag.spark", "messages", points)
                expected_series[(step_index, repetition, "lag.spark")] = (step, "messages", points)

                encoded = f"HISTFAAAA{step_index}{repetition}x=="
                store.record_histogram(
                    run_id, step, step_index, repetition, "latency.e2e", "ms", 1000, encoded
                )
                expected_histograms[(step_index, repetition, "latency.e2e")] = (step, "ms", 1000, encoded)
        store.finish_run(run_id, "passed", summary)
    after = datetime.now(UTC)

    with open_store() as store:
        run = store.get_run(run_id)
        assert (run.run_id, run.test, run.profile, run.status) == (run_id, test, "quick", "passed")
        assert run.started_at.tzinfo is not None and run.started_at.utcoffset().total_seconds() == 0
        assert before <= run.started_at <= run.finished_at <= after
        assert run.git_commit == manifest["git"]["commit"]
        assert run.parameters == parameters
        assert run.manifest == manifest
        assert run.summary == summary

        rows = store.metrics(run_id)
        assert {
            (r.step_index, r.repetition, r.metric, r.component): (r.step, r.value, r.unit) for r in rows
        } == (expected_metrics)
        assert len(rows) == len(expected_metrics)
        assert all(r.run_id == run_id and run.started_at <= r.recorded_at <= after for r in rows)

        series = store.series(run_id)
        assert {(s.step_index, s.repetition, s.name): (s.step, s.unit, s.points) for s in series} == (
            expected_series
        )
        histograms = store.histograms(run_id)
        assert {
            (h.step_index, h.repetition, h.name): (h.step, h.unit, h.count, h.encoded) for h in histograms
        } == expected_histograms

        assert [r.run_id for r in store.runs(test=test)] == [run_id]
    return run_id


def check_history(open_store: OpenStore) -> None:
    """history(): newest finished run first, limit counts runs, step and component filters."""
    test = unique("scaling")
    other_test = unique("faults")
    metric = "latency.e2e.p95"
    finished: list[tuple[str, str, float]] = []  # (run_id, commit, base value), oldest first
    with open_store() as store:
        for i in range(4):
            commit = f"{i:040x}"
            run_id = store.start_run(test, "quick", {"i": i}, {"git": {"commit": commit}})
            base = 10.0 * (i + 1)
            for step_index, step in enumerate(("workers=1", "workers=2")):
                store.record_metrics(
                    run_id,
                    step,
                    step_index,
                    0,
                    [Metric(metric, base + step_index, "ms"), Metric(metric, base + 0.5, "ms", "spark")],
                )
            store.finish_run(run_id, "failed" if i == 1 else "passed")
            finished.append((run_id, commit, base))
        # Neither a running run nor another test's run belongs to the history.
        running = store.start_run(test, "quick", {}, {})
        store.record_metrics(running, "workers=1", 0, 0, [Metric(metric, -1.0, "ms")])
        elsewhere = store.start_run(other_test, "quick", {}, {})
        store.record_metrics(elsewhere, "workers=1", 0, 0, [Metric(metric, -2.0, "ms")])
        store.finish_run(elsewhere, "passed")

    newest_first = list(reversed(finished))
    with open_store() as store:
        points = store.history(metric, test=test)
        # Within a run: by step_index, repetition, then component ("" before "spark").
        per_run = [
            (0, "workers=1", ""),
            (0, "workers=1", "spark"),
            (1, "workers=2", ""),
            (1, "workers=2", "spark"),
        ]
        expected = [
            (run_id, commit, step, component, base + (step_index if component == "" else 0.5))
            for run_id, commit, base in newest_first
            for step_index, step, component in per_run
        ]
        assert [(p.run_id, p.git_commit, p.step, p.component, p.value) for p in points] == expected
        assert [p.status for p in points if p.run_id == finished[1][0]] == ["failed"] * 4
        assert all(p.test == test and p.unit == "ms" for p in points)
        started = [p.started_at for p in points]
        assert started == sorted(started, reverse=True)

        # limit counts runs; each run keeps all its points.
        limited = store.history(metric, test=test, limit=2)
        assert [p.run_id for p in limited] == [rid for rid, _, _ in newest_first[:2] for _ in range(4)]

        by_step = store.history(metric, test=test, step="workers=2", component="")
        assert [(p.run_id, p.value) for p in by_step] == [(rid, base + 1) for rid, _, base in newest_first]

        by_component = store.history(metric, test=test, component="spark")
        assert {p.component for p in by_component} == {"spark"}
        assert len(by_component) == 2 * len(finished)

        assert [p.run_id for p in store.history(metric, test=other_test)] == [elsewhere]
        # Without a test filter both tests appear, the other test's run (finished last) first.
        assert store.history(metric)[0].run_id == elsewhere
        assert store.history("no.such.metric") == []


def check_non_finite(open_store: OpenStore) -> str:
    """NaN and infinities come back as themselves; exports and documents stay strict JSON."""
    values = {"nan": math.nan, "pos": math.inf, "neg": -math.inf, "finite": 2.5}
    with open_store() as store:
        run_id = store.start_run(unique("edge"), "quick", {"threshold": math.nan, "max": math.inf}, {})
        store.record_metrics(run_id, "s", 0, 0, [Metric(name, v, "ms") for name, v in values.items()])
        store.record_series(run_id, "s", 0, 0, "lag", "messages", [(0.0, 1.0), (1.0, math.nan), (2.0, 3.0)])
        store.finish_run(run_id, "passed", {"stdev": math.nan, "n": 1})

    with open_store() as store:
        got = {m.metric: m.value for m in store.metrics(run_id)}
        assert set(got) == set(values)
        assert math.isnan(got["nan"])
        assert got["pos"] == math.inf and got["neg"] == -math.inf and got["finite"] == 2.5

        (series,) = store.series(run_id)
        assert [t for t, _ in series.points] == [0.0, 1.0, 2.0]
        assert series.points[0][1] == 1.0 and math.isnan(series.points[1][1]) and series.points[2][1] == 3.0

        run = store.get_run(run_id)
        assert run.parameters == {"threshold": None, "max": None}
        assert run.summary == {"stdev": None, "n": 1}

        exported = store.export_run(run_id)
    text = json.dumps(exported, allow_nan=False)  # raises if any NaN or infinity slipped through
    by_name = {m["metric"]: m for m in json.loads(text)["metrics"]}
    assert {name: (m["value"], m["non_finite"]) for name, m in by_name.items()} == {
        "nan": (None, "nan"),
        "pos": (None, "inf"),
        "neg": (None, "-inf"),
        "finite": (2.5, None),
    }
    assert exported["series"][0]["points"] == [[0.0, 1.0], [1.0, None], [2.0, 3.0]]
    return run_id
