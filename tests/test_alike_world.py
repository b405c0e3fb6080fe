"""Sites checked alike on the real world: fingerprints read from the placed sites' Butlers and environments.

One placement, transfer and verification (idempotent on the session's world); then the sites
compare alike, and a site whose dataset type is defined otherwise, or whose calibration is
certified otherwise, is refused naming it. The submit phase refuses such a stage before anything
runs. Every change to a site's repository is undone.
"""

from __future__ import annotations

import time

import pytest
from conftest import campaign_variant
from lsst.daf.butler import CollectionType, DatasetType, Timespan

from multisite_nb import phases
from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.domain.alike import ItemKind
from multisite_nb.domain.params import load_campaign
from multisite_nb.domain.wiring import load_pipeline_graph
from multisite_nb.phases.alike import check_alike, fingerprints

pytestmark = pytest.mark.world


@pytest.fixture(scope="module")
def placed(world, tmp_path_factory):
    """A run folder whose placement, transfer and verification passed (the sites hold their inputs)."""
    run_dir = tmp_path_factory.mktemp("alike") / "run"
    assert phases.placement.run(world.campaign, run_dir)[0].passed
    assert phases.transfer.run(world.campaign, run_dir, progress=False)[0].passed
    assert phases.verify.run(world.campaign, run_dir)[0].passed
    return run_dir


def test_placed_sites_are_alike_and_the_check_costs_little(world, placed, tmp_path) -> None:
    campaign = world.campaign
    found, unreadable = fingerprints(campaign, "early", campaign.remote_sites, folder=tmp_path)
    assert not unreadable and [f.site for f in found] == campaign.remote_sites
    ral = found[1]
    assert {"lsst-daf-butler", "lsst-pipe-base", "lsst-ctrl-mpexec", "multisite-nb", "python"} <= set(ral.software)
    assert set(ral.task_configs) >= {"isr", "calibrateImage"}
    assert ral.collections["HSC/defaults"].startswith("CHAINED: ") and ral.collections["HSC/calib"] == "CALIBRATION"
    assert {"bias", "flat"} <= set(ral.contents["HSC/calib"])  # the calibrations, with their validity ranges
    assert ral.contents["HSC/calib"]["flat"].count > 0 and "raw" not in ral.dataset_types  # raws: the site's own
    for stage in ("early", "late"):
        t0 = time.monotonic()
        assert check_alike(campaign, stage, campaign.remote_sites, folder=tmp_path) == []
        print(f"check_alike {stage}: {time.monotonic() - t0:.2f} s")


def test_a_site_whose_dataset_type_differs_is_refused_and_nothing_is_submitted(world, placed, tmp_path) -> None:
    campaign = world.campaign
    graph = load_pipeline_graph(campaign.pipeline_path)
    with open_site_butler(campaign, "RAL", writeable=True) as butler:
        # a type the stage makes that RAL's repository does not hold yet (calexp, before step 1 ran there)
        registered = {dt.name for dt in butler.registry.queryDatasetTypes()}
        name = next(n for n in ("calexp", "preSource", "postISRCCD") if n not in registered)
        node = graph.dataset_types[name]
        dims = ", ".join(node.dimensions.required)
        assert butler.registry.registerDatasetType(
            DatasetType(name, node.dimensions, "Packages", universe=butler.dimensions)
        )
    try:
        diffs = check_alike(campaign, "early", campaign.remote_sites, folder=tmp_path)
        assert [(d.site, d.kind, d.item) for d in diffs] == [("RAL", ItemKind.DATASET_TYPE, name)]
        assert diffs[0].message == (
            f"site RAL: dataset type {name!r} is '{dims} | Packages' here "
            f"but '{dims} | {node.storage_class_name}' at IN2P3"
        )
        # the submit phase refuses the stage: nothing submitted, the gate names site, item and both values
        variant = load_campaign(campaign_variant(tmp_path, "alike"))
        result, steps = phases.submit.run(variant, placed, "early")
        assert not result.passed and diffs[0].message in result.reason
        assert result.reason.startswith("the sites of stage 'early' differ, nothing submitted")
        assert set(steps) == set(campaign.remote_sites)
        for site in campaign.all_sites:
            with open_site_butler(campaign, site) as b:
                assert not b.collections.query("alike/*")
    finally:
        with open_site_butler(campaign, "RAL", writeable=True) as butler:
            butler.registry.removeDatasetType(name)


def test_a_site_whose_calibration_differs_is_refused_naming_it(world, placed, tmp_path) -> None:
    campaign = world.campaign
    with open_site_butler(campaign, "LANCS", writeable=True) as butler:
        assoc = next(
            iter(
                butler.registry.queryDatasetAssociations(
                    "flat", collections=["HSC/calib"], collectionTypes={CollectionType.CALIBRATION}
                )
            )
        )
        ref, span = assoc.ref, assoc.timespan
        assert span is not None and span.begin is not None
        shorter = Timespan(span.begin, span.begin + (span.end - span.begin) / 2)
        butler.registry.decertify("HSC/calib", "flat", span, dataIds=[ref.dataId])
        butler.registry.certify("HSC/calib", [ref], shorter)
    try:
        diffs = check_alike(campaign, "early", campaign.remote_sites, folder=tmp_path)
        key = ", ".join(f"{k}={v}" for k, v in ref.dataId.required.items())
        assert [(d.site, d.kind, d.item, d.reference_site) for d in diffs] == [
            ("LANCS", ItemKind.CONTENT, f"HSC/calib: flat {key}", "IN2P3")
        ]
        assert " valid " in diffs[0].value and diffs[0].value != diffs[0].reference_value
    finally:
        with open_site_butler(campaign, "LANCS", writeable=True) as butler:
            butler.registry.decertify("HSC/calib", "flat", shorter, dataIds=[ref.dataId])
            butler.registry.certify("HSC/calib", [ref], span)
    assert check_alike(campaign, "early", campaign.remote_sites, folder=tmp_path) == []
