"""Flow: the transfer, its verification and the first site stage in one go, every site on its own.

A phase-by-phase campaign moves everything, then verifies everything, then runs the first
stage: every site waits for the slowest site's last file. A flowing campaign (the default)
runs this one phase instead: at each site, side by side, the inputs move as a shipment per batch
of the first step's groups (:mod:`~multisite_nb.phases.transfer.batches`), each shipment is
verified as it lands, and its groups start as soon as it is verified (:mod:`.site`). Nothing is
ordered by a step's name: the groups come from the first step's group plan, the later steps
follow from the stage plan, and the central stage after it (a gather) waits for every site's
stage as before.

The phase records the three gates it stands for, each judging all of its shipments or groups,
so everything after it reads them as it would after the phases one by one: ``transfer``
(every shipment in place), ``verify`` (every shipment's files found in Rucio, the site's Butler
and on disk) and ``submit_<stage>`` (every group of every step); its own result, ``flow``,
says how shipments and groups overlapped at each site. Run again (``--resume``), it does only
what is missing: shipments are idempotent, verified again, and groups already chained are left.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pandas as pd

from multisite_nb.adapters.results import finish_phase, save_table
from multisite_nb.adapters.rucio.ops import RucioOps
from multisite_nb.adapters.rucio.probe import ping
from multisite_nb.adapters.tables import load_plan
from multisite_nb.domain.alike import refusal
from multisite_nb.domain.config import Campaign, Stage
from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.naming import (
    campaign_dataset,
    logs_dir,
    placement_dataset,
    placement_site,
    plan_path,
)
from multisite_nb.domain.records import RuleState, StepRecord
from multisite_nb.domain.results import PhaseResult, utcnow
from multisite_nb.domain.summaries import (
    FlowSummary,
    ShipmentRow,
    SiteFlow,
    SubmitSummary,
    TransferSummary,
)
from multisite_nb.domain.verification import SiteReport, merge_reports
from multisite_nb.phases.alike import AlikeGate
from multisite_nb.phases.flow.site import SiteFlowOutcome, flow_site
from multisite_nb.phases.spec import phase
from multisite_nb.phases.submit.runner import stop_running_steps
from multisite_nb.phases.submit.summary import InFlight, groups_table, steps_table, steps_verdict
from multisite_nb.phases.transfer.batches import batches_dir
from multisite_nb.phases.transfer.shipping import claim_sites
from multisite_nb.phases.verify import record_verification

__all__ = ["first_site_stage", "run"]


def first_site_stage(campaign: Campaign) -> Stage:
    """The stage the placement feeds: the stage plan's first, which must run at the sites."""
    first = campaign.config.stages[0]
    if first.where != "sites":
        raise ConfigError(
            f"{campaign.path}: key 'stages.0' runs {first.where}: a flowing campaign starts with a stage at the "
            "sites (run it phase by phase: --phase-by-phase)"
        )
    return first


def progress(campaign: Campaign, run_dir: Path) -> str:
    """What a flow had done, from Rucio: each site's placement shipments made, and how many are OK."""
    ops = RucioOps.for_campaign(campaign, quiet=True)
    ping(ops.config)
    rules = [r for r in ops.list_rules() if campaign_dataset(campaign, r.name) and not r.name.endswith(".dimensions")]
    parts = []
    for site in campaign.remote_sites:
        mine = [
            r for r in rules if placement_site(campaign, r.name) == site and r.rse_expression == campaign.site(site).rse
        ]
        ok = sum(r.state is RuleState.OK for r in mine)
        parts.append(f"{site}: {len(mine)} shipment rule(s) made, {ok} OK")
    return "; ".join(parts)


@phase(
    "flow",
    notebook="02_flow",
    summary=FlowSummary,
    needs=("placement",),
    stands_for=("transfer", "verify", "submit"),
    acting=True,
    progress=progress,
)
def run(
    campaign: Campaign, run_dir: str | Path, *, checksums: bool = True, timeout_s: float = 900
) -> tuple[PhaseResult, dict[str, SiteFlowOutcome]]:
    """Move, verify and run the first site stage, each site's groups starting as their inputs are verified."""
    started = utcnow()
    stage = first_site_stage(campaign)
    plan = load_plan(plan_path(run_dir))
    sites, refused = claim_sites(campaign, campaign.remote_sites, lambda s: placement_dataset(campaign, s))
    label = f"submit_{stage.name}"
    live = InFlight(run_dir, label, started, SubmitSummary(stage=stage.name))
    folder = batches_dir(run_dir)
    stop = threading.Event()
    outcomes: dict[str, SiteFlowOutcome] = {}
    at_once = min(len(sites), campaign.manifest.workflow.sites_at_once or len(sites)) or 1
    # the sites compared alike once each has its common inputs (all at once when they run side by side)
    alike = (
        AlikeGate(campaign, stage.name, sites, logs_dir(run_dir) / "alike" / stage.name, wait=at_once >= len(sites))
        if len(sites) > 1
        else None
    )
    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="flow") as pool:
        futures = {
            site: pool.submit(
                flow_site,
                campaign,
                plan,
                site,
                stage.steps,
                logs_dir(run_dir),
                folder,
                stop=stop,
                progress=live.site(site),
                checksums=checksums,
                timeout_s=timeout_s,
                alike=alike,
            )
            for site in sites
        }
        try:
            for site, future in futures.items():
                try:
                    outcomes[site] = future.result()
                except Exception as exc:  # that site's flow failed before it could say more: the others stand
                    outcomes[site] = SiteFlowOutcome(site, error=f"{type(exc).__name__}: {exc}"[:500])
        except BaseException:  # interrupted: start nothing more, stop what runs, record where things stand
            stop.set()
            stopped = stop_running_steps()
            live.end(f"interrupted; {stopped} running group(s) stopped, a new run of the phase restarts them")
            raise
    for o in refused:
        outcomes[o.dest] = SiteFlowOutcome(o.dest, error=o.error or "")
    unlike = refusal(stage.name, alike.differences) if alike is not None and alike.differences else ""
    return _record(campaign, run_dir, stage, started, outcomes, unlike=unlike), outcomes


