"""Results store: every benchmark run, with its metrics, time series and latency histograms.

This module owns the results schema and is the only code that reads or writes
it. It speaks SQLAlchemy Core, so the same code serves the default SQLite file
and a PostgreSQL server:

* URL: the explicit argument, else the environment variable WB_RESULTS_URL
  (an empty value counts as unset), else ``sqlite:///<repo>/.state/results/results.db``.
  The directory of a SQLite file is created when missing.
* Tables are created on first use (``MetaData.create_all``); there are no migrations.

Tables:

* ``runs``: one row per run: ``run_id`` (made here unless given, e.g.
  ``20261127T051500Z-latency-ab12``), test, profile, status (running, passed,
  failed, error), UTC start and finish times, the git commit (copied from the
  manifest so history queries need not read the manifest), and the
  parameters, manifest and summary as JSON documents.
* ``results``: one row per metric per step per repetition (and component).
* ``series``: one row per time series per step per repetition; points are
  ``[seconds since step start, value]`` pairs in a JSON list.
* ``histograms``: one row per histogram per step per repetition; ``encoded``
  is an HdrHistogram encoding made by the caller and kept as is.

Results are recorded only to an existing run whose status is still
``running``; ``finish_run`` closes it. A step is identified by ``step_index``
and labelled by ``step`` (e.g. ``"workers=2"``); within a run an index keeps
one label. Each (step, repetition, metric, component) is recorded once.

Non-finite numbers:

* Metric values: NaN, +inf and -inf are stored as ``value`` NULL plus
  ``non_finite`` = ``"nan"``, ``"inf"`` or ``"-inf"`` (NULL for finite
  values), and read back as the same float. SQLite cannot store NaN (it
  becomes NULL) and PostgreSQL sorts it above every number, so keeping
  ``value`` finite-or-NULL makes SQL aggregates over it correct on both.
  ``export_run`` writes ``"value": null`` with the ``non_finite`` marker, so
  the export is strict JSON.
* Series points: a NaN value is stored as JSON null (a gap) and read back as
  NaN; an infinite value or a non-finite time is rejected.
* JSON documents (parameters, manifest, summary): NaN and infinities become
  null, because strict JSON (and PostgreSQL's json type) has no such numbers.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import secrets
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    Connection,
    DateTime,
    Dialect,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Row,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    and_,
    create_engine,
    event,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, OperationalError

from pipeline.config import REPO_ROOT
from weatherbench.metrics import Metric

URL_ENV = "WB_RESULTS_URL"
DEFAULT_DB_FILE = REPO_ROOT / ".state" / "results" / "results.db"

RUNNING = "running"
FINISHED_STATUSES = ("passed", "failed", "error")
RUN_STATUSES = (RUNNING, *FINISHED_STATUSES)
NON_FINITE_MARKERS = ("nan", "inf", "-inf")
EXPORT_FORMAT = "weatherbench.run/1"

# Column widths; inputs are checked against them so SQLite (which ignores
# VARCHAR lengths) and PostgreSQL (which enforces them) accept the same data.
_ID_LEN = 128
_NAME_LEN = 100
_LABEL_LEN = 200
_UNIT_LEN = 32
_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class StoreError(Exception):
    """The results store cannot do what was asked (unknown run, finished run, database error)."""


class StoreInputError(StoreError, ValueError):
    """An argument is invalid; the message names the field."""


class UnknownRunError(StoreError, KeyError):
    """No run has this run_id."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"unknown run_id {run_id!r}")
        self.run_id = run_id

    def __str__(self) -> str:
        # KeyError's str() is the repr of its argument; keep the plain message.
        return str(self.args[0])


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    test: str
    profile: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    git_commit: str | None
    parameters: dict[str, Any]
    manifest: dict[str, Any]
    summary: dict[str, Any] | None


@dataclass(frozen=True)
class MetricRow:
    run_id: str
    step: str
    step_index: int
    repetition: int
    metric: str
    component: str
    value: float  # NaN and infinities restored from the non_finite marker
    unit: str
    recorded_at: datetime


@dataclass(frozen=True)
class SeriesRow:
    run_id: str
    step: str
    step_index: int
    repetition: int
    name: str
    unit: str
    points: list[tuple[float, float]]  # (seconds since step start, value); gaps are NaN


@dataclass(frozen=True)
class HistogramRow:
    run_id: str
    step: str
    step_index: int
    repetition: int
    name: str
    unit: str
    count: int
    encoded: str


