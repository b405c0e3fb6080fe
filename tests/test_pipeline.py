"""The DRP-shaped stand-in pipeline: loads, resolves, and runs with the real ``pipetask``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lsst.daf.butler import Butler
from lsst.pipe.base import Pipeline

from multisite_nb.world.butler_world import copy_site_inputs, create_site_repo, populate_central
from multisite_nb.world.synthetic import SkySpec

PIPELINE = Path(__file__).resolve().parents[1] / "parameters" / "pipelines" / "drp_3x3.yaml"
STEPS = ["step1", "step2a", "step2b", "step2c", "step2d", "step2e", "step3", "step4", "step5"]
INPUT_TYPES = {"raw", "bias", "flat", "ps1_pv3_3pi_20170110", "skyMap"}


def _pipetask() -> str:
    local = Path(sys.executable).parent / "pipetask"
    found = str(local) if local.exists() else shutil.which("pipetask")
    if not found:
        pytest.skip("pipetask not installed")
    return found


def _run(repo: Path, output: str, subset: str, where: str, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        _pipetask(),
        "run",
        "-b",
        str(repo),
        "-i",
        "HSC/defaults",
        "-o",
        output,
        "-p",
        f"{PIPELINE}#{subset}",
        "-d",
        where,
        "--register-dataset-types",
        "-j",
        "1",
        *extra,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=300)


def _values(butler: Butler, collection: str, types: set[str] | None = None) -> dict[tuple[str, tuple], int]:
    """(dataset type, data ID) -> value for every stand-in output in ``collection``."""
    out: dict[tuple[str, tuple], int] = {}
    for dt in butler.registry.queryDatasetTypes("*"):
        name = dt.name
        if name in INPUT_TYPES or name == "packages" or name.endswith(("_config", "_log", "_metadata")):
            continue
        if types is not None and name not in types:
            continue
        for ref in butler.query_datasets(dt, collections=collection, explain=False):
            out[(name, ref.dataId.required_values)] = butler.get(ref)["value"]
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Central (USDF) populated; IN2P3 holds target 0's inputs, copied with transfer_from."""
    root = tmp_path_factory.mktemp("pw")
    create_site_repo(root / "butler" / "USDF", root / "rse" / "USDF_DISK")
    populate_central(root / "butler" / "USDF", SkySpec())
    create_site_repo(root / "butler" / "IN2P3", root / "rse" / "IN2P3_DISK")
    copy_site_inputs(root / "butler" / "USDF", root / "butler" / "IN2P3", SkySpec(), targets=[0])
    return root


def test_pipeline_loads_with_steps_and_subsets() -> None:
    pipeline = Pipeline.from_uri(str(PIPELINE))
    graph = pipeline.to_graph()
    assert list(graph.steps) == STEPS
    assert set(STEPS) <= set(graph.task_subsets)
    owners: dict[str, list[str]] = {}
    for step in STEPS:
        for label in graph.task_subsets[step]:
            owners.setdefault(label, []).append(step)
    assert set(owners) == set(graph.tasks) and all(len(v) == 1 for v in owners.values())


def test_pipeline_resolves_against_central(world: Path) -> None:
    butler = Butler.from_config(str(world / "butler" / "USDF"))
    graph = Pipeline.from_uri(str(PIPELINE)).to_graph()
    graph.resolve(registry=butler.registry)
    step2c = graph.task_subsets["step2c"]
    # Overall inputs of the global step: exactly the three products that cross to the central site.
    produced = {d for label in step2c for d in (o.dataset_type_name for o in graph.tasks[label].outputs.values())}
    consumed = {i.dataset_type_name for label in step2c for i in graph.tasks[label].inputs.values()}
    assert consumed - produced == {"visitSummary", "isolated_star_presource_associations", "isolated_star_presources"}
    assert set(graph.tasks["fgcmOutputProducts"].dimensions.required) == {"instrument"}
    assert set(graph.dataset_types["fgcmPhotoCalibCatalog"].dimensions.required) == {"instrument", "visit"}
    assert set(graph.dataset_types["visitTable"].dimensions.required) == {"instrument"}


def test_site_repo_holds_only_its_share(world: Path) -> None:
    butler = Butler.from_config(str(world / "butler" / "IN2P3"))
    assert len(butler.query_datasets("raw", collections="HSC/defaults", explain=False)) == 24
    assert {r.id for r in butler.query_dimension_records("visit", explain=False)} == set(range(1001, 1007))
    # Calibs were re-certified: the lookup by exposure timespan works at the site too.
    found = butler.query_datasets(
        "flat",
        collections="HSC/defaults",
        data_id={"instrument": "HSC", "exposure": 1004, "detector": 2},
        explain=False,
    )
    assert len(found) == 1


@pytest.mark.slow
def test_steps_1_2a_2b_run_at_a_site_and_are_deterministic(world: Path) -> None:
    site, central = world / "butler" / "IN2P3", world / "butler" / "USDF"
    where = "instrument='HSC' AND skymap='hsc_rings_3x3'"
    done = _run(site, "u/ops/step1", "step1", where)
    assert done.returncode == 0, done.stderr[-3000:]
    butler = Butler.from_config(str(site))
    counts = {
        label: len(butler.query_datasets(f"{label}_metadata", collections="u/ops/step1", explain=False))
        for label in ("isr", "calibrateImage", "transformPreSourceTable")
    }
    assert counts == {"isr": 24, "calibrateImage": 24, "transformPreSourceTable": 24}

    # The same quanta run again in another repo (the central one: other UUIDs, other run) agree.
    again = _run(central, "u/ref/step1", "step1", "instrument='HSC' AND exposure IN (1001..1006)")
    assert again.returncode == 0, again.stderr[-3000:]
    site_values = _values(butler, "u/ops/step1")
    ref_values = _values(Butler.from_config(str(central)), "u/ref/step1")
    assert len(site_values) == 24 * 5
    assert site_values == ref_values

    done = _run(site, "u/ops/step1", "step2a,step2b", where)
    assert done.returncode == 0, done.stderr[-3000:]
    butler = Butler.from_config(str(site))
    n = {
        name: len(butler.query_datasets(name, collections="u/ops/step1", explain=False))
        for name in (
            "visitSummary",
            "preSourceTable_visit",
            "isolated_star_presources",
            "isolated_star_presource_associations",
            "gbdesAstrometricFitSkyWcsCatalog",
        )
    }
    assert n == {
        "visitSummary": 6,
        "preSourceTable_visit": 6,
        "isolated_star_presources": 1,
        "isolated_star_presource_associations": 1,
        "gbdesAstrometricFitSkyWcsCatalog": 6,
    }
    summary = butler.get("visitSummary", instrument="HSC", visit=1001, collections="u/ops/step1")
    assert summary["n_inputs"] == 4 and summary["data_id"] == {"instrument": "HSC", "visit": 1001}


@pytest.mark.slow
def test_fail_condition_injects_a_failure(world: Path) -> None:
    done = _run(
        world / "butler" / "IN2P3",
        "u/ops/fail",
        "step1",
        "instrument='HSC' AND visit=1002 AND detector IN (0, 1)",
        "-c",
        "isr:fail_condition=detector IN (1)",
    )
    assert done.returncode != 0
    log = done.stdout + done.stderr
    assert "injected failure: task=isr" in log
    butler = Butler.from_config(str(world / "butler" / "IN2P3"))
    made = butler.query_datasets("calexp", collections="u/ops/fail", explain=False)
    assert [ref.dataId["detector"] for ref in made] == [0]
