"""Phase 1, placement: what each site needs, planned from the central registry before a byte moves.

The plan (:mod:`.plan`) comes from the sites' footprints (:mod:`.footprints`: which visits and
detectors their sky units meet), read a page (:mod:`.pages`) or a worker's shard (:mod:`.shards`)
at a time into per-site tables; :mod:`.suggest` offers an assignment of sky units to sites.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from multisite_nb.adapters.results import check_run_folder, finish_phase, save_table
from multisite_nb.adapters.tables import save_plan, site_table_path
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.naming import plan_path
from multisite_nb.domain.ownership import refusals
from multisite_nb.domain.plan import PlacementPlan
from multisite_nb.domain.results import PhaseResult, utcnow
from multisite_nb.domain.summaries import BoundaryCost, PlacementSummary, SitePlacement
from multisite_nb.domain.wiring import load_pipeline_graph
from multisite_nb.phases.collisions import preflight as preflight_collisions
from multisite_nb.phases.placement.plan import plan_placement
from multisite_nb.phases.spec import phase

__all__ = ["run"]


@phase("placement", notebook="01_placement", summary=PlacementSummary, starts_run=True)
def run(campaign: Campaign, run_dir: str | Path) -> tuple[PhaseResult, PlacementPlan]:
    """Phase 1: plan what each site needs; save the plan and per-site manifests; find collisions."""
    started = utcnow()
    check_run_folder(run_dir)
    graph = load_pipeline_graph(campaign.pipeline_path)
    refused = refusals(campaign, graph)  # what no placement can make consistent, before any byte moves
    plan = plan_placement(campaign, folder=plan_path(run_dir).parent)  # the files stream into its tables
    collisions = preflight_collisions(campaign, [n.dataset_type for n in graph.dataset_types.values()])
    artifacts = [str(save_plan(plan, plan_path(run_dir)))]
    artifacts += [str(site_table_path(plan.tables, site)) for site in plan.sites]  # the per-site manifests
    artifacts.append(str(save_table(run_dir, "placement", "tracts", pd.DataFrame(plan.tract_rows()))))
    counts = plan.counts()
    artifacts.append(str(save_table(run_dir, "placement", "counts", pd.DataFrame(counts))))
    empty = [r["site"] for r in counts if r["files"] == 0 or r["visits"] == 0]
    cost = BoundaryCost(**plan.boundary_cost())
    if refused:
        passed, reason = False, f"cannot be made consistent ({len(refused)}): {refused[0]}"
    elif collisions:
        passed, reason = False, f"{len(collisions)} collision(s) before anything moved; first: {collisions[0]}"
    elif empty:
        passed, reason = False, f"no data found for site(s) {', '.join(empty)}: check their sky units"
    else:
        passed = True
        reason = (
            f"{sum(r['files'] for r in counts)} files planned for {len(counts)} sites; "
            f"{len(plan.boundary_visits)} boundary visits "
            f"({cost.extra_copies} extra copies, {cost.extra_bytes} bytes)"
        )
    summary = PlacementSummary(
        campaign_file=str(campaign.path),
        sites={r["site"]: SitePlacement(files=r["files"], bytes=r["bytes"], visits=r["visits"]) for r in counts},
        boundary_visits=len(plan.boundary_visits),
        boundary_cost=cost,
        boundary_by_sites=plan.boundary_by_sites(),
        collisions=collisions,
        refused=refused,
    )
    result = finish_phase(run_dir, "placement", passed, reason, started, summary=summary, artifacts=artifacts)
    return result, plan
