"""Which visits and detectors each site's sky units meet: the sites' footprints.

The registry joins visits with the units' tracts; the patch and detector levels are settled here,
on the regions (:func:`~multisite_nb.domain.overlaps.detector_hits`), in worker processes when
there are many units.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from lsst.daf.butler import Butler

from multisite_nb.adapters.butler.queries import chunked, records_of, unit_data_ids, unit_records
from multisite_nb.adapters.butler.repo import open_butler
from multisite_nb.domain.config import Campaign, SkyUnit
from multisite_nb.domain.errors import ConfigError, PlanError
from multisite_nb.domain.footprint import Footprint
from multisite_nb.domain.overlaps import PatchBoxes, detector_hits
from multisite_nb.phases.placement.workers import Workers
from multisite_nb.phases.readiness import sky_unit_problems

_VISIT_KEYS = ("instrument", "visit", "physical_filter", "band", "day_obs", "skymap")  # a footprint's values


_VisitHits = tuple[int, list[int], dict[str, Any], dict[int, list[tuple[int, list[int]]]]]


def visit_hits(
    butler: Butler,
    units: list[tuple[int, int | None]],
    skymap: str,
    instrument: str,
    patch_regions: dict[tuple[int, int], Any],
) -> Iterator[_VisitHits]:
    """Each visit the units meet, with which of its detectors overlap which of the units' patches.

    The registry joins visits with the units' tracts (whole-tract units; the patch-level units
    with their patches): an LSSTCam visit meets a few tracts but a few hundred patches, and the
    registry settles each candidate pair of its spatial joins on the regions in Python, ~140 µs a
    pair on SQLite. The patch and detector levels are then settled here on the regions, as the
    query system post-filters its joins: every patch of the units in the tracts a visit meets
    against the visit's detectors, sifted by bounding boxes, a pair kept if sphgeom does not find
    it disjoint (:func:`~multisite_nb.domain.overlaps.detector_hits`). Joining detectors with patches in the registry
    took ~40 s for 1,050 tracts on SQLite. A tract's region is assumed to hold its patches' (as
    lsst.skymap's and the embedded worlds' do): a visit meeting a patch meets its tract.

    Yields
    ------
    visit, detectors, data_id, hits
        The visit, all its detectors, its data ID's values (``_VISIT_KEYS``) and, per tract with
        at least one such patch, (patch, the detectors overlapping it) for each unit patch at least
        one detector meets. A visit no detector of which meets a unit patch is not yielded.
        Detector regions are read a chunk of visits at a time and let go.
    """
    boxes = PatchBoxes(patch_regions)
    patches_of: dict[int, list[tuple[int, int]]] = defaultdict(list)
    for key in patch_regions:
        patches_of[key[0]].append(key)
    data_ids: dict[int, dict[str, Any]] = {}
    tracts: dict[int, set[int]] = defaultdict(set)
    for did in unit_data_ids(butler, units, skymap, ["visit", "tract"], instrument=instrument):
        m = did.mapping
        visit = int(m["visit"])
        if visit not in data_ids:
            data_ids[visit] = {k: m[k] for k in _VISIT_KEYS if k in m}
        tracts[visit].add(int(m["tract"]))
    visits = sorted(data_ids)
    for start in range(0, len(visits), _VISIT_CHUNK):  # the regions of a chunk of visits at a time
        chunk = visits[start : start + _VISIT_CHUNK]
        regions: dict[int, dict[int, Any]] = defaultdict(dict)
        for rec in records_of(butler, "visit_detector_region", "visit", chunk, instrument):
            regions[rec.visit][rec.detector] = rec.region
        outline = {rec.id: rec.region for rec in records_of(butler, "visit", "visit", chunk, instrument)}
        for visit in chunk:
            keys = [k for t in sorted(tracts.pop(visit)) for k in patches_of[t]]
            found = detector_hits(regions[visit], keys, boxes, outline.get(visit))
            hits: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
            for (tract, patch), ds in zip(keys, found, strict=True):
                if ds:
                    hits[tract].append((patch, ds))
            data_id = data_ids.pop(visit)
            if hits:
                yield visit, sorted(regions[visit]), data_id, dict(hits)
            regions.pop(visit, None)


_Overlaps = tuple[dict[int, tuple[dict[str, Any], dict[int, int]]], dict[int, list[int]]]


def _unit_overlaps(found: Iterable[_VisitHits]) -> _Overlaps:
    """The visits the units meet (what :func:`visit_hits` yields), summed up for a footprint.

    Returns
    -------
    met
        Per visit: its data ID's values and, per tract, its weight there (the number of
        detector-patch overlaps with the units' patches of that tract, at least one).
    detectors
        Per visit met, all its detectors.
    """
    met: dict[int, tuple[dict[str, Any], dict[int, int]]] = {}
    detectors: dict[int, list[int]] = {}
    shared: dict[tuple[int, ...], list[int]] = {}  # most visits have the same detectors: one list (pickled once)
    for visit, dets, data_id, hits in found:
        met[visit] = (data_id, {t: sum(len(ds) for _, ds in ps) for t, ps in hits.items()})
        detectors[visit] = shared.setdefault(tuple(dets), dets)
    return met, detectors


def _overlaps_job(
    repo: str, db_auth: str | None, units: list[tuple[int, int | None]], skymap: str, instrument: str
) -> _Overlaps:
    """:func:`_unit_overlaps` of some of a site's units, in a worker process with its own Butler."""
    with open_butler(repo, db_auth=db_auth) as butler:
        regions = {(r.tract, r.id): r.region for r in unit_records(butler, units, skymap, "patch")}
        return _unit_overlaps(visit_hits(butler, units, skymap, instrument, regions))


