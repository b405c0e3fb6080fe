"""A one-site campaign over two tracts whose calibration is tampered with: QA's sampled
reference catches it; cleanup removes it.

IN2P3 holds patches 3 and 4 of tracts 0 and 1; QA's reference covers one unit per site (tract 0,
whose visits do not reach tract 1). The campaign runs its early stage and the central
calibration once (the fixture); then, in this order:

1. The calibration files of two sampled visits are swapped on the site's disk (each file now
   holds the other visit's catalogue) before the late stage runs. The pipeline notices nothing.
   After the late stage, one product of the unsampled tract is removed at the site and at the
   central site. QA's value comparison names the site, the dataset type and both visits, no other
   visit's own product differs; its completeness check names the missing product, unsampled; the
   verdict is FAIL. The sample is what the campaign set: tract 0 only (the reference did not redo
   tract 1), the campaign's own central calibration read, every other unsampled product in place,
   the registry rule agreeing with the reference where both exist. (A clean sampled campaign
   passing QA is ``test_groups_e2e.py``'s; the sample's choice is ``test_qa_sample.py``'s.)
2. The operator removes the campaign's products: ``multisite-nb cleanup`` first lists what
   would go and changes nothing; with ``--yes`` the collections under the prefix are gone from
   every Butler and the campaign's product rules from Rucio, while the placement rules that pin
   the site's inputs stay; placing the campaign again finds no collision, and shipping a product
   again makes its (softly deleted) rule permanent instead of reusing it as it is.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import campaign_variant, run_through_calibration

from multisite_nb import phases
from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.adapters.rucio.ops import RucioOps
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.params import load_campaign
from multisite_nb.run.folder import new_run

pytestmark = [pytest.mark.world, pytest.mark.slow, pytest.mark.timeout(1800)]
BIN = Path(sys.executable).parent
NAME = "swap"
UNITS = [{"tract": t, "patch": p} for t in (0, 1) for p in (3, 4)]


@pytest.fixture(scope="module")
def calibrated(world, tmp_path_factory: pytest.TempPathFactory) -> tuple[Campaign, Path, Path]:
    """The one-site campaign through the central calibration: (campaign, its file, run folder)."""
    tmp = tmp_path_factory.mktemp(NAME)
    changes = {"sites": {"IN2P3": {"sky_units": UNITS}}, "qa": {"sample_units_per_site": 1}}
    path = campaign_variant(tmp, NAME, changes=changes)
    campaign = load_campaign(path)
    run_dir = new_run(tmp / "runs", campaign.name)
    run_through_calibration(campaign, run_dir)
    return campaign, path, run_dir


def test_a_swapped_calibration_is_caught_on_the_sample(calibrated) -> None:
    campaign, _, run_dir = calibrated
    skymap = campaign.config.skymap
    with open_site_butler(campaign, campaign.central) as central:
        sampled = {
            int(d["visit"])
            for d in central.query_data_ids(
                ["visit", "patch"], where=f"skymap = '{skymap}' AND tract = 0 AND patch IN (3, 4)",
                instrument=campaign.config.instrument, limit=None, explain=False,
            )
        }  # fmt: skip
    # swap the files of two sampled visits' calibration at the site: each now says the other's numbers
    with open_site_butler(campaign, "IN2P3") as butler:
        delivered = list(butler.collections.query(f"{NAME}/USDF/step2c/*"))  # the central step's group RUNs
        refs = sorted(
            (
                r
                for r in butler.query_datasets(
                    "fgcmPhotoCalibCatalog", collections=delivered, limit=None, explain=False
                )
                if r.dataId["visit"] in sampled
            ),
            key=lambda r: r.dataId["visit"],
        )[:2]
        a, b = (Path(butler.getURI(r).ospath) for r in refs)
        visits = {r.dataId["visit"] for r in refs}
    assert len(visits) == 2
    content_a, content_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(content_b)
    b.write_bytes(content_a)

    assert phases.submit.run(campaign, run_dir, "late")[0].passed  # the pipeline itself notices nothing
    assert phases.gather_redistribute.run(campaign, run_dir, "final")[0].passed

    # an unsampled unit's product goes missing at the site and at the central site (where the
    # gathered products are in the IN2P3 step's group RUNs)
    gone = {"tract": 1, "patch": 4, "band": "g"}
    for site, pattern in (("IN2P3", f"{NAME}/IN2P3"), ("USDF", f"{NAME}/IN2P3/step3/*")):
        with open_site_butler(campaign, site, writeable=True) as butler:
            found = list(
                butler.query_datasets(
                    "deepCoadd_calexp_background",
                    collections=list(butler.collections.query(pattern)),
                    where="tract = 1 AND patch = 4 AND band = 'g'",
                    skymap=skymap,
                    limit=None,
                    explain=False,
                )
            )
            assert len(found) == 1, (site, found)
            butler.pruneDatasets(found, disassociate=True, unstore=True, purge=True)

    result, report = phases.qa.run(campaign, run_dir)
    assert not result.passed
    missing, differ = result.reason.split("; ")
    # one at the site and one at the central site, of the unsampled tract
    assert missing == "2 products missing (first: IN2P3 deepCoadd_calexp_background, tract 1 patch 4)", missing
    assert " values differ from the reference (first: IN2P3 " in differ, differ
    (row,) = [r for r in report.units if r.at_site < r.expected]
    assert (row.sky_unit, row.band, row.sampled) == ("tract 1 patch 4", gone["band"], False)
    assert row.at_central == row.expected - 1
    (dt,) = [r for r in report.completeness if r.missing_at_site]
    assert dt.dataset_type == "deepCoadd_calexp_background" and dt.missing_at_central == 1
    named = {(m.site, m.dataset_type, m.data_id.get("visit")) for m in report.mismatches}
    for visit in visits:
        assert ("IN2P3", "sourceTable_visit", visit) in named, sorted(named)
    assert all(m.site == "IN2P3" for m in report.mismatches)
    # no other visit's own product differs (tract-level ones mix the swapped visits in)
    own = {m.data_id["visit"] for m in report.mismatches if "visit" in m.data_id and "tract" not in m.data_id}
    assert own == visits, sorted(named)
    (m,) = report.metrics
    assert m.compared > 0 and not m.agree

    # the sample the campaign set: tract 0, read against the campaign's own central calibration
    sample = result.summary.sample
    assert not sample.full and sample.units == {"IN2P3": ["tract 0 patch 3", "tract 0 patch 4"]}
    assert "step2c" not in result.summary.reference_steps
    unsampled = [r for r in report.units if not r.sampled and r is not row]
    assert unsampled and all(r.at_site == r.at_central == r.expected > 0 for r in unsampled)
    patches = {f"tract {t} patch {p}" for t in (0, 1) for p in (3, 4)}
    # tract-wide products under their tract; visit-level ones of the unsampled visits in their own cell
    assert {r.sky_unit for r in report.units} == patches | {"tract 0", "tract 1", "(visits off the sample)"}
    for r in report.units:
        assert r.sampled == r.sky_unit.startswith("tract 0"), r
        assert r.expected == r.by_rule > 0, r  # the rule agrees with the reference where both exist
    with open_site_butler(campaign, campaign.central) as central:
        in_ref = {
            int(r.dataId["tract"])
            for r in central.query_datasets(
                "forcedSourceTable_tract", collections=[f"{NAME}/reference"], limit=None, explain=False
            )
        }
    assert in_ref == {0}  # the reference did not redo the unsampled tract


def test_cleanup_lists_then_removes_products_and_their_rules(world, calibrated, tmp_path: Path) -> None:
    campaign, path, _ = calibrated
    ops = RucioOps.for_campaign(campaign)

    def ours() -> tuple[set[str], set[str]]:
        names = {r.name for r in ops.list_rules() if r.name.startswith(f"{NAME}.") and not r.ending()}
        return {n for n in names if ".placement." in n}, {n for n in names if ".placement." not in n}

    def collections() -> dict[str, list[str]]:
        out = {}
        for site in campaign.all_sites:
            with open_site_butler(campaign, site) as butler:
                out[site] = sorted(butler.collections.query(f"{NAME}/*"))
        return out

    placed, products = ours()
    before = collections()
    assert placed and products and before["IN2P3"] and before["USDF"]
    cmd = [str(BIN / "multisite-nb"), "cleanup", str(path), "--world", str(world.root)]
    dry = subprocess.run(cmd, env=world.env(), capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "would remove (dry run" in dry.stdout, dry.stderr
    assert f"{NAME}/IN2P3/step1" in dry.stdout and f"{NAME}.gather_calibration.IN2P3" in dry.stdout
    assert collections() == before and ours() == (placed, products)  # a dry run changes nothing

    real = subprocess.run([*cmd, "--yes"], env=world.env(), capture_output=True, text=True, timeout=600)
    assert real.returncode == 0, real.stdout[-2000:] + real.stderr[-2000:]
    assert all(not names for names in collections().values())
    assert ours() == (placed, set())  # the placement's rules stay: they pin the sites' inputs
    assert phases.placement.run(campaign, new_run(tmp_path / "runs", campaign.name))[0].passed  # no collision left

    # Rucio deletes a rule softly (it expires within the hour): shipping the same dataset again
    # must not reuse that rule as it is, or the cleaner would take the new products' replicas.
    gone = next(r for r in ops.list_rules() if r.name == f"{NAME}.gather_calibration.IN2P3")
    assert gone.ending()
    rule_id, created = ops.ensure_rule(
        gone.name, gone.rse_expression, lifetime_s=None, activity=campaign.config.activity, comment="test"
    )
    assert (rule_id, created) == (gone.id, False) and not ops.rule(rule_id).ending()
