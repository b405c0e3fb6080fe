"""Phases 1-3 on the ~20,000-raw scale world, with the servers' limits exercised.

``parameters/worlds/scale_20k.yaml`` (1,500 tracts, 189-detector visits) with
``parameters/campaign_scale_20k.yaml``, its site IN2P3 alone (``scale_job.SITES``): IN2P3 holds
1,050 whole tracts (a site query over more than 1,000 tracts) and a shipment of over 16,000 files —
far over Rucio's 1,000 DIDs a call —
which, with datasets capped at 5,000 files here, travels as a container of four datasets
under one asynchronous rule. Placement, transfer and verification run through the CLI as an
operator runs them, in the background from the start of the session (``tests/scale_job.py``):
these tests run last and read what that run left.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from scale_job import SHARD, SITES

from multisite_nb.adapters.rucio.ops import RucioOps
from multisite_nb.adapters.tables import load_plan, site_files, site_table
from multisite_nb.domain.naming import placement_dataset, shard_dataset
from multisite_nb.domain.params import load_campaign, repo_root
from multisite_nb.world.spec import load_spec
from multisite_nb.world.synthetic import build_sky

PARAMS = repo_root() / "parameters"


@pytest.fixture(scope="module")
def scale_run(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The background scale run the session started at collection (``tests/scale_job.py``), awaited."""
    from conftest import SCALE_JOB

    job = request.config.stash.get(SCALE_JOB, None)
    assert job is not None, "the scale run starts when tests/test_scale.py is collected"
    return job.wait(timeout_s=2400)  # beyond the time the rest of the session gave it


@pytest.mark.slow
def test_placement_transfer_verify_pass_at_scale(scale_run: dict[str, Any]) -> None:
    assert scale_run["returncode"] == 0, f"after {scale_run['seconds']:.0f} s:\n{scale_run['output']}"
    for phase in ("placement", "transfer", "verify"):
        result = json.loads((scale_run["run_dir"] / "results" / f"{phase}.json").read_text())
        assert result["passed"], result["reason"]


@pytest.mark.slow
def test_a_site_of_over_a_thousand_tracts_gets_exactly_its_raws(scale_run: dict[str, Any]) -> None:
    """The plan equals what the sky model says each site's tracts were observed with."""
    campaign = load_campaign(scale_run["params"], env={"MSNB_WORLD": str(scale_run["world"])})
    tracts = {s: {u.tract for u in campaign.sky_units(s)} for s in campaign.remote_sites}
    assert list(tracts) == list(SITES) and len(tracts["IN2P3"]) > 1000
    _, spec = load_spec(PARAMS / "worlds" / "scale_20k.yaml")
    model = build_sky(spec)
    plan = load_plan(scale_run["run_dir"] / "artifacts" / "placement" / "plan.json")
    for site, owned in tracts.items():
        expected = {
            (o.exposure, d)
            for o in model.observations
            if spec.targets[o.targets[0]].tract in owned
            for d in o.detector_regions
        }
        table = site_table(plan, site, columns=["dataset_type", "data_id", "tract"]).to_pylist()
        raw_rows = [r for r in table if r["dataset_type"] == "raw"]
        raws = {(d["exposure"], d["detector"]) for d in (json.loads(r["data_id"]) for r in raw_rows)}
        assert raws == expected, site
        assert {r["tract"] for r in raw_rows} <= owned  # each raw is filed under one of the site's tracts
        by_tract = {t.tract: t.files for t in plan.summary.tracts if t.site == site}
        assert sum(by_tract.values()) == sum(1 for r in table if r["tract"] is not None)
    assert plan.summary.sites["IN2P3"].by_type["raw"] > 14_000


@pytest.mark.slow
def test_a_large_shipment_is_a_container_of_bounded_datasets(scale_run: dict[str, Any]) -> None:
    campaign = load_campaign(scale_run["params"], env={"MSNB_WORLD": str(scale_run["world"])})
    ops = RucioOps.for_campaign(campaign, quiet=True)
    plan = load_plan(scale_run["run_dir"] / "artifacts" / "placement" / "plan.json")
    for site in campaign.remote_sites:
        name, n = placement_dataset(campaign, site), plan.summary.sites[site].files
        if n <= SHARD:
            assert ops.did_type(name) == "DATASET"
            continue
        assert ops.did_type(name) == "CONTAINER"
        parts = sorted(d["name"] for d in ops.client.list_content(ops.scope, name))
        assert parts == [shard_dataset(name, i) for i in range(math.ceil(n / SHARD))]
        sizes = [len(ops.contents(p)) for p in parts]
        assert sum(sizes) == n and max(sizes) <= SHARD
        assert set(ops.contents(name)) == {f.lfn for f in site_files(plan, site)}
        rule = ops.find_rule(name, campaign.site(site).rse)
        assert rule is not None and ops.rule(rule.id).state == "OK"
        counts = ops.dataset_replica_counts(name)[campaign.site(site).rse]
        assert counts == {"length": n, "available": n}


@pytest.mark.slow
def test_dimension_records_travel_a_file_per_part(scale_run: dict[str, Any]) -> None:
    """Each shipment's records: one file of its shipment-wide values (sky map, tracts, patches) and
    one per part of its files, so no file grows with the shipment; the site's registry ends up with
    exactly the visits of its raws (derived from each part's exposures, not the whole repository's)."""
    from multisite_nb.adapters.butler.repo import open_site_butler
    from multisite_nb.domain.naming import records_dataset

    campaign = load_campaign(scale_run["params"], env={"MSNB_WORLD": str(scale_run["world"])})
    ops = RucioOps.for_campaign(campaign, quiet=True)
    plan = load_plan(scale_run["run_dir"] / "artifacts" / "placement" / "plan.json")
    for site in campaign.remote_sites:
        name, n = placement_dataset(campaign, site), plan.summary.sites[site].files
        files = ops.contents(records_dataset(name))
        assert len(files) == math.ceil(n / SHARD) + 1, (site, sorted(files))
        with open_site_butler(campaign, site) as butler:
            query = butler.query_dimension_records
            kw: dict[str, Any] = {"explain": False, "limit": None}
            visits = {r.id for r in query("visit", instrument=campaign.config.instrument, **kw)}
            tracts = {r.id for r in query("tract", skymap=campaign.config.skymap, **kw)}
        assert visits == set(plan.visits[site]), site
        assert tracts == {u.tract for u in campaign.sky_units(site)}, site
