"""Placement finds boundary visits by spatial query when two sites' sky units share visits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.adapters.tables import site_files, site_table
from multisite_nb.domain.params import load_campaign, repo_root
from multisite_nb.domain.queries import id_ranges, units_where
from multisite_nb.phases.placement.plan import plan_placement
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
    from multisite_nb.domain.config import SkyUnit

    expr = units_where([SkyUnit(tract=1, patch=4), SkyUnit(tract=1, patch=3), SkyUnit(tract=2)], "sm")
    assert expr == "skymap = 'sm' AND ((tract = 1 AND patch IN (3, 4)) OR tract IN (2))"
    # whole tracts are one IN list of ranges, however many; a patch of a whole tract adds nothing
    tracts = [*range(1050), 1200, *range(1300, 1350)]
    expr = units_where([SkyUnit(tract=t) for t in tracts] + [SkyUnit(tract=7, patch=1)], "sm")
    assert expr == "skymap = 'sm' AND (tract IN (0..1049, 1200, 1300..1349))"
    assert id_ranges([5, 3, 4, 9, 1, 3]) == "1, 3..5, 9" and id_ranges([]) == ""


def test_boundary_visits_are_detected_and_placed_at_both_sites(neighbours) -> None:
    _, campaign = neighbours
    plan = plan_placement(campaign)
    assert plan.boundary_visits, "the straddling visits must be found"
    assert all(sorted(s) == ["IN2P3", "RAL"] for s in plan.boundary_visits.values())
    tables = {s: {f.id: f for f in site_files(plan, s)} for s in plan.sites}
    boundary_raws = [f for f in tables["IN2P3"].values() if f.dataset_type == "raw" and len(f.sites) > 1]
    assert boundary_raws and all(sorted(f.sites) == ["IN2P3", "RAL"] for f in boundary_raws)
    for f in boundary_raws:  # placed at every site that needs it: a row in each site's table
        assert f.id in tables["RAL"] and tables["RAL"][f.id].lfn == f.lfn
    cost = plan.boundary_cost()  # counted while the tables were written
    assert cost["files"] == len(boundary_raws) and cost["extra_copies"] == len(boundary_raws)
    assert cost["extra_bytes"] == sum(f.size for f in boundary_raws)
    # LANCS, far away, shares nothing
    assert not any("LANCS" in s for s in plan.boundary_visits.values())


def test_footprints_and_raws_found_by_other_processes_make_the_same_plan(neighbours, monkeypatch) -> None:
    """With many units, the sites' footprints are found by spawned processes (jobs of units, each
    with its own Butler), and a large observation type is read by them too, an exposure range
    each; their results merged (tables appended in order) give the plan one process gives."""
    from multisite_nb.phases.placement import footprints, plan, shards

    _, campaign = neighbours
    one = plan_placement(campaign, workers=1)
    monkeypatch.setattr(shards, "SHARD_MIN_FILES", 0)  # shard however few the files
    monkeypatch.setattr(footprints, "PARALLEL_MIN_UNITS", 0)  # and however few the units
    found_elsewhere: dict[str, Any] = {}
    settle = footprints.site_footprint

    def spy_footprint(butler, campaign, site, overlaps=None):
        if overlaps is not None:  # the spatial part came from the workers
            found_elsewhere[site] = overlaps
        return settle(butler, campaign, site, overlaps)

    monkeypatch.setattr(footprints, "site_footprint", spy_footprint)
    seen: list[list[tuple[str, int, int]]] = []
    real = plan.run_shards

    def spy(shards, *args):
        seen.append([(s.key, s.lo, s.hi) for s in shards])
        return real(shards, *args)

    monkeypatch.setattr(plan, "run_shards", spy)
    two = plan_placement(campaign, workers=2)
    assert list(found_elsewhere) == campaign.remote_sites
    # one unit a job here: LANCS's visits over both its patches were met by two jobs, their weights
    # (detector-patch overlaps) added up to what one process finds
    from multisite_nb.adapters.butler.queries import unit_records
    from multisite_nb.adapters.butler.repo import open_site_butler

    units = [(u.tract, u.patch) for u in campaign.sky_units("LANCS")]
    cfg = campaign.config
    with open_site_butler(campaign, campaign.central) as butler:
        alone = footprints.footprints(butler, campaign)["LANCS"]
        regions = {(r.tract, r.id): r.region for r in unit_records(butler, units, cfg.skymap, "patch")}
        patches = {
            visit: {p for found in hits.values() for p, _ in found}
            for visit, _, _, hits in footprints.visit_hits(butler, units, cfg.skymap, cfg.instrument, regions)
        }
    both = {v for v, ps in patches.items() if ps == {3, 4}}
    met, _ = found_elsewhere["LANCS"]
    assert both and both <= set(met), patches
    assert {v: sum(w.values()) for v, (_, w) in met.items()} == dict(alone.visit_weight)
    assert seen and all(len(shards) == 2 for shards in seen), seen
    (key, lo, mid), (_, mid2, hi) = seen[0]
    assert key == "exposure" and lo < mid == mid2 < hi
    assert two.model_dump() == one.model_dump()  # summaries, visits, owners, boundary
    for site in one.sites:
        rows = [sorted(site_table(p, site).to_pylist(), key=lambda r: r["id"]) for p in (one, two)]
        assert rows[0] == rows[1] and rows[0], site
    assert not list(Path(two.tables).parent.glob(".shards.*"))  # the shards' own tables are gone


def test_each_site_gets_only_overlapping_raws(neighbours) -> None:
    _, campaign = neighbours
    plan = plan_placement(campaign)
    lancs_visits = set(plan.visits["LANCS"])
    assert lancs_visits and not lancs_visits & (set(plan.visits["IN2P3"]) | set(plan.visits["RAL"]))
    for f in site_files(plan, "LANCS"):
        if f.dataset_type == "raw":
            assert f.data_id["exposure"] in lancs_visits  # visit id == exposure id in the synthetic world
    # no raw of a site's visit list is missing from its manifest
    for site in ("IN2P3", "RAL"):
        exposures = {f.data_id["exposure"] for f in site_files(plan, site) if f.dataset_type == "raw"}
        assert exposures == set(plan.visits[site])


def test_suggested_assignment_keeps_units_that_share_visits_together(neighbours) -> None:
    from multisite_nb.phases.placement.suggest import one_sky, suggest_assignment

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
    assert not one_sky(groups, campaign)  # the rehearsal's units lie apart: a suggestion that helps


def test_unknown_sky_unit_is_named_before_anything_is_planned(neighbours, tmp_path) -> None:
    from multisite_nb.domain.errors import ConfigError

    world, campaign = neighbours
    data = yaml.safe_load(campaign.path.read_text())
    data["sites"]["RAL"]["sky_units"] = [{"tract": 0, "patch": 4}, {"tract": 7, "patch": 1}]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    bad = load_campaign(path, env={"MSNB_WORLD": str(world)})
    with pytest.raises(
        ConfigError, match=r"bad\.yaml: key 'sites\.RAL\.sky_units\.1': not in sky map '\w+' \(got 'tract 7 patch 1'\)"
    ):
        plan_placement(bad)


# --------------------------------------------------------------------------- many tracts


@pytest.fixture(scope="module")
def many_tracts(tmp_path_factory) -> tuple[Path, object]:
    """32 tracts; IN2P3 holds patch units across 30 of them and one whole tract, RAL the rest.

    Spelled as one registry expression, IN2P3's units are an OR over 30 tracts, which
    daf_butler's normal form turns into an expression SQLite refuses from about ten.
    """
    from multisite_nb.world.spec import BandSpec, TargetSpec, TractSpec

    world = tmp_path_factory.mktemp("many")
    n = 32
    spec = SkySpec(
        skymap="many_tracts",
        tracts=[TractSpec(id=t, ra=10.0 + 3.0 * (t % 16), dec=-20.0 + 3.0 * (t // 16)) for t in range(n)],
        targets=[TargetSpec(tract=t, patches=[p]) for t in range(n) for p in (3, 4)],
        bands=[BandSpec(band="g", physical_filter="HSC-G")],
        visits_per_band=1,
        detector_grid=(1, 1),
    )
    create_site_repo(world / "butler" / "USDF", world / "rse" / "USDF_DISK")
    populate_central(world / "butler" / "USDF", spec)
    data = yaml.safe_load(CAMPAIGN.read_text())
    data.update(skymap="many_tracts", manifest=str(CAMPAIGN.parent / data["manifest"]))
    data["pipeline"] = str(CAMPAIGN.parent / data["pipeline"])
    in2p3 = [{"tract": t, "patch": 3} for t in range(30)] + [{"tract": t, "patch": 4} for t in range(0, 30, 2)]
    ral = [{"tract": t, "patch": 4} for t in range(1, 30, 2)] + [{"tract": 31}]
    data["sites"] = {
        "IN2P3": {"share": 0.6, "sky_units": [*in2p3, {"tract": 30}]},
        "RAL": {"share": 0.4, "sky_units": ral},
    }
    path = world / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    return world, load_campaign(path, env={"MSNB_WORLD": str(world)})


def test_sky_units_over_many_tracts_are_queried_as_uploaded_data_ids(many_tracts) -> None:
    from multisite_nb.adapters.butler.queries import unit_data_ids
    from multisite_nb.domain.config import SkyUnit

    _, campaign = many_tracts
    units = campaign.sky_units("IN2P3")
    assert len({u.tract for u in units}) == 31 and len(units) == 46
    with open_site_butler(campaign, "USDF") as butler:
        found = set(unit_data_ids(butler, [(u.tract, u.patch) for u in units], "many_tracts", ["visit", "patch"]))
        one_by_one = {  # the reference: each unit alone, a one-term expression
            d
            for u in units
            for d in butler.query_data_ids(
                ["visit", "patch"], where=units_where([u], "many_tracts"), limit=None, explain=False
            )
        }
    assert found == one_by_one
    assert {(d["tract"], d["patch"]) for d in found if d["tract"] < 30} == {
        (u.tract, u.patch) for u in units if u.patch is not None
    }
    assert {d["patch"] for d in found if d["tract"] == 30} == {3, 4}  # the whole tract: every patch observed
    # a site of 1,500 whole tracts is one range to the registry (a literal per tract is an
    # equality each, OR-ed: SQLite refuses such a list from about 1,000 tracts)
    with open_site_butler(campaign, "USDF") as butler:
        where = units_where([SkyUnit(tract=t) for t in range(1500)], "many_tracts")
        visits = {d["visit"] for d in butler.query_data_ids(["visit", "tract"], where=where, explain=False)}
        every = {r.id for r in butler.query_dimension_records("visit", explain=False, limit=None)}
    assert visits == every and len(every) > len({d["visit"] for d in found})  # every site's visits


def test_placement_plans_a_site_over_many_tracts(many_tracts) -> None:
    _, campaign = many_tracts
    plan = plan_placement(campaign)
    # one visit per target: 30 + 15 patch units and the two observed patches of tract 30
    assert len(plan.visits["IN2P3"]) == 30 + 15 + 2
    assert len(plan.visits["RAL"]) == 15 + 2
    assert not set(plan.visits["IN2P3"]) & set(plan.visits["RAL"]) and not plan.boundary_visits


def test_a_failing_worker_is_named_and_leaves_no_shard_behind(neighbours, tmp_path) -> None:
    """A shard whose reading fails in its worker: the error names the dataset type and the range,
    the workers are stopped, and no table of the shards stays behind."""
    from multisite_nb.adapters.tables import FileTableWriter
    from multisite_nb.domain.errors import PlanError
    from multisite_nb.phases.placement.shards import Shard, run_shards
    from multisite_nb.phases.placement.workers import Workers

    world, campaign = neighbours
    repo = campaign.butler_repo(campaign.central)
    shards = [
        Shard(repo, None, "raw", ["no/such/collection"], "exposure", 0, 10, "HSC", {}, False, {}),
        Shard(repo, None, "raw", ["no/such/collection"], "exposure", 10, 20, "HSC", {}, False, {}),
    ]
    writer = FileTableWriter(tmp_path, ["IN2P3"])
    workers = Workers(2)
    try:
        with pytest.raises(PlanError, match=r"placement: reading raw \(exposure 0\.\.9\): .*no/such/collection"):
            run_shards(shards, writer, {}, tmp_path / ".shards", workers)
    finally:
        workers.close(stop=True)
        writer.abort()
    assert not [f for f in tmp_path.rglob("*") if f.is_file()]  # each failed shard dropped what it wrote


def test_a_footprint_admits_its_own_instruments_exposures_only(neighbours) -> None:
    """Exposure, visit and detector IDs are numbered per instrument: a central repository holding
    several cameras' raws (USDF's does) must not ship another camera's raw with the same IDs."""
    from multisite_nb.phases.placement.footprints import footprints

    _, campaign = neighbours
    with open_site_butler(campaign, campaign.central) as butler:
        fp = footprints(butler, campaign)["IN2P3"]
        universe = butler.dimensions
    visit = min(fp.visit_detectors)
    exposure = next(e for e, v in fp.exposure_visit.items() if v == visit)
    detector = min(fp.visit_detectors[visit])
    raw = {"instrument": campaign.config.instrument, "exposure": exposure, "detector": detector}
    assert fp.admits_mapping(raw, universe)
    assert not fp.admits_mapping(raw | {"instrument": "LSSTCam"}, universe)
    calib = {"instrument": campaign.config.instrument, "detector": detector}
    assert fp.admits_mapping(calib, universe) and not fp.admits_mapping(calib | {"instrument": "LATISS"}, universe)
    # a site whose units no visit meets still takes its instrument's datasets that need no visit
    world, _ = neighbours
    data = yaml.safe_load((world / "campaign.yaml").read_text())
    data["sites"]["IN2P3"]["sky_units"] = [{"tract": 0, "patch": 0}]
    (world / "no_visits.yaml").write_text(yaml.safe_dump(data))
    lonely = load_campaign(world / "no_visits.yaml", env={"MSNB_WORLD": str(world)})
    with open_site_butler(lonely, lonely.central) as butler:
        empty = footprints(butler, lonely)["IN2P3"]
    assert not empty.visit_detectors
    assert empty.admits_mapping(calib, universe) and not empty.admits_mapping(raw, universe)
    assert not empty.admits_mapping(calib | {"instrument": "LATISS"}, universe)


