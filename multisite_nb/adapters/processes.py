"""Child processes the toolkit starts, watches and stops: one implementation for everything.

Step commands (``pipetask``, ``bps``) and the embedded world's daemons (gunicorn, the Rucio
site services) run the same way:

* :func:`start` runs a command in its **own session** (its process group id is its PID), with
  stdout and stderr appended to a log, so an interrupt of the caller does not reach it and
  the whole group can be stopped at once;
* a :class:`PidRecord` (PID + the process's start time from ``/proc``) is written atomically
  beside it; :func:`live_pid` trusts a record only while that PID still has that start time,
  so a reused PID is never mistaken for ours — a later process (or another toolkit process)
  can find and stop what an earlier one left running from its records alone;
* :func:`stop_groups` stops whole process groups: SIGTERM, wait, then SIGKILL;
* a :class:`ChildRegistry` holds the children a process is waiting for, across threads, so
  that an interrupted caller can stop them all (:meth:`ChildRegistry.stop_all`);
* :func:`run_logged` is the step runner's whole life cycle of one command: start, register,
  wait (with a timeout), stop on timeout or interrupt, note why in the log.

Linux only (``/proc``); only the standard library and :mod:`multisite_nb.adapters.files` are used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from multisite_nb.adapters.files import atomic_write_json

__all__ = [
    "ChildRegistry",
    "PidRecord",
    "group_exists",
    "live_pid",
    "proc_start_time",
    "read_pid_record",
    "run_logged",
    "signal_group",
    "start",
    "stop_group",
    "stop_groups",
    "write_pid_record",
]

_POLL = 0.05


def proc_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a live, non-zombie process; `None` otherwise."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass(frozen=True)
class PidRecord:
    """Which process we started: enough to recognise it later, from any process.

    Attributes
    ----------
    pid
        Its PID, also its process group id (it was started in its own session).
    start_time
        Its start time from ``/proc/<pid>/stat`` (`None` if it had already ended).
    cmd
        The command line.
    started
        When it was started (ISO UTC).
    """

    pid: int
    start_time: int | None
    cmd: tuple[str, ...] = ()
    started: str = ""

    @classmethod
    def of(cls, proc: subprocess.Popen[bytes], cmd: Sequence[str] = ()) -> PidRecord:
        """The record of a process just started."""
        return cls(
            pid=proc.pid, start_time=proc_start_time(proc.pid), cmd=tuple(cmd), started=datetime.now(UTC).isoformat()
        )

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "start_time": self.start_time, "cmd": list(self.cmd), "started": self.started}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PidRecord:
        start = data.get("start_time")
        return cls(
            pid=int(data["pid"]),
            start_time=None if start is None else int(start),
            cmd=tuple(data.get("cmd") or ()),
            started=str(data.get("started") or ""),
        )


def write_pid_record(path: str | os.PathLike[str], record: PidRecord) -> Path:
    """Write ``record`` to ``path`` (atomically)."""
    return atomic_write_json(path, record.to_json())


def read_pid_record(path: str | os.PathLike[str]) -> PidRecord | None:
    """The record in ``path``; `None` if there is none or it cannot be read."""
    try:
        return PidRecord.from_json(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def live_pid(record: PidRecord | None, *, reap: bool = False) -> int | None:
    """The PID of ``record``'s process if it is alive and is the one recorded (not a reused PID).

    Parameters
    ----------
    record
        A PID record (`None` gives `None`).
    reap
        Reap the process if it is a zombie child of this process (one started here but not
        waited for through its `~subprocess.Popen`). Leave it `False` for a process whose
        ``Popen`` someone still waits on: reaping it here would hide its exit code.
    """
    if record is None:
        return None
    start = proc_start_time(record.pid)
    if start is None:
        if reap:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(record.pid, os.WNOHANG)
        return None
    if record.start_time is not None and start != record.start_time:
        return None  # the PID was reused by an unrelated process
    return record.pid


def group_exists(pgid: int) -> bool:
    """Whether any process (zombies included) is still in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):  # gone, or not ours to stop
        return False
    return True


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid`` (or to ``pid`` alone if the group is not ours)."""
    try:
        os.killpg(pid, sig)  # started with start_new_session: pgid == pid
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _pid(target: subprocess.Popen[bytes] | PidRecord) -> int:
    return target.pid


def _leader_alive(target: subprocess.Popen[bytes] | PidRecord) -> bool:
    if isinstance(target, PidRecord):
        return live_pid(target, reap=True) is not None
    return target.poll() is None


def _wait_ended(
    targets: list[subprocess.Popen[bytes] | PidRecord], seconds: float
) -> list[subprocess.Popen[bytes] | PidRecord]:
    """Wait up to ``seconds`` for the targets' groups to end; those still running."""
    deadline = time.monotonic() + seconds
    while True:
        targets = [t for t in targets if _leader_alive(t) or group_exists(_pid(t))]
        if not targets or time.monotonic() >= deadline:
            return targets
        time.sleep(_POLL)


