"""The submit phase checks every site before it submits anything anywhere."""

from __future__ import annotations

import pytest
import yaml

from multisite_nb import phases
from multisite_nb.butler_ops import open_butler
from multisite_nb.config import load_campaign

pytestmark = pytest.mark.world


def test_a_failed_preflight_submits_nothing(world, tmp_path) -> None:
    data = yaml.safe_load(world.campaign.path.read_text())
    for key in ("manifest", "pipeline"):
        data[key] = str(world.campaign.path.parent / data[key])
    data["collections"] = {"inputs": ["HSC/defaults", "HSC/no-such-collection"], "output_prefix": "pftest"}
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    campaign = load_campaign(path)
    run_dir = tmp_path / "run"
    # phases 1-3 with the good campaign (idempotent on the shared world) ...
    assert phases.placement(world.campaign, run_dir)[0].passed
    assert phases.transfer(world.campaign, run_dir, progress=False)[0].passed
    assert phases.verify(world.campaign, run_dir)[0].passed
    # ... then a submission whose inputs name a collection no site has

    result, steps = phases.submit(campaign, run_dir, "early")
    assert not result.passed
    assert "HSC/no-such-collection" in result.reason and "(pre-flight)" in result.reason
    assert set(steps) == set(campaign.remote_sites)  # every site checked, and said why
    for site in campaign.all_sites:  # nothing was run anywhere
        with open_butler(campaign.butler_repo(site)) as butler:
            assert not butler.collections.query("pftest/*")


def test_a_running_step_shows_on_the_dashboard(world, tmp_path) -> None:
    """While a phase runs, its result file says which step is running: the site reads 'busy'."""
    from multisite_nb.phases import _InFlight
    from multisite_nb.results import load_result, utcnow
    from multisite_nb.site_status import collect

    run_dir = tmp_path / "run"
    live = _InFlight(run_dir, "submit_early", utcnow(), {"stage": "early"})
    live.site("RAL")({"step1": {"state": "ok", "succeeded": 24, "total": 24}, "step2a": {"state": "running"}})
    res = load_result(run_dir, "submit_early")
    assert not res.passed and res.summary["in_progress"] and "RAL step2a" in res.reason
    status = collect(world.campaign, run_dir, butler=False)
    assert status.states()["RAL"] == "busy"
