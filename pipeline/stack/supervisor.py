"""A process supervisor: keep one command running, start it again when it dies, stop it on request.

Run as ``python -m pipeline.stack.supervisor --name NAME [--state-file PATH] [options] -- COMMAND...``
(with the repository on the Python path, as every stack service runs).

The local stack backend runs the pipeline's long-running services (the streaming
job, the inference driver, the serving API) under it, the way systemd's
``Restart=`` or a Kubernetes restart policy keeps a service up. This module owns:

* the supervisor process (`Supervisor`). It starts the command as its child, in
  a process group of its own but inside the supervisor's session, so the stack's
  session-wide stop and `down` still reach every process. When the child exits
  without a stop request (any exit code, or a signal such as the SIGKILL of
  `stack.kill`), it kills what is left of the child's process group and starts
  the command again after a back-off: `backoff_initial_s`, doubling up to
  `backoff_max_s`, and back to the start once a child stayed up `reset_after_s`.
* crash-loop protection: with more than `max_restarts` exits within
  `restart_window_s` it gives up, logs the child's name and its last exits,
  and exits 1 (the stack then reports the service as not running).
* stop: SIGTERM or SIGINT to the supervisor is passed on to the child's process
  group (every such signal, so a second SIGINT reaches the child as well); the
  group gets SIGKILL after `stop_timeout_s`; the supervisor exits 0 once the
  child is gone, without a restart.
* the state file, ``<pid dir>/<name>.state`` next to the supervisor's pid file
  (JSON; not ``.json``, which names pid records): the supervisor's identity, the
  phase (running, backoff, stopping, gave-up), the child's pid record, how often
  it was restarted, when the current child started and how the last ones exited.
  It is rewritten on every change, removed on a clean stop, kept after giving up.
* `SupervisedProcess`: the stack's handle of a supervised service. The pid file
  is the supervisor's, so start/stop/members work as for any `ManagedProcess`;
  `kill()` crashes the child only (the supervisor brings it back), `stop()` stops
  the supervisor and with it the child.

Every line the supervisor logs goes to its stderr (the instance's log file, which
the child writes to as well), with the time, so a restart shows in the log right
after the output of the child that died.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import select
import signal
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import psutil

from pipeline.config import SupervisorConfig
from pipeline.stack.process import (
    ManagedProcess,
    PidRecord,
    ProcessError,
    group_members,
    read_pid_record,
    signal_group,
    wait_group_gone,
    write_json_atomic,
)

log = logging.getLogger(__name__)
MODULE = "pipeline.stack.supervisor"
STATE_SUFFIX = ".state"
EXIT_STOPPED = 0  # stopped on request
EXIT_GAVE_UP = 1  # crash loop: too many exits within the window
EXIT_USAGE = 2
EXIT_CANNOT_RUN = 127  # the command could not be started (as a shell reports it)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Python ignores these; a child must start with the default action (as Popen's restore_signals).
RESET_SIGNALS = (signal.SIGPIPE, signal.SIGXFSZ)
LEFTOVER_WAIT_S = 5.0  # a crashed child's SIGKILLed group members: how long to wait for them
MAX_PAUSE_S = 5.0  # the event loop wakes on signals; this bounds a wake-up that never came
KEPT_EXITS = 10


def describe_exit(code: int) -> str:
    """'exit code 1' or 'killed by SIGKILL', from a code as os.waitstatus_to_exitcode gives it."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


@dataclass
class SupervisorState:
    """What a supervisor writes to its state file."""

    name: str
    supervisor_pid: int
    supervisor_create_time: float
    phase: str  # running | backoff | stopping | gave-up
    restarts: int = 0  # children started after the first
    child: dict | None = None  # PidRecord fields of the current child
    # Wall clock (time.time) when the current or last child was started. Not the child's
    # create_time, which psutil derives from the boot time in whole seconds.
    started_at: float | None = None
    exits: list[int] = field(default_factory=list)  # last exit codes, oldest first; < 0: signal
    last_exit_at: float | None = None
    next_start_at: float | None = None  # during back-off

    def child_record(self) -> PidRecord | None:
        return PidRecord(**self.child) if self.child else None

    @property
    def last_exit(self) -> str:
        return describe_exit(self.exits[-1]) if self.exits else ""