def stop_groups(
    targets: Iterable[subprocess.Popen[bytes] | PidRecord], *, timeout: float = 30.0, kill_timeout: float = 5.0
) -> list[subprocess.Popen[bytes] | PidRecord]:
    """Stop whole process groups: SIGTERM to each, wait up to ``timeout``, then SIGKILL.

    Parameters
    ----------
    targets
        Children of this process (`~subprocess.Popen`, reaped through it, so its exit code
        stays readable) or processes known by their `PidRecord` (from this or another
        process). Each must lead its own process group (see `start`).
    timeout
        Seconds for the groups to end after SIGTERM.
    kill_timeout
        Seconds to wait after SIGKILL.

    Returns
    -------
    list
        The targets still running at the end (normally none).
    """
    # a record counts only while its leader is the recorded process (its PID may have been reused
    # since); a child of ours also while stragglers of its group remain
    pending = [t for t in targets if _leader_alive(t) or (not isinstance(t, PidRecord) and group_exists(t.pid))]
    for t in pending:
        signal_group(_pid(t), signal.SIGTERM)
    pending = _wait_ended(pending, timeout)
    for t in pending:
        signal_group(_pid(t), signal.SIGKILL)
    return _wait_ended(pending, kill_timeout)


def stop_group(
    target: subprocess.Popen[bytes] | PidRecord, *, timeout: float = 30.0, kill_timeout: float = 5.0
) -> bool:
    """`stop_groups` of one target; `True` if it ended."""
    return not stop_groups([target], timeout=timeout, kill_timeout=kill_timeout)


def start(
    cmd: Sequence[str],
    log: str | os.PathLike[str],
    *,
    env: Mapping[str, str],
    cwd: str | os.PathLike[str],
    pid_file: str | os.PathLike[str] | None = None,
    echo: bool = False,
    user: str | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session, stdin from ``/dev/null``, output appended to ``log``.

    Parameters
    ----------
    cmd, env, cwd
        What to run, with which environment, where.
    log
        The log file (created if needed; appended to).
    pid_file
        Where to write its `PidRecord` (atomically), if anywhere.
    echo
        Write ``$ <command>`` to the log first.
    user
        Run it as this user (its own group, no supplementary groups); only root may ask.
    """
    ids: dict[str, Any] = {}
    if user is not None:
        import pwd

        entry = pwd.getpwnam(user)
        ids = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    with open(log, "a") as out:
        if echo:
            out.write("$ " + shlex.join(cmd) + "\n")
            out.flush()
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **ids,
        )
    if pid_file is not None:
        write_pid_record(pid_file, PidRecord.of(proc, cmd))
    return proc


class ChildRegistry:
    """The children a process is waiting for, shared by its threads.

    Whoever waits for a child registers it for that time (:meth:`watching`); whoever must
    stop everything (an interrupted phase) calls :meth:`stop_all` from any thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[bytes]] = set()

    @contextlib.contextmanager
    def watching(self, proc: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
        """Hold ``proc`` in the registry while the block runs."""
        with self._lock:
            self._procs.add(proc)
        try:
            yield proc
        finally:
            with self._lock:
                self._procs.discard(proc)

    def live(self) -> list[subprocess.Popen[bytes]]:
        """The registered children still running."""
        with self._lock:
            procs = list(self._procs)
        return [p for p in procs if p.poll() is None]

    def count(self) -> int:
        return len(self.live())

    def stop_all(self, timeout: float = 30.0) -> int:
        """Stop every registered child's process group; returns how many were running."""
        procs = self.live()
        stop_groups(procs, timeout=timeout)
        return len(procs)


def _note(log: str | os.PathLike[str], text: str) -> None:
    with open(log, "a") as fh:
        fh.write(f"\n[multisite_nb] {text}\n")


def run_logged(
    cmd: Sequence[str],
    log: str | os.PathLike[str],
    *,
    cwd: str | os.PathLike[str],
    env: Mapping[str, str],
    timeout: float | None = None,
    registry: ChildRegistry | None = None,
    pid_file: str | os.PathLike[str] | None = None,
) -> tuple[int | None, bool]:
    """Run ``cmd`` (see `start`) and wait for it; stop its process group on timeout or interrupt.

    While it runs it is held in ``registry`` (if given), so another thread can stop it. Why
    it ended early (a signal, the timeout, the caller's interrupt) is noted in the log.

    Returns
    -------
    returncode, timed_out
        The exit code (negative: the signal that ended it) and whether the timeout hit.
    """
    proc = start(cmd, log, env=env, cwd=cwd, pid_file=pid_file, echo=True)
    with registry.watching(proc) if registry is not None else contextlib.nullcontext(proc):
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            _note(log, f"killed after {timeout} s")
            return proc.returncode, True
        except BaseException:
            stop_group(proc)
            _note(log, "stopped: the caller was interrupted")
            raise
    if rc < 0:
        _note(log, f"stopped by signal {-rc}")
    return rc, False
