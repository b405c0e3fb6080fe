"""QA at scale: the reference covers a sample of sky units; completeness is checked for every unit.

Fast tests: the campaign's ``qa`` key (errors naming the file and the key) and the sample's
deterministic choice, boundary units among it. World test: a one-site campaign holding two
tracts (IN2P3 gets tracts 0 and 1) with one unit per site sampled runs end to end; the
reference covers tract 0 only and reads the campaign's own central calibration, QA passes,
the registry rule agrees with the reference on the sample; then a product of an unsampled
unit is removed at the site and at the central site, and QA names it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import campaign_variant, run_through_calibration

from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.params import load_campaign
from multisite_nb.phases.qa.sample import choose_sample

NAME = "qasample"


def _write(folder: Path, name: str, **changes: Any) -> Path:
    return campaign_variant(folder, name, changes=changes)


@pytest.mark.parametrize(
    ("qa", "message"),
    [
        ({"sample_units_per_site": -1}, "key 'qa.sample_units_per_site': expected a number of units per site"),
        ({"sample_units_per_site": "most"}, "key 'qa.sample_units_per_site': expected a number of units per site"),
        ({"sample_units_per_site": True}, "key 'qa.sample_units_per_site': expected a number of units per site"),
        ({"sample_units_per_site": 0}, "key 'qa': the reference would cover no sky unit"),
        ({"sample": [{"tract": 7, "patch": 3}]}, "qa.sample[0]: tract 7 patch 3 is not a sky unit of any site"),
        ({"sample": [{"tract": 0, "patch": 3}, {"tract": 0, "patch": 3}]}, "sample: tract 0 patch 3 is given twice"),
        ({"sample_size": 2}, "key 'qa.sample_size': unknown key"),
    ],
)
def test_bad_qa_settings_name_the_file_and_the_key(tmp_path: Path, qa: dict[str, Any], message: str) -> None:
    path = _write(tmp_path, "bad", qa=qa)
    with pytest.raises(ConfigError) as err:
        load_campaign(path, env={})
    assert str(path) in str(err.value) and message in str(err.value), str(err.value)


def test_the_sample_is_deterministic_and_takes_boundary_units(tmp_path: Path) -> None:
    units = [{"tract": t, "patch": p} for t in range(4) for p in range(3)]  # 12 units at one site
    sites = {"IN2P3": {"sky_units": units}, "RAL": {"tracts": ["10-14"]}}
    path = _write(tmp_path, "pick", sites=sites)
    campaign = load_campaign(path, env={})
    assert campaign.config.qa.sample_units_per_site == 3  # the default: a few per site

    plain = choose_sample(campaign)
    assert plain == choose_sample(campaign)  # deterministic
    assert [str(u) for u in plain["IN2P3"]] == ["tract 0 patch 0", "tract 1 patch 1", "tract 2 patch 2"]
    assert [u.tract for u in plain["RAL"]] == [10, 11, 13]

    edge = {"IN2P3": {(3, 1), (3, 2)}, "RAL": {(14, None)}}
    picked = choose_sample(campaign, edge)
    keys = {s: {u.key for u in us} for s, us in picked.items()}
    assert len(keys["IN2P3"]) == 3 and len(keys["IN2P3"] & edge["IN2P3"]) == 2  # half, rounded up
    assert len(keys["RAL"]) == 3 and (14, None) in keys["RAL"]  # the only boundary unit

    more = _write(tmp_path, "more", sites=sites, qa={"sample_units_per_site": 1, "sample": [{"tract": 12}]})
    chosen = choose_sample(load_campaign(more, env={}))
    assert [u.key for u in chosen["RAL"]] == [(10, None), (12, None)]  # the explicit unit on top
    everything = _write(tmp_path, "all", sites=sites, qa={"sample_units_per_site": "all"})
    assert len(choose_sample(load_campaign(everything, env={}))["IN2P3"]) == 12


@pytest.mark.world
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_missing_product_of_an_unsampled_unit_is_reported(world, tmp_path: Path) -> None:
    from multisite_nb import phases
    from multisite_nb.adapters.butler.repo import open_site_butler
    from multisite_nb.run.folder import new_run

    units = [{"tract": t, "patch": p} for t in (0, 1) for p in (3, 4)]
    path = _write(tmp_path, NAME, sites={"IN2P3": {"sky_units": units}}, qa={"sample_units_per_site": 1})
    campaign = load_campaign(path)
    run_dir = new_run(tmp_path / "runs", campaign.name)
    run_through_calibration(campaign, run_dir)
    assert phases.submit.run(campaign, run_dir, "late")[0].passed
    assert phases.gather_redistribute.run(campaign, run_dir, "final")[0].passed

    result, report = phases.qa.run(campaign, run_dir)
    assert result.passed, result.reason
    sample = result.summary.sample
    assert not sample.full and sample.units == {"IN2P3": ["tract 0 patch 3", "tract 0 patch 4"]}
    assert "step2c" not in result.summary.reference_steps  # the campaign's own calibration is read
    rows = {(r.sky_unit, r.band): r for r in report.units}
    patches = {f"tract {t} patch {p}" for t in (0, 1) for p in (3, 4)}
    # tract-wide products under their tract; visit-level ones of the unsampled visits in their own cell
    assert {u for u, _ in rows} == patches | {"tract 0", "tract 1", "(visits off the sample)"}
    off = [r for (u, _), r in rows.items() if u == "(visits off the sample)"]
    assert off and all(r.at_site == r.at_central == r.expected > 0 for r in off)
    for (unit, _), r in rows.items():
        assert r.sampled == unit.startswith("tract 0"), r
        assert r.expected == r.by_rule > 0, r  # the rule agrees with the reference where both exist
    (m,) = report.metrics
    assert m.compared > 0 and m.agree
    with open_site_butler(campaign, campaign.central) as central:
        in_ref = {
            int(r.dataId["tract"])
            for r in central.query_datasets(
                "forcedSourceTable_tract", collections=[f"{NAME}/reference"], limit=None, explain=False
            )
        }
    assert in_ref == {0}  # the reference did not redo the unsampled tract

    # an unsampled unit's product goes missing at the site and at the central site
    gone = {"tract": 1, "patch": 4, "band": "g"}
    # at the central site the gathered products are in the IN2P3 step's group RUNs
    for site, pattern in (("IN2P3", f"{NAME}/IN2P3"), ("USDF", f"{NAME}/IN2P3/step3/*")):
        with open_site_butler(campaign, site, writeable=True) as butler:
            collections = list(butler.collections.query(pattern))
            refs = list(
                butler.query_datasets(
                    "deepCoadd_calexp_background",
                    collections=collections,
                    where="tract = 1 AND patch = 4 AND band = 'g'",
                    skymap=campaign.config.skymap,
                    limit=None,
                    explain=False,
                )
            )
            assert len(refs) == 1, (site, refs)
            butler.pruneDatasets(refs, disassociate=True, unstore=True, purge=True)

    result, report = phases.qa.run(campaign, run_dir)
    assert not result.passed
    assert "1 products missing" not in result.reason  # one at the site and one at the central site
    assert "2 products missing (first: IN2P3 deepCoadd_calexp_background, tract 1 patch 4)" in result.reason
    (row,) = [r for r in report.units if r.at_site < r.expected]
    assert (row.sky_unit, row.band, row.sampled) == ("tract 1 patch 4", gone["band"], False)
    assert row.at_central == row.expected - 1
    (dt,) = [r for r in report.completeness if r.missing_at_site]
    assert dt.dataset_type == "deepCoadd_calexp_background" and dt.missing_at_central == 1
