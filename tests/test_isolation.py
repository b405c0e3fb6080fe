"""One site down fails that site's part of each phase, with the reason, while the others go on.

LANCS's Butler is made unreadable (its ``butler.yaml`` moved away): transfer and verify fail
their gates naming LANCS, IN2P3 and RAL are done and verified; once LANCS is back, a rerun
passes and only LANCS has anything left to do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from multisite_nb import phases
from multisite_nb.run.folder import new_run

pytestmark = [pytest.mark.world, pytest.mark.timeout(600)]


@contextlib.contextmanager
def butler_down(repo: Path) -> Iterator[None]:
    config = repo / "butler.yaml"
    away = repo / "butler.yaml.down"
    config.rename(away)
    try:
        yield
    finally:
        away.rename(config)


def test_a_site_down_fails_only_its_part(world, tmp_path: Path) -> None:
    campaign = world.campaign
    run_dir = new_run(tmp_path / "runs", campaign.name)
    assert phases.placement.run(campaign, run_dir)[0].passed
    with butler_down(Path(campaign.butler_repo("LANCS"))):
        result, outcomes = phases.transfer.run(campaign, run_dir, progress=False)
        assert not result.passed and "LANCS" in result.reason and "cannot be opened" in result.reason
        by_site = {o.dest: o for o in outcomes}
        assert by_site["LANCS"].error
        assert not by_site["IN2P3"].error and not by_site["RAL"].error
        result, reports = phases.verify.run(campaign, run_dir)
        assert not result.passed and "LANCS" in result.reason
        report = {r.site: r for r in reports}
        assert report["IN2P3"].ok and report["RAL"].ok
        assert [p.kind for p in report["LANCS"].problems if p.layer == "butler"] == ["unreachable"]
        assert not any(p.layer == "disk" for p in report["LANCS"].problems)  # its files are there: only the Butler
    result, outcomes = phases.transfer.run(campaign, run_dir, progress=False)
    assert result.passed, result.reason
    assert all(o.ingested == 0 for o in outcomes if o.dest != "LANCS")  # the others had nothing left to do
    assert phases.verify.run(campaign, run_dir)[0].passed
