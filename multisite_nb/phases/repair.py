"""Repair what verification found, through Rucio's own mechanisms, then verify again.

For each remote site of a run's placement:

* a replica that is corrupt or missing on the site's disk is **declared bad** to Rucio, after
  checking that the central copy it will be replaced from is good; Rucio's necromancer then
  re-queues the rule's lock and the conveyor replaces the copy from a good source (the
  Butler's artifact is that same file, so the Butler holds good data again);
* a STUCK rule is **retried** (Rucio's ``boost_rule``), its reason shown;
* a dataset missing from the site's Butler is **ingested again** (the transfer's own
  idempotent path, for that site only);
* what cannot be repaired automatically — a file whose every source is bad or gone, a replica
  Rucio does not know at all — is reported with what the operator can do.

Then the affected sites are verified again; the outcome is recorded as ``results/repair.json``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from multisite_nb.adapters.files import adler32_of
from multisite_nb.adapters.results import finish_phase
from multisite_nb.adapters.rucio.ops import RucioOps
from multisite_nb.adapters.tables import iter_site_files, load_plan
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.naming import placement_dataset, plan_path
from multisite_nb.domain.plan import PlannedFile
from multisite_nb.domain.records import RuleState
from multisite_nb.domain.results import PhaseResult, utcnow
from multisite_nb.domain.summaries import RepairAction, RepairSummary
from multisite_nb.domain.verification import Problem, SiteReport
from multisite_nb.phases.spec import phase
from multisite_nb.phases.transfer.batches import shipped_batches
from multisite_nb.phases.transfer.rules import watch_rules
from multisite_nb.phases.transfer.shipping import place_data, run_shipments
from multisite_nb.phases.verify import verify_placement

__all__ = ["repair", "run"]


def _source_is_good(campaign: Campaign, planned: PlannedFile | None, lfn: str) -> str | None:
    """``None`` if the central copy of ``lfn`` matches the plan, else why not."""
    root = campaign.site(campaign.central).rse_root
    if planned is None:
        return "not in the plan"
    if root is None:
        return None  # the source cannot be read from here: Rucio checks it when it copies
    path = Path(root) / lfn
    if not path.is_file():
        return f"the central copy {path} is gone"
    if planned.adler32 is None:
        return f"no checksum for {lfn} in the plan or in Rucio's catalogue: the central copy cannot be trusted"
    if path.stat().st_size != planned.size or adler32_of(path) != planned.adler32:
        return f"the central copy {path} is corrupt too"
    return None


def _wait_available(ops: RucioOps, names: list[str], rse: str, timeout_s: float) -> list[str]:
    """Wait until the declared-bad replicas are AVAILABLE again; returns those that are not."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = ops.file_replica_states(names, rse)
        waiting = [n for n in names if states.get(n) != "AVAILABLE"]
        if not waiting or time.monotonic() > deadline:
            return waiting
        time.sleep(1.0)


def _declare_confirmed(ops: RucioOps, names: list[str], rse: str, reason: str) -> set[str]:
    """Declare ``names`` bad on ``rse`` and confirm Rucio took it: Rucio ignores, silently, a replica it
    already had declared bad once, and leaves it AVAILABLE. Those are declared again with ``force``;
    returns the ones still ignored."""
    ignored: set[str] = set()
    for force in (False, True):
        ops.declare_bad(names, rse, reason, force=force)
        states = ops.file_replica_states(names, rse)
        ignored = {n for n in names if states.get(n) == "AVAILABLE"}
        if not ignored:
            break
        names = sorted(ignored)
    return ignored


def _plan_site(problems: list[Problem]) -> tuple[set[str], set[str], bool]:
    """(files to declare bad, rules to retry, Butler datasets missing) from one site's problems."""
    bad = {p.what for p in problems if p.layer == "disk" and p.kind in ("corrupt", "missing")}
    rules = {p.what for p in problems if p.kind == "rule"}
    butler = any(p.layer == "butler" for p in problems)
    return bad, rules, butler


