"""Each phase as one library call: act, judge the gate, record the result.

The notebooks call these and show what comes back; the same calls run a phase without a
notebook. Each returns the recorded :class:`~multisite_nb.results.PhaseResult` and the
phase's details (plan, outcomes, reports) for display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from .config import Campaign, load_campaign
from .results import PhaseResult, load_result, record_result, save_table, utcnow

__all__ = ["placement", "transfer", "verify", "plan_path", "require_passed"]


def plan_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "artifacts" / "placement" / "plan.json"


def require_passed(run_dir: str | Path, phase: str) -> PhaseResult:
    """The earlier phase's result; raises if it is missing or its gate failed."""
    res = load_result(run_dir, phase)
    if res is None:
        raise RuntimeError(f"phase {phase!r} has no result in {run_dir}: run it first")
    if not res.passed:
        raise RuntimeError(f"phase {phase!r} failed its gate: {res.reason}")
    return res


def _campaign(c: Campaign | str | Path) -> Campaign:
    return c if isinstance(c, Campaign) else load_campaign(c)


def placement(campaign: Campaign | str | Path, run_dir: str | Path) -> tuple[PhaseResult, Any]:
    """Phase 1: plan what each site needs; save the plan and per-site manifests."""
    from .placement import plan_placement

    started = utcnow()
    campaign = _campaign(campaign)
    plan = plan_placement(campaign)
    artifacts = [str(plan.save(plan_path(run_dir)))]
    for site in plan.sites:
        artifacts.append(str(save_table(run_dir, "placement", f"manifest_{site}", pd.DataFrame(plan.manifest_rows(site)))))
    counts = plan.counts()
    artifacts.append(str(save_table(run_dir, "placement", "counts", pd.DataFrame(counts))))
    empty = [r["site"] for r in counts if r["files"] == 0 or r["visits"] == 0]
    cost = plan.boundary_cost()
    if empty:
        passed, reason = False, f"no data found for site(s) {', '.join(empty)}: check their sky units"
    else:
        passed = True
        reason = (
            f"{sum(r['files'] for r in counts)} files planned for {len(counts)} sites; "
            f"{len(plan.boundary_visits)} boundary visits ({cost['extra_copies']} extra copies, {cost['extra_bytes']} bytes)"
        )
    result = PhaseResult(
        phase="placement", passed=passed, reason=reason, started=started, finished=utcnow(),
        summary={"sites": {r["site"]: {"files": r["files"], "bytes": r["bytes"], "visits": r["visits"]} for r in counts},
                 "boundary_visits": len(plan.boundary_visits), "boundary_cost": cost},
        artifacts=artifacts,
    )
    record_result(run_dir, result)
    return result, plan


def transfer(campaign: Campaign | str | Path, run_dir: str | Path, *, progress: bool = True,
             timeout_s: float = 900) -> tuple[PhaseResult, list[Any]]:
    """Phase 2: move each site's planned inputs with Rucio and ingest them in place."""
    from .placement import PlacementPlan
    from .transfer import place_data

    started = utcnow()
    campaign = _campaign(campaign)
    require_passed(run_dir, "placement")
    plan = PlacementPlan.load(plan_path(run_dir))
    outcomes = place_data(campaign, plan, progress=progress, timeout_s=timeout_s, log=lambda m: None)
    rows = [o.as_row() for o in outcomes]
    table = save_table(run_dir, "transfer", "shipments", pd.DataFrame(rows))
    failed = [o for o in outcomes if o.error]
    passed = not failed
    reason = (
        "all rules OK; " + ", ".join(f"{o.dest}: {o.ingested} ingested, {o.already_present} already there" for o in outcomes)
        if passed else "; ".join(f"{o.dest}: {o.state}: {o.error}" for o in failed)
    )
    result = PhaseResult(
        phase="transfer", passed=passed, reason=reason, started=started, finished=utcnow(),
        summary={"shipments": {o.dest: {"rule": o.state, "rule_id": o.rule_id, "files": o.registered,
                                        "ingested": o.ingested, "already_present": o.already_present,
                                        "seconds": {k: round(v, 2) for k, v in o.seconds.items()}}
                               for o in outcomes}},
        artifacts=[str(table)],
    )
    record_result(run_dir, result)
    return result, outcomes


def verify(campaign: Campaign | str | Path, run_dir: str | Path, *, checksums: bool = True) -> tuple[PhaseResult, list[Any]]:
    """Phase 3: reconcile the plan with Rucio, each site's Butler and the disk."""
    from .placement import PlacementPlan
    from .verify import problems_table, verify_placement

    started = utcnow()
    campaign = _campaign(campaign)
    require_passed(run_dir, "placement")
    plan = PlacementPlan.load(plan_path(run_dir))
    reports = verify_placement(campaign, plan, checksums=checksums)
    counts = pd.DataFrame([r.counts() for r in reports])
    problems = problems_table(reports)
    artifacts = [str(save_table(run_dir, "verify", "counts", counts)),
                 str(save_table(run_dir, "verify", "problems",
                                pd.DataFrame(problems, columns=["site", "layer", "problem", "file", "detail"])))]
    bad = [r for r in reports if not r.ok]
    passed = not bad
    if passed:
        reason = f"all {sum(r.planned for r in reports)} planned files in place at {len(reports)} sites (Rucio, Butler, disk)"
    else:
        first = bad[0].problems[0]
        reason = (f"{sum(len(r.problems) for r in bad)} problems at {', '.join(r.site for r in bad)}; "
                  f"first: {first.site} {first.layer} {first.kind} {first.what} ({first.detail})")
    result = PhaseResult(
        phase="verify", passed=passed, reason=reason, started=started, finished=utcnow(),
        summary={"sites": {r.site: r.counts() for r in reports}, "problems": len(problems)},
        artifacts=artifacts,
    )
    record_result(run_dir, result)
    return result, reports