def read_state(path: Path) -> SupervisorState | None:
    try:
        data = json.loads(path.read_text())
        known = {f.name for f in fields(SupervisorState)}
        return SupervisorState(**{k: v for k, v in data.items() if k in known})
    except (FileNotFoundError, ValueError, TypeError):
        return None


class Supervisor:
    """Runs one command, restarts it with back-off, gives up on a crash loop, stops on SIGTERM/SIGINT.

    Single-threaded: signal handlers only queue the signal, and `signal.set_wakeup_fd` wakes
    the `select` the loop waits in, so the loop sleeps without polling until a signal (SIGCHLD
    included), a back-off or a stop deadline is due.
    """

    def __init__(
        self, name: str, argv: list[str], settings: SupervisorConfig, state_file: Path | None = None
    ) -> None:
        if not argv:
            raise ValueError("no command to supervise")
        self.name = name
        self.argv = argv
        self.settings = settings
        self.state_file = state_file
        self.restarts = 0
        self.exits: list[int] = []
        self._me = psutil.Process()
        self._pending: deque[int] = deque()
        self._stop_signal: int | None = None
        self._stop_deadline = math.inf
        self._child: int | None = None
        self._child_record: PidRecord | None = None
        self._started_mono = 0.0
        self._started_at: float | None = None
        self._last_exit_at: float | None = None
        self._wake_fd = -1

    # ------------------------------------------------------------------ signals
    def _install_signals(self) -> None:
        read_fd, write_fd = os.pipe()  # not inherited by the child (PEP 446)
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd)
        self._wake_fd = read_fd
        for sig in (*STOP_SIGNALS, signal.SIGCHLD):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._pending.append(signum)

    def _take_signals(self) -> None:
        """Act on queued signals: the first stop signal starts the stop; each one is passed on."""
        while self._pending:
            sig = self._pending.popleft()
            if sig not in STOP_SIGNALS:
                continue  # SIGCHLD only wakes the loop
            if self._stop_signal is None:
                self._stop_signal = sig
                self._stop_deadline = time.monotonic() + self.settings.stop_timeout_s
                log.info(
                    "%s: stop requested (%s)%s",
                    self.name,
                    signal.Signals(sig).name,
                    f": passing it on to process group {self._child}" if self._child else "",
                )
                self._write("stopping")
            if self._child is not None:
                signal_group(self._child, sig)

    def _pause(self, timeout: float | None) -> None:
        """Sleep until a signal arrives or `timeout` seconds pass."""
        wait = MAX_PAUSE_S if timeout is None else max(0.0, min(timeout, MAX_PAUSE_S))
        readable, _, _ = select.select([self._wake_fd], [], [], wait)
        if readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_fd, 512):
                    pass

    def _sleep(self, seconds: float) -> bool:
        """Back-off: sleep `seconds`; False when a stop was requested meanwhile."""
        until = time.monotonic() + seconds
        while True:
            self._take_signals()
            if self._stop_signal is not None:
                return False
            left = until - time.monotonic()
            if left <= 0:
                return True
            self._pause(left)

    # ------------------------------------------------------------------ state file
    def _write(self, phase: str, next_start_at: float | None = None) -> None:
        if self.state_file is None:
            return
        state = SupervisorState(
            name=self.name,
            supervisor_pid=self._me.pid,
            supervisor_create_time=self._me.create_time(),
            phase=phase,
            restarts=self.restarts,
            child=asdict(self._child_record) if self._child_record else None,
            started_at=self._started_at,
            exits=self.exits[-KEPT_EXITS:],
            last_exit_at=self._last_exit_at,
            next_start_at=next_start_at,
        )
        try:
            write_json_atomic(self.state_file, asdict(state))
        except OSError as exc:  # the state dir was removed under us: keep supervising regardless
            log.warning("%s: cannot write %s: %s", self.name, self.state_file, exc)

    # ------------------------------------------------------------------ the child
    def _spawn(self) -> int | None:
        """Start the command in a new process group; None when it cannot be run at all."""
        self._started_mono = time.monotonic()
        self._started_at = time.time()
        try:
            pid = os.posix_spawnp(self.argv[0], self.argv, os.environ, setpgroup=0, setsigdef=RESET_SIGNALS)
        except OSError as exc:
            log.error("%s: cannot run %r: %s", self.name, self.argv[0], exc)
            return None
        self._child = pid
        try:
            proc = psutil.Process(pid)
            create_time = proc.create_time()
        except psutil.NoSuchProcess:  # gone already: the wait below collects its exit code
            create_time = self._started_at
        # The child writes to the supervisor's stdout and stderr: the instance's log, named by its pid file.
        self._child_record = PidRecord(self.name, pid, create_time, self.argv, log="")
        self._write("running")
        restart = f" (restart {self.restarts})" if self.restarts else ""
        log.info("%s started: pid %d%s: %s", self.name, pid, restart, " ".join(self.argv)[:300])
        return pid

    def _exited(self, pid: int) -> bool:
        """The child has exited; it stays a zombie (unreaped), so its process group id stays ours."""
        try:
            return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:
            return True

    def _wait(self, pid: int) -> int:
        """Wait for the child to exit (stopping it if asked to meanwhile); its exit code, < 0 for a signal."""
        escalated = False
        while True:
            self._take_signals()
            if self._exited(pid):
                break
            timeout = None
            if self._stop_signal is not None and not escalated:
                timeout = self._stop_deadline - time.monotonic()
                if timeout <= 0:
                    log.warning(
                        "%s did not stop within %.0f s: SIGKILL to process group %d",
                        self.name,
                        self.settings.stop_timeout_s,
                        pid,
                    )
                    signal_group(pid, signal.SIGKILL)
                    escalated = True
                    timeout = None
            self._pause(timeout)
        # What the leader left behind in its group: a stopping service's processes get the rest
        # of the stop time; a crashed one's are killed at once, so that nothing of it runs beside
        # its successor (systemd's KillMode=control-group).
        if self._stop_signal is None:
            signal_group(pid, signal.SIGKILL)
            until = time.monotonic() + LEFTOVER_WAIT_S
        else:
            until = self._stop_deadline
        while time.monotonic() < until and group_members(pid):
            self._take_signals()
            self._pause(0.1)
        signal_group(pid, signal.SIGKILL)  # whatever is still there
        _, status = os.waitpid(pid, 0)
        self._child = None
        return os.waitstatus_to_exitcode(status)

    # ------------------------------------------------------------------ main loop
    def run(self) -> int:
        """Supervise until stopped (exit 0) or until a crash loop makes it give up (exit 1)."""
        s = self.settings
        self._install_signals()
        backoff = s.backoff_initial_s
        exit_times: deque[float] = deque()
        first = True
        while True:
            self._take_signals()
            if self._stop_signal is not None:
                break
            if not first:
                self.restarts += 1
            first = False
            pid = self._spawn()
            code = EXIT_CANNOT_RUN if pid is None else self._wait(pid)
            if self._stop_signal is not None:
                log.info("%s stopped (%s)", self.name, describe_exit(code))
                break
            now = time.monotonic()
            uptime = now - self._started_mono
            self._last_exit_at = time.time()
            self.exits = [*self.exits, code][-KEPT_EXITS:]
            if uptime >= s.reset_after_s:
                backoff = s.backoff_initial_s
            exit_times.append(now)
            while exit_times and exit_times[0] < now - s.restart_window_s:
                exit_times.popleft()
            if len(exit_times) > s.max_restarts:
                recent = ", ".join(describe_exit(c) for c in self.exits[-len(exit_times) :])
                log.error(
                    "%s: giving up: it exited %d times within %.0f s (crash loop; limit %d restarts); "
                    "last exits: %s",
                    self.name,
                    len(exit_times),
                    s.restart_window_s,
                    s.max_restarts,
                    recent,
                )
                self._write("gave-up")
                return EXIT_GAVE_UP
            log.warning(
                "%s ended (%s) after %.1f s up; restart %d in %.1f s",
                self.name,
                describe_exit(code),
                uptime,
                self.restarts + 1,
                backoff,
            )
            self._write("backoff", next_start_at=time.time() + backoff)
            if not self._sleep(backoff):
                log.info("%s: stopped during the back-off", self.name)
                break
            backoff = min(backoff * 2, s.backoff_max_s)
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)
        return EXIT_STOPPED


