"""QA's sample: which sky units the single-site reference covers, and the reach it must run over."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from lsst.daf.butler import Butler

from multisite_nb.adapters.butler.queries import unit_data_ids
from multisite_nb.domain.config import Campaign, SkyUnit
from multisite_nb.domain.qa import SampleRow

UnitKey = tuple[int, int | None]


def _spread[T](items: Sequence[T], n: int) -> list[T]:
    """``n`` items spread evenly over ``items`` (all of them if there are no more)."""
    if n >= len(items):
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


def choose_sample(
    campaign: Campaign, boundary: Mapping[str, Iterable[UnitKey]] | None = None
) -> dict[str, list[SkyUnit]]:
    """The units QA's reference is asked to cover, per site, before completion to whole tracts.

    Deterministic: per site, ``qa.sample_units_per_site`` of its units spread evenly over them
    in (tract, patch) order, half of them (rounded up) boundary units when it has any; then
    the units of ``qa.sample``.

    Parameters
    ----------
    campaign
        The campaign (its sites' units and its ``qa`` settings).
    boundary
        Per site, the keys of its units whose visits also reach another site.
    """
    qa = campaign.config.qa
    explicit = {u.key for u in qa.sample}
    out: dict[str, list[SkyUnit]] = {}
    for site in campaign.remote_sites:
        units = sorted(campaign.sky_units(site), key=lambda u: (u.tract, -1 if u.patch is None else u.patch))
        if qa.sample_units_per_site == "all":
            chosen = units
        else:
            n = qa.sample_units_per_site
            edge = set((boundary or {}).get(site, ()))
            inner = [u for u in units if u.key not in edge]
            outer = [u for u in units if u.key in edge]
            k = min(len(outer), max(n - len(inner), (n + 1) // 2))
            picked = _spread(outer, k) + _spread(inner, n - k)
            chosen = [u for u in units if u in picked]
        out[site] = [u for u in units if u in chosen or u.key in explicit]
    return out


def boundary_units(
    butler: Butler, campaign: Campaign, boundary_visits: Mapping[int, Sequence[str]]
) -> dict[str, set[UnitKey]]:
    """Per site, its units overlapped by a boundary visit (a visit placed at more than one site).

    One registry query per site that has boundary visits, the visits bound as a list.
    """
    cfg = campaign.config
    out: dict[str, set[UnitKey]] = {s: set() for s in campaign.remote_sites}
    for site in campaign.remote_sites:
        visits = sorted(int(v) for v, sites in boundary_visits.items() if site in sites)
        units = {u.key for u in campaign.sky_units(site)}
        if not visits or not units:
            continue
        for did in unit_data_ids(
            butler, units, cfg.skymap, ["tract", "patch"], instrument=cfg.instrument,
            where="visit IN (v)", bind={"v": visits},
        ):  # fmt: skip
            t, p = int(did["tract"]), int(did["patch"])
            out[site].add((t, p) if (t, p) in units else (t, None))
    return out


@dataclass
class QASample:
    """Which units QA's reference covers.

    Attributes
    ----------
    units
        Per site, its sampled units: the chosen ones completed to whole tracts.
    chosen
        Per site, the units chosen (``qa`` settings) before that completion.
    reach
        Every unit the reference runs over: the sample and what its visits touch, whole tracts.
    visits
        The visits overlapping the sampled units.
    boundary
        Per site, its boundary units.
    full
        Whether the sample is the whole campaign (the reference redoes every step).
    """

    units: dict[str, list[SkyUnit]]
    chosen: dict[str, list[SkyUnit]]
    reach: list[SkyUnit]
    visits: set[int] = field(default_factory=set)
    boundary: dict[str, set[UnitKey]] = field(default_factory=dict)
    full: bool = False

    @property
    def tracts(self) -> set[int]:
        return {u.tract for units in self.units.values() for u in units}

    def keys(self) -> set[UnitKey]:
        return {u.key for units in self.units.values() for u in units}

    def rows(self, campaign: Campaign) -> list[SampleRow]:
        """One row per unit of the campaign: site, unit, boundary, chosen, sampled, in the reference's reach."""
        chosen, sampled, reach = (
            {u.key for us in self.chosen.values() for u in us},
            self.keys(),
            {u.key for u in self.reach},
        )
        return [
            SampleRow(
                site=site,
                sky_unit=str(u),
                boundary=u.key in self.boundary.get(site, set()),
                chosen=u.key in chosen,
                sampled=u.key in sampled,
                in_reference=u.key in reach,
            )
            for site in campaign.remote_sites
            for u in campaign.sky_units(site)
        ]

    def describe(self) -> str:
        n = sum(len(v) for v in self.units.values())
        if self.full:
            return f"the reference covers all {n} sky units (the full single-site run)"
        return (
            f"the reference covers {n} sampled sky units ({len(self.reach)} with their reach); "
            "central steps with global tasks are the campaign's own"
        )


def _whole_tracts(campaign: Campaign, keys: Iterable[UnitKey]) -> list[SkyUnit]:
    tracts = {t for t, _ in keys}
    return [u for s in campaign.remote_sites for u in campaign.sky_units(s) if u.tract in tracts]


def plan_sample(
    campaign: Campaign, butler: Butler, boundary_visits: Mapping[int, Sequence[str]] | None = None
) -> QASample:
    """Choose the sample and find its reach in the central registry (queries bound by the sample's size).

    Parameters
    ----------
    campaign
        The campaign.
    butler
        The central repository.
    boundary_visits
        Visit -> the sites it is placed at, for the visits placed at more than one (placement plan).
    """
    cfg = campaign.config
    boundary = boundary_units(butler, campaign, boundary_visits or {})
    chosen = choose_sample(campaign, boundary)
    every = [u for s in campaign.remote_sites for u in campaign.sky_units(s)]
    sampled = _whole_tracts(campaign, (u.key for us in chosen.values() for u in us))
    visits = {
        int(d["visit"])
        for d in unit_data_ids(butler, [u.key for u in sampled], cfg.skymap, ["visit"], instrument=cfg.instrument)
    }
    index = {u.key for u in every}
    touched: set[UnitKey] = {u.key for u in sampled}
    if visits:
        for d in butler.query_data_ids(
            ["tract", "patch"], where=f"skymap = '{cfg.skymap}' AND visit IN (v)", bind={"v": sorted(visits)},
            instrument=cfg.instrument, limit=None, explain=False,
        ):  # fmt: skip
            t, p = int(d["tract"]), int(d["patch"])
            if (t, p) in index or (t, None) in index:
                touched.add((t, p))
    reach = _whole_tracts(campaign, touched)
    full = len(reach) == len(every)
    if full:
        sampled = every
    units = {s: [u for u in campaign.sky_units(s) if u in sampled] for s in campaign.remote_sites}
    return QASample(units=units, chosen=chosen, reach=reach, visits=visits, boundary=boundary, full=full)