@pytest.fixture(scope="module")
def wide(tmp_path_factory) -> tuple[Any, object]:
    """Visits wider than a tract (as LSSTCam's are): each meets patches of several tracts and sites."""
    from multisite_nb.world.spec import TractGridSpec

    world = tmp_path_factory.mktemp("wide")
    spec = SkySpec(
        skymap="wide_visits",
        tract_grid=TractGridSpec(n_ra=3, n_dec=2, ra0=40.0, dec0=-30.0),
        patches_per_side=4,
        detector_grid=(4, 4),
        visits_per_band=2,
        visit_size_deg=1.3,
        footprint_inset_deg=0.0,
        dither_deg=0.15,
    )
    create_site_repo(world / "butler" / "USDF", world / "rse" / "USDF_DISK")
    populate_central(world / "butler" / "USDF", spec)
    data = yaml.safe_load(CAMPAIGN.read_text())
    data.update(skymap="wide_visits", manifest=str(CAMPAIGN.parent / data["manifest"]))
    data["pipeline"] = str(CAMPAIGN.parent / data["pipeline"])
    data["sites"]["IN2P3"]["sky_units"] = [{"tract": 0}, {"tract": 1}, {"tract": 2}]
    data["sites"]["RAL"]["sky_units"] = [{"tract": 3}, {"tract": 4, "patch": 0}, {"tract": 4, "patch": 5}]
    data["sites"]["LANCS"]["sky_units"] = [{"tract": 5}, {"tract": 4, "patch": 15}]
    path = world / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    from multisite_nb.world.synthetic import build_sky

    return build_sky(spec), load_campaign(path, env={"MSNB_WORLD": str(world)})