def site_footprint(butler: Butler, campaign: Campaign, site: str, overlaps: _Overlaps | None = None) -> Footprint:
    """Spatially query the registry for everything a site's sky units overlap.

    ``overlaps``: the visits the units meet and their detectors (:func:`_unit_overlaps`),
    if already found (by worker processes, see :func:`footprints`).
    """
    cfg = campaign.config
    units = [(u.tract, u.patch) for u in campaign.sky_units(site)]
    fp = Footprint(site)
    fp.values["instrument"].add(cfg.instrument)  # the campaign's, whether or not a visit meets the units
    # patches of the units themselves (not every patch a visit touches), with their regions
    patch_regions: dict[tuple[int, int], Any] = {}
    for rec in unit_records(butler, units, cfg.skymap, "patch"):
        fp.values["patch"].add(rec.id)
        fp.regions.append(rec.region)
        patch_regions[(rec.tract, rec.id)] = rec.region
    if overlaps is None:
        overlaps = _unit_overlaps(visit_hits(butler, units, cfg.skymap, cfg.instrument, patch_regions))
    met, detectors = overlaps
    for visit, (data_id, weights) in met.items():
        fp.visit_weight[visit] += sum(weights.values())
        fp.visit_tract[visit] = min(weights)
        fp.values["tract"].update(weights)
        for k, v in data_id.items():
            fp.values[k].add(v)
    # visit-complete: every detector of a visit the site touches, so that the site's products of that
    # visit are whole (and equal to its owner's, the pipeline being deterministic)
    interned: dict[tuple[int, ...], frozenset[int]] = {}  # most visits have the same detectors: one set
    for visit in fp.values["visit"]:
        key = tuple(detectors[visit])
        fp.visit_detectors[visit] = interned.setdefault(key, frozenset(key))
    for dets in interned.values():
        fp.values["detector"].update(dets)
    # tract-level tasks look up spatial inputs (reference catalog shards) over the whole tract
    for part in chunked(sorted(fp.values["tract"])):
        for rec in butler.query_dimension_records(
            "tract", where=f"skymap = '{cfg.skymap}' AND tract IN (t)", bind={"t": part}, limit=None, explain=False
        ):
            fp.regions.append(rec.region)
    visits = sorted(fp.values["visit"])
    if visits:
        for rec in records_of(butler, "visit_definition", "visit", visits, cfg.instrument):
            fp.values["exposure"].add(rec.exposure)
            fp.exposure_visit[rec.exposure] = rec.visit
        for rec in records_of(butler, "visit", "visit", visits, cfg.instrument):
            fp.visit_regions[rec.id] = rec.region
            fp.regions.append(rec.region)  # visit-level tasks look up shards over the visit
            if getattr(rec, "day_obs", None) is not None:
                fp.values["day_obs"].add(rec.day_obs)
        for rec in records_of(butler, "exposure", "exposure", fp.values["exposure"], cfg.instrument):
            if getattr(rec, "group", None) is not None:
                fp.values["group"].add(rec.group)
    return fp


