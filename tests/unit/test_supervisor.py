"""The supervisor, on real child processes: restarts with back-off, crash loops, stops, signals, state."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from pipeline.config import REPO_ROOT, SupervisorConfig, load_config
from pipeline.stack.base import API, StackError
from pipeline.stack.local import LocalStack
from pipeline.stack.process import ProcessError, session_members, stop_all, wait_until
from pipeline.stack.supervisor import SupervisedProcess, describe_exit, main, recorded

FAST = SupervisorConfig(
    backoff_initial_s=0.2,
    backoff_max_s=1.0,
    reset_after_s=30.0,
    max_restarts=5,
    restart_window_s=60.0,
    stop_timeout_s=2.0,
)
SLEEPER = "import time; time.sleep(600)"


def started_log(path: Path) -> str:
    """Child code: append the start time to `path`."""
    return f"import time; open({str(path)!r}, 'a').write(f'{{time.time()}}\\n')"


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Callable[..., SupervisedProcess]]:
    """Makes supervised `python -c CODE` services; stops each (its whole session) afterwards."""
    made: list[SupervisedProcess] = []

    def make(code: str, name: str = "svc", **settings: float) -> SupervisedProcess:
        proc = SupervisedProcess(
            name,
            [sys.executable, "-c", code],
            pid_dir=tmp_path / "pids",
            log_dir=tmp_path / "logs",
            cwd=REPO_ROOT,
            settings=replace(FAST, **settings),
        )
        made.append(proc)
        return proc

    yield make
    for proc in made:
        record = proc.record()
        proc.stop(timeout=5)
        for member in session_members(record.pid) if record else []:
            member.kill()  # only if the stop itself failed


def wait_child(proc: SupervisedProcess, other_than: int | None = None, timeout: float = 20) -> psutil.Process:
    found: list[psutil.Process] = []

    def check() -> bool:
        child = proc.child()
        if child is not None and child.pid != other_than:
            found.append(child)
            return True
        return False

    wait_until(check, timeout, f"a child of {proc.name}", interval=0.05)
    return found[-1]


def test_a_crash_loop_is_restarted_with_doubling_backoff_then_given_up(supervised, tmp_path):
    starts = tmp_path / "starts"
    proc = supervised(f"{started_log(starts)}; import sys; sys.exit(3)", max_restarts=3)
    proc.start()
    assert proc.popen is not None
    assert proc.popen.wait(timeout=30) == 1  # gave up
    times = [float(t) for t in lines(starts)]
    assert len(times) == 4  # the first start and 3 restarts
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    for gap, backoff in zip(gaps, (0.2, 0.4, 0.8), strict=True):
        assert backoff <= gap < backoff + 2.0, gaps
    log = proc.log_file.read_text()
    assert log.count("svc ended (exit code 3) after") == 3
    for restart, backoff in ((1, 0.2), (2, 0.4), (3, 0.8)):
        assert f"restart {restart} in {backoff} s" in log
    assert re.search(
        r"svc: giving up: it exited 4 times within 60 s \(crash loop; limit 3 restarts\); "
        r"last exits: exit code 3, exit code 3, exit code 3, exit code 3",
        log,
    )
    state = proc.state()
    assert state is not None and state.phase == "gave-up"
    assert state.restarts == 3 and state.exits == [3, 3, 3, 3]
    assert not proc.is_running()
    assert "gave-up, 3 restart(s), last exit code 3" in proc.detail()
    with pytest.raises(ProcessError, match=r"(?s)svc exited.*giving up"):
        proc.check_alive()


def test_the_backoff_starts_over_once_a_child_stayed_up(supervised, tmp_path):
    starts = tmp_path / "starts"
    code = f"{started_log(starts)}; import sys; time.sleep(0.5); sys.exit(1)"
    proc = supervised(code, max_restarts=3, reset_after_s=0.4)
    proc.start()
    assert proc.popen is not None and proc.popen.wait(timeout=30) == 1
    log = proc.log_file.read_text()
    assert [int(n) for n in re.findall(r"restart (\d) in 0.2 s", log)] == [1, 2, 3]
    assert "in 0.4 s" not in log


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_child_is_started_again_by_the_supervisor(supervised, sig):
    proc = supervised(SLEEPER)
    proc.start()
    supervisor = proc.pid
    first = wait_child(proc)
    killed_at = time.time()
    # Any end the supervisor was not asked for is a crash, a SIGTERM from outside included.
    assert proc.crash(sig) == first.pid
    assert not alive(first.pid) and first.pid not in [p.pid for p in proc.members()]
    second = wait_child(proc, other_than=first.pid)
    assert proc.pid == supervisor  # the supervisor stayed
    state = proc.state()
    assert state is not None and state.phase == "running"
    assert state.restarts == 1 and state.exits == [-sig]
    assert state.child is not None and state.child["pid"] == second.pid
    assert killed_at < (proc.child_started_at() or 0) < time.time()
    name = signal.Signals(sig).name
    assert f"running, 1 restart(s), last killed by {name}" in proc.detail()
    log = proc.log_file.read_text()
    assert re.search(rf"WARNING supervisor\[{supervisor}\]: svc ended \(killed by {name}\) after", log)
    assert "restart 1 in 0.2 s" in log


def test_kill_is_a_crash_and_stop_is_not(supervised):
    proc = supervised(SLEEPER)
    proc.start()
    first = wait_child(proc)
    proc.kill()
    wait_child(proc, other_than=first.pid)
    sid = proc.pid
    assert sid is not None
    proc.stop(timeout=10)
    assert not session_members(sid)  # supervisor and child: nothing left
    assert not proc.pid_file.exists() and not proc.state_file.exists()
    assert proc.popen is not None and proc.popen.wait(timeout=5) == 0
    log = proc.log_file.read_text()
    assert log.count(" started: pid ") == 2  # the first child and the one after the kill; none after the stop
    assert "stop requested (SIGTERM)" in log and "svc stopped (" in log


def test_leftovers_of_a_crashed_child_are_killed_before_its_restart(supervised, tmp_path):
    pids = tmp_path / "grandchildren"
    code = textwrap.dedent(
        f"""
        import subprocess, sys, time
        helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pids)!r}, "a").write(f"{{helper.pid}}\\n")
        time.sleep(0.3)
        sys.exit(1)  # the helper is left behind in the child's process group
        """
    )
    proc = supervised(code)
    proc.start()
    wait_until(lambda: len(lines(pids)) >= 2, 20, "the restarted child's helper")
    first_helper = int(lines(pids)[0])
    assert not alive(first_helper)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_is_passed_on_to_the_child_and_ends_supervision(supervised, tmp_path, sig):
    ready, got = tmp_path / "ready", tmp_path / "got"
    code = textwrap.dedent(
        f"""
        import signal, sys, time
        def on_signal(signum, frame):
            open({str(got)!r}, "w").write(signal.Signals(signum).name)
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        open({str(ready)!r}, "w").write("ready")
        time.sleep(600)
        """
    )
    proc = supervised(code)
    proc.start()
    child = wait_child(proc)
    wait_until(ready.exists, 20, "the child's signal handlers")
    os.kill(proc.pid or 0, sig)  # to the supervisor only
    assert proc.popen is not None and proc.popen.wait(timeout=10) == 0
    assert got.read_text() == sig.name  # the child got the same signal, and stopped on it
    assert not alive(child.pid)
    log = proc.log_file.read_text()
    assert f"stop requested ({sig.name}): passing it on to process group {child.pid}" in log
    assert log.count(" started: pid ") == 1 and " ended (" not in log  # stopped, not restarted
    assert not proc.state_file.exists()


def test_a_child_that_ignores_the_stop_gets_sigkill_after_the_timeout(supervised):
    code = textwrap.dedent(
        """
        import signal, subprocess, sys, time
        ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        subprocess.Popen([sys.executable, "-c", ignore])
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(600)
        """
    )
    proc = supervised(code, stop_timeout_s=1.0)
    proc.start()
    child = wait_child(proc)
    wait_until(lambda: len(proc.members()) == 3, 20, "the child's helper")
    began = time.monotonic()
    os.kill(proc.pid or 0, signal.SIGTERM)
    assert proc.popen is not None and proc.popen.wait(timeout=15) == 0
    assert time.monotonic() - began >= 1.0
    assert not proc.members()  # the child and its helper are gone with the supervisor
    log = proc.log_file.read_text()
    assert f"svc did not stop within 1 s: SIGKILL to process group {child.pid}" in log
    assert "svc stopped (killed by SIGKILL)" in log


def test_the_state_file_names_the_child_beside_the_pid_file(supervised):
    proc = supervised(SLEEPER, name="streaming-job")
    proc.start()
    child = wait_child(proc)
    assert proc.state_file == proc.pid_file.with_name("streaming-job.state")
    data = json.loads(proc.state_file.read_text())
    assert data["name"] == "streaming-job"
    assert data["supervisor_pid"] == proc.pid
    assert data["phase"] == "running"
    assert data["restarts"] == 0 and data["exits"] == [] and data["last_exit_at"] is None
    assert data["child"]["pid"] == child.pid
    assert data["child"]["argv"] == [sys.executable, "-c", SLEEPER]
    assert data["started_at"] == pytest.approx(child.create_time(), abs=1.5)  # wall clock vs psutil's
    assert data["child"]["create_time"] == pytest.approx(child.create_time(), abs=0.01)
    # The child leads a process group of its own, inside the supervisor's session.
    assert os.getpgid(child.pid) == child.pid
    assert os.getsid(child.pid) == proc.pid
    # A later handle finds it from the pid file alone, as the stack's status and kill do.
    again = recorded("streaming-job", pid_dir=proc.pid_file.parent, log_dir=proc.log_file.parent)
    assert isinstance(again, SupervisedProcess) and again.child().pid == child.pid
    # stop_all (the stack's `down`) reads pid records only, and stops supervisor and child.
    assert stop_all(proc.pid_file.parent, timeout=10) == ["streaming-job"]
    assert not proc.members() and not alive(child.pid)


def test_a_kill_during_the_backoff_is_refused_and_a_stop_ends_the_wait(supervised):
    proc = supervised("import sys; sys.exit(2)", backoff_initial_s=30.0, backoff_max_s=30.0)
    proc.start()
    wait_until(lambda: (s := proc.state()) is not None and s.phase == "backoff", 20, "the back-off")
    assert "restarting in " in proc.detail()
    with pytest.raises(ProcessError, match="svc is not running: its supervisor is waiting to start it again"):
        proc.kill()
    began = time.monotonic()
    proc.stop(timeout=10)
    assert time.monotonic() - began < 5
    assert "svc: stopped during the back-off" in proc.log_file.read_text()


def test_the_command_line_needs_a_command_after_the_separator(capsys):
    assert main(["--name", "svc"]) == 2
    assert "put the command to supervise after --" in capsys.readouterr().err
    assert main(["--name", "svc", "--"]) == 2
    assert "no command after --" in capsys.readouterr().err


def test_exit_descriptions():
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(-200) == "killed by signal 200"


# ---------------------------------------------------------------------- the local backend
def isolated_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **supervisor: object) -> LocalStack:
    """A local stack in tmp_path whose ports are far from any real stack's (down checks them)."""
    jars = tmp_path / "jars" / "kafka"
    jars.mkdir(parents=True)
    (jars / "kafka_2.13-0.jar").touch()  # status names the broker's command; nothing runs it
    monkeypatch.setenv("WB_JARS_DIR", str(tmp_path / "jars"))
    base = load_config(environ={})
    shift = 31_000
    overrides = {
        "state_dir": str(tmp_path / "state"),
        "kafka": {
            "bootstrap_port": base.kafka.bootstrap_port + shift,
            "controller_port": base.kafka.controller_port + shift,
        },
        "spark": {
            "master_port": base.spark.master_port + shift,
            "master_ui_port": base.spark.master_ui_port + shift,
        },
        "ray": {
            "gcs_port": base.ray.gcs_port + shift,
            "dashboard_port": base.ray.dashboard_port + shift,
            "client_server_port": base.ray.client_server_port + shift,
        },
        "api": {"port": base.api.port + shift},
        "inference": {"metrics_port": base.inference.metrics_port + shift},
        "supervisor": {
            "backoff_initial_s": 0.2,
            "stop_timeout_s": 2.0,
            **supervisor,
        },
    }
    return LocalStack(load_config(environ={}, overrides=overrides))


