"""The views from recorded summaries, without a world: the status read model, the dashboard's rules.

Rucio and the Butlers are not reachable here, so every site reads ``trouble`` for them; what the
run folder's typed summaries say (placement, verification, steps) is read as it was recorded.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from multisite_nb.adapters.results import record_result
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.params import load_campaign, repo_root
from multisite_nb.domain.records import QuantumFailure, StepRecord, StepState
from multisite_nb.domain.results import PhaseResult
from multisite_nb.domain.summaries import PlacementSummary, SitePlacement, SubmitSummary, VerifySummary
from multisite_nb.domain.verification import SiteVerification
from multisite_nb.views.dashboard import is_batch, resolve_auto_refresh, resolve_run_dir
from multisite_nb.views.html import snapshot_html
from multisite_nb.views.status import collect, read_results, read_steps

CAMPAIGN = repo_root() / "parameters" / "campaign_3x3.yaml"


@pytest.fixture
def campaign(tmp_path: Path) -> Campaign:
    """The 3x3 campaign on a world that is not there (no Rucio config, no repositories)."""
    return load_campaign(CAMPAIGN, env={"MSNB_WORLD": str(tmp_path / "no-world")})


def test_batch_or_live_rule() -> None:
    assert is_batch({}) is True  # papermill, nbval, nbconvert: nothing set
    assert is_batch({"VOILA_BASE_URL": "/"}) is False
    assert is_batch({"SERVER_SOFTWARE": "voila/0.5.13"}) is False
    assert is_batch({"JPY_SESSION_NAME": "/home/x/00_dashboard.ipynb"}) is False  # JupyterLab / Notebook
    assert is_batch({"JPY_SESSION_NAME": "x", "MSNB_DASHBOARD_MODE": "batch"}) is True
    assert is_batch({"MSNB_DASHBOARD_MODE": "live"}) is False


def test_run_dir_and_refresh_resolution(tmp_path: Path, campaign: Campaign) -> None:
    runs = tmp_path / "runs"
    assert resolve_run_dir(campaign, "", {}, runs) is None
    older = runs / campaign.name / "20260101T000000Z-aaaaaa"
    newer = runs / campaign.name / "20260102T000000Z-bbbbbb"
    for p in (older, newer):
        (p / "results").mkdir(parents=True)
    (runs / campaign.name / "not-a-run").mkdir()  # no results/, no run.json: ignored
    assert resolve_run_dir(campaign, "", {}, runs) == newer
    assert resolve_run_dir(campaign, str(older), {"MSNB_RUN_DIR": str(newer)}, runs) == older
    assert resolve_run_dir(campaign, "", {"MSNB_RUN_DIR": str(older)}, runs) == older
    assert resolve_run_dir(campaign, "", {"QUERY_STRING": f"run={older.name}"}, runs) == older
    assert resolve_run_dir(campaign, "", {"QUERY_STRING": "run=../../etc"}, runs) == newer  # only run ids
    assert resolve_auto_refresh(0, {}) == 0
    assert resolve_auto_refresh(15, {"MSNB_AUTO_REFRESH_S": "99"}) == 15
    assert resolve_auto_refresh(0, {"MSNB_AUTO_REFRESH_S": "30"}) == 30
    assert resolve_auto_refresh("", {"QUERY_STRING": "refresh=20&run=x"}) == 20
    assert resolve_auto_refresh(0.1, {}) == 2.0  # never a busy loop


def _record_a_run(run_dir: Path) -> StepRecord:
    record_result(
        run_dir,
        PhaseResult(
            phase="placement",
            passed=True,
            reason="planned",
            summary=PlacementSummary(sites={"RAL": SitePlacement(files=47, bytes=4700, visits=6)}),
        ),
    )
    record_result(
        run_dir,
        PhaseResult(
            phase="verify",
            passed=False,
            reason="1 problem",
            summary=VerifySummary(
                sites={
                    "RAL": SiteVerification(site="RAL", planned=47, ok=False, corrupt=1),
                    "IN2P3": SiteVerification(site="IN2P3", planned=44),
                },
                problems=1,
                first_problems={"RAL": "disk corrupt raw/1.fits (adler32 0000, catalogue 1234)"},
            ),
        ),
    )
    failed = StepRecord(
        site="LANCS",
        step="step1",
        state=StepState.FAILED,
        total=13,
        succeeded=12,
        failed=1,
        failures=[QuantumFailure(task="isr", data_id={"exposure": 903334, "detector": 42}, cause="ValueError: bad")],
    )
    summary = SubmitSummary(stage="early", steps={"LANCS": {"step1": failed}})
    record_result(run_dir, PhaseResult(phase="submit_early", passed=False, reason="LANCS step1", summary=summary))
    return failed


def test_the_status_reads_the_summaries_as_they_were_recorded(campaign: Campaign, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    failed = _record_a_run(run_dir)
    status = collect(campaign, run_dir, butler=False)
    ral, lancs, in2p3 = status.sites["RAL"], status.sites["LANCS"], status.sites["IN2P3"]
    assert (ral.placement.files, ral.placement.visits) == (47, 6)  # type: ignore[union-attr]
    assert ral.verification.ok is False and ral.verification.counts["corrupt"] == 1
    assert ral.verification.first_problem == "disk corrupt raw/1.fits (adler32 0000, catalogue 1234)"
    assert in2p3.verification.ok is True and in2p3.verification.planned == 44
    assert lancs.steps == {"step1": failed}
    assert str(lancs.steps["step1"].first_failure) == "isr exposure=903334, detector=42: ValueError: bad"
    assert not status.rucio_ok and all(s.state == "trouble" for s in status.sites.values())  # no Rucio here
    assert "corrupt" in snapshot_html(status)


def test_an_entry_that_is_not_a_step_record_is_named_with_its_key(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    _record_a_run(run_dir)
    path = run_dir / "results" / "submit_early.json"
    path.write_text(path.read_text().replace('"site": "LANCS"', '"state_": "done"', 1))
    results, problems = read_results(run_dir)
    assert "submit_early" not in results and {"placement", "verify"} <= set(results)
    (problem,) = problems
    assert problem.site == "LANCS"
    assert problem.message == "results/submit_early.json: summary.steps.LANCS.step1 is not a step record"
    assert "site: Field required" in (problem.cause or "")


def test_a_record_filed_under_another_steps_key_is_named(tmp_path: Path) -> None:
    wrong = StepRecord(site="RAL", step="step1")
    summary = SubmitSummary(steps={"IN2P3": {"step1": wrong}})
    steps, problems = read_steps(
        {"submit_early": PhaseResult(phase="submit_early", passed=True, reason="", summary=summary)}
    )
    assert steps == {} and problems[0].site == "IN2P3" and "record of RAL step1" in (problems[0].cause or "")


def test_a_result_that_cannot_be_read_concerns_every_site(tmp_path: Path) -> None:
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "verify.json").write_text("{not json")
    _, problems = read_results(tmp_path)
    assert problems[0].site is None and problems[0].message.startswith("cannot read results/verify.json")


def test_held_groups_are_counted_and_named_with_their_cause_never_one_row_each(
    campaign: Campaign, tmp_path: Path
) -> None:
    from multisite_nb.domain.groups import GroupCut, step_of_groups
    from multisite_nb.views.figures import steps_figure
    from multisite_nb.views.report import render_index

    run_dir = tmp_path / "run"
    fail = [QuantumFailure(task="isr", data_id={"exposure": 5001}, cause="injected failure")]
    groups = [
        StepRecord(site="RAL", step="step1", group=f"g{i:04d}", state=StepState.SUCCEEDED, total=4, succeeded=4)
        for i in range(1, 400)
    ]
    groups.append(StepRecord(site="RAL", step="step1", group="g0400", state=StepState.HELD, failures=fail, attempt=3))
    step = step_of_groups("RAL", "step1", groups, GroupCut("exposure", 500, 400, 200_000))
    summary = SubmitSummary(stage="early", steps={"RAL": {"step1": step}})
    record_result(run_dir, PhaseResult(phase="submit_early", passed=False, reason="held", summary=summary))
    status = collect(campaign, run_dir, butler=False)
    ral = status.sites["RAL"]
    issue = next(i for i in ral.issues if "held" in i.message)
    assert "1 group held after their retries (399/400 done)" in issue.message
    assert issue.cause is not None and "g0400" in issue.cause and "injected failure" in issue.cause
    page = snapshot_html(status)
    assert "399/400 groups, 1 held" in page and page.count("g0001") == 0  # counts, no row per group
    steps_figure(status)  # draws the counts
    assert "groups done: RAL 399/400 (1 held)" in render_index(run_dir).read_text()


def test_a_sites_eta_comes_from_its_groups_measured_durations(campaign: Campaign, tmp_path: Path) -> None:
    from multisite_nb.domain.groups import GroupCut, step_of_groups

    run_dir = tmp_path / "run"
    done = [
        StepRecord(
            site="RAL", step="step1", group=f"g{i:04d}", state=StepState.SUCCEEDED, total=4, succeeded=4, seconds=30
        )
        for i in range(1, 5)
    ]
    running = [StepRecord(site="RAL", step="step1", group="g0005", state=StepState.RUNNING)]
    step = step_of_groups("RAL", "step1", done + running, GroupCut("exposure", 1, 12, 12))
    summary = SubmitSummary(stage="early", steps={"RAL": {"step1": step}})
    record_result(run_dir, PhaseResult(phase="submit_early", passed=False, reason="running", summary=summary))
    ral = collect(campaign, run_dir, butler=False).sites["RAL"]
    in_flight = campaign.manifest.workflow.groups_in_flight
    later = len(ral.site_steps) - 1  # the early and late steps still to come, a measured group each
    expected = -(-8 // in_flight) * 30.0 + later * 30.0  # 8 of 12 groups left at 30 s each, in_flight at a time
    assert ral.eta_s == pytest.approx(expected)
    assert f'data-eta="{ral.eta_s}"' in snapshot_html(collect(campaign, run_dir, butler=False))
    assert collect(campaign, tmp_path / "empty", butler=False).sites["RAL"].eta_s is None  # nothing measured
