"""Phase 2, transfer: each site's planned inputs moved with Rucio and ingested in place.

A shipment (:mod:`.shipment`) is registered where it sits (:mod:`.register`), pinned there and
replicated by rules (:mod:`.rules`), and ingested at its destination with the planned UUIDs
(:mod:`.ingest`); :mod:`.shipping` moves a set of shipments end to end. Placement, gather and
redistribution are all shipments.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from multisite_nb.adapters.results import finish_phase, load_result, save_table
from multisite_nb.adapters.rucio.ops import RucioOps
from multisite_nb.adapters.rucio.probe import ping
from multisite_nb.adapters.tables import load_plan
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.naming import campaign_dataset, placement_dataset, plan_path
from multisite_nb.domain.records import RuleState, ShipmentOutcome
from multisite_nb.domain.results import PhaseResult, utcnow
from multisite_nb.domain.summaries import PlacementSummary, ShipmentRow, TransferSummary
from multisite_nb.phases.spec import phase
from multisite_nb.phases.transfer.shipping import place_data

__all__ = ["run"]


def progress(campaign: Campaign, run_dir: Path) -> str:
    """What a transfer had done, from Rucio: the rules it made to each site, and its planned files there."""
    placed = load_result(run_dir, "placement")
    planned = placed.summary.sites if placed is not None and isinstance(placed.summary, PlacementSummary) else {}
    ops = RucioOps.for_campaign(campaign, quiet=True)
    ping(ops.config)  # an unreachable Rucio is said at once, not after the client's retries
    rules = [r for r in ops.list_rules() if campaign_dataset(campaign, r.name)]
    parts = []
    for site in campaign.remote_sites:
        rse, name = campaign.site(site).rse, placement_dataset(campaign, site)
        to_site = [r for r in rules if r.rse_expression == rse]
        ok = sum(r.state is RuleState.OK for r in to_site)
        rule = next((r for r in to_site if r.name == name), None)
        want = planned[site].files if site in planned else "?"
        files = "no placement rule yet" if rule is None else f"{rule.locks_ok}/{want} planned files there"
        parts.append(f"{site}: {len(to_site)} rule(s) made ({ok} OK), {files}")
    return "; ".join(parts)


@phase(
    "transfer", notebook="02_transfer", summary=TransferSummary, needs=("placement",), acting=True, progress=progress
)
def run(
    campaign: Campaign, run_dir: str | Path, *, progress: bool = True, timeout_s: float = 900
) -> tuple[PhaseResult, list[ShipmentOutcome]]:
    """Phase 2: move each site's planned inputs with Rucio and ingest them in place."""
    started = utcnow()
    plan = load_plan(plan_path(run_dir))
    outcomes = place_data(campaign, plan, progress=progress, timeout_s=timeout_s, log=lambda m: None)
    rows = [ShipmentRow.of(o) for o in outcomes]
    table = save_table(run_dir, "transfer", "shipments", pd.DataFrame([r.model_dump() for r in rows]))
    failed = [o for o in outcomes if o.error]
    passed = not failed
    reason = (
        "all rules OK; "
        + ", ".join(f"{o.dest}: {o.ingested} ingested, {o.already_present} already there" for o in outcomes)
        if passed
        else "; ".join(f"{o.dest}: {o.state}: {o.error}" if o.state else f"{o.dest}: {o.error}" for o in failed)
    )
    summary = TransferSummary(shipments={r.dest: r for r in rows})
    result = finish_phase(run_dir, "transfer", passed, reason, started, summary=summary, artifacts=[str(table)])
    return result, outcomes
