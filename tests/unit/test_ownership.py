"""Which site is canonical for each data ID, and what no placement can make consistent (no world needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from multisite_nb.domain.config import Campaign
from multisite_nb.domain.ownership import Ownership, refusals, split_tracts, tract_owners, visit_owners
from multisite_nb.domain.params import load_campaign, repo_root
from multisite_nb.domain.wiring import load_pipeline_graph

CAMPAIGN = repo_root() / "parameters" / "campaign_3x3.yaml"
ENV = {"MSNB_WORLD": "/nonexistent/world"}


def variant(tmp_path: Path, sites: dict[str, list[dict[str, int]]]) -> Campaign:
    """The 3x3 campaign with other sky units (paths made absolute, so it loads from ``tmp_path``)."""
    data = yaml.safe_load(CAMPAIGN.read_text())
    data["manifest"] = str(CAMPAIGN.parent / data["manifest"])
    data["pipeline"] = str(CAMPAIGN.parent / data["pipeline"])
    data["sites"] = {s: {"sky_units": units} for s, units in sites.items()}
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_campaign(path, env=ENV)


def test_a_data_id_belongs_to_the_unit_visit_or_tract_that_holds_it() -> None:
    campaign = load_campaign(CAMPAIGN, env=ENV)
    owners = Ownership(campaign, visit_owner={1001: "RAL", 1002: "IN2P3"}, exposure_visit={5001: 1001})
    assert owners.owner({"tract": 0, "patch": 3}) == "IN2P3"
    assert owners.owner({"tract": 1, "patch": 4, "band": "r"}) == "RAL"
    assert owners.owner({"tract": 9, "patch": 0}) is None  # outside the campaign
    assert owners.owner({"visit": 1002, "detector": 3}) == "IN2P3"
    assert owners.owner({"exposure": 5001, "detector": 0}) == "RAL"  # through its visit
    assert owners.owner({"exposure": 9999}) is None
    assert owners.owner({"tract": 2, "skymap": "s"}) == "LANCS"
    assert owners.owner({"instrument": "HSC"}) is None  # global
    assert owners.is_canonical("RAL", {"visit": 1001}) and not owners.is_canonical("IN2P3", {"visit": 1001})
    assert owners.is_canonical("LANCS", {"instrument": "HSC"})  # a global product counts everywhere


def test_a_shared_visit_goes_to_the_site_it_overlaps_most_ties_to_the_first_listed() -> None:
    weights = {"IN2P3": {1: 3, 2: 1, 3: 2}, "RAL": {1: 1, 2: 4, 3: 2}}
    assert visit_owners(weights, ["IN2P3", "RAL"]) == {1: "IN2P3", 2: "RAL", 3: "IN2P3"}
    assert visit_owners(weights, ["RAL", "IN2P3"])[3] == "RAL"


def test_a_tract_is_owned_whole_or_by_most_patches(tmp_path: Path) -> None:
    campaign = variant(
        tmp_path,
        {
            "IN2P3": [{"tract": 0, "patch": 3}, {"tract": 0, "patch": 4}, {"tract": 1, "patch": 0}],
            "RAL": [{"tract": 1, "patch": 3}, {"tract": 1, "patch": 4}],
            "LANCS": [{"tract": 2}],
        },
    )
    assert split_tracts(campaign) == {1: ["IN2P3", "RAL"]}
    assert tract_owners(campaign) == {0: "IN2P3", 1: "RAL", 2: "LANCS"}


def test_a_split_tract_under_a_whole_tract_task_is_refused(tmp_path: Path) -> None:
    graph = load_pipeline_graph(CAMPAIGN.parent / "pipelines" / "drp_3x3.yaml")
    whole = load_campaign(CAMPAIGN, env=ENV)
    assert refusals(whole, graph) == []  # the rehearsal's sky: no tract is split
    split = variant(
        tmp_path,
        {"IN2P3": [{"tract": 0, "patch": 3}], "RAL": [{"tract": 0, "patch": 4}], "LANCS": [{"tract": 2}]},
    )
    found = refusals(split, graph)
    assert found, "a tract split between two sites, with tract-level tasks at the sites, is refused"
    assert all("tract 0 is split between IN2P3, RAL" in r for r in found)
    assert any("works on whole tracts" in r for r in found)


@pytest.mark.parametrize("data_id", [{"tract": "0", "patch": "3"}, {"visit": "1001"}])
def test_values_given_as_text_are_read_as_ids(data_id: dict[str, str]) -> None:
    campaign = load_campaign(CAMPAIGN, env=ENV)
    owners = Ownership(campaign, {1001: "LANCS"}, {})
    assert owners.owner(data_id) in ("IN2P3", "LANCS")
