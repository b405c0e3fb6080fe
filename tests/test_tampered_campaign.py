"""QA fails when a site's products really differ from the single-site reference.

One site (IN2P3) runs its early stage, the central calibration, and receives its visits'
calibration; then the calibration files of two of its visits are swapped on the site's disk
(each file now holds the other visit's catalogue) before the late stage runs. The late stage
uses the wrong calibration for both visits; QA's value comparison names the site, the
dataset types and the two visits' data IDs, and the verdict is FAIL.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from multisite_nb import phases
from multisite_nb.butler_ops import open_butler
from multisite_nb.config import load_campaign, repo_root
from multisite_nb.runfolder import new_run

pytestmark = [pytest.mark.world, pytest.mark.slow, pytest.mark.timeout(1800)]


def _one_site_campaign(tmp_path: Path):
    src = repo_root() / "parameters" / "campaign_3x3.yaml"
    data = yaml.safe_load(src.read_text())
    data.update(
        campaign="swap",
        scope="3x3",
        manifest=str(src.parent / data["manifest"]),
        pipeline=str(src.parent / data["pipeline"]),
        collections={"inputs": ["HSC/defaults"], "output_prefix": "swap"},
    )
    data["sites"] = {"IN2P3": data["sites"]["IN2P3"]}
    path = tmp_path / "swap.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_campaign(path)


def test_a_swapped_calibration_is_caught_by_qa(world, tmp_path: Path) -> None:
    campaign = _one_site_campaign(tmp_path)
    run_dir = new_run(tmp_path / "runs", campaign.name)
    for phase in (phases.placement, phases.transfer, phases.verify):
        assert phase(campaign, run_dir)[0].passed
    assert phases.submit(campaign, run_dir, "early")[0].passed
    assert phases.gather_redistribute(campaign, run_dir, "calibration")[0].passed

    # swap the files of two visits' calibration at the site: each now says the other's numbers
    with open_butler(campaign.butler_repo("IN2P3")) as butler:
        refs = sorted(
            butler.query_datasets("fgcmPhotoCalibCatalog", collections=["swap/USDF/step2c"], limit=None, explain=False),
            key=lambda r: r.dataId["visit"],
        )[:2]
        a, b = (Path(butler.getURI(r).ospath) for r in refs)
        visits = [r.dataId["visit"] for r in refs]
    content_a, content_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(content_b)
    b.write_bytes(content_a)

    assert phases.submit(campaign, run_dir, "late")[0].passed  # the pipeline itself notices nothing
    assert phases.gather_redistribute(campaign, run_dir, "final")[0].passed
    result, report = phases.qa(campaign, run_dir)
    assert not result.passed
    assert "values differ from the reference (first: IN2P3" in result.reason
    named = {(m["site"], m["dataset type"], m["data id"].get("visit")) for m in report.mismatches}
    for visit in visits:
        assert ("IN2P3", "sourceTable_visit", visit) in named, sorted(named)
    assert all(m["site"] == "IN2P3" for m in report.mismatches)
