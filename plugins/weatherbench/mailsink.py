"""The local SMTP sink: a real SMTP server on this machine that stores every message as an .eml file.

It is the default destination of report e-mails (see ``weatherbench.mail``), so
a report is delivered by a real SMTP conversation without any outside server.
This module owns the sink server (aiosmtpd), its file format and its process:

* Each accepted message becomes ``<dir>/<UTC yyyymmddTHHMMSS.ffffffZ>-<n>.eml``:
  ``X-Envelope-From:`` and ``X-Envelope-To:`` header lines recording the SMTP
  envelope, then the message bytes exactly as received (so lines end in CRLF,
  as on the wire; ``email.message_from_bytes`` reads it). The file is written
  under a temporary name (``.*.part``) in the same directory and renamed, so a
  reader never sees half a message. Messages above 64 MiB are refused (552).
* ``python -m weatherbench.mailsink --host 127.0.0.1 --port 8025 --dir reports/mail``
  runs it in the foreground until SIGTERM or SIGINT.
* ``start_sink``, ``stop_sink``, ``sink_status`` and ``local_sink`` run it in
  the background as its own session, recorded in ``<state_dir>/mailsink.json``
  (pid, process start time, host, port, directory) with its output in
  ``<state_dir>/mailsink.log``. It is stopped by its process group, never found
  by name; the recorded start time guards against a recycled pid.

No TLS and no AUTH: the sink listens on loopback by default, for this machine only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from aiosmtpd.smtp import SMTP, Envelope, Session

from weatherbench.mail import DEFAULT_SINK_HOST, MailError, sink_port

DATA_SIZE_LIMIT = 64 * 1024 * 1024
SERVER_NAME = "weatherbench-mail-sink"  # the greeting's host name (aiosmtpd's default asks DNS)
RECORD_FILE = "mailsink.json"
LOG_FILE = "mailsink.log"
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
DEFAULT_DIR = Path("reports") / "mail"

# The directory holding the weatherbench package, and the repository above it,
# put on the child's PYTHONPATH so `-m weatherbench.mailsink` runs this very
# checkout, whatever the interpreter's own path says.
PLUGINS_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = PLUGINS_DIR.parent

# Sinks started by this process, kept so that stopping one reaps it (no zombie
# left holding its pid) and its Popen is not collected while it runs.
_started: dict[int, subprocess.Popen[bytes]] = {}


# -- the server ------------------------------------------------------------


class EmlWriter:
    """aiosmtpd handler: stores each message as an .eml file with its envelope."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.count = 0

    def next_path(self) -> Path:
        """A new file name: UTC time of receipt and a per-process sequence number."""
        while True:
            self.count += 1
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
            path = self.out_dir / f"{stamp}-{self.count}.eml"
            if not path.exists():  # a restarted sink counts from 1 again
                return path

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        path = self.next_path()
        content = envelope.original_content or b""
        header = (
            f"X-Envelope-From: <{envelope.mail_from or ''}>\r\n"
            f"X-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        ).encode()
        try:
            # Off the event loop: a large message must not stall other connections.
            await asyncio.to_thread(write_atomically, path, header + content)
        except OSError as exc:
            print(f"cannot store a message in {path}: {exc}", file=sys.stderr, flush=True)
            return "451 Requested action aborted: cannot store the message"
        print(
            f"stored {path}: from <{envelope.mail_from}> to {', '.join(envelope.rcpt_tos)}, "
            f"{len(content)} bytes",
            flush=True,
        )
        return "250 OK stored"


def write_atomically(path: Path, data: bytes) -> None:
    """Write under a temporary name in the same directory, then rename into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".part")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it owner-only; a stored report is for any local reader
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


async def serve(host: str, port: int, out_dir: Path) -> None:
    """Serve until SIGTERM or SIGINT."""
    out_dir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    handler = EmlWriter(out_dir)

    def protocol() -> SMTP:
        return SMTP(
            handler,
            data_size_limit=DATA_SIZE_LIMIT,
            enable_SMTPUTF8=True,
            hostname=SERVER_NAME,
            loop=loop,
        )

    server = await loop.create_server(protocol, host=host, port=port)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound_port = server.sockets[0].getsockname()[1]
    print(f"mail sink listening on {host}:{bound_port}, writing {out_dir}", flush=True)
    async with server:
        await stop.wait()
    print("mail sink stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m weatherbench.mailsink",
        description="Local SMTP sink: stores every message it receives as an .eml file.",
    )
    parser.add_argument(
        "--host", default=DEFAULT_SINK_HOST, help="address to listen on (default %(default)s)"
    )
    parser.add_argument("--port", type=int, default=None, help="port (default WB_MAIL_SINK_PORT or 8025)")
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="where .eml files go (default %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        port = args.port if args.port is not None else sink_port()
    except MailError as exc:
        print(f"mail sink: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(args.host, port, args.dir.resolve()))
    except OSError as exc:  # the port is taken, the address is not local, the directory is not writable
        print(f"mail sink: cannot listen on {args.host}:{port} or write {args.dir}: {exc}", file=sys.stderr)
        return 1
    return 0


# -- the background process ------------------------------------------------


@dataclass(frozen=True)
class SinkInfo:
    pid: int
    host: str
    port: int
    out_dir: Path


def _read_record(state_dir: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((state_dir / RECORD_FILE).read_text())
        return record if isinstance(record, dict) else None
    except (FileNotFoundError, ValueError):
        return None


def _recorded_process(record: dict[str, Any]) -> psutil.Process | None:
    """The live sink process of a record; None if it is gone or its pid now belongs to another process."""
    try:
        proc = psutil.Process(int(record["pid"]))
        if abs(proc.create_time() - float(record["create_time"])) > 0.5:
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (KeyError, TypeError, ValueError, psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _info(record: dict[str, Any]) -> SinkInfo:
    return SinkInfo(
        pid=int(record["pid"]), host=record["host"], port=int(record["port"]), out_dir=Path(record["out_dir"])
    )


def accepts_connections(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_bytes()[-8000:].decode(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _listener(port: int) -> str:
    """Best effort: who listens on a local TCP port."""
    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                return f"pid {conn.pid} ({' '.join(psutil.Process(conn.pid).cmdline()[:4])[:120]})"
    return "another process"


def sink_status(state_dir: Path) -> SinkInfo | None:
    """The recorded sink if its process is alive, else None."""
    record = _read_record(state_dir)
    if record is None or _recorded_process(record) is None:
        return None
    return _info(record)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(PLUGINS_DIR), str(REPO_DIR)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_sink(out_dir: Path, port: int, state_dir: Path, host: str = DEFAULT_SINK_HOST) -> SinkInfo:
    """Start the sink in the background unless it already runs; returns the running sink.

    A recorded sink that is alive on the same host, port and directory is returned as is;
    one that is alive with other settings, or another process on the port, is an error.
    """
    out_dir = Path(out_dir).resolve()
    state_dir = Path(state_dir)
    record = _read_record(state_dir)
    if record is not None and _recorded_process(record) is not None:
        running = _info(record)
        if (running.host, running.port, running.out_dir) != (host, port, out_dir):
            raise MailError(
                f"a mail sink is already running (pid {running.pid} on {running.host}:{running.port}, "
                f"writing {running.out_dir}); stop it first (`benchmark_system mail-sink stop`)"
            )
        if accepts_connections(host, port):
            return running
        # Alive but not listening: hung, or still starting; replace it rather than guess.
        stop_sink(state_dir)
    (state_dir / RECORD_FILE).unlink(missing_ok=True)
    if accepts_connections(host, port):
        raise MailError(f"cannot start the mail sink: port {host}:{port} is taken by {_listener(port)}")

    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / LOG_FILE
    argv = [sys.executable, "-m", "weatherbench.mailsink", "--host", host, "--port", str(port)]
    argv += ["--dir", str(out_dir)]
    with log_path.open("ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_child_env(),
            start_new_session=True,  # its own session and process group: stopped as a group
        )
    _started[proc.pid] = proc
    record = {
        "pid": proc.pid,
        "create_time": psutil.Process(proc.pid).create_time(),
        "host": host,
        "port": port,
        "out_dir": str(out_dir),
        "log": str(log_path),
        "argv": argv,
    }
    deadline = time.monotonic() + START_TIMEOUT_S
    while not accepts_connections(host, port):
        if proc.poll() is not None:
            raise MailError(
                f"the mail sink exited with status {proc.returncode} before listening on {host}:{port}; "
                f"last lines of {log_path}:\n{_log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            _stop_process(psutil.Process(proc.pid))
            raise MailError(
                f"the mail sink did not listen on {host}:{port} within {START_TIMEOUT_S:g} s; "
                f"last lines of {log_path}:\n{_log_tail(log_path)}"
            )
        time.sleep(0.05)
    tmp = state_dir / f".{RECORD_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, state_dir / RECORD_FILE)
    return _info(record)


def _stop_process(proc: psutil.Process, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM the process's group (it leads its own), then SIGKILL if it outlives the timeout."""

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, sig)
            else:  # not a group leader: signal the process alone rather than someone else's group
                os.kill(proc.pid, sig)

    def wait(seconds: float) -> bool:
        popen = _started.get(proc.pid)
        try:
            if popen is not None:
                popen.wait(seconds)  # reaps our own child, so its pid is really gone
                del _started[proc.pid]
            else:
                proc.wait(seconds)
        except (subprocess.TimeoutExpired, psutil.TimeoutExpired):
            return False
        except psutil.NoSuchProcess:
            pass
        return True

    send(signal.SIGTERM)
    if not wait(timeout):
        send(signal.SIGKILL)
        wait(5)


def stop_sink(state_dir: Path) -> bool:
    """Stop the recorded sink; returns whether a running sink was stopped. The record is removed."""
    state_dir = Path(state_dir)
    record = _read_record(state_dir)
    proc = _recorded_process(record) if record is not None else None
    if proc is not None:
        _stop_process(proc)
    (state_dir / RECORD_FILE).unlink(missing_ok=True)
    return proc is not None


@contextlib.contextmanager
def local_sink(
    out_dir: Path, port: int, state_dir: Path, host: str = DEFAULT_SINK_HOST
) -> Iterator[SinkInfo]:
    """A running sink for the duration of the block; stopped at the end only if started here."""
    running = sink_status(state_dir)
    info = start_sink(out_dir, port, state_dir, host=host)
    started_here = running is None or running.pid != info.pid
    try:
        yield info
    finally:
        if started_here:
            current = sink_status(state_dir)
            if current is not None and current.pid == info.pid:
                stop_sink(state_dir)


if __name__ == "__main__":
    sys.exit(main())