def api_instance(stack: LocalStack):
    return next(i for i in stack.status().instances if i.instance == API)


def test_the_stack_restarts_a_killed_service_and_keeps_a_stopped_one_down(tmp_path, monkeypatch):
    stack = isolated_stack(tmp_path, monkeypatch)
    proc = stack._service(API, [sys.executable, "-c", SLEEPER])
    assert isinstance(proc, SupervisedProcess)
    proc.start()
    sid = proc.pid
    try:
        first = wait_child(proc)
        status = api_instance(stack)
        assert status.running and status.pid == first.pid
        assert status.detail.startswith(f"supervised by pid {sid}: running, 0 restart(s)")
        assert status.processes == 2  # supervisor and child
        assert stack.processes()[API] == [first.pid]  # the supervisor is not the service's load
        assert stack.supervised(API) and not stack.supervised("kafka")

        killed_at = time.time()
        assert stack.kill(API) == API  # SIGKILL: a crash
        wait_until(lambda: (stack.started_at(API) or 0) > killed_at, 20, "the supervisor's restart")
        status = api_instance(stack)
        assert status.running and status.pid not in (None, first.pid)
        assert "1 restart(s), last killed by SIGKILL" in status.detail

        assert stack.kill(API, graceful=True) == API  # an operator's stop: nothing restarts it
        status = api_instance(stack)
        assert not status.running and status.pid is None and status.processes == 0
        assert not session_members(sid or 0)
        assert not proc.pid_file.exists() and not proc.state_file.exists()
        with pytest.raises(StackError, match="api is not running"):
            stack.kill(API)
    finally:
        proc.stop(timeout=5)


