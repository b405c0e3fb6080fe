"""Collisions are found at placement, before any byte moves.

A second campaign that reuses the first one's output prefix is refused naming the owner; a
dataset type defined differently at a site is named; a STUCK rule of the campaign's own
placement is not reused but reported with the way to repair it. Rucio holds no new rule.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from lsst.daf.butler import DatasetType
from test_dashboard import stuck_rule

from multisite_nb import phases
from multisite_nb.adapters.butler.repo import open_butler
from multisite_nb.adapters.rucio.ops import RucioOps
from multisite_nb.domain.errors import GateError
from multisite_nb.domain.naming import placement_dataset
from multisite_nb.domain.params import load_campaign, repo_root
from multisite_nb.phases.collisions import _type_conflicts, claim
from multisite_nb.run.folder import new_run

pytestmark = [pytest.mark.world, pytest.mark.timeout(600)]


def _other_campaign(tmp_path: Path):
    """A campaign named 'collide' writing under the shipped campaign's prefix (same scope, same world)."""
    src = repo_root() / "parameters" / "campaign_3x3.yaml"
    data = yaml.safe_load(src.read_text())
    data.update(
        campaign="collide", manifest=str(src.parent / data["manifest"]), pipeline=str(src.parent / data["pipeline"])
    )
    path = tmp_path / "collide.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_campaign(path)


def test_another_campaigns_prefix_and_a_stuck_rule_are_refused_at_placement(world, tmp_path: Path) -> None:
    for site in world.campaign.all_sites:  # the shipped campaign owns its prefix (as its transfer does)
        claim(world.campaign, site)
    other = _other_campaign(tmp_path)
    ops = RucioOps.for_campaign(other)
    rules_before = {r.id for r in ops.list_rules()}
    with stuck_rule(other, "RAL", dataset=placement_dataset(other, "RAL")) as rule_id:
        run_dir = new_run(tmp_path / "runs", other.name)
        result, _ = phases.placement.run(other, run_dir)
        assert not result.passed and "collision" in result.reason
        found = result.summary.collisions
        assert any(
            c.startswith("IN2P3: collections under 3x3/ exist") and "multisite_nb campaign 3x3" in c for c in found
        ), found
        assert any(
            c.startswith(f"RAL: rule {rule_id}") and "STUCK" in c and "multisite-nb repair" in c for c in found
        ), found
        with pytest.raises(GateError, match="placement.* failed its gate: .* collision"):
            phases.transfer.run(other, run_dir)  # the gate failed: nothing moves
    assert {r.id for r in ops.list_rules()} - rules_before == {rule_id}  # only the test's own rule


def test_a_dataset_type_defined_differently_is_named(world) -> None:
    with open_butler(world.campaign.butler_repo("USDF")) as butler:
        raw = butler.get_dataset_type("raw")
        other = DatasetType("raw", butler.dimensions.conform(["instrument", "detector"]), raw.storageClass_name)
        problems = _type_conflicts("USDF", butler, [raw, other])
    assert len(problems) == 1 and problems[0].startswith("USDF: dataset type raw is defined as")


def test_a_tract_split_under_a_whole_tract_site_task_is_refused_before_anything_moves(world, tmp_path: Path) -> None:
    """drp_3x3 runs isolatedStarAssociation (per tract) at the sites: tract 0 cannot be split between them."""
    src = repo_root() / "parameters" / "campaign_3x3.yaml"
    data = yaml.safe_load(src.read_text())
    data.update(
        campaign="split", manifest=str(src.parent / data["manifest"]), pipeline=str(src.parent / data["pipeline"])
    )
    data["sites"]["RAL"]["sky_units"] = [{"tract": 0, "patch": 5}, {"tract": 1, "patch": 3}]
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump(data))
    campaign = load_campaign(path)
    result, _ = phases.placement.run(campaign, new_run(tmp_path / "runs", campaign.name))
    assert not result.passed
    assert result.reason.startswith("cannot be made consistent")
    assert (
        "tract 0 is split between IN2P3, RAL, but task gbdesAstrometricFit (step2b, site stage early)" in result.reason
    )
    refused = result.summary.refused
    for task in ("isolatedStarAssociation", "consolidateObjectTable", "consolidateForcedSourceTable"):
        assert any(f"task {task} (" in r for r in refused), refused
    ops = RucioOps.for_campaign(campaign)
    assert not [r for r in ops.list_rules() if r.name.startswith("split.")]  # nothing moved
