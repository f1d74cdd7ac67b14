"""Supervised local processes: start in their own session, track by pid file, stop by session.

Every process the local backend starts (a JVM, a Ray node, a service) is a
session leader (start_new_session), so it and every child it spawns (Spark
executors, Ray workers, agents) share its session id. Stopping a component
signals exactly that session: nothing is found by name, and nothing outside
the stack is touched.

The pid file records pid, session and process start time, so a later
process (say `down` after the caller crashed) can find and stop what an
earlier one started, and a recycled pid is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil


class ProcessError(RuntimeError):
    """A managed process failed to start, exited early, or did not get healthy in time."""


@dataclass(frozen=True)
class PidRecord:
    name: str
    pid: int
    create_time: float
    argv: list[str]
    log: str

    def process(self) -> psutil.Process | None:
        """The live process this record describes, or None if it is gone or the pid was reused."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.5:
                return None
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None


def has_exited(proc: psutil.Process) -> bool:
    """The process is a zombie whose threads have all finished.

    The main thread of a multi-threaded process (a JVM) turns zombie as soon as it exits,
    while another thread may still be tearing the process down, holding its memory and
    its sockets: until that thread is gone too, a port the process listened on is still bound.
    """
    return proc.status() == psutil.STATUS_ZOMBIE and proc.num_threads() <= 1


def _members(id_of: Callable[[int], int], ident: int) -> list[psutil.Process]:
    """Live processes whose session or process-group id (as `id_of` reads it) is `ident`."""
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if id_of(proc.pid) == ident and not has_exited(proc):
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return members


def session_members(sid: int) -> list[psutil.Process]:
    """All live processes of one session (the session leader's pid is the session id)."""
    return _members(os.getsid, sid)


def group_members(pgid: int) -> list[psutil.Process]:
    """All live processes of one process group (the group leader's pid is the group id)."""
    return _members(os.getpgid, pgid)


def signal_session(sid: int, sig: int) -> int:
    """Send a signal to every process of a session; returns how many were signalled."""
    count = 0
    for proc in session_members(sid):
        try:
            proc.send_signal(sig)
            count += 1
        except (psutil.NoSuchProcess, ProcessLookupError):
            continue
    return count


def signal_group(pgid: int, sig: int) -> bool:
    """Send a signal to a process group in one call; False when the group no longer exists."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def _wait_gone(members: Callable[[], list[psutil.Process]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not members():
            return True
        time.sleep(0.1)
    return not members()


def wait_session_gone(sid: int, timeout: float) -> bool:
    return _wait_gone(lambda: session_members(sid), timeout)


def wait_group_gone(pgid: int, timeout: float) -> bool:
    return _wait_gone(lambda: group_members(pgid), timeout)


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def port_owner(port: int) -> str:
    """Best-effort description of who listens on a local TCP port."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({' '.join(proc.cmdline()[:3])[:120]})"
    except (psutil.Error, OSError):
        pass
    return "an unknown process"


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except ProcessError:
            raise  # the process died: waiting longer cannot help
        except Exception as exc:  # health probes may fail while a service starts
            last_error = exc
        time.sleep(interval)
    suffix = f" (last probe error: {last_error})" if last_error else ""
    raise ProcessError(f"timed out after {timeout:.0f}s waiting for {what}{suffix}")


def tail(path: Path, lines: int = 25) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16_000))
            return "\n".join(fh.read().decode(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


class ManagedProcess:
    """One supervised process: start, health-check, stop, kill, by pid file under the state dir."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        pid_dir: Path,
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.pid_file = pid_dir / f"{name}.json"
        self.log_file = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None  # set when this handle started the process

    # -- pid file -------------------------------------------------------
    def record(self) -> PidRecord | None:
        return read_pid_record(self.pid_file)

    def is_running(self) -> bool:
        rec = self.record()
        return bool(rec and rec.process())

    @property
    def pid(self) -> int | None:
        rec = self.record()
        return rec.pid if rec and rec.process() else None

    # -- lifecycle ------------------------------------------------------
    def start(self) -> bool:
        """Start unless already running; returns True if a new process was started."""
        if self.is_running():
            return False
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                )
            except FileNotFoundError as exc:
                raise ProcessError(f"{self.name}: cannot run {self.argv[0]!r}: {exc}") from None
        self.popen = proc
        rec = PidRecord(
            name=self.name,
            pid=proc.pid,
            create_time=psutil.Process(proc.pid).create_time(),
            argv=self.argv,
            log=str(self.log_file),
        )
        write_json_atomic(self.pid_file, rec.__dict__)
        return True

    def check_alive(self) -> None:
        """Raise with the log tail if the process has exited."""
        if not self.is_running():
            raise ProcessError(
                f"{self.name} exited; last log lines of {self.log_file}:\n{tail(self.log_file)}"
            )

    def wait_healthy(self, probe: Callable[[], bool], timeout: float, what: str | None = None) -> None:
        def check() -> bool:
            self.check_alive()
            return probe()

        try:
            wait_until(check, timeout, what or f"{self.name} to become healthy")
        except ProcessError as exc:
            if "exited" in str(exc):
                raise
            raise ProcessError(f"{exc}\nlast log lines of {self.log_file}:\n{tail(self.log_file)}") from None

    def stop(self, timeout: float = 20.0) -> None:
        stop_record(self.record(), timeout=timeout)
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL the whole session at once: a crash, not a shutdown."""
        rec = self.record()
        if rec and rec.process():
            signal_session(rec.pid, signal.SIGKILL)
            wait_session_gone(rec.pid, 10)
        self.pid_file.unlink(missing_ok=True)

    def members(self) -> list[psutil.Process]:
        rec = self.record()
        return session_members(rec.pid) if rec and rec.process() else []


def write_json_atomic(path: Path, data: object) -> None:
    """Replace `path` with `data` as JSON in one step: a reader never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_pid_record(path: Path) -> PidRecord | None:
    try:
        return PidRecord(**json.loads(path.read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def stop_record(rec: PidRecord | None, timeout: float = 20.0) -> None:
    """SIGTERM the session of a recorded process, then SIGKILL whatever is left after timeout.

    The session is signalled even when the leader already exited: children
    that outlived it (Spark executors, Ray workers) still carry its session id.
    """
    if rec is None:
        return
    leader_alive = rec.process() is not None
    if not leader_alive and not session_members(rec.pid):
        return
    if leader_alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, signal.SIGTERM)
    else:
        signal_session(rec.pid, signal.SIGTERM)
    if wait_session_gone(rec.pid, timeout):
        return
    signal_session(rec.pid, signal.SIGKILL)
    wait_session_gone(rec.pid, 10)


def stop_all(
    pid_dir: Path, order: Iterable[str] = (), timeout: float = 20.0, exclude: Iterable[str] = ()
) -> list[str]:
    """Stop every process that has a pid file in pid_dir; names in `order` first, in that order.

    Names starting with a prefix in `exclude` are left alone, for the caller to stop in
    its own way (a Kafka cluster, say, whose nodes must not all wait for each other).
    """
    skipped = tuple(exclude)
    files = {p.stem: p for p in pid_dir.glob("*.json")} if pid_dir.is_dir() else {}
    files = {name: path for name, path in files.items() if not (skipped and name.startswith(skipped))}
    ordered = [n for prefix in order for n in sorted(files) if n.startswith(prefix)]
    ordered += [n for n in sorted(files) if n not in ordered]
    stopped = []
    for name in ordered:
        if name in stopped:
            continue
        rec = read_pid_record(files[name])
        stop_record(rec, timeout=timeout)
        files[name].unlink(missing_ok=True)
        stopped.append(name)
    return stopped