def test_wide_visits_footprints_match_the_detector_regions(wide) -> None:
    """Each site's visits and their weights (detector-patch overlaps) are those the model's own
    regions give, with visits meeting hundreds of detector-patch pairs across tracts and sites."""
    from multisite_nb.phases.placement import footprints as module
    from multisite_nb.phases.placement.footprints import footprints
    from multisite_nb.phases.placement.workers import Workers

    model, campaign = wide
    with open_site_butler(campaign, campaign.central) as butler:
        fps = footprints(butler, campaign)
        workers = Workers(2)
        try:  # jobs of units in worker processes, their weights added up: the same footprints
            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(module, "PARALLEL_MIN_UNITS", 0)
                by_jobs = footprints(butler, campaign, workers)
        finally:
            workers.close()
    multi_tract = 0
    for site in campaign.remote_sites:
        patches = [
            (u.tract, p.region)
            for u in campaign.sky_units(site)
            for p in model.tracts[u.tract].patches
            if u.patch is None or p.id == u.patch
        ]
        hits = {  # visit -> tract -> detector-patch overlaps there
            o.visit: {
                t: n
                for t in {t for t, _ in patches}
                if (
                    n := sum(
                        r.overlaps(p) is not False for r in o.detector_regions.values() for u, p in patches if u == t
                    )
                )
            }
            for o in model.observations
        }
        hits = {v: h for v, h in hits.items() if h}
        multi_tract += sum(len(h) > 1 for h in hits.values())
        fp = fps[site]
        assert dict(fp.visit_weight) == {v: sum(h.values()) for v, h in hits.items()}, site
        assert set(fp.visit_detectors) == set(hits)
        assert fp.visit_tract == {v: min(h) for v, h in hits.items()}, site  # the lowest tract a detector meets
        assert fp.values["tract"] == {t for h in hits.values() for t in h}
        other = by_jobs[site]
        assert (dict(other.visit_weight), other.visit_tract) == (dict(fp.visit_weight), fp.visit_tract), site
        assert other.values == fp.values and other.visit_detectors == fp.visit_detectors
    shared = set(fps["IN2P3"].visit_weight) & set(fps["RAL"].visit_weight)
    assert shared and max(max(fp.visit_weight.values()) for fp in fps.values()) > 16  # wide: many pairs a visit
    assert multi_tract  # visits whose detectors meet several tracts of one site


def test_wide_visits_merge_the_suggested_groups_into_one_sky(wide) -> None:
    """Over a contiguous sky of wide visits every unit shares visits with a neighbour: one group,
    its raws counted once each (a raw meeting units of two sites is one raw)."""
    from multisite_nb.phases.placement.suggest import one_sky, suggest_assignment

    model, campaign = wide
    groups = suggest_assignment(campaign)
    regions = [
        p.region
        for s in campaign.remote_sites
        for u in campaign.sky_units(s)
        for p in model.tracts[u.tract].patches
        if u.patch is None or p.id == u.patch
    ]
    raws = sum(
        any(r.overlaps(p) is not False for p in regions)
        for o in model.observations
        for r in o.detector_regions.values()
    )
    assert sum(g.raws for g in groups) == raws
    assert max(g.raws for g in groups) == raws and one_sky(groups, campaign)
