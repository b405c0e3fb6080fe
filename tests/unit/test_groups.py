"""Groups: how a step is cut (from the pipeline's step definitions), the plan file, a step's record of its groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from multisite_nb.adapters.grouptable import read_group_plan, write_group_plan
from multisite_nb.domain.config import DEFAULT_GROUP_SIZE, ProcessingSettings
from multisite_nb.domain.errors import ConfigError, PlanError
from multisite_nb.domain.groups import GroupCut, cut_selection, cut_values, group_dimension, step_of_groups
from multisite_nb.domain.params import load_campaign, repo_root
from multisite_nb.domain.records import QuantumFailure, StepRecord, StepState
from multisite_nb.domain.steps import DataIdTable, StepRun
from multisite_nb.phases.submit.summary import groups_table, steps_verdict

PIPELINE = str(repo_root() / "parameters" / "pipelines" / "drp_3x3.yaml")
CAMPAIGN = repo_root() / "parameters" / "campaign_3x3.yaml"


def write_variant(tmp_path: Path, processing: dict) -> Path:
    data = yaml.safe_load(CAMPAIGN.read_text())
    data.update(
        manifest=str(CAMPAIGN.parent / data["manifest"]),
        pipeline=str(CAMPAIGN.parent / data["pipeline"]),
        processing=processing,
    )
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_each_step_is_cut_along_its_sharding_dimension() -> None:
    dims = {s: group_dimension(PIPELINE, s, DEFAULT_GROUP_SIZE) for s in ("step1", "step2a", "step2b", "step2c")}
    assert dims == {"step1": "exposure", "step2a": "visit", "step2b": "tract", "step2c": None}
    late = {
        s: group_dimension(PIPELINE, s, DEFAULT_GROUP_SIZE) for s in ("step2d", "step2e", "step3", "step4", "step5")
    }
    assert late == {"step2d": "visit", "step2e": None, "step3": "tract", "step4": "visit", "step5": "tract"}
    # a dimension the campaign does not size is not cut along: step 1 without an exposure size is one group
    assert group_dimension(PIPELINE, "step1", {"tract": 10}) is None


def test_a_cut_is_deterministic_and_keeps_each_value_whole() -> None:
    rows = tuple(("HSC", v) for v in (7, 3, 5, 1, 9, 3))
    table = DataIdTable(("instrument", "visit"), rows)
    a = cut_selection("RAL", "step1", "q", table, "exposure", 2)  # an exposure-level step listing visits
    b = cut_selection("RAL", "step1", "q", DataIdTable(table.columns, tuple(reversed(rows))), "exposure", 2)
    assert a is not None and b is not None
    assert [g.name for g in a.groups] == ["g0001", "g0002", "g0003"]
    assert [sorted({r[1] for r in g.rows}) for g in a.groups] == [[1, 3], [5, 7], [9]]
    assert [sorted(g.rows) for g in a.groups] == [sorted(g.rows) for g in b.groups]
    assert sum(len(g.rows) for g in a.groups) == len(rows)  # both rows of visit 3 in one group
    assert a.cut == GroupCut("exposure", 2, 3, 6)
    # a global step is one group holding everything; a table without the dimension is not cut here
    whole = cut_selection("RAL", "step2c", "q", table, None, 0)
    assert whole is not None and len(whole.groups) == 1 and whole.groups[0].rows == rows
    assert cut_selection("RAL", "step3", "q", table, "tract", 10) is None
    assert cut_values([5, 1, 5, 3], 2) == [[1, 3], [5]]


def test_a_group_narrows_the_step_to_its_data_and_its_own_collections() -> None:
    table = DataIdTable(("skymap", "tract", "patch"), (("s", 0, 1), ("s", 0, 2), ("s", 1, 1)))
    plan = cut_selection("RAL", "step3", "q", table, "tract", 1)
    assert plan is not None
    base = StepRun("RAL", "step3", "/repo", ["P/RAL", "in"], "P/RAL", "P/RAL/step3", "q", "p.yaml#step3", table)
    sr = plan.restrict(base, plan.groups[1], run="P/RAL/step3/g0002", chain="P/RAL/step3/g0002/chain")
    assert (sr.output_run, sr.output_chain, sr.chain_into) == (
        "P/RAL/step3/g0002",
        "P/RAL/step3/g0002/chain",
        "P/RAL/step3",
    )
    assert sr.data_id_table is not None and sr.data_id_table.rows == (("s", 1, 1),)
    assert sr.where == "RAL step3 g0002" and sr.inputs == base.inputs


def test_the_plan_file_reads_back_as_written(tmp_path: Path) -> None:
    table = DataIdTable(("instrument", "visit"), tuple(("HSC", v) for v in range(25)))
    plan = cut_selection("IN2P3", "step1", "instrument = 'HSC'", table, "exposure", 10)
    assert plan is not None
    back = read_group_plan(write_group_plan(tmp_path / "groups.parquet", plan))
    assert back == plan
    bare = cut_selection("IN2P3", "step2c", "instrument = 'HSC'", None, None, 0)
    assert bare is not None and read_group_plan(write_group_plan(tmp_path / "bare.parquet", bare)) == bare
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(PlanError, match="bad.parquet: not a readable group plan"):
        read_group_plan(tmp_path / "bad.parquet")


def _group(name: str, state: StepState, **kw) -> StepRecord:
    return StepRecord(site="RAL", step="step1", group=name, state=state, total=4, succeeded=4, **kw)


def test_a_step_is_one_record_of_its_groups_counted_by_state() -> None:
    cut = GroupCut("exposure", 2, 4, 8)
    fail = [QuantumFailure(task="isr", data_id={"exposure": 5}, cause="injected")]
    recs = [
        _group("g0001", StepState.SUCCEEDED),
        _group("g0003", StepState.HELD, failures=fail, attempt=3),
        _group("g0002", StepState.RUNNING),
    ]
    step = step_of_groups("RAL", "step1", recs, cut, run="P/RAL/step1")
    assert step.state is StepState.RUNNING
    assert step.groups is not None
    assert (step.groups.total, step.groups.done, step.groups.running, step.groups.held, step.groups.waiting) == (
        4,
        1,
        1,
        1,
        1,
    )
    recs[2] = _group("g0002", StepState.SUCCEEDED)
    step = step_of_groups("RAL", "step1", recs, cut)
    assert step.state is StepState.HELD and step.succeeded == 12
    assert step.groups is not None and [h.group for h in step.groups.held_groups] == ["g0003"]
    assert "injected" in step.groups.held_groups[0].cause
    done = step_of_groups("RAL", "step1", [_group(f"g000{i}", StepState.SUCCEEDED) for i in range(1, 5)], cut)
    assert done.state is StepState.SUCCEEDED


def test_the_gate_names_held_groups_with_cause_and_the_retry_command() -> None:
    fail = [QuantumFailure(task="isr", data_id={"exposure": 5}, cause="injected failure")]
    held = step_of_groups(
        "RAL", "step1", [_group("g0002", StepState.HELD, failures=fail, attempt=3)], GroupCut("exposure", 1, 2, 2)
    )
    ok = step_of_groups("LANCS", "step1", [_group("g0001", StepState.SUCCEEDED)], GroupCut("exposure", 1, 1, 1))
    passed, reason = steps_verdict(
        {"RAL": {"step1": held}, "LANCS": {"step1": ok}}, retry="multisite-nb run --resume /r"
    )
    assert not passed
    assert "1 group(s) held" in reason and "RAL step1 g0002" in reason and "injected failure" in reason
    assert reason.endswith("Retry them: multisite-nb run --resume /r")
    table = groups_table({"RAL": {"step1": held}, "LANCS": {"step1": ok}})
    assert table.set_index("site").loc["RAL", ["groups", "done", "held"]].tolist() == [2, 0, 1]
    assert len(table) == 2  # one row per site and step, never one per group


def test_group_sizes_and_retries_are_checked_when_the_campaign_is_read(tmp_path: Path) -> None:
    assert ProcessingSettings(group_size={"tract": 2}).sizes == {"tract": 2, "visit": 500, "exposure": 500}
    for processing, needle in (
        ({"group_size": {"visits": 5}}, "key 'processing.group_size': 'visits' is not a data dimension"),
        ({"group_size": {"tract": 0}}, "key 'processing.group_size.tract'"),
        ({"retries": -1}, "key 'processing.retries'"),
        ({"retry": 1}, "key 'processing.retry': unknown key"),
    ):
        path = write_variant(tmp_path, processing)
        with pytest.raises(ConfigError, match=needle):
            load_campaign(path, env={"MSNB_WORLD": str(tmp_path)})