def test_down_stops_supervisors_and_their_children_and_clears_their_state(tmp_path, monkeypatch):
    stack = isolated_stack(tmp_path, monkeypatch)
    services = [stack._service(name, [sys.executable, "-c", SLEEPER]) for name in ("inference", API)]
    sessions = []
    try:
        for proc in services:
            proc.start()
            sessions.append(proc.pid or 0)
        children = [wait_child(proc).pid for proc in services]  # type: ignore[arg-type]
        stale = stack.pid_dir / "streaming-job.state"  # a supervisor killed outright leaves its state
        stale.write_text("{}")
        stack.down()
        assert not any(session_members(sid) for sid in sessions)
        assert not any(alive(pid) for pid in children)
        assert not list(stack.pid_dir.glob("*.json")) and not list(stack.pid_dir.glob("*.state"))
    finally:
        for proc in services:
            proc.stop(timeout=5)


def test_services_run_under_the_supervisor_unless_it_is_switched_off(tmp_path, monkeypatch):
    stack = isolated_stack(tmp_path, monkeypatch)
    api = stack._api()
    assert isinstance(api, SupervisedProcess)
    assert api.argv[:3] == [sys.executable, "-m", "pipeline.stack.supervisor"]
    assert api.argv[api.argv.index("--") + 1 :] == [
        sys.executable,
        "-m",
        "pipeline.api",
        "--config",
        str(stack.config.stack_file),
    ]
    assert api.argv[api.argv.index("--name") + 1] == API
    assert api.child_argv == api.argv[api.argv.index("--") + 1 :]
    inference = stack._inference()
    assert isinstance(inference, SupervisedProcess)
    assert inference.child_argv[1:3] == ["-m", "pipeline.inference.driver"]
    # A container runs the service itself: its restart policy is the supervisor there.
    assert stack.foreground(API).argv == api.child_argv
    plain = isolated_stack(tmp_path / "plain", monkeypatch, enabled=False)
    assert not isinstance(plain._api(), SupervisedProcess)
    assert plain._api().argv[:3] == [sys.executable, "-m", "pipeline.api"]
    assert not plain.supervised(API)
