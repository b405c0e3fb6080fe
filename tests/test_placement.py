"""Placement finds boundary visits by spatial query when two sites' sky units share visits."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from multisite_nb.config import load_campaign, repo_root
from multisite_nb.placement import plan_placement, units_where
from multisite_nb.world.butler_world import create_site_repo, populate_central
from multisite_nb.world.synthetic import SkySpec

CAMPAIGN = repo_root() / "parameters" / "campaign_3x3.yaml"


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory) -> tuple[Path, object]:
    """A central repo where IN2P3 and RAL own neighbouring patches of tract 0."""
    world = tmp_path_factory.mktemp("neighbours")
    create_site_repo(world / "butler" / "USDF", world / "rse" / "USDF_DISK")
    populate_central(world / "butler" / "USDF", SkySpec.neighbours_example(boundary_visits=1))
    data = yaml.safe_load(CAMPAIGN.read_text())
    data["manifest"] = str(CAMPAIGN.parent / data["manifest"])
    data["pipeline"] = str(CAMPAIGN.parent / data["pipeline"])
    data["sites"]["IN2P3"]["sky_units"] = [{"tract": 0, "patch": 3}]
    data["sites"]["RAL"]["sky_units"] = [{"tract": 0, "patch": 4}]
    data["sites"]["LANCS"]["sky_units"] = [{"tract": 1, "patch": 3}, {"tract": 1, "patch": 4}]
    path = world / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    return world, load_campaign(path, env={"MSNB_WORLD": str(world)})


def test_units_where() -> None:
    from multisite_nb.config import SkyUnit

    expr = units_where([SkyUnit(tract=1, patch=4), SkyUnit(tract=1, patch=3), SkyUnit(tract=2)], "sm")
    assert expr == "skymap = 'sm' AND ((tract = 1 AND patch IN (3, 4)) OR tract = 2)"


def test_boundary_visits_are_detected_and_placed_at_both_sites(neighbours) -> None:
    _, campaign = neighbours
    plan = plan_placement(campaign)
    assert plan.boundary_visits, "the straddling visits must be found"
    assert all(sorted(s) == ["IN2P3", "RAL"] for s in plan.boundary_visits.values())
    boundary_raws = [f for f in plan.boundary_files if f.dataset_type == "raw"]
    assert boundary_raws and all(sorted(f.sites) == ["IN2P3", "RAL"] for f in boundary_raws)
    for f in boundary_raws:  # placed at every site that needs it
        assert f.id in plan.sites["IN2P3"] and f.id in plan.sites["RAL"]
    cost = plan.boundary_cost()
    assert cost["extra_copies"] == len(boundary_raws)
    assert cost["extra_bytes"] == sum(f.size for f in boundary_raws)
    # LANCS, far away, shares nothing
    assert not any("LANCS" in s for s in plan.boundary_visits.values())


def test_each_site_gets_only_overlapping_raws(neighbours) -> None:
    _, campaign = neighbours
    plan = plan_placement(campaign)
    lancs_visits = set(plan.visits["LANCS"])
    assert lancs_visits and not lancs_visits & (set(plan.visits["IN2P3"]) | set(plan.visits["RAL"]))
    for f in plan.site_files("LANCS"):
        if f.dataset_type == "raw":
            assert f.data_id["exposure"] in lancs_visits  # visit id == exposure id in the synthetic world
    # no raw of a site's visit list is missing from its manifest
    for site in ("IN2P3", "RAL"):
        exposures = {f.data_id["exposure"] for f in plan.site_files(site) if f.dataset_type == "raw"}
        assert exposures == set(plan.visits[site])


def test_suggested_assignment_keeps_units_that_share_visits_together(neighbours) -> None:
    from multisite_nb.placement import suggest_assignment

    _, campaign = neighbours
    groups = suggest_assignment(campaign)
    by_units = {tuple(g.units): g for g in groups}
    assert ("tract 0 patch 3", "tract 0 patch 4") in by_units  # linked by the boundary visits
    assert len(groups) == 2  # tract 0 pair, tract 1 pair (LANCS' two patches share their visits)
    big = by_units[("tract 0 patch 3", "tract 0 patch 4")]
    assert big.raws == max(g.raws for g in groups)
    assert big.site == "IN2P3"  # the largest share takes the largest group first
    assert all(g.site in campaign.remote_sites for g in groups)
    assert suggest_assignment(campaign) == groups  # deterministic


def test_unknown_sky_unit_is_named_before_anything_is_planned(neighbours, tmp_path) -> None:
    from multisite_nb.config import ConfigError

    world, campaign = neighbours
    data = yaml.safe_load(campaign.path.read_text())
    data["sites"]["RAL"]["sky_units"] = [{"tract": 0, "patch": 4}, {"tract": 7, "patch": 1}]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    bad = load_campaign(path, env={"MSNB_WORLD": str(world)})
    with pytest.raises(
        ConfigError, match=r"bad\.yaml: key 'sites\.RAL\.sky_units\[1\]': tract 7 patch 1 is not in sky map"
    ):
        plan_placement(bad)
