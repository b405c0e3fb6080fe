"""Phases 1-3 on the real world: placement, transfer + ingest, verification.

What the toolkit reports is checked independently with the real ``butler`` and ``rucio``
command lines. Tests share one chain run (module fixture) and then break things on purpose
(in this order: a corrupted file, then a deleted one), restoring them afterwards.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from multisite_nb import phases
from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.adapters.results import load_result
from multisite_nb.adapters.tables import load_plan, site_files
from multisite_nb.domain import naming
from multisite_nb.domain.params import repo_root
from multisite_nb.run.chain import run_chain
from multisite_nb.run.folder import new_run

pytestmark = pytest.mark.world

BIN = Path(sys.executable).parent
UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


def cli(world, *args: str) -> str:
    """Run a real CLI from the venv against the world (its env: MSNB_WORLD, RUCIO_CONFIG)."""
    out = subprocess.run([str(BIN / args[0]), *args[1:]], env=world.env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.fixture(scope="module")
def chain_run(world, tmp_path_factory):
    """The papermill chain placement -> transfer -> verify, as `multisite-nb run` does it."""
    run_dir = new_run(tmp_path_factory.mktemp("runs"), world.campaign.name)
    outcome = run_chain(
        ["placement", "transfer", "verify"],
        run_dir,
        {"campaign_file": str(world.campaign.path)},
        repo_root() / "notebooks",
        campaign=world.campaign.name,
        log=lambda m: None,
    )
    assert outcome.passed, outcome.reason
    return run_dir


def test_sites_hold_exactly_the_planned_raws(world, chain_run) -> None:
    plan = load_plan(naming.plan_path(chain_run))
    for site in world.campaign.remote_sites:
        planned = {f.id for f in site_files(plan, site) if f.dataset_type == "raw"}
        assert len(planned) == 24
        text = cli(
            world, "butler", "query-datasets", world.campaign.butler_repo(site), "raw", "--collections", "HSC/raw/all"
        )
        found = set(UUID.findall(text))
        assert found == planned, site
    # Rucio's own CLI: every placement rule OK, the one moving the files to the site and the one
    # pinning them at the source
    rules = cli(world, "rucio", "rule", "list", "--account", "multisite", "--csv")
    central = world.campaign.site(world.campaign.central).rse
    for site in world.campaign.remote_sites:  # id, account, DID, state[locks], RSE expression, ...
        lines = [ln.split(",") for ln in rules.splitlines() if ln.split(",")[2:3] == [f"3x3:3x3.placement.{site}"]]
        assert sorted(ln[4] for ln in lines) == sorted([world.campaign.site(site).rse, central]), lines
        assert all(ln[3].startswith("OK[") for ln in lines), lines
    # the central site keeps its raws; nothing was moved away
    text = cli(
        world, "butler", "query-datasets", world.campaign.butler_repo("USDF"), "raw", "--collections", "HSC/raw/all"
    )
    assert sum(1 for ln in text.splitlines() if "HSC/raw/all" in ln) == 72


def test_calibrations_and_chains_are_remade_at_sites(world, chain_run) -> None:
    text = cli(world, "butler", "query-collections", world.campaign.butler_repo("RAL"))
    assert "HSC/calib" in text and "CALIBRATION" in text and "HSC/defaults" in text
    with open_site_butler(world.campaign, "RAL") as b:
        flats = b.query_datasets(
            "flat",
            collections="HSC/defaults",
            where="instrument='HSC' AND exposure=2001",
            find_first=True,
            explain=False,
        )
        assert len(flats) == 4  # one per detector, found through the calibration validity range


def test_verify_reports_zero_problems_and_a_rerun_changes_nothing(world, chain_run) -> None:
    res = load_result(chain_run, "verify")
    assert res.passed and res.summary.problems == 0
    rules_before = cli(world, "rucio", "rule", "list", "--account", "multisite")
    counts_before = {s: world.status()["sites"][s]["datasets"] for s in world.campaign.all_sites}
    res2, outcomes = phases.transfer.run(world.campaign, chain_run, progress=False)
    assert res2.passed
    assert all(o.ingested == 0 and not o.rule_created for o in outcomes)
    assert cli(world, "rucio", "rule", "list", "--account", "multisite").count(" OK[") == rules_before.count(" OK[")
    assert {s: world.status()["sites"][s]["datasets"] for s in world.campaign.all_sites} == counts_before


def _one_raw(world, run_dir, site):
    plan = load_plan(naming.plan_path(run_dir))
    f = next(f for f in site_files(plan, site) if f.dataset_type == "raw")
    return f, Path(world.campaign.site(site).rse_root) / f.lfn


def test_corrupted_file_is_reported_as_exactly_that_file(world, chain_run, tmp_path) -> None:
    f, path = _one_raw(world, chain_run, "LANCS")
    backup = tmp_path / "backup"
    shutil.copy2(path, backup)
    try:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, different bytes
        path.write_bytes(bytes(data))
        res, reports = phases.verify.run(world.campaign, chain_run)
        assert not res.passed
        problems = [p for r in reports for p in r.problems]
        assert [(p.site, p.layer, p.kind, p.what) for p in problems] == [("LANCS", "disk", "corrupt", f.lfn)]
        assert "adler32" in problems[0].detail and f.lfn in res.reason
    finally:
        shutil.copy2(backup, path)
    assert phases.verify.run(world.campaign, chain_run)[0].passed


def test_deleted_file_is_reported_as_exactly_that_file(world, chain_run, tmp_path) -> None:
    f, path = _one_raw(world, chain_run, "IN2P3")
    backup = tmp_path / "backup"
    shutil.move(path, backup)
    try:
        res, reports = phases.verify.run(world.campaign, chain_run)
        problems = [p for r in reports for p in r.problems]
        assert [(p.site, p.kind, p.what) for p in problems] == [("IN2P3", "missing", f.lfn)]
        assert not res.passed
    finally:
        shutil.move(backup, path)


def test_placement_result_is_machine_readable(chain_run) -> None:
    data = json.loads((chain_run / "results" / "placement.json").read_text())
    assert data["passed"] is True
    assert set(data["summary"]["sites"]) == {"IN2P3", "RAL", "LANCS"}
    assert (chain_run / "01_placement.ipynb").exists() and (chain_run / "index.html").exists()


def test_nbval_runs_the_three_notebooks(world, tmp_path) -> None:
    """nbval (lax) executes the stored notebooks against the world, as a person would by hand."""
    env = {**world.env(), "MSNB_RUN_DIR": str(tmp_path / "run")}  # the three share one run folder
    nbs = [str(repo_root() / "notebooks" / n) for n in ("01_placement.ipynb", "02_transfer.ipynb", "03_verify.ipynb")]
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider", *nbs],
        env=env,
        cwd=repo_root(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:]
    assert " passed" in out.stdout
    assert load_result(tmp_path / "run", "verify").passed


def test_files_are_registered_the_rubin_way(world, chain_run) -> None:
    """DID metadata as lsst-rucio-register writes it: rubin_butler kind + the DatasetRef sidecar."""
    from lsst.daf.butler import DatasetRef

    from multisite_nb.adapters.files import adler32_of
    from multisite_nb.adapters.rucio.ops import RucioOps

    plan = load_plan(naming.plan_path(chain_run))
    ops = RucioOps.for_campaign(world.campaign)
    raw = next(f for f in site_files(plan, "RAL") if f.dataset_type == "raw")
    flat = next(f for f in site_files(plan, "RAL") if f.dataset_type == "flat")
    for f, kind in ((raw, "raw_file"), (flat, "data_product")):
        meta = ops.get_metadata(f.lfn)
        assert meta["rubin_butler"] == kind
        assert f.adler32 is None  # the plan reads no file: sizes from the datastore records
        central = Path(world.campaign.site(world.campaign.central).rse_root or "")
        assert (
            meta["adler32"] == adler32_of(central / f.lfn)
            and meta["bytes"] == f.size == (central / f.lfn).stat().st_size
        )
        with open_central(world) as butler:
            ref = DatasetRef.from_json(meta["rubin_sidecar"], universe=butler.dimensions)
        assert str(ref.id) == f.id and ref.run == f.run and ref.datasetType.name == f.dataset_type


def open_central(world):
    return open_site_butler(world.campaign, world.campaign.central)


def test_sidecars_are_looked_up_in_bulk_and_match_the_per_file_lookup(world, chain_run) -> None:
    """One query per (dataset type, run) gives every planned file the same expanded ref as a
    per-file lookup; a dataset the Butler does not hold is absent, not invented."""
    from multisite_nb.phases.transfer.register import sidecar_refs

    plan = load_plan(naming.plan_path(chain_run))
    files = list({f.id: f for site in plan.sites for f in site_files(plan, site)}.values())
    ghost = files[0].model_copy(update={"id": "00000000-0000-0000-0000-000000000000"})
    stray = files[0].model_copy(update={"run": "no/such/run"})
    with open_central(world) as butler:
        refs = sidecar_refs(butler, [*files, ghost, stray])
        assert set(refs) == {f.id for f in files}
        for f in files[:: max(1, len(files) // 20)]:
            one = butler.get_dataset(f.id, dimension_records=True)
            assert refs[f.id].to_json() == one.to_json(), f.lfn
