"""Cleanup removes a campaign's products on purpose, Butler collections and Rucio rules together.

A one-site campaign with its own prefix runs its early stage and the central calibration
(products at the site and at the centre, gather and redistribution rules). ``multisite-nb
cleanup`` first lists what would go and changes nothing; with ``--yes`` the collections under
the prefix are gone from every Butler and the campaign's product rules from Rucio, while the
placement rules that pin the sites' inputs stay; placing the campaign again finds no collision.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from multisite_nb import phases
from multisite_nb.butler_ops import open_butler
from multisite_nb.config import load_campaign, repo_root
from multisite_nb.rucio_ops import RucioOps
from multisite_nb.runfolder import new_run

pytestmark = [pytest.mark.world, pytest.mark.slow, pytest.mark.timeout(1200)]
BIN = Path(sys.executable).parent


def test_cleanup_lists_then_removes_products_and_their_rules(world, tmp_path: Path) -> None:
    src = repo_root() / "parameters" / "campaign_3x3.yaml"
    data = yaml.safe_load(src.read_text())
    data.update(
        campaign="cleantest",
        scope="3x3",
        manifest=str(src.parent / data["manifest"]),
        pipeline=str(src.parent / data["pipeline"]),
        collections={"inputs": ["HSC/defaults"], "output_prefix": "cleantest"},
    )
    data["sites"] = {"RAL": data["sites"]["RAL"]}
    path = tmp_path / "cleantest.yaml"
    path.write_text(yaml.safe_dump(data))
    campaign = load_campaign(path)
    run_dir = new_run(tmp_path / "runs", campaign.name)
    for phase in (phases.placement, phases.transfer, phases.verify):
        assert phase(campaign, run_dir)[0].passed
    assert phases.submit(campaign, run_dir, "early")[0].passed
    assert phases.gather_redistribute(campaign, run_dir, "calibration")[0].passed

    ops = RucioOps.for_campaign(campaign)

    def ours() -> tuple[set[str], set[str]]:
        names = {r.name for r in ops.list_rules() if r.name.startswith("cleantest.") and not r.expired()}
        return {n for n in names if ".placement." in n}, {n for n in names if ".placement." not in n}

    def collections() -> dict[str, list[str]]:
        out = {}
        for site in campaign.all_sites:
            with open_butler(campaign.butler_repo(site)) as butler:
                out[site] = sorted(butler.collections.query("cleantest/*"))
        return out

    placed, products = ours()
    before = collections()
    assert placed and products and before["RAL"] and before["USDF"]
    cmd = [str(BIN / "multisite-nb"), "cleanup", str(path), "--world", str(world.root)]
    dry = subprocess.run(cmd, env=world.env(), capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "would remove (dry run" in dry.stdout, dry.stderr
    assert "cleantest/RAL/step1" in dry.stdout and "cleantest.gather_calibration.RAL" in dry.stdout
    assert collections() == before and ours() == (placed, products)  # a dry run changes nothing

    real = subprocess.run([*cmd, "--yes"], env=world.env(), capture_output=True, text=True, timeout=600)
    assert real.returncode == 0, real.stdout[-2000:] + real.stderr[-2000:]
    assert all(not names for names in collections().values())
    assert ours() == (placed, set())  # the placement's rules stay: they pin the sites' inputs
    assert phases.placement(campaign, new_run(tmp_path / "runs", campaign.name))[0].passed  # no collision left
