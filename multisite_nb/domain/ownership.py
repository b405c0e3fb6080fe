"""Which site is canonical for each data ID, and what cannot be made consistent at all.

Derived from dimensions only — no dataset type, task or step name is written here:

* a data ID with a ``patch`` belongs to the site holding that sky unit (the patch, or its whole
  tract);
* else one with a ``visit`` or an ``exposure`` belongs to the visit's owner: the site whose sky
  units the visit overlaps most (more visit-detector/patch overlaps), ties to the site listed
  first in the campaign;
* else one with a ``tract`` belongs to the tract's owner: the site holding it whole, or the site
  holding most of its patches, ties as above;
* anything coarser (``instrument`` only) is global: each site's copy covers its own data.

Placement gives every site all detectors of each visit it touches, so a visit's products are
complete wherever they are made and equal (the pipeline being deterministic); the canonical
copy is the owner's, and only that one is gathered and compared.

A task of a site stage that works on whole tracts (a ``tract`` in its quantum dimensions, no
``patch``, ``visit`` or ``exposure``) cannot be consistent when its tract is split between
sites: each site would make the tract's product from part of its data. :func:`refusals` names
each such case, and placement refuses the campaign before any byte moves.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lsst.pipe.base.pipeline_graph import PipelineGraph

from multisite_nb.domain.config import Campaign
from multisite_nb.domain.plan import PlacementPlan

__all__ = ["Ownership", "refusals", "split_tracts", "tract_owners", "visit_owners", "whole_tract_tasks"]

_OBS = ("visit", "exposure")


def _first(sites: Iterable[str], order: Sequence[str], weight: Mapping[str, int]) -> str:
    """The heaviest site, ties to the one listed first."""
    return max(sites, key=lambda s: (weight.get(s, 0), -order.index(s)))


def split_tracts(campaign: Campaign) -> dict[int, list[str]]:
    """Tracts whose patches are given to more than one site: tract -> those sites (campaign order)."""
    holders: dict[int, list[str]] = defaultdict(list)
    for site in campaign.remote_sites:
        for unit in campaign.sky_units(site):
            if site not in holders[unit.tract]:
                holders[unit.tract].append(site)
    return {t: ss for t, ss in sorted(holders.items()) if len(ss) > 1}


def tract_owners(campaign: Campaign) -> dict[int, str]:
    """Each tract's owner: the site holding it whole, else the one holding most of its patches."""
    order = campaign.remote_sites
    counts: dict[int, Counter[str]] = defaultdict(Counter)
    for site in order:
        for unit in campaign.sky_units(site):
            counts[unit.tract][site] += 1000 if unit.patch is None else 1
    return {t: _first(c, order, c) for t, c in sorted(counts.items())}


class Ownership:
    """The canonical site of data IDs for one campaign and its placement.

    Parameters
    ----------
    campaign
        Sky units per site.
    visit_owner
        Each planned visit's owner (from placement).
    exposure_visit
        Exposure -> its visit, for data IDs that name an exposure.
    """

    def __init__(self, campaign: Campaign, visit_owner: Mapping[int, str], exposure_visit: Mapping[int, int]):
        self.units: dict[tuple[int, int | None], str] = {
            u.key: s for s in campaign.remote_sites for u in campaign.sky_units(s)
        }
        self.tracts = tract_owners(campaign)
        self.visits = dict(visit_owner)
        self.exposures = dict(exposure_visit)

    @classmethod
    def of_plan(cls, campaign: Campaign, plan: PlacementPlan) -> Ownership:
        """The ownership a placement plan decided."""
        return cls(campaign, plan.visit_owner, plan.exposure_visit)

    def owner(self, data_id: Mapping[str, Any]) -> str | None:
        """The canonical site of a data ID; `None` for a global one (or one outside the campaign)."""
        if "patch" in data_id and "tract" in data_id:
            key = (int(data_id["tract"]), int(data_id["patch"]))
            return self.units.get(key) or self.units.get((key[0], None))
        if "visit" in data_id:
            return self.visits.get(int(data_id["visit"]))
        if "exposure" in data_id:
            visit = self.exposures.get(int(data_id["exposure"]))
            return self.visits.get(visit) if visit is not None else None
        if "tract" in data_id:
            return self.tracts.get(int(data_id["tract"]))
        return None

    def is_canonical(self, site: str, data_id: Mapping[str, Any]) -> bool:
        """Whether ``site``'s copy of a data ID is the one that counts (global ones count everywhere)."""
        owner = self.owner(data_id)
        return owner is None or owner == site


def visit_owners(weights: Mapping[str, Mapping[int, int]], order: Sequence[str]) -> dict[int, str]:
    """Each visit's owner from per-site overlap weights (site -> visit -> number of overlaps)."""
    by_visit: dict[int, dict[str, int]] = defaultdict(dict)
    for site, per_visit in weights.items():
        for visit, n in per_visit.items():
            by_visit[visit][site] = n
    return {v: _first(w, order, w) for v, w in sorted(by_visit.items())}


def whole_tract_tasks(campaign: Campaign, graph: PipelineGraph) -> list[tuple[str, str, str]]:
    """(stage, step, task) of every site-stage task working on whole tracts (quantum: tract, no finer)."""
    subsets = graph.task_subsets
    out = []
    for stage in campaign.config.stages:
        if stage.where != "sites":
            continue
        for step in stage.steps:
            for label in sorted(subsets[step]):
                node = graph.tasks[label]
                dims = set(node.dimensions.names if node.has_resolved_dimensions else node.raw_dimensions)
                if "tract" in dims and not dims & {"patch", *_OBS}:
                    out.append((stage.name, step, label))
    return out


def refusals(campaign: Campaign, graph: PipelineGraph) -> list[str]:
    """Why the campaign cannot be consistent (empty: it can): tasks of site stages over split tracts.

    Parameters
    ----------
    graph
        The pipeline graph (resolved against a registry or the default universe).
    """
    split = split_tracts(campaign)
    return [
        f"tract {tract} is split between {', '.join(sites)}, but task {label} ({step}, site stage {stage}) "
        "works on whole tracts at the sites: each site would make the tract's product from part of its "
        "data; give the tract to one site (see the suggested assignment) or run that step centrally"
        for stage, step, label in whole_tract_tasks(campaign, graph)
        if split
        for tract, sites in split.items()
    ]