@phase("repair", notebook="08_repair", summary=RepairSummary, needs=("placement",), acting=True, in_chain=False)
def run(
    campaign: Campaign, run_dir: str | Path, *, timeout_s: float = 600, log: Callable[[str], Any] = print
) -> tuple[PhaseResult, list[RepairAction], list[SiteReport]]:
    """Repair the placement problems of ``run_dir`` and verify the sites again.

    Returns
    -------
    tuple
        The recorded result (passed when every repaired site verifies), the actions taken,
        and the sites' reports after the repair.
    """
    started = utcnow()
    plan = load_plan(plan_path(run_dir))
    before = [r for r in verify_placement(campaign, plan, run_dir=run_dir) if not r.ok]
    ops = RucioOps.for_campaign(campaign)
    suspect = {p.what for r in before for p in r.problems if p.layer == "disk"}
    planned: dict[str, PlannedFile] = {}  # one pass over the plan's tables, a batch at a time
    for site in plan.sites:
        for batch in iter_site_files(plan, site):
            planned.update((f.lfn, f) for f in batch if f.lfn in suspect)
    unsummed = [lfn for lfn, f in planned.items() if not f.adler32]
    if unsummed:  # the plan reads no file: the central copies are held to Rucio's catalogue
        sums = ops.replica_checksums(unsummed, campaign.site(campaign.central).rse)
        for lfn in unsummed:
            planned[lfn].adler32 = sums.get(lfn) or None
    actions: list[RepairAction] = []
    rules: list[str] = []
    declared: dict[str, list[str]] = {}
    reingest: list[str] = []
    for report in before:
        site, rse = report.site, campaign.site(report.site).rse
        bad, stuck, butler = _plan_site(report.problems)
        good = []
        for lfn in sorted(bad):
            why = _source_is_good(campaign, planned.get(lfn), lfn)
            if why is None:
                good.append(lfn)
            else:
                actions.append(
                    RepairAction(
                        site=site,
                        what=lfn,
                        action="cannot repair",
                        detail=(
                            f"{why}: restore it at {campaign.central} (from the archive or the summit copy), then run "
                            "repair again; or take the dataset out of the campaign"
                        ),
                    )
                )
        if good:
            why = f"multisite_nb repair: verification found {len(good)} corrupt or missing replicas on {rse}"
            ignored = _declare_confirmed(ops, good, rse, why)
            actions += [
                RepairAction(
                    site=site,
                    what=lfn,
                    action="cannot repair",
                    detail=f"Rucio ignored the bad-replica declaration twice (its replica on {rse} stays AVAILABLE): "
                    "ask Rucio's operators, then run repair again",
                )
                for lfn in ignored
            ]
            good = [lfn for lfn in good if lfn not in ignored]
            actions += [
                RepairAction(
                    site=site,
                    what=lfn,
                    action="declared bad",
                    detail=f"Rucio re-replicates it to {rse} from a good copy",
                )
                for lfn in good
            ]
            declared[rse] = good
        batches = shipped_batches(campaign, plan, site, run_dir)
        names = [b.name for b in batches] if batches else [placement_dataset(campaign, site)]
        for found in (ops.find_rule(name, rse) for name in names):
            rule_id = found.id if found else None
            if stuck and rule_id:
                state = ops.rule(rule_id)
                if state.state is RuleState.STUCK:
                    ops.retry_rule(rule_id)
                    actions.append(
                        RepairAction(
                            site=site, what=f"rule {rule_id}", action="rule retried", detail=state.error or "STUCK"
                        )
                    )
            if rule_id and (good or stuck):
                rules.append(rule_id)
        if butler:
            reingest.append(site)
        log(
            f"{site}: {len(good)} declared bad, {len(stuck)} rule problem(s), "
            f"Butler {'to re-ingest' if butler else 'ok'}"
        )
    for rse, names in declared.items():
        for lfn in _wait_available(ops, names, rse, timeout_s):
            actions.append(
                RepairAction(
                    site=rse,
                    what=lfn,
                    action="cannot repair",
                    detail=f"not AVAILABLE on {rse} {timeout_s:.0f} s after it was declared bad",
                )
            )
    if rules:
        states = watch_rules(ops, rules, timeout_s=timeout_s, progress=False, desc="repairs")
        for rid, st in states.items():
            if st.state is not RuleState.OK:
                actions.append(
                    RepairAction(
                        site="?",
                        what=f"rule {rid}",
                        action="cannot repair",
                        detail=f"{st.state}: {st.error or 'not OK after the repair'}",
                    )
                )
    if reingest:
        flowed = {s: shipped_batches(campaign, plan, s, run_dir) for s in reingest}
        again = [o for s, bs in flowed.items() if bs for o in run_shipments(campaign, bs, progress=False, log=log)]
        plain = [s for s, bs in flowed.items() if not bs]
        if plain:
            again += place_data(campaign, plan, progress=False, timeout_s=timeout_s, log=log, sites=plain)
        for o in again:
            actions.append(
                RepairAction(
                    site=o.dest,
                    what=o.name,
                    action="ingested again",
                    detail=o.error or f"{o.ingested} ingested, {o.already_present} already there",
                )
            )
    sites = sorted({r.site for r in before})
    after = verify_placement(campaign, plan, sites=sites, run_dir=run_dir) if sites else []
    still = [p for r in after for p in r.problems]
    by_kind: dict[str, int] = defaultdict(int)
    for a in actions:
        by_kind[a.action] += 1
    if not before:
        passed, reason = True, "nothing to repair: every planned file is in place"
    elif not still:
        passed, reason = (
            True,
            (
                f"repaired {', '.join(sites)}: "
                + ", ".join(f"{n} {k}" for k, n in by_kind.items())
                + "; verification passes"
            ),
        )
    else:
        first = still[0]
        passed, reason = (
            False,
            (
                f"{len(still)} problems remain; first: {first.site} {first.layer} {first.kind} "
                f"{first.what} ({first.detail})"
            ),
        )
    result = finish_phase(
        run_dir,
        "repair",
        passed,
        reason,
        started,
        summary=RepairSummary(actions=actions[:200], counts=dict(by_kind), sites=sites, remaining=len(still)),
    )
    return result, actions, after


#: The library call by its own name (``repair.repair(campaign, run_dir)``).
repair = run
