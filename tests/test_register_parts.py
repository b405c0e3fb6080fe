"""Registration a part at a time, on the session's world (real Rucio, real Butler).

A shipment over the manifest's ``rucio.max_files_per_dataset`` is a container of parts; the Butler
side of the next part is made while Rucio registers the current one. A part whose Butler side
fails (a planned dataset the source Butler does not have) stops registration, naming the
dataset; the parts before it are in Rucio whole, each in the container with all its files, and
nothing of the failed part or after it is; a re-run with the plan's files registers only the
rest.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml
from conftest import campaign_variant

from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.adapters.rucio.ops import RucioOps
from multisite_nb.adapters.tables import site_files
from multisite_nb.domain.errors import PlanError
from multisite_nb.domain.naming import placement_dataset, records_dataset, shard_dataset
from multisite_nb.domain.params import load_campaign, repo_root
from multisite_nb.domain.records import ShipmentOutcome
from multisite_nb.phases.placement.plan import plan_placement
from multisite_nb.phases.transfer.register import register_shipment
from multisite_nb.phases.transfer.shipment import Shipment

pytestmark = pytest.mark.world
PART = 10


def test_a_failed_part_stops_registration_after_whole_parts_and_a_rerun_finishes(world, tmp_path: Path) -> None:
    params = repo_root() / "parameters"
    manifest = yaml.safe_load((params / "sites" / "embedded.yaml").read_text())
    manifest["rucio"]["max_files_per_dataset"] = PART
    manifest["workflow"]["bps_site_config"] = str(repo_root() / manifest["workflow"]["bps_site_config"])
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    changes = {"manifest": str(tmp_path / "manifest.yaml"), "scope": "parts"}  # its own replicas
    campaign = load_campaign(campaign_variant(tmp_path, "parts", ("IN2P3",), changes=changes))
    files = site_files(plan_placement(campaign), "IN2P3")
    assert len(files) > 4 * PART
    name = placement_dataset(campaign, "IN2P3")
    bad = files[2 * PART + 5].model_copy(update={"id": str(uuid.uuid4())})  # in the third part
    ops = RucioOps.for_campaign(campaign, quiet=True)
    ops.ensure_scope()

    def register(shipped: list, outcome: ShipmentOutcome) -> None:
        shipment = Shipment(name, campaign.central, "IN2P3", shipped, raw_inputs=True)
        with open_site_butler(campaign, campaign.central) as butler:
            register_shipment(campaign, ops, butler, shipment, outcome)

    first = ShipmentOutcome(name=name, dest="IN2P3")
    with pytest.raises(PlanError, match=f"dataset {bad.id} .raw. is not in the USDF Butler"):
        register(files[: 2 * PART + 5] + [bad] + files[2 * PART + 6 :], first)
    parts = sorted(d["name"] for d in ops.client.list_content(ops.scope, name))
    assert parts == [shard_dataset(name, 0), shard_dataset(name, 1)]
    for i, part in enumerate(parts):
        assert set(ops.contents(part)) == {f.lfn for f in files[i * PART : (i + 1) * PART]}
    meta = ops.get_metadata_bulk([files[0].lfn, files[PART].lfn])
    assert all(m.get("rubin_sidecar") and m.get("rubin_butler") for m in meta.values())  # the Rubin way

    again = ShipmentOutcome(name=name, dest="IN2P3")
    register(files, again)
    assert again.newly_registered == len(files) - 2 * PART
    n_parts = -(-len(files) // PART)
    parts = sorted(d["name"] for d in ops.client.list_content(ops.scope, name))
    assert parts == sorted(shard_dataset(name, i) for i in range(n_parts))
    assert set(ops.contents(name)) == {f.lfn for f in files}
    records = again.records_files  # one per part and one of the shipment-wide values; parts of equal
    assert set(records) == set(ops.contents(records_dataset(name)))  # records share one file
    assert 3 <= len(records) <= n_parts + 1


def test_a_part_exports_the_records_of_its_own_data_ids(world) -> None:
    """What a part's records file holds, on the world's central registry: calibrations alone bring
    no visit (a detector does not bring in every visit that saw it); raws bring their exposures and,
    through the plan's link, their visits with those visits' detector regions; visit-level products
    bring their visits' exposures, with the groups those imply."""
    from multisite_nb.adapters.butler.dimensions import records_needed
    from multisite_nb.phases.transfer.shipment import values_of

    campaign = world.campaign
    with open_site_butler(campaign, campaign.central) as butler:
        kw: dict = {"explain": False, "limit": None}
        definitions = list(butler.query_dimension_records("visit_definition", instrument="HSC", **kw))
        exposure_visit = {r.exposure: r.visit for r in definitions}
        (exposure, visit), *_ = sorted(exposure_visit.items())
        detectors = {r.id for r in butler.query_dimension_records("detector", instrument="HSC", **kw)}

        calibs = records_needed(butler, {"instrument": {"HSC"}, "detector": detectors})
        assert {"instrument", "detector"} <= set(calibs)
        assert not {"visit", "visit_detector_region", "visit_system_membership", "exposure"} & set(calibs)

        raw_part = values_of([], {"instrument": ["HSC"], "exposure": [exposure], "detector": detectors})
        raws = records_needed(butler, values_of([], raw_part, [("exposure", "visit", exposure_visit)]))
        assert [r.id for r in raws["exposure"]] == [exposure] and [r.id for r in raws["visit"]] == [visit]
        assert {(r.visit, r.detector) for r in raws["visit_detector_region"]} <= {(visit, d) for d in detectors}
        assert raws["visit_detector_region"] and {"group", "day_obs", "physical_filter"} <= set(raws)
        no_link = records_needed(butler, raw_part)  # without the link, the exposure does not bring its visit
        assert "visit" not in no_link and [r.id for r in no_link["exposure"]] == [exposure]

        products = records_needed(butler, {"instrument": {"HSC"}, "visit": {visit}, "detector": detectors})
        assert {r.id for r in products["exposure"]} == {e for e, v in exposure_visit.items() if v == visit}
        groups = {r.group for r in products["exposure"]}
        assert groups and groups == {r.name for r in products["group"]}  # implied by the exposures found
