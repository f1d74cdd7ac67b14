"""Supervised processes: a stop reaches every process of the session, and pid files survive callers."""

import sys
import textwrap

import psutil
import pytest

from pipeline.stack.process import ManagedProcess, ProcessError, read_pid_record, session_members

# A parent that starts a child which ignores SIGTERM, like a JVM's forked executor would not.
PARENT_WITH_STUBBORN_CHILD = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    print("child", child.pid, flush=True)
    time.sleep(600)
    """
)


def make(tmp_path, name, code):
    return ManagedProcess(
        name, [sys.executable, "-c", code], pid_dir=tmp_path / "pids", log_dir=tmp_path / "logs"
    )


def test_start_is_idempotent_and_stop_reaps_the_whole_session(tmp_path):
    proc = make(tmp_path, "parent", PARENT_WITH_STUBBORN_CHILD)
    assert proc.start() is True
    pid = proc.pid
    assert proc.start() is False  # already running: nothing new
    assert proc.pid == pid
    psutil.wait_procs([], timeout=0)
    proc.wait_healthy(lambda: len(session_members(pid)) == 2, 20, "the child to start")
    members = session_members(pid)
    proc.stop(timeout=3)
    assert not proc.is_running()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in members)
    assert not proc.pid_file.exists()


def test_a_new_handle_finds_what_an_earlier_one_started(tmp_path):
    first = make(tmp_path, "svc", "import time; time.sleep(600)")
    first.start()
    second = make(tmp_path, "svc", "unused")
    assert second.is_running()
    assert second.pid == first.pid
    second.kill()
    assert not first.is_running()


def test_recycled_pid_is_not_ours(tmp_path):
    proc = make(tmp_path, "svc", "import time; time.sleep(600)")
    proc.start()
    rec = read_pid_record(proc.pid_file)
    forged = proc.pid_file.read_text().replace(str(rec.create_time), str(rec.create_time - 1000))
    proc.pid_file.write_text(forged)
    assert not proc.is_running()  # same pid, other start time: someone else's process
    proc.pid_file.write_text(forged.replace(str(rec.create_time - 1000), str(rec.create_time)))
    proc.kill()


def test_early_exit_reports_the_log(tmp_path):
    proc = make(tmp_path, "crash", "import sys; print('bad setting: ' + 'frob' + 'nicate'); sys.exit(3)")
    proc.start()
    with pytest.raises(ProcessError, match=r"(?s)crash exited.*bad setting: frobnicate"):
        proc.wait_healthy(lambda: False, 20)


def test_stop_all_leaves_excluded_names_to_the_caller(tmp_path):
    from pipeline.stack.process import stop_all

    kept = make(tmp_path, "kafka-1", "import time; time.sleep(600)")
    other = make(tmp_path, "api", "import time; time.sleep(600)")
    kept.start()
    other.start()
    try:
        assert stop_all(tmp_path / "pids", timeout=5, exclude=("kafka",)) == ["api"]
        assert kept.is_running()
        assert not other.is_running()
    finally:
        kept.stop(timeout=5)
