"""Process supervision: own sessions, PID records that survive PID reuse, whole groups stopped."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from multisite_nb.adapters.processes import (
    ChildRegistry,
    PidRecord,
    group_exists,
    live_pid,
    read_pid_record,
    run_logged,
    start,
    stop_groups,
)

# a parent that starts a child in its own group and ignores SIGTERM, so only SIGKILL ends them
STUBBORN = (
    "import signal, subprocess, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


def _wait_for(text: str, log: Path, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while text not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert text in log.read_text()


def test_a_started_process_has_its_own_group_and_a_record(tmp_path: Path) -> None:
    log, pid_file = tmp_path / "out.log", tmp_path / "pid.json"
    proc = start(
        [sys.executable, "-c", "print('hello', flush=True); import time; time.sleep(30)"],
        log,
        env=os.environ,
        cwd=tmp_path,
        pid_file=pid_file,
        echo=True,
    )
    try:
        assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
        record = read_pid_record(pid_file)
        assert record is not None and record.pid == proc.pid and record.start_time is not None
        assert live_pid(record) == proc.pid
        # the same PID with another start time is someone else's process (a reused PID)
        assert live_pid(PidRecord(pid=proc.pid, start_time=record.start_time + 1)) is None
        _wait_for("hello", log)
        assert log.read_text().startswith("$ ")
    finally:
        assert not stop_groups([proc], timeout=10)
    assert proc.returncode == -signal.SIGTERM
    assert live_pid(read_pid_record(pid_file)) is None


def test_stop_groups_kills_what_ignores_sigterm_from_its_record(tmp_path: Path) -> None:
    """A record alone (as another process would read it) is enough to stop the whole group."""
    log, pid_file = tmp_path / "out.log", tmp_path / "pid.json"
    proc = start([sys.executable, "-c", STUBBORN], log, env=os.environ, cwd=tmp_path, pid_file=pid_file)
    _wait_for("ready", log)
    record = read_pid_record(pid_file)
    assert record is not None
    t0 = time.monotonic()
    assert stop_groups([record], timeout=1, kill_timeout=5) == []
    assert time.monotonic() - t0 < 6
    proc.wait(timeout=5)
    assert not group_exists(proc.pid)


def test_the_registry_stops_every_child_another_thread_waits_for(tmp_path: Path) -> None:
    registry = ChildRegistry()
    results: list[tuple[int | None, bool]] = []
    workers = [
        threading.Thread(
            target=lambda i=i: results.append(
                run_logged(
                    [sys.executable, "-c", "import time; time.sleep(60)"],
                    tmp_path / f"{i}.log",
                    env=os.environ,
                    cwd=tmp_path,
                    registry=registry,
                )
            )
        )
        for i in range(2)
    ]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 10
    while registry.count() < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert registry.count() == 2
    assert registry.stop_all(timeout=10) == 2
    for w in workers:
        w.join(timeout=10)
    assert registry.count() == 0
    assert sorted(results) == [(-signal.SIGTERM, False)] * 2
    assert all("stopped by signal 15" in (tmp_path / f"{i}.log").read_text() for i in range(2))


def test_a_timeout_stops_the_group_and_says_so(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    rc, timed_out = run_logged(
        [sys.executable, "-c", "import time; time.sleep(60)"], log, env=os.environ, cwd=tmp_path, timeout=0.5
    )
    assert timed_out and rc == -signal.SIGTERM
    assert "killed after 0.5 s" in log.read_text()


@pytest.mark.parametrize("data", ["", "{", '{"start_time": 1}'])
def test_an_unreadable_record_is_none(tmp_path: Path, data: str) -> None:
    (tmp_path / "pid.json").write_text(data)
    assert read_pid_record(tmp_path / "pid.json") is None
    assert read_pid_record(tmp_path / "missing.json") is None
