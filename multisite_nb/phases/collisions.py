"""Collisions found before any byte moves: another campaign's collections, clashing dataset types, bad rules.

Placement runs :func:`preflight` and fails its gate on any finding, so nothing is transferred
into a state that cannot be finished cleanly:

* **ownership** — every site (and the central site) holds an owner marker, the RUN collection
  ``<output prefix>/multisite_nb-owner`` whose documentation names the campaign. It is made
  when the campaign first acts at a site (:func:`claim`, called by transfer). Collections under
  the output prefix that exist without the marker, or under another campaign's marker, are
  refused: a rerun would otherwise extend another campaign's RUN collections;
* **dataset types** — a dataset type of the pipeline (or a placed input) that a site's
  registry defines differently (dimensions, storage class);
* **rules** — an existing rule of this campaign's placement in a bad state (STUCK,
  SUSPENDED): repair it first (``multisite-nb repair``), it is not silently reused.

A site that cannot be read is a finding for that site, naming the reason.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from lsst.daf.butler import Butler, CollectionType, MissingCollectionError

from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.adapters.rucio.ops import RucioOps
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import PlanError
from multisite_nb.domain.naming import lock_collection, owner_collection, placement_dataset

if TYPE_CHECKING:
    from lsst.daf.butler import DatasetType

__all__ = ["claim", "identity", "preflight"]


def identity(campaign: Campaign) -> str:
    """What the owner marker says: the campaign and its output prefix."""
    return f"multisite_nb campaign {campaign.name} (output prefix {campaign.output_prefix})"


def _ownership(campaign: Campaign, site: str, butler: Butler) -> list[str]:
    prefix = campaign.output_prefix
    marker = owner_collection(campaign)
    try:
        owner = butler.collections.get_info(marker).doc or "(no owner named)"
    except MissingCollectionError:
        owner = None
    if owner == identity(campaign):
        return []
    ours = {marker, lock_collection(campaign)}  # the campaign's own bookkeeping, not its products
    existing = sorted(c for c in butler.collections.query(f"{prefix}/*") if c not in ours)
    if owner is None and not existing:
        return []
    made_by = f"by {owner}" if owner else "outside multisite_nb (no owner marker)"
    return [
        f"{site}: collections under {prefix}/ exist in {campaign.butler_repo(site)} made {made_by}, "
        f"e.g. {existing[0] if existing else marker}: give this campaign another collections.output_prefix"
    ]


def _type_conflicts(site: str, butler: Butler, wanted: Iterable[DatasetType]) -> list[str]:
    from lsst.daf.butler import MissingDatasetTypeError

    problems = []
    for dt in wanted:
        try:
            have = butler.get_dataset_type(dt.name)
        except MissingDatasetTypeError:
            continue
        if have.dimensions != dt.dimensions or have.storageClass_name != dt.storageClass_name:
            problems.append(
                f"{site}: dataset type {dt.name} is defined as {have.dimensions} / "
                f"{have.storageClass_name} there, the pipeline needs {dt.dimensions} / "
                f"{dt.storageClass_name}"
            )
    return problems


def _rules(campaign: Campaign, ops: RucioOps) -> list[str]:
    problems = []
    for site in campaign.remote_sites:
        dataset, rse = placement_dataset(campaign, site), campaign.site(site).rse
        found = ops.find_rule(dataset, rse)
        if found is None:
            continue
        rule_id = found.id
        rule = ops.rule(rule_id)
        if rule.state.bad:
            problems.append(
                f"{site}: rule {rule_id} ({dataset} -> {rse}) is {rule.state}: {rule.error or ''}; "
                "repair it first (multisite-nb repair RUN_DIR) instead of reusing it".replace(": ;", ";")
            )
    return problems


def preflight(campaign: Campaign, dataset_types: Iterable[DatasetType]) -> list[str]:
    """Every collision the campaign would meet, one sentence each (empty: nothing in the way)."""
    wanted = list(dataset_types)
    problems: list[str] = []
    for site in campaign.all_sites:
        try:
            with open_site_butler(campaign, site) as butler:
                problems += _ownership(campaign, site, butler)
                problems += _type_conflicts(site, butler, wanted)
        except Exception as exc:  # one site unreadable is that site's finding
            problems.append(f"{site}: cannot check for collisions: {type(exc).__name__}: {exc}"[:500])
    try:
        problems += _rules(campaign, RucioOps.for_campaign(campaign))
    except Exception as exc:
        problems.append(f"Rucio: cannot check the campaign's rules: {type(exc).__name__}: {exc}"[:500])
    return problems


def claim(campaign: Campaign, site: str) -> None:
    """Put the campaign's owner marker at ``site`` (idempotent; refuses another campaign's prefix)."""
    with open_site_butler(campaign, site, writeable=True) as butler:
        problems = _ownership(campaign, site, butler)
        if problems:
            raise PlanError(problems[0])
        butler.collections.register(owner_collection(campaign), CollectionType.RUN, doc=identity(campaign))
