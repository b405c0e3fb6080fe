"""The wiring is derived from the pipeline graph: renaming steps or regrouping the global
calibration into another step must give the same crossings, with no code change."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from multisite_nb.domain.config import Stage
from multisite_nb.domain.params import repo_root
from multisite_nb.domain.wiring import derive_wiring, load_pipeline_graph

PIPELINE = repo_root() / "parameters" / "pipelines" / "drp_3x3.yaml"
STAGES = [
    Stage(name="early", where="sites", steps=["step1", "step2a", "step2b"]),
    Stage(name="calibration", where="central", steps=["step2c"]),
    Stage(name="late", where="sites", steps=["step2d", "step2e", "step3", "step4", "step5"]),
]
GATHER = ["isolated_star_presource_associations", "isolated_star_presources", "visitSummary"]


def _variant(tmp_path: Path, rename: dict[str, str], merge: dict[str, list[str]] | None = None) -> Path:
    """A copy of the pipeline with subsets renamed (and optionally merged)."""
    data = yaml.safe_load(PIPELINE.read_text())
    subsets = {rename.get(k, k): v for k, v in data["subsets"].items()}
    for new, parts in (merge or {}).items():
        subsets[new] = {"subset": [t for p in parts for t in subsets.pop(p)["subset"]], "description": "merged"}
    data["subsets"] = subsets
    data.pop("steps", None)
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_demo_pipeline_wiring() -> None:
    w = derive_wiring(load_pipeline_graph(PIPELINE), STAGES)
    assert w.placed == ["bias", "flat", "ps1_pv3_3pi_20170110", "raw", "skyMap"]
    assert w.gathered_before("calibration") == GATHER
    assert w.redistributed_after("calibration") == ["fgcmPhotoCalibCatalog"]
    assert "forcedSourceTable_tract" in w.final_products and "visitTable" in w.final_products
    # nothing produced and consumed within the site stages crosses
    assert "calexp" not in {c.dataset_type for c in w.crossings}


def test_renamed_steps_give_the_same_crossings(tmp_path: Path) -> None:
    path = _variant(tmp_path, {"step2c": "step2a-recalibrate-global", "step1": "singleFrame"})
    stages = [
        Stage(name="a", where="sites", steps=["singleFrame", "step2a", "step2b"]),
        Stage(name="b", where="central", steps=["step2a-recalibrate-global"]),
        Stage(name="c", where="sites", steps=["step2d", "step2e", "step3", "step4", "step5"]),
    ]
    w = derive_wiring(load_pipeline_graph(path), stages)
    assert w.gathered_before("b") == GATHER
    assert w.redistributed_after("b") == ["fgcmPhotoCalibCatalog"]


def test_calibration_merged_into_a_larger_central_step(tmp_path: Path) -> None:
    """RC2 style: step2c, 2d and 2e merged into 'step2cde', all run centrally."""
    path = _variant(tmp_path, {}, merge={"step2cde": ["step2c", "step2d", "step2e"]})
    stages = [
        Stage(name="early", where="sites", steps=["step1", "step2a", "step2b"]),
        Stage(name="central", where="central", steps=["step2cde"]),
        Stage(name="late", where="sites", steps=["step3", "step4", "step5"]),
    ]
    w = derive_wiring(load_pipeline_graph(path), stages)
    # step2d at the centre now needs the sites' single-frame products and astrometry too
    assert w.gathered_before("central") == sorted([*GATHER, "calexp", "gbdesAstrometricFitSkyWcsCatalog", "preSource"])
    # and the late site stages need what the centre made from them
    assert w.redistributed_after("central") == ["finalVisitSummary"]


def test_unknown_step_is_named() -> None:
    bad = [Stage(name="x", where="sites", steps=["step9"]), *STAGES]
    with pytest.raises(ValueError, match="step 'step9' is not a subset of the pipeline"):
        derive_wiring(load_pipeline_graph(PIPELINE), bad)


def test_task_in_no_stage_is_named() -> None:
    with pytest.raises(ValueError, match="tasks in no stage of the plan: .*makeWarp"):
        derive_wiring(load_pipeline_graph(PIPELINE), STAGES[:2] + [Stage(name="late", where="sites", steps=["step2d"])])
