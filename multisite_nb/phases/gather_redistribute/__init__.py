"""Phase 5, gather and redistribute: a central stage's inputs gathered from the sites, the stage run
centrally, its products sent back per site; and, at the end, the validation set brought home.

What moves comes from the wiring (:mod:`multisite_nb.domain.wiring`); the shipments are planned in
:mod:`.plan` and moved and checked like a placement's.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from multisite_nb.adapters.results import finish_phase, save_table
from multisite_nb.adapters.tables import load_plan
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.naming import artifacts_dir, logs_dir, plan_path, step_run_collection
from multisite_nb.domain.ownership import Ownership
from multisite_nb.domain.results import PhaseResult, utcnow
from multisite_nb.domain.summaries import GatherSummary, ShipmentRow
from multisite_nb.domain.wiring import campaign_wiring
from multisite_nb.phases.gather_redistribute.plan import GatherPlan, plan_gather, plan_redistribution, ship_and_verify
from multisite_nb.phases.spec import FINAL, phase
from multisite_nb.phases.submit.stage import run_sites
from multisite_nb.phases.submit.summary import InFlight, steps_verdict

__all__ = ["run"]


def _ship(
    campaign: Campaign, plan: GatherPlan, label: str, progress: bool, collisions_fatal: bool = True
) -> tuple[bool, str, list[ShipmentRow]]:
    """Ship a gather/redistribution plan and verify it; returns (passed, reason, rows).

    Collisions (one data ID from several sites) are fatal before a central stage, whose
    lookups would see only one of them; brought home at the end they are fine, each in its
    own site's RUN collection.
    """
    if plan.collisions and collisions_fatal:
        c = plan.collisions[0]
        return (
            False,
            (
                f"{len(plan.collisions)} collisions: {c.dataset_type} {c.data_id} comes from "
                f"{', '.join(c.sites)}; give those sites distinct sky (or runs)"
            ),
            [],
        )
    outcomes, reports = ship_and_verify(campaign, plan, progress=progress)
    rows = [ShipmentRow.of(o) for o in outcomes]
    bad = [o for o in outcomes if o.error]
    problems = [p for r in reports for p in r.problems]
    if bad:
        return False, f"{bad[0].name}: {bad[0].state}: {bad[0].error}", rows
    if problems:
        p = problems[0]
        return (
            False,
            f"{len(problems)} problems after {label}; first: {p.site} {p.layer} {p.kind} {p.what} ({p.detail})",
            rows,
        )
    return True, f"{label}: {sum(r.files for r in rows)} files moved and verified", rows


@phase(
    "gather_redistribute",
    notebook="05_gather_redistribute",
    summary=GatherSummary,
    stages=("central", "final"),
    follows=("verify",),
    acting=True,
)
def run(
    campaign: Campaign,
    run_dir: str | Path,
    stage: str,
    *,
    progress: bool = True,
    validation_set: list[str] | None = None,
) -> tuple[PhaseResult, GatherSummary]:
    """Phase 5: for a central stage: gather, run it centrally, redistribute per site.

    ``stage="final"`` brings the validation set (default: the site stages' final products) home.
    """
    started = utcnow()
    wiring = campaign_wiring(campaign)
    label = f"gather_redistribute_{stage}"
    summary = GatherSummary(stage=stage)
    tables: dict[str, pd.DataFrame] = {}
    shipped = artifacts_dir(run_dir, label)  # each shipment's file table under <kind>/files/
    ownership = Ownership.of_plan(campaign, load_plan(plan_path(run_dir)))
    if stage == FINAL:
        types = validation_set or wiring.final_products
        plan = plan_gather(campaign, types, FINAL, ownership=ownership, folder=shipped / FINAL)
        tables[FINAL] = pd.DataFrame(plan.counts())
        passed, reason, rows = _ship(campaign, plan, "final gather", progress, collisions_fatal=False)
        summary = summary.model_copy(
            update={"validation_set": types, "shipments": rows, "runs_at_central": plan.runs.get(campaign.central, [])}
        )
    else:
        st = campaign.stage(stage)
        if st.where != "central":
            raise ConfigError(f"{campaign.path}: stage {stage!r} runs at the sites: use submit")
        gathered = wiring.gathered_before(stage)
        gplan = plan_gather(campaign, gathered, f"gather_{stage}", ownership=ownership, folder=shipped / "gather")
        tables["gather"] = pd.DataFrame(gplan.counts())
        passed, reason, rows = _ship(campaign, gplan, f"gather for {stage}", progress)
        summary = summary.model_copy(update={"gathered": gathered, "gather_shipments": rows})
        if passed:
            central = campaign.central
            records = run_sites(
                campaign,
                [central],
                st.steps,
                logs_dir(run_dir),
                check_first=False,
                extra={central: gplan.runs.get(central, [])},
                live=InFlight(run_dir, label, started, summary),
            )
            steps = {site: dict(by) for site, by in records.items()}
            summary = summary.model_copy(update={"steps": steps})
            passed, reason = steps_verdict(steps, retry=f"multisite-nb run --resume {Path(run_dir).resolve()}")
        if passed:
            produced = [step_run_collection(campaign, campaign.central, step) for step in st.steps]
            redistributed = wiring.redistributed_after(stage)
            rplan = plan_redistribution(
                campaign, redistributed, produced, f"redistribute_{stage}", folder=shipped / "redistribute"
            )
            tables["redistribute"] = pd.DataFrame(rplan.counts())
            passed, reason2, rows2 = _ship(campaign, rplan, f"redistribution after {stage}", progress)
            summary = summary.model_copy(
                update={"redistributed": redistributed, "redistribute_shipments": rows2, "delivered_runs": rplan.runs}
            )
            reason = reason2 if not passed else f"gathered {len(gathered)} types, ran {', '.join(st.steps)}, {reason2}"
    artifacts = [str(save_table(run_dir, label, name, df)) for name, df in tables.items()]
    result = finish_phase(run_dir, label, passed, reason, started, summary=summary, artifacts=artifacts)
    return result, summary
