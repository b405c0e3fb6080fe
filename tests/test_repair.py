"""Faults repaired, not just reported: a corrupted remote raw is found, repaired by Rucio, and verified.

On the running world after phases 1-3: one byte flipped in a raw at RAL makes verify fail
naming the file; ``multisite-nb repair RUN_DIR --world W`` declares the replica bad, Rucio
re-replicates it from USDF (the world's transfertool replaces the bad copy after checking the
new one), and a new placement + transfer + verify passes. Placement rules carry no lifetime.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from multisite_nb import phases
from multisite_nb.adapters.results import load_result
from multisite_nb.adapters.rucio.ops import RucioOps
from multisite_nb.adapters.tables import load_plan, site_files
from multisite_nb.domain import naming
from multisite_nb.run.folder import new_run

pytestmark = [pytest.mark.world, pytest.mark.slow, pytest.mark.timeout(900)]


def _phases_1_3(world, run_dir: Path) -> None:
    for phase in (phases.placement.run, phases.transfer.run, phases.verify.run):
        phase(world.campaign, run_dir)


def test_a_flipped_byte_is_repaired_by_rucio(world, tmp_path: Path) -> None:
    campaign = world.campaign
    run_dir = new_run(tmp_path / "runs", campaign.name)
    _phases_1_3(world, run_dir)
    assert load_result(run_dir, "verify").passed
    plan = load_plan(naming.plan_path(run_dir))
    raw = next(f for f in site_files(plan, "RAL") if f.dataset_type == "raw")
    path = Path(campaign.site("RAL").rse_root or "") / raw.lfn
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, another checksum
    path.write_bytes(bytes(data))

    result, _ = phases.verify.run(campaign, run_dir)
    assert not result.passed and raw.lfn in result.reason and "corrupt" in result.reason

    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "multisite-nb"),
            "repair",
            str(run_dir),
            "--world",
            str(world.root),
            "--timeout",
            "300",
        ],
        env=world.env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"RAL    declared bad    {raw.lfn}" in out.stdout
    assert load_result(run_dir, "repair").passed
    assert path.read_bytes() != bytes(data)  # the bad copy was replaced

    # The same file corrupted again: Rucio ignores, silently, a second declaration of a replica it
    # had declared bad once (the replica stays AVAILABLE); repair sees that and declares it with force.
    twice = bytearray(path.read_bytes())
    twice[len(twice) // 3] ^= 0xFF
    path.write_bytes(bytes(twice))
    assert not phases.verify.run(campaign, run_dir)[0].passed
    second, actions, _ = phases.repair.run(campaign, run_dir, timeout_s=300, log=lambda _: None)
    assert second.passed, second.reason
    assert [a.action for a in actions if a.what == raw.lfn] == ["declared bad"]
    assert path.read_bytes() != bytes(twice)

    again = new_run(tmp_path / "runs", campaign.name)
    _phases_1_3(world, again)
    assert load_result(again, "verify").passed, load_result(again, "verify").reason
    rules = [r for r in RucioOps.for_campaign(campaign).list_rules() if ".placement." in r.name]
    assert rules and all(r.expires_at is None for r in rules)  # nothing expires under the Butler
