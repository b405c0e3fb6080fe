"""Phase 4, submit: a site stage's steps at every remote site, side by side, through the real middleware.

What runs where (:mod:`.selection`: a step's collections and data query from the campaign), the
checks before it starts (:mod:`.preflight`), one attempt and its record (:mod:`.runner`), a
stage's steps at its sites (:mod:`.stage`), the records kept current while they run
(:mod:`.summary`), and the submit files and PanDA workflows shown without running
(:mod:`.samples`). The workflow systems themselves are adapters
(:mod:`multisite_nb.adapters.workflow`). No step or dataset type name is written here.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd

from multisite_nb.adapters.results import finish_phase, load_results, save_table
from multisite_nb.domain.alike import refusal
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.naming import logs_dir
from multisite_nb.domain.params import with_manifest
from multisite_nb.domain.records import StepRecord
from multisite_nb.domain.results import PhaseResult, utcnow
from multisite_nb.domain.summaries import GatherSummary, SiteSteps, SubmitSummary
from multisite_nb.phases.alike import check_alike
from multisite_nb.phases.spec import phase
from multisite_nb.phases.submit.samples import prepare_stage
from multisite_nb.phases.submit.stage import run_sites
from multisite_nb.phases.submit.summary import InFlight, groups_table, steps_table, steps_verdict

__all__ = ["delivered_runs", "run"]


def delivered_runs(run_dir: str | Path) -> dict[str, list[str]]:
    """Per site, the RUN collections earlier gates delivered to it (the redistributions' records)."""
    extra: dict[str, set[str]] = {}
    for res in load_results(run_dir, strict=False).values():
        if isinstance(res.summary, GatherSummary):
            for site, runs in res.summary.delivered_runs.items():
                extra.setdefault(site, set()).update(runs)
    return {k: sorted(v) for k, v in extra.items()}


@phase("submit", notebook="04_submit", summary=SubmitSummary, stages=("sites",), needs=("verify",), acting=True)
def run(
    campaign: Campaign, run_dir: str | Path, stage: str, *, prepare_only: bool = False, manifest: str = ""
) -> tuple[PhaseResult, SiteSteps]:
    """Phase 4: run a site stage's steps at every remote site, side by side.

    The stage's sites are first checked alike (task configs, software, calibration and reference
    inputs, dataset type definitions: :func:`~multisite_nb.phases.alike.check_alike`): when they
    differ nothing is submitted and the gate names each difference. Then every site's first step
    is checked before anything runs there: a site with problems does not run (named in the gate),
    the others go on. Returns the steps by site and step.

    With ``prepare_only``, each site's PanDA workflow of every step of the stage is built offline
    (with ``manifest``, e.g. the facilities' site manifest; default the campaign's) and nothing is
    submitted: the gate records what was prepared and does not pass (nothing ran).
    """
    started = utcnow()
    st = campaign.stage(stage)
    if st.where != "sites":
        raise ConfigError(f"{campaign.path}: stage {stage!r} runs centrally: use gather_redistribute")
    if prepare_only:
        return _prepare(campaign, run_dir, stage, manifest, started), {}
    differences = check_alike(campaign, stage, campaign.remote_sites, folder=logs_dir(run_dir) / "alike" / stage)
    if differences:  # nothing submitted: every site's first step is refused with the differences
        why = refusal(stage, differences)
        first = st.steps[0]
        refused = {
            site: {first: StepRecord.not_started(site, first, [d.message for d in differences[:20]])}
            for site in campaign.remote_sites
        }
        table = save_table(run_dir, f"submit_{stage}", "steps", steps_table(refused))
        summary = SubmitSummary(stage=stage, steps=refused)
        result = finish_phase(run_dir, f"submit_{stage}", False, why, started, summary=summary, artifacts=[str(table)])
        return result, refused
    live = InFlight(run_dir, f"submit_{stage}", started, SubmitSummary(stage=stage))
    records = run_sites(
        campaign, campaign.remote_sites, st.steps, logs_dir(run_dir), extra=delivered_runs(run_dir), live=live
    )
    steps = {site: dict(by) for site, by in records.items()}
    passed, reason = steps_verdict(steps, retry=f"multisite-nb run --resume {Path(run_dir).resolve()}")
    table = save_table(run_dir, f"submit_{stage}", "steps", steps_table(steps))
    save_table(run_dir, f"submit_{stage}", "groups", groups_table(steps))
    summary = SubmitSummary(stage=stage, steps=steps)
    result = finish_phase(run_dir, f"submit_{stage}", passed, reason, started, summary=summary, artifacts=[str(table)])
    return result, steps


def _prepare(campaign: Campaign, run_dir: str | Path, stage: str, manifest: str, started: datetime) -> PhaseResult:
    """Build the stage's PanDA workflows offline and record what was prepared (see :func:`run`)."""
    target = with_manifest(campaign, manifest, env={}) if manifest else campaign
    steps = campaign.stage(stage).steps
    rows = prepare_stage(target, steps, logs_dir(run_dir) / "prepare" / stage)
    table = save_table(run_dir, f"submit_{stage}", "prepared", pd.DataFrame(rows))
    errors = [f"{r['site']} {r['step']}: {r['error']}" for r in rows if r.get("error")]
    tasks = len(rows) - len(errors)
    reason = (
        f"prepared only, nothing submitted: {tasks} PanDA tasks for {len(steps)} step(s) at "
        f"{len(target.remote_sites)} sites with {target.manifest_path.name}"
        + (f"; {len(errors)} step(s) could not be prepared, first: {errors[0]}" if errors else "")
    )
    summary = SubmitSummary(stage=stage, prepared_tasks=tasks, prepare_errors=errors[:20])
    return finish_phase(run_dir, f"submit_{stage}", False, reason, started, summary=summary, artifacts=[str(table)])
