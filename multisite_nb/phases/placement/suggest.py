"""Optional: suggest an assignment of sky units to sites (units that share visits go together)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from lsst.daf.butler import Butler
from pydantic import BaseModel, Field

from multisite_nb.adapters.butler.queries import unit_records
from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.domain.config import Campaign, SkyUnit
from multisite_nb.domain.ownership import whole_tract_tasks
from multisite_nb.domain.wiring import load_pipeline_graph
from multisite_nb.phases.placement.footprints import visit_hits

__all__ = ["Suggestion", "UnitGroup", "one_sky", "suggest", "suggest_assignment"]


class UnitGroup(BaseModel):
    """Sky units that share visits (so they had better go to one site), and their volume."""

    units: list[str]
    keys: list[tuple[int, int | None]]
    visits: list[int]
    raws: int
    site: str | None = None


def one_sky(groups: Sequence[UnitGroup], campaign: Campaign, fraction: float = 0.9) -> bool:
    """Whether one group of :func:`suggest_assignment` spans several of the campaign's sites and
    holds at least ``fraction`` of the raws: a contiguous sky, whose units all share visits."""
    site_of = {u.key: s for s in campaign.remote_sites for u in campaign.sky_units(s)}
    total = sum(g.raws for g in groups)
    return total > 0 and any(g.raws >= fraction * total and len({site_of.get(k) for k in g.keys}) > 1 for g in groups)


def suggest_assignment(
    campaign: Campaign,
    units: Iterable[SkyUnit] | None = None,
    butler: Butler | None = None,
    *,
    keep_tracts_whole: bool | None = None,
) -> list[UnitGroup]:
    """Group sky units that share visits and spread the groups over the remote sites.

    Units linked by a common visit form one group (splitting them would make boundary
    visits); so do the units of one tract when a site stage has a task working on whole
    tracts (a split tract could not be consistent). Groups are handed out largest first to the
    site furthest below its share of the volume (``share`` in the campaign, equal shares
    where none is given).

    This helps a rehearsal, whose sky units lie apart. Over a contiguous sky with LSSTCam's
    visits (~3.5 deg, meeting their neighbouring tracts), every unit shares visits with its
    neighbours and the groups merge into one: no assignment then avoids boundary visits, and the
    plan's boundary cost is the price of the campaign's split. The work is a second footprint
    pass over the units; its memory is a set of visits a unit and a count a visit.

    Parameters
    ----------
    units
        The candidate units (default: every unit the campaign assigns today).
    keep_tracts_whole
        Default: whether the campaign's stage plan has such a task.
    """
    if keep_tracts_whole is None:
        keep_tracts_whole = bool(whole_tract_tasks(campaign, load_pipeline_graph(campaign.pipeline_path)))

    cfg = campaign.config
    units = list(units) if units is not None else [u for s in campaign.remote_sites for u in campaign.sky_units(s)]
    own = butler is None
    if butler is None:
        butler = open_site_butler(campaign, campaign.central)
    try:
        # one query for every unit (uploaded as data IDs); each row goes to the unit holding its patch

        keys = {u.key for u in units}
        patch_regions = {(r.tract, r.id): r.region for r in unit_records(butler, list(keys), cfg.skymap, "patch")}
        visits_of: dict[tuple[int, int | None], set[int]] = defaultdict(set)
        # a visit's raws, counted once: all the units a visit meets end in one group (no per-raw set)
        raws_of: dict[int, int] = {}
        for visit, _, _, hits in visit_hits(butler, list(keys), cfg.skymap, cfg.instrument, patch_regions):
            met: set[int] = set()
            for tract, found in hits.items():
                for patch, ds in found:
                    key = (tract, patch) if (tract, patch) in keys else (tract, None)
                    if key not in keys:
                        continue
                    visits_of[key].add(visit)
                    met.update(ds)
            if met:
                raws_of[visit] = len(met)
    finally:
        if own:
            butler.close()
    # union-find over units sharing a visit
    parent = {u.key: u.key for u in units}

    def find(k: tuple[int, int | None]) -> tuple[int, int | None]:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    owner_of_visit: dict[int, tuple[int, int | None]] = {}
    for u in units:
        for v in visits_of[u.key]:
            if v in owner_of_visit:
                parent[find(u.key)] = find(owner_of_visit[v])
            else:
                owner_of_visit[v] = u.key
    if keep_tracts_whole:
        first_of_tract: dict[int, tuple[int, int | None]] = {}
        for u in units:
            if u.tract in first_of_tract:
                parent[find(u.key)] = find(first_of_tract[u.tract])
            else:
                first_of_tract[u.tract] = u.key
    members: dict[tuple[int, int | None], list[SkyUnit]] = defaultdict(list)
    for u in units:
        members[find(u.key)].append(u)
    groups = []
    for ms in members.values():
        vis = set().union(*(visits_of[u.key] for u in ms))
        raws = sum(raws_of[v] for v in vis)
        groups.append(UnitGroup(units=[str(u) for u in ms], keys=[u.key for u in ms], visits=sorted(vis), raws=raws))
    # largest first, each to the site furthest below its share
    sites = campaign.remote_sites
    given = {s: campaign.config.sites[s].share for s in sites}
    free = 1.0 - sum(v for v in given.values() if v)
    n_free = sum(1 for v in given.values() if not v)
    shares = {s: (given[s] or (free / n_free if n_free else 0.0)) for s in sites}
    total_share = sum(shares.values()) or 1.0
    total = sum(g.raws for g in groups) or 1
    load = {s: 0 for s in sites}
    for g in sorted(groups, key=lambda g: (-g.raws, g.keys)):
        g.site = max(sites, key=lambda s: (shares[s] / total_share * total - load[s], -sites.index(s)))
        load[g.site] += g.raws
    return sorted(groups, key=lambda g: g.keys)


class Suggestion(BaseModel):
    """What the placement notebook says of the campaign's assignment: skipped, one sky, or the groups."""

    units: int = Field(description="the campaign's sky units")
    skipped: str = Field(default="", description="why no suggestion was made (too many units to afford the pass)")
    one_sky: bool = Field(default=False, description="the units share visits across the sites' edges")
    groups: list[UnitGroup] = Field(default_factory=list)
    current: dict[str, str] = Field(default_factory=dict, description="unit -> the site the campaign gives it")

    @property
    def moved(self) -> list[UnitGroup]:
        """The groups the suggestion gives another site than the campaign does."""
        return [g for g in self.groups if {self.current.get(u) for u in g.units} != {g.site}]


def suggest(campaign: Campaign, max_units: int = 2000) -> Suggestion:
    """The suggested assignment, or why there is none: it is a second footprint pass, skipped above
    ``max_units`` sky units (a data release, whose contiguous sky merges the groups anyway)."""
    current = {str(u): s for s in campaign.remote_sites for u in campaign.sky_units(s)}
    n = len(current)
    if n > max_units:
        return Suggestion(units=n, skipped=f"{n} sky units, more than the {max_units} a suggestion is made for")
    groups = suggest_assignment(campaign)
    return Suggestion(units=n, one_sky=one_sky(groups, campaign), groups=groups, current=current)
