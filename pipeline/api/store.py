"""The serving API's prediction store: one SQLite file, queryable while it is written.

This module owns <state_dir>/api/predictions.db and the rules of what the API
serves:

* one row per (station_id, window_start); the first delivery wins: its
  payload, `api_time` and Kafka coordinates are kept;
* every later delivery of the same key increments that row's `duplicates`
  and the global `duplicates` counter (`replays` counts the subset that were
  the very same Kafka record again, i.e. the API re-read its own input after
  a crash between its DB commit and its offset commit);
* `api_time` is the epoch ms at which the row became queryable: it is taken
  as the last step before the transaction commits (readers cannot see the row
  earlier; the commit itself takes well under a millisecond in WAL mode, see
  `last_commit_ms`), never before the row was written;
* `prediction_kafka_time` is the prediction record's broker timestamp;
* the next offset to read per input partition is stored in the same
  transaction as the rows, so the database is a consistent materialized view
  of the topic: the consumer resumes from it (a new, empty database re-reads
  the topic from the beginning instead of trusting the group's offsets).

Thread safety: one writer connection behind a lock (the Kafka consumer
thread), one reader connection per reading thread; WAL mode lets readers
run while the writer commits.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from pipeline.schema import now_ms

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    station_id TEXT NOT NULL,
    window_start INTEGER NOT NULL,
    window_end INTEGER,
    model_version INTEGER,
    predicted_temperature_c REAL,
    payload TEXT NOT NULL,                 -- the prediction message as received (first delivery)
    prediction_kafka_time INTEGER,         -- broker timestamp of the first delivered record
    kafka_partition INTEGER,
    kafka_offset INTEGER,
    api_time INTEGER,                      -- set in the transaction that makes the row visible
    duplicates INTEGER NOT NULL DEFAULT 0,
    replays INTEGER NOT NULL DEFAULT 0,
    last_duplicate_time INTEGER,
    PRIMARY KEY (station_id, window_start)
);  -- a rowid table: rows are ~1 KB, and WITHOUT ROWID measured 5x slower upserts for them
-- Rows of the open transaction that still need their api_time: tiny, always.
CREATE INDEX IF NOT EXISTS predictions_api_time_pending ON predictions(api_time) WHERE api_time IS NULL;
-- How far into each input partition the stored rows go (next offset to read),
-- written in the same transaction as the rows they cover.
CREATE TABLE IF NOT EXISTS consumer_positions (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters(name, value) VALUES
    ('rows', 0), ('duplicates', 0), ('replays', 0), ('rejected', 0), ('last_api_time', 0);
"""

UPSERT = """
INSERT INTO predictions (
    station_id, window_start, window_end, model_version, predicted_temperature_c,
    payload, prediction_kafka_time, kafka_partition, kafka_offset, api_time
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)
ON CONFLICT (station_id, window_start) DO UPDATE SET
    duplicates = duplicates + 1,
    replays = replays + (kafka_partition IS excluded.kafka_partition AND kafka_offset IS excluded.kafka_offset
                         AND excluded.kafka_offset IS NOT NULL),
    last_duplicate_time = ?
RETURNING duplicates, kafka_partition, kafka_offset
"""

SCHEMA_VERSION = 1
CHECKPOINT_EVERY = 50  # write transactions between WAL checkpoints

# Fields the store adds to the stored prediction payload when serving a row.
STORE_FIELDS = (
    "api_time",
    "prediction_kafka_time",
    "duplicates",
    "replays",
    "kafka_partition",
    "kafka_offset",
)


class StoreError(ValueError):
    """A prediction record the store cannot keep (missing key fields)."""


@dataclass(frozen=True)
class Incoming:
    """One prediction as consumed from Kafka."""

    record: dict[str, Any]
    kafka_time: int | None = None
    partition: int | None = None
    offset: int | None = None
    raw: str | None = None  # the message text, stored as is (saves re-encoding `record`)


@dataclass(frozen=True)
class UpsertResult:
    inserted: int
    duplicates: int
    replays: int
    api_time: int | None  # stamp of the rows inserted by this call (None if none)
    commit_ms: float


def _key_of(record: dict[str, Any]) -> tuple[str, int]:
    station = record.get("station_id")
    window_start = record.get("window_start")
    if not isinstance(station, str) or not station:
        raise StoreError("station_id missing or not a string")
    if not isinstance(window_start, int) or isinstance(window_start, bool):
        raise StoreError("window_start missing or not an integer")
    return station, window_start