def _record(
    campaign: Campaign,
    run_dir: str | Path,
    stage: Stage,
    started: datetime,
    outcomes: dict[str, SiteFlowOutcome],
    *,
    unlike: str = "",
) -> PhaseResult:
    """The three gates the flow stands for, then its own (``unlike``: why the stage's sites were refused)."""
    sites = [s for s in campaign.remote_sites if s in outcomes]
    # -- transfer: every shipment in place
    rows: list[ShipmentRow] = []
    per_site: dict[str, ShipmentRow] = {}
    for site in sites:
        o = outcomes[site]
        mine = []
        for b in o.batches:
            out = o.outcomes.get(b.name)
            row = (
                ShipmentRow.of(out)
                if out
                else ShipmentRow(
                    shipment=b.name,
                    dest=site,
                    error=o.withheld.get(b.groups[0], "not shipped") if b.groups else "not shipped",
                )
            )
            row = row.model_copy(update={"bytes": b.bytes, "groups": list(b.groups), "files": b.files})
            mine.append(row)
        rows += mine
        total = ShipmentRow.total(site, placement_dataset(campaign, site), mine)
        if o.error and not total.error:
            total = total.model_copy(update={"error": o.error})
        per_site[site] = total
    table = save_table(run_dir, "transfer", "shipments", pd.DataFrame([r.model_dump() for r in rows]))
    bad = [r for r in per_site.values() if r.error or r.rule != "OK"]
    t_passed = not bad
    t_reason = (
        f"all {len(rows)} shipments OK; "
        + ", ".join(f"{r.dest}: {r.ingested} ingested, {r.already_present} already there" for r in per_site.values())
        if t_passed
        else "; ".join(f"{r.dest}: {r.error or r.rule}" for r in bad)
    )
    transfer = finish_phase(
        run_dir,
        "transfer",
        t_passed,
        t_reason,
        started,
        summary=TransferSummary(shipments=per_site),
        artifacts=[str(table)],
    )
    # -- verify: every shipment's files in place
    merged: dict[str, SiteReport] = {}
    unverified: dict[str, list[str]] = {}
    for site in sites:
        o = outcomes[site]
        missing = [b for b in o.batches if b.name not in o.reports]
        if missing:
            unverified[site] = [b.name for b in missing]
        elif o.error and not o.batches:
            unverified[site] = [o.error]
        merged[site] = merge_reports(site, placement_dataset(campaign, site), list(o.reports.values()))
        merged[site].planned += sum(b.files for b in missing)
    verify = record_verification(
        run_dir,
        list(merged.values()),
        started,
        unverified=unverified,
        checked=f", {len(rows)} shipments verified as they landed",
    )
    # -- submit_<stage>: every group of every step
    steps: dict[str, dict[str, StepRecord]] = {s: dict(outcomes[s].steps) for s in sites}
    for site in sites:
        if not steps[site] and outcomes[site].error:
            steps[site] = {stage.steps[0]: StepRecord.not_started(site, stage.steps[0], [outcomes[site].error])}
    s_passed, s_reason = steps_verdict(steps, retry=f"multisite-nb run --resume {Path(run_dir).resolve()}")
    if unlike:
        s_passed, s_reason = False, unlike
    label = f"submit_{stage.name}"
    s_table = save_table(run_dir, label, "steps", steps_table(steps))
    save_table(run_dir, label, "groups", groups_table(steps))
    submit = finish_phase(
        run_dir,
        label,
        s_passed,
        s_reason,
        started,
        summary=SubmitSummary(stage=stage.name, steps=steps),
        artifacts=[str(s_table)],
    )
    # -- the flow's own result
    flows: dict[str, SiteFlow] = {}
    for site in sites:
        o = outcomes[site]
        row = per_site[site]
        head = o.steps.get(stage.steps[0])
        flows[site] = SiteFlow(
            shipments=len(o.batches),
            verified=sum(1 for r in o.reports.values() if r.ok),
            groups=head.groups.total if head and head.groups else 0,
            released=sum(len(b.groups) for b in o.batches) - len(o.withheld),
            first_ok_at=row.first_ok_at,
            last_ok_at=row.ok_at,
            first_group_at=head.started if head else "",
            error=o.error or row.error,
        )
    gates = {"transfer": transfer.passed, "verify": verify.passed, label: submit.passed}
    failed = [(g, r) for g, r in (("transfer", transfer), ("verify", verify), (label, submit)) if not r.passed]
    if failed:
        reason = "; ".join(f"{g}: {r.reason}" for g, r in failed)
    else:
        ahead = [s for s, f in flows.items() if f.first_group_at and f.last_ok_at and f.first_group_at < f.last_ok_at]
        reason = (
            f"{len(rows)} shipments moved and verified and {stage.name} ran at {len(sites)} sites; "
            f"{len(ahead)} site(s) started groups before their last shipment was in place"
        )
    return finish_phase(
        run_dir,
        "flow",
        not failed,
        reason,
        started,
        summary=FlowSummary(stage=stage.name, sites=flows, gates=gates),
        artifacts=[str(table), str(s_table)],
    )
