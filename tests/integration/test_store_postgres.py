"""Results store on a real PostgreSQL server: a throwaway cluster, started here and stopped even on failure.

The cluster lives in a temporary directory, listens on a free loopback port
and on a Unix socket in that directory, and trusts local connections. The
server refuses to run as root, so as root it runs as the `postgres` system
user (created by Debian's postgresql package). Missing server binaries fail
the test: `make system-deps` installs them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from tests.store_checks import check_history, check_non_finite, check_round_trip
from weatherbench.store import Metric, ResultsStore, StoreError, StoreInputError

pytestmark = pytest.mark.integration

PG_USER = "postgres"  # the system account the server runs as when the tests run as root
DB_ROLE = "bench"  # the database superuser initdb creates
PASSWORD = "not-the-password"  # trust authentication ignores it; it is here to check masking
BINARIES = ("initdb", "pg_ctl", "postgres")


def find_pg_bin() -> Path:
    """The directory holding initdb, pg_ctl and postgres: from PATH, else Debian's newest version."""
    candidates: list[Path] = []
    on_path = shutil.which("initdb")
    if on_path:
        # Debian links /usr/local/bin/initdb etc. into /usr/lib/postgresql/<v>/bin; pg_ctl finds
        # postgres next to its real location.
        candidates.append(Path(os.path.realpath(on_path)).parent)

    def major(path: str) -> int:
        match = re.search(r"/postgresql/(\d+)/bin$", path)
        return int(match.group(1)) if match else -1

    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True)]
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in BINARIES):
            return directory
    pytest.fail(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in "
        "/usr/lib/postgresql/*/bin: run `make system-deps` (installs Debian's postgresql package)",
        pytrace=False,
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """A throwaway PostgreSQL cluster, run as PG_USER when we are root."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.as_user: list[str] = []
        owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(PG_USER)
            except KeyError:
                pytest.fail(
                    f"running as root, and PostgreSQL refuses root: the '{PG_USER}' system user is needed "
                    "(Debian's postgresql package creates it; `make system-deps` installs that)",
                    pytrace=False,
                )
            runuser = shutil.which("runuser")
            if runuser is None:
                pytest.fail("running as root needs runuser (util-linux) to start PostgreSQL", pytrace=False)
            self.as_user = [runuser, "-u", PG_USER, "--"]
        # Under /tmp rather than pytest's tmp_path: PG_USER must reach it, and a Unix socket
        # path must stay under ~100 characters.
        self.root = Path(tempfile.mkdtemp(prefix="wb-pg-"))
        if owner is not None:
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = free_port()

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        # cwd: the server user may not be allowed into the caller's working directory.
        return subprocess.run(
            [*self.as_user, *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        init = self.run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            DB_ROLE,
            "--auth=trust",
            "--no-locale",
            "--encoding=UTF8",
            "--no-sync",
            "--no-instructions",
        )
        if init.returncode != 0:
            pytest.fail(f"initdb failed ({init.returncode}):\n{init.stdout}\n{init.stderr}", pytrace=False)
        # fsync off: a throwaway cluster on a busy machine; durability is not under test.
        options = (
            f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off -c max_connections=20"
        )
        pg_ctl = str(self.bin_dir / "pg_ctl")
        started = self.run(
            pg_ctl, "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "90", "-o", options
        )
        if started.returncode != 0:
            pytest.fail(
                f"pg_ctl start failed ({started.returncode}):\n{started.stdout}\n{started.stderr}\n"
                f"server log:\n{self.log_tail()}",
                pytrace=False,
            )

    def stop(self) -> None:
        """Stop the server if it runs, then remove the cluster; never raises."""
        try:
            if (self.data / "postmaster.pid").exists():
                pg_ctl = str(self.bin_dir / "pg_ctl")
                stopped = self.run(pg_ctl, "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60")
                if stopped.returncode != 0:
                    self._kill_postmaster()
        except (OSError, subprocess.SubprocessError):
            self._kill_postmaster()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _kill_postmaster(self) -> None:
        # The server's own pid, from its pid file: the postmaster takes its children down with it.
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
            # A stale pid file may name a pid that now belongs to something else.
            if Path(f"/proc/{pid}/comm").read_text().strip() != "postgres":
                return
            os.kill(pid, signal.SIGQUIT)
            for _ in range(50):
                os.kill(pid, 0)  # raises once the process is gone
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
        except OSError:
            return "(no server log)"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{DB_ROLE}:{PASSWORD}@127.0.0.1:{self.port}/postgres"


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    cluster = Cluster(find_pg_bin())
    try:
        cluster.start()
        yield cluster.url
    finally:
        cluster.stop()


def test_round_trip(pg_url: str) -> None:
    run_id = check_round_trip(lambda: ResultsStore(pg_url))
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            stored = conn.execute(
                text("SELECT count(*) FROM results WHERE run_id = :r"), {"r": run_id}
            ).scalar()
    finally:
        engine.dispose()
    assert stored == 16


def test_history(pg_url: str) -> None:
    check_history(lambda: ResultsStore(pg_url))


def test_non_finite_values(pg_url: str) -> None:
    run_id = check_non_finite(lambda: ResultsStore(pg_url))
    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            rows = dict(
                (row.metric, (row.value, row.non_finite))
                for row in conn.execute(
                    text("SELECT metric, value, non_finite FROM results WHERE run_id = :r"), {"r": run_id}
                )
            )
    finally:
        engine.dispose()
    # PostgreSQL could store NaN and infinities; the store keeps them out of the value column.
    assert rows == {"nan": (None, "nan"), "pos": (None, "inf"), "neg": (None, "-inf"), "finite": (2.5, None)}


def test_schema_and_types(pg_url: str) -> None:
    with ResultsStore(pg_url) as store:
        store.runs()  # creates the tables on first use
    engine = create_engine(pg_url)
    try:
        inspector = inspect(engine)
        assert {"runs", "results", "series", "histograms"} <= set(inspector.get_table_names())
        indexes = {tuple(ix["column_names"]) for ix in inspector.get_indexes("results")}
        assert ("metric", "test") in indexes and ("run_id",) in indexes
        columns = {c["name"]: c["type"] for c in inspector.get_columns("results")}
        assert str(columns["value"]) == "DOUBLE PRECISION"
        # Naive UTC on both backends; the store turns it back into aware UTC.
        assert str(columns["recorded_at"]) == "TIMESTAMP" and columns["recorded_at"].timezone is False
        assert [fk["referred_table"] for fk in inspector.get_foreign_keys("results")] == ["runs"]
    finally:
        engine.dispose()


def test_errors_and_masking(pg_url: str) -> None:
    with ResultsStore(pg_url) as store:
        assert PASSWORD not in store.url and PASSWORD not in repr(store)
        run_id = store.start_run("errors", "quick", {}, {})
        store.record_metrics(run_id, "s", 0, 0, [Metric("m", 1.0, "ms")])
        with pytest.raises(StoreError, match="already recorded: m"):
            store.record_metrics(run_id, "s", 0, 0, [Metric("m", 2.0, "ms")])
        with pytest.raises(StoreInputError, match=r"metrics\[0\]\.name is 201 characters"):
            store.record_metrics(run_id, "s", 0, 1, [Metric("x" * 201, 1.0, "ms")])
        store.finish_run(run_id, "passed")
        with pytest.raises(StoreError, match=f"run {run_id} is passed"):
            store.record_metrics(run_id, "s", 0, 1, [Metric("m", 2.0, "ms")])
        with pytest.raises(KeyError, match="unknown run_id 'missing'"):
            store.get_run("missing")
        assert [m.value for m in store.metrics(run_id)] == [1.0]
        assert [(p.run_id, p.value) for p in store.history("m", test="errors")] == [(run_id, 1.0)]