@dataclass(frozen=True)
class HistoryPoint:
    """One value of a metric in one finished run (per step, repetition and component)."""

    run_id: str
    started_at: datetime
    git_commit: str | None
    status: str
    test: str
    step: str
    step_index: int
    repetition: int
    component: str
    value: float
    unit: str


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes, stored as naive UTC: SQLite has no time zones, and this reads back the same."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise StoreInputError(f"naive datetime {value!r}: the results store takes aware datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
_RowId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

runs_table = Table(
    "runs",
    metadata,
    Column("run_id", String(_ID_LEN), primary_key=True),
    Column("test", String(_NAME_LEN), nullable=False),
    Column("profile", String(_NAME_LEN), nullable=False),
    Column("status", String(16), nullable=False),
    Column("started_at", UTCDateTime(), nullable=False),
    Column("finished_at", UTCDateTime(), nullable=True),
    Column("git_commit", String(64), nullable=True),
    Column("parameters", JSON(), nullable=False),
    Column("manifest", JSON(), nullable=False),
    # none_as_null: a run without a summary has SQL NULL, not the JSON value null.
    Column("summary", JSON(none_as_null=True), nullable=True),
    CheckConstraint("status IN (" + ", ".join(f"'{s}'" for s in RUN_STATUSES) + ")", name="ck_runs_status"),
    Index("ix_runs_test_started", "test", "started_at"),
)