# ---------------------------------------------------------------------- the stack's side
def supervisor_argv(name: str, command: list[str], state_file: Path, settings: SupervisorConfig) -> list[str]:
    """The command line that runs `command` under a supervisor with these settings."""
    return [
        sys.executable,
        "-m",
        MODULE,
        "--name",
        name,
        "--state-file",
        str(state_file),
        "--backoff-initial-s",
        f"{settings.backoff_initial_s:g}",
        "--backoff-max-s",
        f"{settings.backoff_max_s:g}",
        "--reset-after-s",
        f"{settings.reset_after_s:g}",
        "--max-restarts",
        str(settings.max_restarts),
        "--restart-window-s",
        f"{settings.restart_window_s:g}",
        "--stop-timeout-s",
        f"{settings.stop_timeout_s:g}",
        "--",
        *command,
    ]


def is_supervisor_argv(argv: list[str]) -> bool:
    return argv[1:3] == ["-m", MODULE]


class SupervisedProcess(ManagedProcess):
    """A service run under a supervisor: the pid file is the supervisor's, the state file has the child.

    start(), stop(), is_running() and members() act on the supervisor's session, as for any
    managed process, so stopping it stops the child too and nothing is left behind. kill()
    crashes the service: the child's process group gets SIGKILL and the supervisor starts it
    again.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        pid_dir: Path,
        log_dir: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        settings: SupervisorConfig | None = None,
    ) -> None:
        self.child_argv = list(argv)
        self.settings = settings or SupervisorConfig()
        self.state_file = pid_dir / f"{name}{STATE_SUFFIX}"
        wrapped = supervisor_argv(name, self.child_argv, self.state_file, self.settings) if argv else []
        super().__init__(name, wrapped, pid_dir=pid_dir, log_dir=log_dir, env=env, cwd=cwd)

    def state(self) -> SupervisorState | None:
        """The state written by the supervisor of the pid file (alive, or given up); None if stale."""
        rec = self.record()
        state = read_state(self.state_file)
        if rec is None or state is None or state.supervisor_pid != rec.pid:
            return None
        if abs(state.supervisor_create_time - rec.create_time) > 0.5:
            return None  # written by an earlier supervisor that had the same pid
        return state

    def child(self) -> psutil.Process | None:
        """The service's process now running under the supervisor, if any."""
        state = self.state()
        record = state.child_record() if state else None
        return record.process() if record else None

    def child_started_at(self) -> float | None:
        """When the running child started (epoch seconds); None when none runs."""
        state = self.state()
        return state.started_at if state and self.child() else None

    def kill(self) -> None:
        """Crash the service: SIGKILL its process group; the supervisor starts it again.

        Unlike ManagedProcess.kill, the supervisor and the pid file stay. stop() ends both.
        """
        self.crash(signal.SIGKILL)

    def crash(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> int:
        """Send `sig` to the child's process group, as a crash would; returns the child's pid."""
        child = self.child() if self.is_running() else None
        if child is None:
            raise ProcessError(
                f"{self.name} is not running: its supervisor is "
                f"{'waiting to start it again' if self.is_running() else 'not running either'}"
            )
        signal_group(child.pid, sig)
        wait_group_gone(child.pid, timeout)
        return child.pid

    def stop(self, timeout: float | None = None) -> None:
        """Stop supervisor and child; by default waiting a little longer than the supervisor's own stop."""
        super().stop(timeout=self.settings.stop_timeout_s + 5 if timeout is None else timeout)
        self.state_file.unlink(missing_ok=True)

    def service_members(self) -> list[psutil.Process]:
        """The service's own processes: the session without the supervisor (for resource figures)."""
        rec = self.record()
        return [proc for proc in self.members() if rec is None or proc.pid != rec.pid]

    def detail(self) -> str:
        """One line for status: supervisor, phase, restarts and the last exit."""
        state = self.state()
        if state is None:
            return "supervised" if self.is_running() else ""
        phase = state.phase
        if not self.is_running() and phase != "gave-up":
            phase = "supervisor gone"
        elif phase == "backoff" and state.next_start_at:
            phase = f"restarting in {max(0.0, state.next_start_at - time.time()):.0f} s"
        text = f"supervised by pid {state.supervisor_pid}: {phase}, {state.restarts} restart(s)"
        if state.exits:
            text += f", last {state.last_exit}"
        return text

    def unsupervised(self) -> ManagedProcess:
        """The same service without a supervisor (a container, whose restart policy does this job)."""
        return ManagedProcess(
            self.name,
            self.child_argv,
            pid_dir=self.pid_file.parent,
            log_dir=self.log_file.parent,
            env=self.env,
            cwd=self.cwd,
        )


def recorded(name: str, *, pid_dir: Path, log_dir: Path) -> ManagedProcess:
    """A handle for a recorded instance (status, kill, stop): supervised if its pid record says so."""
    rec = read_pid_record(pid_dir / f"{name}.json")
    if rec is not None and is_supervisor_argv(rec.argv):
        return SupervisedProcess(name, [], pid_dir=pid_dir, log_dir=log_dir)
    return ManagedProcess(name, [], pid_dir=pid_dir, log_dir=log_dir)


# ---------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    defaults = SupervisorConfig()
    parser = argparse.ArgumentParser(
        prog=f"python -m {MODULE}",
        usage=f"python -m {MODULE} --name NAME [options] -- COMMAND [ARG ...]",
        description=__doc__.splitlines()[0],
    )
    parser.add_argument("--name", required=True, help="the service's name, in log lines and the state file")
    parser.add_argument("--state-file", type=Path, help="where to write the supervisor's state (JSON)")
    parser.add_argument("--backoff-initial-s", type=float, default=defaults.backoff_initial_s)
    parser.add_argument("--backoff-max-s", type=float, default=defaults.backoff_max_s)
    parser.add_argument("--reset-after-s", type=float, default=defaults.reset_after_s)
    parser.add_argument("--max-restarts", type=int, default=defaults.max_restarts)
    parser.add_argument("--restart-window-s", type=float, default=defaults.restart_window_s)
    parser.add_argument("--stop-timeout-s", type=float, default=defaults.stop_timeout_s)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if "--" not in args:
        parser.print_usage(sys.stderr)
        print("error: put the command to supervise after --", file=sys.stderr)
        return EXIT_USAGE
    split = args.index("--")
    options, command = parser.parse_args(args[:split]), args[split + 1 :]
    if not command:
        print("error: no command after --", file=sys.stderr)
        return EXIT_USAGE
    settings = SupervisorConfig(
        backoff_initial_s=options.backoff_initial_s,
        backoff_max_s=max(options.backoff_max_s, options.backoff_initial_s),
        reset_after_s=options.reset_after_s,
        max_restarts=options.max_restarts,
        restart_window_s=options.restart_window_s,
        stop_timeout_s=options.stop_timeout_s,
    )
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s supervisor[{os.getpid()}]: %(message)s",
    )
    return Supervisor(options.name, command, settings, options.state_file).run()


if __name__ == "__main__":
    sys.exit(main())
