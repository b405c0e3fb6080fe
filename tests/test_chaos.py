"""A campaign that rides out faults on its own: the groups campaign (one remote site) under ``supervise``,
with five kinds of fault injected from a seeded list while it runs.

The supervising process is SIGKILLed (and started again, as a service manager would), the Rucio
server and the conveyor daemons are SIGKILLed, the stand-in task fails one group once, and a raw
already moved to a remote site has a byte flipped. The campaign still ends PASS, QA equal to the
reference; an independent check of Rucio, the sites' Butlers and their disks against the plan
finds no file lost; no alert was raised (none of these needs a person); the supervisor's record
names what it did about them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from multisite_nb.adapters.alerts import load_alerts
from multisite_nb.domain.params import repo_root
from multisite_nb.domain.supervision import SupervisionRecord
from multisite_nb.run.supervise import SUPERVISION_RECORD
from multisite_nb.world.chaos import Chaos, files_lost, world_up
from multisite_nb.world.manager import World

pytestmark = [pytest.mark.slow, pytest.mark.world, pytest.mark.timeout(2400)]

BIN = Path(sys.executable).parent
SPEC = repo_root() / "parameters" / "worlds" / "groups.yaml"
CAMPAIGN = repo_root() / "parameters" / "campaign_groups.yaml"
SITES = ("RAL",)  # one site: the faults act the same, in less time (the CI suite's budget)
FAULTS = ["kill_rucio", "fail_group", "kill_supervisor", "flip_byte", "kill_daemons"]


def chaos_campaign(tmp: Path, sites: tuple[str, ...] = SITES) -> Path:
    """The groups campaign on ``sites``, its manifest's supervision quick (short waits, frequent checks)."""
    manifest = yaml.safe_load((CAMPAIGN.parent / "sites" / "embedded.yaml").read_text())
    manifest["workflow"]["bps_site_config"] = str(repo_root() / manifest["workflow"]["bps_site_config"])
    manifest["supervision"].update(watch_s=10, backoff_s=5, max_backoff_s=30, person_wait_s=30)
    (tmp / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    data = yaml.safe_load(CAMPAIGN.read_text())
    data.update(manifest=str(tmp / "manifest.yaml"), pipeline=str(CAMPAIGN.parent / data["pipeline"]))
    data["sites"] = {s: data["sites"][s] for s in sites}
    params = tmp / "campaign_groups.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    return params


@pytest.fixture(scope="module")
def chaos_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("chaos")
    params = chaos_campaign(tmp)
    world = World(tmp / "world", params, SPEC)
    world_up(world, SPEC)
    try:
        chaos = Chaos(world, params, tmp / "runs", FAULTS, seed=7, interval_s=25, first_s=20, hold_s=60, restart_s=3)
        report = chaos.run(timeout_s=1800)
        lost = files_lost(world, report.run_dir) if report.run_dir else ["no run folder"]
    finally:
        world.down(log=lambda _: None)
    return report, lost


def test_the_campaign_ends_pass_after_every_fault(chaos_run) -> None:
    report, _ = chaos_run
    log = report.log.read_text()[-6000:] if report.log else ""
    assert [i.kind for i in report.injected] == FAULTS, (report.injected, log)
    assert report.exit_code == 0, log
    assert report.restarts == 1  # the one SIGKILL of the supervisor, and it went on from its records
    qa = json.loads((report.run_dir / "results" / "qa.json").read_text())
    assert qa["passed"] and "values equal to the reference" in qa["reason"], qa["reason"]
    assert "supervise: PASS" in log


def test_no_file_is_lost(chaos_run) -> None:
    _, lost = chaos_run
    assert lost == []


def test_no_alert_was_raised_for_what_the_toolkit_rides_out(chaos_run) -> None:
    report, _ = chaos_run
    assert load_alerts(report.run_dir) == []
    assert not (report.run_dir.parent / "alerts").exists()


def test_the_supervisors_record_says_what_it_did(chaos_run) -> None:
    report, _ = chaos_run
    record = SupervisionRecord.model_validate_json((report.run_dir / SUPERVISION_RECORD).read_text())
    assert record.verdict == "PASS"
    assert record.attempts >= 2  # the killed supervisor's chain was resumed
    assert record.faults_ridden_out >= 2
    actions = {r.action for r in record.rounds}
    assert {"resumed", "verdict"} <= actions, actions


def test_the_run_status_reads_passed(chaos_run) -> None:
    report, _ = chaos_run
    out = subprocess.run(
        [str(BIN / "multisite-nb"), "status", str(report.run_dir)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and ": passed" in out.stdout.splitlines()[0], out.stdout
