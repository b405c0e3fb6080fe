"""Removing a campaign's products on purpose: Butler collections and Rucio rules together.

Never part of the chain. :func:`cleanup` first lists what would go (``dry_run``, the default):
every collection under the campaign's output prefix at every site (with its dataset count),
and every Rucio rule of the campaign's gather, redistribution and final shipments. Run for
real, under the campaign's operator lock, it deletes those rules (their replicas left to
Rucio's reaper) and removes those collections from every Butler (their files with them).

The placement stays: its rules pin the sites' copies of the inputs, which the site Butlers
hold in place and other campaigns may share; removing a site's inputs is the facility's call.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from pydantic import BaseModel

from multisite_nb.adapters.butler.lock import operator_lock
from multisite_nb.adapters.butler.repo import count_datasets, open_site_butler
from multisite_nb.adapters.results import finish_phase, save_table
from multisite_nb.adapters.rucio.ops import RucioOps
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.naming import campaign_dataset, lock_collection, placement_site
from multisite_nb.domain.results import PhaseResult, utcnow
from multisite_nb.domain.summaries import CleanupSummary
from multisite_nb.phases.spec import phase

if TYPE_CHECKING:
    from lsst.daf.butler import Butler

__all__ = ["CleanupItem", "cleanup", "run"]


class CleanupItem(BaseModel):
    """One thing cleanup removes (or would remove)."""

    site: str
    kind: str  # "collection" | "rule"
    what: str
    detail: str = ""


def _collections(campaign: Campaign, site: str) -> list[CleanupItem]:
    from lsst.daf.butler import CollectionType

    with open_site_butler(campaign, site) as butler:
        infos = butler.collections.query_info(f"{campaign.output_prefix}/*", include_chains=True)
        items = []
        for info in sorted(infos, key=lambda i: i.name):
            if info.name == lock_collection(campaign):
                continue  # held while cleaning; released at the end
            n = count_datasets(butler, info.name) if info.type is CollectionType.RUN else 0
            items.append(
                CleanupItem(
                    site=site,
                    kind="collection",
                    what=info.name,
                    detail=f"{info.type.name}, {n} datasets" if n else info.type.name,
                )
            )
    return items


def _rules(campaign: Campaign, ops: RucioOps) -> list[CleanupItem]:
    site_of = {campaign.site(s).rse: s for s in campaign.all_sites}
    return [
        CleanupItem(
            site=site_of.get(r.rse_expression, r.rse_expression),
            kind="rule",
            what=r.id,
            detail=f"{r.did} -> {r.rse_expression} ({r.state}, {r.total} files)",
        )
        for r in ops.list_rules()
        if campaign_dataset(campaign, r.name)
        and placement_site(campaign, r.name) is None
        and not r.ending()  # a deleted rule only waits for Rucio's cleaner
    ]


def cleanup(campaign: Campaign, *, dry_run: bool = True) -> list[CleanupItem]:
    """What the campaign's cleanup removes; removed unless ``dry_run``.

    Returns
    -------
    list of CleanupItem
        The rules and collections (removed, or that would be).
    """
    ops = RucioOps.for_campaign(campaign)
    items = _rules(campaign, ops) + [i for site in campaign.all_sites for i in _collections(campaign, site)]
    if dry_run:
        return items
    with operator_lock(campaign):
        for item in items:
            if item.kind == "rule":
                ops.delete_rule(item.what)
        for site in campaign.all_sites:
            names = [i.what for i in items if i.kind == "collection" and i.site == site]
            if names:
                with open_site_butler(campaign, site, writeable=True) as butler:
                    _remove(butler, names)
    return items


def _remove(butler: Butler, names: list[str]) -> None:
    """Chains first (they point at the runs), then the runs with their files."""
    from lsst.daf.butler import CollectionType

    infos = {i.name: i for i in butler.collections.query_info(names)}
    for name in names:
        if infos[name].type is not CollectionType.RUN:
            butler.collections.x_remove(name)
    runs = [n for n in names if infos[n].type is CollectionType.RUN]
    if runs:
        butler.removeRuns(runs, unlink_from_chains=True)


@phase("cleanup", notebook="07_cleanup", summary=CleanupSummary, in_chain=False)
def run(campaign: Campaign, run_dir: str | Path, *, dry_run: bool = True) -> tuple[PhaseResult, list[CleanupItem]]:
    """The cleanup as a phase: what it removes (or would), recorded in the run folder.

    It passes when it listed (``dry_run``) or removed everything; a dry run changes nothing.
    """
    started = utcnow()
    items = cleanup(campaign, dry_run=dry_run)
    by_kind = dict(Counter(i.kind for i in items))
    table = save_table(run_dir, "cleanup", "items", pd.DataFrame([i.model_dump() for i in items]))
    what = "would remove (dry run)" if dry_run else "removed"
    reason = f"{what}: {len(items)} item(s)" + (
        f" ({', '.join(f'{n} {k}s' for k, n in by_kind.items())})" if items else ""
    )
    summary = CleanupSummary(dry_run=dry_run, items=len(items), by_kind=by_kind)
    result = finish_phase(run_dir, "cleanup", True, reason, started, summary=summary, artifacts=[str(table)])
    return result, items