def _opt_int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _opt_float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class PredictionStore:
    """SQLite-backed prediction rows with duplicate accounting."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self.last_commit_ms: float | None = None
        self._commits = 0
        self._writer = self._connect()
        with self._write_lock:
            version = self._writer.execute("PRAGMA user_version").fetchone()[0]
            has_table = self._writer.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'predictions'"
            ).fetchone()
            if has_table and version != SCHEMA_VERSION:
                self._writer.close()
                raise StoreError(
                    f"{self.path} has schema version {version}, this code needs {SCHEMA_VERSION}: "
                    "move the file away (it is a cache of the predictions topic)"
                )
            self._writer.executescript(SCHEMA)
            self._writer.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: durable against process crashes (what the offset
        # commit order relies on), not against power loss; commits stay sub-ms.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        # No automatic checkpoint inside a commit: it would fsync between the api_time
        # stamp and the row becoming visible. The writer checkpoints after commits instead.
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.row_factory = sqlite3.Row
        return conn

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise sqlite3.ProgrammingError("store is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection; later calls raise."""
        if self._closed:
            return
        with self._write_lock:
            self._closed = True
            with self._readers_lock:
                for conn in self._readers:
                    conn.close()
                self._readers.clear()
            self._writer.close()

    # ------------------------------------------------------------------ writes

    def upsert_many(
        self,
        items: Sequence[Incoming],
        rejected: int = 0,
        positions: Sequence[tuple[str, int, int]] = (),
    ) -> UpsertResult:
        """Store a batch in one transaction; returns what was new and what was a duplicate.

        `positions` are (topic, partition, next offset) of the consumed batch,
        saved in the same transaction: the database itself knows how far into
        the topic it is (see `positions`). Raises StoreError (nothing stored)
        if a record lacks its key: callers validate with `validate_record` first.
        """
        rows = []
        for item in items:
            station, window_start = _key_of(item.record)
            rows.append((item, station, window_start))
        inserted = duplicates = replays = 0
        api_time: int | None = None
        with self._write_lock:
            if self._closed:
                raise sqlite3.ProgrammingError("store is closed")
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                seen_at = now_ms()
                for item, station, window_start in rows:
                    record = item.record
                    dup, first_partition, first_offset = conn.execute(
                        UPSERT,
                        (
                            station,
                            window_start,
                            _opt_int(record.get("window_end")),
                            _opt_int(record.get("model_version")),
                            _opt_float(record.get("predicted_temperature_c")),
                            item.raw if item.raw is not None else json.dumps(record, separators=(",", ":")),
                            item.kafka_time,
                            item.partition,
                            item.offset,
                            seen_at,
                        ),
                    ).fetchone()
                    if dup == 0:
                        inserted += 1
                    else:
                        duplicates += 1
                        # RETURNING gives the kept (first) row: same Kafka record again = a replay.
                        if item.offset is not None and (first_partition, first_offset) == (
                            item.partition,
                            item.offset,
                        ):
                            replays += 1
                if inserted:
                    # Last step before COMMIT: the rows become visible right after this stamp.
                    api_time = now_ms()
                    conn.execute("UPDATE predictions SET api_time = ? WHERE api_time IS NULL", (api_time,))
                    conn.execute(
                        "UPDATE counters SET value = max(value, ?) WHERE name = 'last_api_time'", (api_time,)
                    )
                for name, amount in (
                    ("rows", inserted),
                    ("duplicates", duplicates),
                    ("replays", replays),
                    ("rejected", rejected),
                ):
                    if amount:
                        conn.execute("UPDATE counters SET value = value + ? WHERE name = ?", (amount, name))
                conn.executemany(
                    "INSERT INTO consumer_positions (topic, partition, next_offset) VALUES (?, ?, ?) "
                    "ON CONFLICT (topic, partition) DO UPDATE "
                    "SET next_offset = max(next_offset, excluded.next_offset)",
                    positions,
                )
                started = time.perf_counter()
                conn.execute("COMMIT")
                self.last_commit_ms = (time.perf_counter() - started) * 1000.0
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            self._commits += 1
            if self._commits % CHECKPOINT_EVERY == 0:
                # PASSIVE: copies what no reader still needs, never waits for readers.
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        return UpsertResult(inserted, duplicates, replays, api_time, self.last_commit_ms or 0.0)

    def add_rejected(self, count: int) -> None:
        if count:
            self.upsert_many([], rejected=count)

    # ------------------------------------------------------------------- reads

    @staticmethod
    def _to_dict(row: sqlite3.Row) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(row["payload"])
        for name in STORE_FIELDS:
            out[name] = row[name]
        return out

    def latest(self, station_id: str) -> dict[str, Any] | None:
        """The prediction of the station's latest window, or None."""
        row = (
            self._reader()
            .execute(
                "SELECT * FROM predictions WHERE station_id = ? ORDER BY window_start DESC LIMIT 1",
                (station_id,),
            )
            .fetchone()
        )
        return None if row is None else self._to_dict(row)

    def station_range(
        self, station_id: str, start: int | None = None, end: int | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        """Predictions with start <= window_start < end (either bound optional), oldest first."""
        sql = "SELECT * FROM predictions WHERE station_id = ?"
        params: list[Any] = [station_id]
        if start is not None:
            sql += " AND window_start >= ?"
            params.append(start)
        if end is not None:
            sql += " AND window_start < ?"
            params.append(end)
        sql += " ORDER BY window_start LIMIT ?"
        params.append(limit)
        return [self._to_dict(r) for r in self._reader().execute(sql, params)]

    @staticmethod
    def _prefix_clause(prefix: str | None) -> tuple[str, list[Any]]:
        if not prefix:
            return "", []
        # A range on the primary key (indexed) plus an exact prefix test.
        return (
            " WHERE station_id >= ? AND station_id < ? AND substr(station_id, 1, ?) = ?",
            [prefix, prefix + "\U0010ffff", len(prefix), prefix],
        )

    def page(
        self, limit: int = 1000, offset: int = 0, station_prefix: str | None = None
    ) -> list[dict[str, Any]]:
        """All rows in (station_id, window_start) order, paged."""
        where, params = self._prefix_clause(station_prefix)
        sql = f"SELECT * FROM predictions{where} ORDER BY station_id, window_start LIMIT ? OFFSET ?"
        return [self._to_dict(r) for r in self._reader().execute(sql, [*params, limit, offset])]

    def count(self, station_prefix: str | None = None) -> int:
        if not station_prefix:
            return self.counters()["rows"]
        where, params = self._prefix_clause(station_prefix)
        return int(self._reader().execute(f"SELECT count(*) FROM predictions{where}", params).fetchone()[0])

    def positions(self, topic: str) -> dict[int, int]:
        """Next offset to read per partition of `topic`, as of the last stored batch."""
        rows = self._reader().execute(
            "SELECT partition, next_offset FROM consumer_positions WHERE topic = ?", (topic,)
        )
        return {int(r[0]): int(r[1]) for r in rows}

    def journal_mode(self) -> str:
        return str(self._reader().execute("PRAGMA journal_mode").fetchone()[0])

    def counters(self) -> dict[str, int]:
        return {
            r["name"]: int(r["value"]) for r in self._reader().execute("SELECT name, value FROM counters")
        }

    def station_count(self) -> int:
        # Walks the primary key's distinct prefixes; fine for the benchmark's station counts.
        return int(self._reader().execute("SELECT count(DISTINCT station_id) FROM predictions").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        counters = self.counters()
        last = counters.get("last_api_time") or None
        return {
            "rows": counters["rows"],
            "duplicates": counters["duplicates"],
            "replays": counters["replays"],
            "rejected": counters["rejected"],
            "stations": self.station_count(),
            "last_api_time": last,
            "last_commit_ms": None if self.last_commit_ms is None else round(self.last_commit_ms, 3),
        }


class _NonFinite(ValueError):
    pass


def _reject_constant(name: str) -> float:
    # NaN/Infinity parse in Python but are not JSON: the API could not serve them back.
    raise _NonFinite(name)


def validate_record(value: bytes | str | None) -> tuple[dict[str, Any] | None, str | None]:
    """Parse a weather-predictions message; (record, None) or (None, reason)."""
    if value is None or len(value) == 0:
        return None, "empty"
    try:
        record = json.loads(value, parse_constant=_reject_constant)
    except _NonFinite:
        return None, "non_finite_number"
    except (ValueError, UnicodeDecodeError):
        return None, "malformed_json"
    if not isinstance(record, dict):
        return None, "not_an_object"
    try:
        _key_of(record)
    except StoreError as exc:
        return None, f"bad_key:{exc}"
    return record, None