_VISIT_CHUNK = 2_000  # visits whose detector regions are held at once


PARALLEL_MIN_UNITS = 500  # sky units (all sites) from which footprints are found by worker processes


def footprints(butler: Butler, campaign: Campaign, workers: Workers | None = None) -> dict[str, Footprint]:
    """Each remote site's :class:`Footprint`.

    With ``workers`` and many units, the spatial part (which visits and detectors overlap which
    units: a registry join and every detector region of those visits) is split into jobs of
    about equal numbers of units, run side by side; a visit met by two jobs is read by both and
    its overlaps merged. The rest is settled here, site by site.
    """
    cfg = campaign.config
    units = {s: [(u.tract, u.patch) for u in campaign.sky_units(s)] for s in campaign.remote_sites}
    total = sum(len(us) for us in units.values())
    if workers is None or workers.n < 2 or total < PARALLEL_MIN_UNITS:
        return {s: site_footprint(butler, campaign, s) for s in campaign.remote_sites}
    size = -(-total // (2 * workers.n))  # two jobs a worker: the sites' shares are uneven
    repo = str(campaign.butler_repo(campaign.central))
    jobs = [(s, us[i : i + size]) for s, us in units.items() for i in range(0, len(us), size)]
    pool = workers.pool()
    futures = [
        pool.submit(_overlaps_job, repo, campaign.db_auth, chunk, cfg.skymap, cfg.instrument) for _, chunk in jobs
    ]
    met: dict[str, dict[int, tuple[dict[str, Any], dict[int, int]]]] = {s: {} for s in units}
    detectors: dict[str, dict[int, list[int]]] = {s: {} for s in units}
    for (site, chunk), fut in zip(jobs, futures, strict=True):
        try:
            found, dets = fut.result()
        except Exception as exc:
            first, last = (SkyUnit(tract=t, patch=p) for t, p in (chunk[0], chunk[-1]))
            units_ = f"{len(chunk)} units, {first} to {last}"
            raise PlanError(f"placement: footprint of {site} ({units_}): {type(exc).__name__}: {exc}") from exc
        for visit, (data_id, weights) in found.items():  # jobs hold different units: their weights add up
            have = met[site].setdefault(visit, (data_id, {}))[1]
            for tract, w in weights.items():
                have[tract] = have.get(tract, 0) + w
        detectors[site].update(dets)
    return {s: site_footprint(butler, campaign, s, overlaps=(met[s], detectors[s])) for s in campaign.remote_sites}


def check_sky_units(campaign: Campaign, butler: Butler) -> None:
    """Every sky unit of the campaign must exist in the central registry's sky map.

    Raises
    ------
    ConfigError
        Naming the campaign file, the key (``sites.<SITE>.sky_units.<i>``) and the unit.
    """
    problems = sky_unit_problems(campaign, butler)
    if problems:
        raise ConfigError.of(problems)