def _step_columns() -> list[Any]:
    return [
        Column("id", _RowId, primary_key=True, autoincrement=True),
        Column("run_id", String(_ID_LEN), ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
        Column("step", String(_LABEL_LEN), nullable=False),
        Column("step_index", Integer, nullable=False),
        Column("repetition", Integer, nullable=False),
    ]


results_table = Table(
    "results",
    metadata,
    *_step_columns(),
    Column("test", String(_NAME_LEN), nullable=False),  # copied from the run for (metric, test) queries
    Column("metric", String(_LABEL_LEN), nullable=False),
    Column("component", String(_NAME_LEN), nullable=False, default=""),
    Column("value", Double(), nullable=True),
    Column("non_finite", String(4), nullable=True),
    Column("unit", String(_UNIT_LEN), nullable=False),
    Column("recorded_at", UTCDateTime(), nullable=False),
    CheckConstraint("step_index >= 0 AND repetition >= 0", name="ck_results_step"),
    CheckConstraint(
        "(value IS NULL AND non_finite IN (" + ", ".join(f"'{m}'" for m in NON_FINITE_MARKERS) + "))"
        " OR (value IS NOT NULL AND non_finite IS NULL)",
        name="ck_results_value",
    ),
    UniqueConstraint("run_id", "step_index", "repetition", "metric", "component", name="uq_results_point"),
    Index("ix_results_metric_test", "metric", "test"),
    Index("ix_results_run", "run_id"),
)

series_table = Table(
    "series",
    metadata,
    *_step_columns(),
    Column("name", String(_LABEL_LEN), nullable=False),
    Column("unit", String(_UNIT_LEN), nullable=False),
    Column("points", JSON(), nullable=False),
    CheckConstraint("step_index >= 0 AND repetition >= 0", name="ck_series_step"),
    UniqueConstraint("run_id", "step_index", "repetition", "name", name="uq_series_name"),
    Index("ix_series_run", "run_id"),
)

histograms_table = Table(
    "histograms",
    metadata,
    *_step_columns(),
    Column("name", String(_LABEL_LEN), nullable=False),
    Column("unit", String(_UNIT_LEN), nullable=False),
    Column("count", BigInteger, nullable=False),
    Column("encoded", Text, nullable=False),
    CheckConstraint("step_index >= 0 AND repetition >= 0 AND count >= 0", name="ck_histograms_step"),
    UniqueConstraint("run_id", "step_index", "repetition", "name", name="uq_histograms_name"),
    Index("ix_histograms_run", "run_id"),
)

_STEP_TABLES = (results_table, series_table, histograms_table)


def resolve_url(url: str | None = None, environ: Mapping[str, str] | None = None) -> URL:
    """The store's database URL: argument, else WB_RESULTS_URL, else the default SQLite file."""
    env = os.environ if environ is None else environ
    if url is not None:
        text, source = url, "url argument"
    elif env.get(URL_ENV, "").strip():
        text, source = env[URL_ENV].strip(), URL_ENV
    else:
        return URL.create("sqlite", database=str(DEFAULT_DB_FILE))
    if not text.strip():
        raise StoreInputError(f"{source} is empty")
    try:
        return make_url(text)
    except ArgumentError:
        # The parse error repeats the text, which may hold a password.
        raise StoreInputError(
            f"{source} is not a database URL (e.g. sqlite:///path or postgresql://...)"
        ) from None


def _sqlite_file(url: URL) -> Path | None:
    """The file behind a SQLite URL, or None for an in-memory or URI-style database."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def _strict_json(value: Any) -> str:
    # The last guard: documents are cleaned before they get here, so this never emits NaN tokens.
    return json.dumps(value, allow_nan=False)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # SQLite ignores foreign keys unless asked, per connection.
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL: reports and queries can read while a running benchmark writes (a no-op in memory).
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


class ResultsStore:
    """Benchmark runs and their results in a SQLite file or a PostgreSQL database.

    Safe to share between threads (each call takes a pooled connection) and
    between processes (the database serialises the writes).
    """

    def __init__(self, url: str | None = None) -> None:
        self._url = resolve_url(url)
        file = _sqlite_file(self._url)
        options: dict[str, Any] = {"json_serializer": _strict_json}
        if self._url.get_backend_name() == "sqlite":
            # Another process may hold the write lock briefly; wait for it instead of failing.
            options["connect_args"] = {"timeout": 30}
        try:
            self._engine = create_engine(self._url, **options)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            raise StoreError(f"cannot use results store {self.url}: {exc}") from None
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
        if self._url.get_backend_name() == "sqlite":
            event.listen(self._engine, "connect", _on_sqlite_connect)
        self._schema_ready = False
        self._clock_lock = threading.Lock()
        self._last_now: datetime | None = None

    @property
    def url(self) -> str:
        """The database URL with any password masked (safe to print and log)."""
        return self._url.render_as_string(hide_password=True)

    def __repr__(self) -> str:
        return f"ResultsStore({self.url!r})"

    def close(self) -> None:
        """Close pooled connections (the store reconnects if used again)."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- runs --------------------------------------------------------------------------------------

    def start_run(
        self,
        test: str,
        profile: str,
        parameters: dict[str, Any],
        manifest: dict[str, Any],
        run_id: str | None = None,
    ) -> str:
        """Record a new run with status "running" and return its run_id (made here unless given)."""
        test = _text(test, "test", _NAME_LEN)
        profile = _text(profile, "profile", _NAME_LEN)
        params_doc = _json_object(parameters, "parameters")
        manifest_doc = _json_object(manifest, "manifest")
        if run_id is not None:
            run_id = _text(run_id, "run_id", _ID_LEN)
            if not _RUN_ID_RE.fullmatch(run_id):
                raise StoreInputError(
                    f"run_id {run_id!r}: use letters, digits, '.', '_' and '-' (it names result files)"
                )
        self._ensure_schema()
        started_at = self._now()
        row = {
            "test": test,
            "profile": profile,
            "status": RUNNING,
            "started_at": started_at,
            "git_commit": _git_commit(manifest_doc),
            "parameters": params_doc,
            "manifest": manifest_doc,
        }
        # A made-up id can collide (same second, test and 16-bit suffix): try another suffix.
        for _attempt in range(8):
            new_id = run_id or _new_run_id(test, started_at)
            try:
                with self._engine.begin() as conn:
                    conn.execute(insert(runs_table).values(run_id=new_id, **row))
                return new_id
            except IntegrityError:
                if run_id is not None:
                    raise StoreError(f"run_id {run_id!r} already exists") from None
        raise StoreError(f"could not make a unique run_id for test {test!r}")

    def finish_run(self, run_id: str, status: str, summary: dict[str, Any] | None = None) -> None:
        """Close a running run with a final status (passed, failed or error) and an optional summary."""
        if status not in FINISHED_STATUSES:
            raise StoreInputError(
                f"status {status!r}: a run finishes as one of {', '.join(FINISHED_STATUSES)}"
            )
        summary_doc = None if summary is None else _json_object(summary, "summary")
        self._ensure_schema()
        with self._engine.begin() as conn:
            self._running_run(conn, run_id, lock="update", action="finish it again")
            conn.execute(
                update(runs_table)
                .where(runs_table.c.run_id == run_id, runs_table.c.status == RUNNING)
                .values(status=status, finished_at=self._now(), summary=summary_doc)
            )

    def get_run(self, run_id: str) -> RunRecord:
        """The run with this id; UnknownRunError if there is none."""
        self._ensure_schema()
        with self._engine.connect() as conn:
            row = conn.execute(select(runs_table).where(runs_table.c.run_id == run_id)).first()
        if row is None:
            raise UnknownRunError(run_id)
        return _run_record(row)

    def runs(self, test: str | None = None, limit: int = 20) -> list[RunRecord]:
        """The latest runs (of one test, if given), newest first."""
        limit = _positive(limit, "limit")
        self._ensure_schema()
        query = select(runs_table).order_by(runs_table.c.started_at.desc(), runs_table.c.run_id.desc())
        if test is not None:
            query = query.where(runs_table.c.test == test)
        with self._engine.connect() as conn:
            return [_run_record(row) for row in conn.execute(query.limit(limit))]

    # -- recording ---------------------------------------------------------------------------------

    def record_metrics(
        self, run_id: str, step: str, step_index: int, repetition: int, metrics: Iterable[Metric]
    ) -> int:
        """Record metric values of one step and repetition of a running run; returns how many."""
        step, step_index, repetition = _step(step, step_index, repetition)
        rows: list[dict[str, Any]] = []
        seen: set[tuple[str, str]] = set()
        for i, metric in enumerate(metrics):
            field = f"metrics[{i}]"
            if not isinstance(metric, Metric):
                raise StoreInputError(f"{field} must be a Metric, got {type(metric).__name__}")
            name = _text(metric.name, f"{field}.name", _LABEL_LEN)
            component = _text(metric.component, f"{field}.component ({name})", _NAME_LEN, allow_empty=True)
            if (name, component) in seen:
                raise StoreInputError(f"{field}: metric {name!r} component {component!r} is given twice")
            seen.add((name, component))
            value, non_finite = _split_value(metric.value, f"{field}.value ({name})")
            unit = _text(metric.unit, f"{field}.unit ({name})", _UNIT_LEN, allow_empty=True)
            rows.append(
                {
                    "metric": name,
                    "component": component,
                    "value": value,
                    "non_finite": non_finite,
                    "unit": unit,
                }
            )
        self._ensure_schema()
        with self._engine.begin() as conn:
            run = self._running_run(conn, run_id)
            self._check_step(conn, run_id, step, step_index)
            if rows:
                taken = conn.execute(
                    select(results_table.c.metric, results_table.c.component).where(
                        results_table.c.run_id == run_id,
                        results_table.c.step_index == step_index,
                        results_table.c.repetition == repetition,
                        results_table.c.metric.in_(sorted({r["metric"] for r in rows})),
                    )
                ).all()
                clash = sorted(f"{m}[{c}]" if c else m for m, c in taken if (m, c) in seen)
                if clash:
                    raise StoreError(
                        f"run {run_id} step {step!r} repetition {repetition}: "
                        f"already recorded: {', '.join(clash)}"
                    )
                now = self._now()
                common = {
                    "run_id": run_id,
                    "test": run.test,
                    "step": step,
                    "step_index": step_index,
                    "repetition": repetition,
                    "recorded_at": now,
                }
                conn.execute(insert(results_table), [{**common, **r} for r in rows])
        return len(rows)

    def record_series(
        self,
        run_id: str,
        step: str,
        step_index: int,
        repetition: int,
        name: str,
        unit: str,
        points: Sequence[tuple[float, float]],
    ) -> None:
        """Record one time series: (seconds since step start, value) pairs; a NaN value is a gap."""
        step, step_index, repetition = _step(step, step_index, repetition)
        name = _text(name, "name", _LABEL_LEN)
        unit = _text(unit, f"unit ({name})", _UNIT_LEN, allow_empty=True)
        stored = _series_points(points, f"points ({name})")
        row = {"name": name, "unit": unit, "points": stored}
        self._record_step_row(series_table, run_id, step, step_index, repetition, row)

    def record_histogram(
        self,
        run_id: str,
        step: str,
        step_index: int,
        repetition: int,
        name: str,
        unit: str,
        count: int,
        encoded: str,
    ) -> None:
        """Record one histogram: ``encoded`` is the caller's HdrHistogram encoding, kept verbatim."""
        step, step_index, repetition = _step(step, step_index, repetition)
        name = _text(name, "name", _LABEL_LEN)
        unit = _text(unit, f"unit ({name})", _UNIT_LEN, allow_empty=True)
        count = _non_negative(count, f"count ({name})")
        if isinstance(encoded, bytes | bytearray):
            raise StoreInputError(f"encoded ({name}) must be str: decode the bytes (base64 is ASCII)")
        encoded = _text(encoded, f"encoded ({name})", max_len=None)
        row = {"name": name, "unit": unit, "count": count, "encoded": encoded}
        self._record_step_row(histograms_table, run_id, step, step_index, repetition, row)

    # -- reading -----------------------------------------------------------------------------------

    def metrics(self, run_id: str) -> list[MetricRow]:
        """Every metric value of a run, by step, repetition, metric and component."""
        self._ensure_schema()
        with self._engine.connect() as conn:
            self._run_row(conn, run_id)
            return [_metric_row(row) for row in conn.execute(_metrics_query(run_id))]

    def series(self, run_id: str) -> list[SeriesRow]:
        """Every time series of a run, by step, repetition and name."""
        self._ensure_schema()
        with self._engine.connect() as conn:
            self._run_row(conn, run_id)
            return [_series_row(row) for row in conn.execute(_by_step_query(series_table, run_id))]

    def histograms(self, run_id: str) -> list[HistogramRow]:
        """Every histogram of a run, by step, repetition and name."""
        self._ensure_schema()
        with self._engine.connect() as conn:
            self._run_row(conn, run_id)
            return [_histogram_row(row) for row in conn.execute(_by_step_query(histograms_table, run_id))]

    def history(
        self,
        metric: str,
        test: str | None = None,
        step: str | None = None,
        component: str | None = None,
        limit: int = 20,
    ) -> list[HistoryPoint]:
        """A metric across the latest ``limit`` finished runs that recorded it, newest run first.

        ``limit`` counts runs, not points: each run contributes all its matching
        points (every step, repetition and component that pass the filters),
        ordered by step_index, repetition and component. ``component=None``
        matches any component, ``""`` only values without one. Finished means
        passed, failed or error; ``status`` tells them apart.
        """
        metric = _text(metric, "metric", _LABEL_LEN)
        limit = _positive(limit, "limit")
        self._ensure_schema()
        r, res = runs_table.c, results_table.c
        match = [res.metric == metric, r.status != RUNNING]
        if test is not None:
            match.append(res.test == test)
        if step is not None:
            match.append(res.step == step)
        if component is not None:
            match.append(res.component == component)
        joined = runs_table.join(results_table, r.run_id == res.run_id)
        latest = (
            select(r.run_id)
            .select_from(joined)
            .where(*match)
            .group_by(r.run_id, r.started_at)
            .order_by(r.started_at.desc(), r.run_id.desc())
            .limit(limit)
            .subquery()
        )
        query = (
            select(
                r.run_id,
                r.started_at,
                r.git_commit,
                r.status,
                res.test,
                res.step,
                res.step_index,
                res.repetition,
                res.component,
                res.value,
                res.non_finite,
                res.unit,
            )
            .select_from(joined)
            .where(*match, r.run_id.in_(select(latest.c.run_id)))
            .order_by(r.started_at.desc(), r.run_id.desc(), res.step_index, res.repetition, res.component)
        )
        with self._engine.connect() as conn:
            return [
                HistoryPoint(
                    run_id=row.run_id,
                    started_at=row.started_at,
                    git_commit=row.git_commit,
                    status=row.status,
                    test=row.test,
                    step=row.step,
                    step_index=row.step_index,
                    repetition=row.repetition,
                    component=row.component,
                    value=_join_value(row.value, row.non_finite),
                    unit=row.unit,
                )
                for row in conn.execute(query)
            ]

    def export_run(self, run_id: str) -> dict[str, Any]:
        """Everything about a run as a strict-JSON-ready dict (timestamps as ISO 8601 UTC strings).

        Non-finite metric values export as ``"value": null`` with ``non_finite``
        set; NaN series values (gaps) export as null.
        """
        self._ensure_schema()
        with self._engine.connect() as conn:
            run = _run_record(self._run_row(conn, run_id))
            metric_rows = conn.execute(_metrics_query(run_id)).all()
            series_rows = conn.execute(_by_step_query(series_table, run_id)).all()
            histogram_rows = conn.execute(_by_step_query(histograms_table, run_id)).all()

        def where(row: Row[Any]) -> dict[str, Any]:
            return {"step": row.step, "step_index": row.step_index, "repetition": row.repetition}

        return {
            "format": EXPORT_FORMAT,
            "run": {
                "run_id": run.run_id,
                "test": run.test,
                "profile": run.profile,
                "status": run.status,
                "started_at": _iso(run.started_at),
                "finished_at": _iso(run.finished_at),
                "git_commit": run.git_commit,
                "parameters": run.parameters,
                "manifest": run.manifest,
                "summary": run.summary,
            },
            "metrics": [
                {
                    **where(row),
                    "metric": row.metric,
                    "component": row.component,
                    "value": row.value,
                    "non_finite": row.non_finite,
                    "unit": row.unit,
                    "recorded_at": _iso(row.recorded_at),
                }
                for row in metric_rows
            ],
            "series": [
                {**where(row), "name": row.name, "unit": row.unit, "points": row.points}
                for row in series_rows
            ],
            "histograms": [
                {**where(row), "name": row.name, "unit": row.unit, "count": row.count, "encoded": row.encoded}
                for row in histogram_rows
            ],
        }

    def import_run(self, exported: Mapping[str, Any]) -> str:
        """Store a run from an ``export_run`` document (another machine's results, say) as it was.

        Times, status, metrics, series and histograms are kept; an existing
        run with the same id is refused. Returns the run_id.
        """
        if not isinstance(exported, Mapping) or exported.get("format") != EXPORT_FORMAT:
            raise StoreInputError(f"not a run export: expected format {EXPORT_FORMAT!r}")
        run = _json_object(exported.get("run"), "run")
        run_id = _text(run.get("run_id"), "run.run_id", _ID_LEN)
        status = run.get("status")
        if status not in FINISHED_STATUSES:
            raise StoreInputError(f"run.status {status!r}: only finished runs can be imported")
        manifest = _json_object(run.get("manifest") or {}, "run.manifest")
        runs_row = {
            "run_id": run_id,
            "test": _text(run.get("test"), "run.test", _NAME_LEN),
            "profile": _text(run.get("profile"), "run.profile", _NAME_LEN),
            "status": status,
            "started_at": _parse_time(run.get("started_at"), "run.started_at"),
            "finished_at": _parse_time(run.get("finished_at"), "run.finished_at"),
            "git_commit": _git_commit(manifest),
            "parameters": _json_object(run.get("parameters") or {}, "run.parameters"),
            "manifest": manifest,
            "summary": None if run.get("summary") is None else _json_object(run["summary"], "run.summary"),
        }

        def where(item: Mapping[str, Any], field: str) -> dict[str, Any]:
            step, step_index, repetition = _step(
                item.get("step"), item.get("step_index"), item.get("repetition")
            )
            return {"run_id": run_id, "step": step, "step_index": step_index, "repetition": repetition}

        results = []
        for i, item in enumerate(exported.get("metrics", [])):
            field = f"metrics[{i}]"
            value = float(item["non_finite"]) if item.get("non_finite") else item.get("value")
            number, non_finite = _split_value(value, f"{field}.value")
            results.append(
                {
                    **where(item, field),
                    "test": runs_row["test"],
                    "metric": _text(item.get("metric"), f"{field}.metric", _LABEL_LEN),
                    "component": _text(
                        item.get("component", ""), f"{field}.component", _NAME_LEN, allow_empty=True
                    ),
                    "value": number,
                    "non_finite": non_finite,
                    "unit": _text(item.get("unit", ""), f"{field}.unit", _UNIT_LEN, allow_empty=True),
                    "recorded_at": _parse_time(item.get("recorded_at"), f"{field}.recorded_at"),
                }
            )
        series = [
            {
                **where(item, f"series[{i}]"),
                "name": _text(item.get("name"), f"series[{i}].name", _LABEL_LEN),
                "unit": _text(item.get("unit", ""), f"series[{i}].unit", _UNIT_LEN, allow_empty=True),
                "points": _series_points(
                    [(t, math.nan if v is None else v) for t, v in item.get("points", [])], f"series[{i}]"
                ),
            }
            for i, item in enumerate(exported.get("series", []))
        ]
        histograms = [
            {
                **where(item, f"histograms[{i}]"),
                "name": _text(item.get("name"), f"histograms[{i}].name", _LABEL_LEN),
                "unit": _text(item.get("unit", ""), f"histograms[{i}].unit", _UNIT_LEN, allow_empty=True),
                "count": _non_negative(item.get("count"), f"histograms[{i}].count"),
                "encoded": _text(item.get("encoded"), f"histograms[{i}].encoded", max_len=None),
            }
            for i, item in enumerate(exported.get("histograms", []))
        ]
        self._ensure_schema()
        try:
            with self._engine.begin() as conn:
                conn.execute(insert(runs_table).values(**runs_row))
                for table, rows in (
                    (results_table, results),
                    (series_table, series),
                    (histograms_table, histograms),
                ):
                    if rows:
                        conn.execute(insert(table), rows)
        except IntegrityError:
            raise StoreError(f"run_id {run_id!r} already exists (or the export repeats a row)") from None
        return run_id

    # -- internals ---------------------------------------------------------------------------------

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        try:
            metadata.create_all(self._engine)
        except OperationalError as exc:
            raise StoreError(f"cannot open results store {self.url}: {exc.orig}") from exc
        except DBAPIError:
            # Another process created the tables between our existence check and our CREATE;
            # a second pass finds them all.
            metadata.create_all(self._engine)
        self._schema_ready = True

    def _now(self) -> datetime:
        # Strictly increasing within this store, so runs started in quick succession
        # still order newest-first by started_at.
        with self._clock_lock:
            now = datetime.now(UTC)
            if self._last_now is not None and now <= self._last_now:
                now = self._last_now + timedelta(microseconds=1)
            self._last_now = now
            return now

    @staticmethod
    def _run_row(conn: Connection, run_id: str, *, lock: str | None = None) -> Row[Any]:
        query = select(runs_table).where(runs_table.c.run_id == run_id)
        if lock is not None:
            # PostgreSQL: recordings hold the run row FOR SHARE and finish_run FOR UPDATE, so a run
            # cannot finish while a recording is in flight, nor be finished twice.
            # SQLite has no row locks (the clause is not rendered); its writes are serialised anyway.
            query = query.with_for_update(read=lock == "share")
        row = conn.execute(query).first()
        if row is None:
            raise UnknownRunError(run_id)
        return row

    def _running_run(
        self, conn: Connection, run_id: str, *, lock: str = "share", action: str = "record results"
    ) -> Row[Any]:
        row = self._run_row(conn, run_id, lock=lock)
        if row.status != RUNNING:
            raise StoreError(
                f"run {run_id} is {row.status} (finished {_iso(row.finished_at)}): "
                f"cannot {action}, the run is no longer running"
            )
        return row

    @staticmethod
    def _check_step(conn: Connection, run_id: str, step: str, step_index: int) -> None:
        """Within a run, a step_index keeps one step label and a label one index."""
        for table in _STEP_TABLES:
            c = table.c
            other = conn.execute(
                select(c.step, c.step_index)
                .where(
                    c.run_id == run_id,
                    or_(
                        and_(c.step_index == step_index, c.step != step),
                        and_(c.step == step, c.step_index != step_index),
                    ),
                )
                .limit(1)
            ).first()
            if other is not None:
                raise StoreInputError(
                    f"step {step!r} at step_index {step_index}: run {run_id} already has step "
                    f"{other.step!r} at step_index {other.step_index}"
                )

    def _record_step_row(
        self, table: Table, run_id: str, step: str, step_index: int, repetition: int, row: dict[str, Any]
    ) -> None:
        self._ensure_schema()
        with self._engine.begin() as conn:
            self._running_run(conn, run_id)
            self._check_step(conn, run_id, step, step_index)
            c = table.c
            taken = conn.execute(
                select(c.id).where(
                    c.run_id == run_id,
                    c.step_index == step_index,
                    c.repetition == repetition,
                    c.name == row["name"],
                )
            ).first()
            if taken is not None:
                raise StoreError(
                    f"run {run_id} step {step!r} repetition {repetition}: "
                    f"{table.name} {row['name']!r} already recorded"
                )
            conn.execute(
                insert(table).values(
                    run_id=run_id, step=step, step_index=step_index, repetition=repetition, **row
                )
            )


# -- validation and conversion -----------------------------------------------------------------------


def _text(value: Any, field: str, max_len: int | None, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise StoreInputError(f"{field} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise StoreInputError(f"{field} must not be empty")
    if max_len is not None and len(value) > max_len:
        raise StoreInputError(f"{field} is {len(value)} characters long; at most {max_len}")
    return value


def _non_negative(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise StoreInputError(f"{field} must be an integer, got {value!r}")
    if value < 0:
        raise StoreInputError(f"{field} must be >= 0, got {value}")
    return int(value)


def _positive(value: Any, field: str) -> int:
    number = _non_negative(value, field)
    if number == 0:
        raise StoreInputError(f"{field} must be >= 1, got 0")
    return number


def _step(step: Any, step_index: Any, repetition: Any) -> tuple[str, int, int]:
    return (
        _text(step, "step", _LABEL_LEN),
        _non_negative(step_index, "step_index"),
        _non_negative(repetition, "repetition"),
    )


def _real(value: Any, field: str) -> float:
    # bool is an int subclass; True as a latency is a bug, not 1.0.
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise StoreInputError(f"{field} must be a number, got {value!r}")
    return float(value)


def _split_value(value: Any, field: str) -> tuple[float | None, str | None]:
    """A metric value as (value column, non_finite column)."""
    number = _real(value, field)
    if math.isnan(number):
        return None, "nan"
    if math.isinf(number):
        return None, "inf" if number > 0 else "-inf"
    return number, None


def _join_value(value: float | None, non_finite: str | None) -> float:
    if non_finite is None:
        return float(value)  # type: ignore[arg-type]  # the check constraint makes value non-NULL here
    return float(non_finite)  # float() reads "nan", "inf" and "-inf"


def _series_points(points: Any, field: str) -> list[list[float | None]]:
    # Any iterable of pairs, so an (n, 2) numpy array works as well as a list of tuples.
    if isinstance(points, str | bytes | Mapping) or not isinstance(points, Iterable):
        raise StoreInputError(f"{field} must be a sequence of (t, value) pairs")
    stored: list[list[float | None]] = []
    for i, point in enumerate(points):
        try:
            t_raw, value_raw = point
        except (TypeError, ValueError):
            raise StoreInputError(f"{field}[{i}] must be a (t, value) pair, got {point!r}") from None
        t = _real(t_raw, f"{field}[{i}] time")
        value = _real(value_raw, f"{field}[{i}] value")
        if not math.isfinite(t):
            raise StoreInputError(f"{field}[{i}] time must be finite, got {t}")
        if math.isinf(value):
            raise StoreInputError(f"{field}[{i}] value is {value}: a series keeps finite values and NaN gaps")
        stored.append([t, None if math.isnan(value) else value])
    return stored


def _json_object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise StoreInputError(f"{field} must be a dict, got {type(value).__name__}")
    return _json_value(value, field)


def _json_value(value: Any, field: str) -> Any:
    """A copy of value as strict JSON: non-finite numbers become None, other non-JSON types are refused."""
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Mapping):
        copy: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise StoreInputError(f"{field}: key {key!r} is not a string")
            copy[key] = _json_value(item, f"{field}.{key}")
        return copy
    if isinstance(value, list | tuple):
        return [_json_value(item, f"{field}[{i}]") for i, item in enumerate(value)]
    raise StoreInputError(
        f"{field}: {type(value).__name__} is not JSON (use str, int, float, bool, None, list or dict)"
    )


def _git_commit(manifest: Mapping[str, Any]) -> str | None:
    git = manifest.get("git")
    commit = git.get("commit") if isinstance(git, Mapping) else None
    return commit if isinstance(commit, str) and commit else None


def _new_run_id(test: str, started_at: datetime) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", test.lower()).strip("-")[:40].strip("-") or "run"
    return f"{started_at:%Y%m%dT%H%M%SZ}-{slug}-{secrets.token_hex(2)}"


def _parse_time(text: Any, field: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        raise StoreInputError(f"{field}: not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


# -- row mapping -------------------------------------------------------------------------------------


def _metrics_query(run_id: str) -> Any:
    c = results_table.c
    return (
        select(results_table)
        .where(c.run_id == run_id)
        .order_by(c.step_index, c.repetition, c.metric, c.component, c.id)
    )


def _by_step_query(table: Table, run_id: str) -> Any:
    c = table.c
    return select(table).where(c.run_id == run_id).order_by(c.step_index, c.repetition, c.name, c.id)


def _run_record(row: Row[Any]) -> RunRecord:
    return RunRecord(
        run_id=row.run_id,
        test=row.test,
        profile=row.profile,
        status=row.status,
        started_at=row.started_at,
        finished_at=row.finished_at,
        git_commit=row.git_commit,
        parameters=row.parameters,
        manifest=row.manifest,
        summary=row.summary,
    )


def _metric_row(row: Row[Any]) -> MetricRow:
    return MetricRow(
        run_id=row.run_id,
        step=row.step,
        step_index=row.step_index,
        repetition=row.repetition,
        metric=row.metric,
        component=row.component,
        value=_join_value(row.value, row.non_finite),
        unit=row.unit,
        recorded_at=row.recorded_at,
    )


def _series_row(row: Row[Any]) -> SeriesRow:
    return SeriesRow(
        run_id=row.run_id,
        step=row.step,
        step_index=row.step_index,
        repetition=row.repetition,
        name=row.name,
        unit=row.unit,
        points=[(float(t), math.nan if v is None else float(v)) for t, v in row.points],
    )


def _histogram_row(row: Row[Any]) -> HistogramRow:
    return HistogramRow(
        run_id=row.run_id,
        step=row.step,
        step_index=row.step_index,
        repetition=row.repetition,
        name=row.name,
        unit=row.unit,
        count=row.count,
        encoded=row.encoded,
    )
