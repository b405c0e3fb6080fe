"""Fault tolerance of the chain itself: one operator at a time, and a chain killed mid-step.

* A phase that acts is refused while another process holds the campaign's lock, naming it;
  once that process is gone the lock is stale, still refused, and broken only on request
  (``multisite-nb unlock``).
* A chain killed with SIGKILL while a step runs shows as 'died' (``multisite-nb status``) with
  its step processes still running; ``multisite-nb run --resume`` stops them, takes the run's
  stale lock over, restarts the steps and passes; nothing is left running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import campaign_variant

from multisite_nb import phases
from multisite_nb.adapters.butler.lock import LockedError, OperatorLock
from multisite_nb.adapters.processes import live_pid, read_pid_record
from multisite_nb.adapters.results import load_result, load_run_record, run_state
from multisite_nb.domain.params import load_campaign, repo_root
from multisite_nb.run.folder import new_run

pytestmark = [pytest.mark.world, pytest.mark.slow, pytest.mark.timeout(1200)]
BIN = Path(sys.executable).parent


def test_a_second_operator_is_refused_and_a_stale_lock_broken_only_on_request(world, tmp_path: Path) -> None:
    campaign = load_campaign(campaign_variant(tmp_path, "locktest"))
    run_dir = new_run(tmp_path / "runs", campaign.name)
    assert phases.placement.run(campaign, run_dir)[0].passed
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import time\nfrom multisite_nb.domain.params import load_campaign\n"
                "from multisite_nb.adapters.butler.lock import OperatorLock\n"
                f"OperatorLock(load_campaign({str(campaign.path)!r})).acquire('elsewhere')\nprint('held', flush=True)\n"
                "time.sleep(600)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=world.env(),
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=rf"locked by .*\(pid {holder.pid}\)") as info:
            phases.transfer.run(campaign, run_dir, progress=False)
        assert "stale" not in str(info.value)
        refused = subprocess.run(  # a chain refused by the lock leaves no empty run folder behind
            [str(BIN / "multisite-nb"), "run", str(campaign.path), "--world", str(world.root), "--phases",
             "placement", "--runs-root", str(tmp_path / "refused")],
            env=world.env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert refused.returncode == 1 and "locked by" in refused.stderr, refused.stdout + refused.stderr
        assert not list((tmp_path / "refused").glob("*/*"))
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(LockedError, match="its process is gone \\(stale\\).*multisite-nb unlock"):
        phases.transfer.run(campaign, run_dir, progress=False)  # still refused: broken only on request
    out = subprocess.run(
        [str(BIN / "multisite-nb"), "unlock", str(campaign.path), "--world", str(world.root)],
        env=world.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "lock broken" in out.stdout, out.stderr
    assert phases.transfer.run(campaign, run_dir, progress=False)[0].passed
    assert OperatorLock(campaign).holder() is None  # the phase gave it back


def _live_step(runs: Path) -> tuple[Path, int] | None:
    for path in runs.glob("*/*/artifacts/logs/*/*/g*/attempt-*/pid.json"):  # <site>/<step>/<group>/attempt-NN
        rec = read_pid_record(path)
        if rec is not None and live_pid(rec):
            return path.parents[6], rec.pid
    return None


def test_a_chain_killed_mid_step_dies_visibly_and_resumes(world, tmp_path: Path) -> None:
    params, runs = campaign_variant(tmp_path, "killtest", sites=("LANCS",)), tmp_path / "runs"
    cmd = [
        str(BIN / "multisite-nb"),
        "run",
        str(params),
        "--phases",
        "placement,transfer,verify,submit@early",
        "--world",
        str(world.root),
        "--runs-root",
        str(runs),
    ]
    chain = subprocess.Popen(
        cmd,
        env=world.env(),
        cwd=repo_root(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    found = None
    while found is None and time.monotonic() < deadline and chain.poll() is None:
        time.sleep(0.5)
        found = _live_step(runs)
    assert found is not None, "no step started"
    run_dir, step_pid = found
    os.kill(chain.pid, signal.SIGKILL)  # the chain only: its steps run on in their own sessions
    chain.wait()

    status = subprocess.run(
        [str(BIN / "multisite-nb"), "status", str(run_dir)],
        env=world.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 1 and f"{run_dir.name} (killtest): died" in status.stdout, status.stdout
    assert f"still running: pid {step_pid}" in status.stdout
    assert run_state(load_run_record(run_dir)) == "died"
    # the attempt it left "running" is closed as died by that look, naming its orphaned command
    assert re.search(r"LANCS step1 +died +died: the process that ran it \(pid \d+\) is gone", status.stdout)
    assert "submit_early" in status.stdout and "died while running" in status.stdout, status.stdout

    resumed = subprocess.run(
        [
            str(BIN / "multisite-nb"),
            "run",
            str(params),
            "--resume",
            str(run_dir),
            "--world",
            str(world.root),
            "--phases",
            "placement,transfer,verify,submit@early",
        ],
        env=world.env(),
        cwd=repo_root(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    # its orphaned step is stopped (unless it ended on its own meanwhile: the test cannot hold it)
    assert re.search(r"the earlier chain of this run died .*stopped [0-9]+ of its orphaned", resumed.stdout)
    assert run_state(load_run_record(run_dir)) == "passed"
    result = load_result(run_dir, "submit_early")
    assert result.passed
    attempts = [json.loads(p.read_text()) for p in run_dir.glob("artifacts/logs/*/step1/g*/attempt-*/status.json")]
    assert any(a.get("restart") for a in attempts)  # the killed step was restarted, not redone from scratch
    assert _live_step(runs) is None  # nothing left running
