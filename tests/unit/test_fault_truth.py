"""After a fault, what the operator is told is true: a killed step attempt is closed as ``died`` by the
next look, naming an orphaned command still running; a site is green only when its planned data is there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from multisite_nb.adapters.files import atomic_write_json
from multisite_nb.adapters.processes import PidRecord, proc_start_time, stop_group, write_pid_record
from multisite_nb.domain.naming import logs_dir
from multisite_nb.domain.records import RuleRecord, RuleState, StepRecord, StepState
from multisite_nb.phases.submit.runner import close_dead_attempts, latest_attempts
from multisite_nb.views.model import Placement, SiteStatus, Transfers
from multisite_nb.views.status import site_state


def _gone_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _attempt(
    run_dir: Path, site: str, step: str, number: int, owner: int, owner_start: int | None, host: str = ""
) -> Path:
    folder = logs_dir(run_dir) / site / step / f"attempt-{number:02d}"
    folder.mkdir(parents=True)
    record = StepRecord(
        site=site,
        step=step,
        state=StepState.RUNNING,
        attempt=number,
        owner_pid=owner,
        owner_start=owner_start,
        owner_host=host,
    )
    atomic_write_json(folder / "status.json", record.model_dump(mode="json"))
    return folder


def test_a_killed_attempt_is_closed_as_died_and_names_its_orphan(tmp_path: Path) -> None:
    dead = _attempt(tmp_path, "RAL", "step1", 1, _gone_pid(), None)
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        write_pid_record(dead / "pid.json", PidRecord(orphan.pid, proc_start_time(orphan.pid)))
        alive = _attempt(tmp_path, "LANCS", "step1", 1, os.getpid(), proc_start_time(os.getpid()))
        _attempt(tmp_path, "IN2P3", "step1", 1, _gone_pid(), None, host="another-host")  # not seen from here
        closed = close_dead_attempts(tmp_path)
        assert [(r.site, r.step, r.state) for r in closed] == [("RAL", "step1", StepState.DIED)]
        assert f"its command (pid {orphan.pid}) still runs" in closed[0].note
        on_disk = StepRecord.model_validate_json((dead / "status.json").read_bytes())
        assert on_disk.state is StepState.DIED and on_disk.finished
        assert StepRecord.model_validate_json((alive / "status.json").read_bytes()).state is StepState.RUNNING
        assert close_dead_attempts(tmp_path) == []  # closed once; the next look changes nothing
        latest = latest_attempts(tmp_path)
        assert latest["RAL"]["step1"].state is StepState.DIED and latest["LANCS"]["step1"].state is StepState.RUNNING
        assert latest["IN2P3"]["step1"].state is StepState.RUNNING  # another host's: this one cannot tell
    finally:
        stop_group(orphan)


def _rule(name: str, ok: int) -> RuleRecord:
    return RuleRecord(id=name, scope="s", name=name, rse_expression="RAL_DISK", state=RuleState.OK, locks_ok=ok)


def test_a_site_is_green_only_when_its_planned_files_are_there() -> None:
    records = _rule("s.records", 1)
    partial = SiteStatus(site="RAL", role="remote", rse="RAL_DISK", compute_site="RAL")
    partial.placement = Placement(files=44, bytes=1, visits=2)
    partial.transfers = Transfers(rse="RAL_DISK", read=True, ok=1, locks_ok=1, rules=[records])
    state, reason = site_state(partial)
    assert state == "idle" and reason.startswith("0/44 planned files here"), reason
    whole = SiteStatus(site="RAL", role="remote", rse="RAL_DISK", compute_site="RAL")
    whole.placement = Placement(files=44, bytes=1, visits=2)
    whole.transfers = Transfers(rse="RAL_DISK", read=True, ok=2, locks_ok=45, placed_ok=44, rules=[records])
    assert site_state(whole) == ("ok", "2 rules OK")
