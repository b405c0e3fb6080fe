"""Phase 1: what each site needs, found by spatial query of the central registry.

For every remote site the planner finds the visits and detectors whose regions overlap
the site's sky units (a spatial join in the Butler registry), the raws of those
exposures, and every other overall input of the site stages (calibrations, reference
catalog shards, the sky map) restricted to the data IDs the site will touch.  Which
dataset types to place comes from the pipeline graph (``wiring``), not from a list.

Raws or visits needed by more than one site are *boundary* data: they are placed at every
site that needs them, and the plan says what that costs.
"""

from __future__ import annotations

import json
import zlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from .config import Campaign, SkyUnit
from .errors import PlanError
from .fileio import atomic_write_text
from .ownership import visit_owners

__all__ = [
    "Footprint",
    "PlannedFile",
    "Certification",
    "PlacementPlan",
    "site_footprint",
    "plan_placement",
    "units_where",
    "adler32_of",
    "check_sky_units",
    "suggest_assignment",
]

_OBS_PAIRS = (("exposure", "detector"), ("visit", "detector"))


def adler32_of(path: Path, blocksize: int = 1 << 20) -> str:
    """Adler-32 of a file as Rucio writes it (8 hex digits)."""
    value = 1
    with open(path, "rb") as fh:
        while chunk := fh.read(blocksize):
            value = zlib.adler32(chunk, value)
    return f"{value & 0xFFFFFFFF:08x}"


def units_where(units: Iterable[SkyUnit], skymap: str) -> str:
    """A registry expression selecting a set of sky units (grouped by tract)."""
    by_tract: dict[int, list[int] | None] = defaultdict(list)
    for u in units:
        if u.patch is None:
            by_tract[u.tract] = None
        elif by_tract[u.tract] is not None:
            by_tract[u.tract].append(u.patch)  # type: ignore[union-attr]
    terms = []
    for tract, patches in sorted(by_tract.items()):
        if patches is None:
            terms.append(f"tract = {tract}")
        else:
            terms.append(f"(tract = {tract} AND patch IN ({', '.join(str(p) for p in sorted(patches))}))")
    return f"skymap = '{skymap}' AND ({' OR '.join(terms)})"


@dataclass
class Footprint:
    """The data IDs a site touches: observation pairs, dimension values and sky regions."""

    site: str
    pairs: dict[tuple[str, str], set[tuple[int, int]]] = field(default_factory=dict)
    values: dict[str, set[Any]] = field(default_factory=lambda: defaultdict(set))
    regions: list[Any] = field(default_factory=list)  # sky units, their tracts, the site's visits
    visit_regions: dict[int, Any] = field(default_factory=dict)
    visit_weight: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # overlaps with the units
    exposure_visit: dict[int, int] = field(default_factory=dict)
    _skypix: dict[str, set[int]] = field(default_factory=dict)

    def skypix(self, dimension: Any) -> set[int]:
        """Pixel indices of a skypix dimension (e.g. htm7) overlapping the site's sky units."""
        name = dimension.name
        if name not in self._skypix:
            pix = dimension.pixelization
            ids: set[int] = set()
            for region in self.regions:
                for begin, end in pix.envelope(region):
                    ids.update(range(begin, end))
            self._skypix[name] = ids
        return self._skypix[name]

    def admits(self, data_id: Any) -> bool:
        """Whether a dataset with this data ID is one the site needs."""
        mapping = dict(data_id.mapping) if data_id.hasFull() else dict(data_id.required)
        for a, b in _OBS_PAIRS:
            if a in mapping and b in mapping:
                return (mapping[a], mapping[b]) in self.pairs.get((a, b), set())
        universe = data_id.universe
        for key, value in mapping.items():
            dim = universe[key]
            if hasattr(dim, "pixelization"):
                if value not in self.skypix(dim):
                    return False
            elif key in self.values and value not in self.values[key]:
                return False
        return True


def _records_of(butler: Any, element: str, key: str, ids: Iterable[int], instrument: str) -> Any:
    """Dimension records of ``element`` whose ``key`` is one of ``ids`` (bound, not spelled out)."""
    return butler.query_dimension_records(
        element, where=f"{key} IN (ids)", bind={"ids": sorted(ids)}, instrument=instrument, limit=None, explain=False
    )


def site_footprint(butler: Any, campaign: Campaign, site: str) -> Footprint:
    """Spatially query the registry for everything a site's sky units overlap."""
    from .butler_ops import unit_data_ids, unit_records

    cfg = campaign.config
    units = [(u.tract, u.patch) for u in campaign.sky_units(site)]
    fp = Footprint(site)
    vd: set[tuple[int, int]] = set()
    for did in unit_data_ids(butler, units, cfg.skymap, ["visit", "detector", "patch"], instrument=cfg.instrument):
        m = dict(did.mapping)
        visit, detector = int(m["visit"]), int(m["detector"])
        vd.add((visit, detector))
        fp.visit_weight[visit] += 1
        for k in ("instrument", "visit", "physical_filter", "band", "day_obs", "skymap", "tract"):
            if k in m:
                fp.values[k].add(m[k])
    # visit-complete: every detector of a visit the site touches, so that the site's products of that
    # visit are whole (and equal to its owner's, the pipeline being deterministic)
    touched = sorted(fp.values["visit"])
    if touched:
        for rec in _records_of(butler, "visit_detector_region", "visit", touched, cfg.instrument):
            vd.add((rec.visit, rec.detector))
    fp.values["detector"].update(d for _, d in vd)
    fp.pairs[("visit", "detector")] = vd
    # patches and tracts of the units themselves (not every patch a visit touches)
    for rec in unit_records(butler, units, cfg.skymap, "patch"):
        fp.values["patch"].add(rec.id)
        fp.regions.append(rec.region)
    # tract-level tasks look up spatial inputs (reference catalog shards) over the whole tract
    for rec in butler.query_dimension_records(
        "tract",
        where=f"skymap = '{cfg.skymap}' AND tract IN (t)",
        bind={"t": sorted(fp.values["tract"])},
        limit=None,
        explain=False,
    ):
        fp.regions.append(rec.region)
    visits = sorted(fp.values["visit"])
    ed: set[tuple[int, int]] = set()
    if visits:
        v2e: dict[int, set[int]] = defaultdict(set)
        for rec in _records_of(butler, "visit_definition", "visit", visits, cfg.instrument):
            v2e[rec.visit].add(rec.exposure)
            fp.values["exposure"].add(rec.exposure)
            fp.exposure_visit[rec.exposure] = rec.visit
        for v, d in vd:
            for e in v2e[v]:
                ed.add((e, d))
        for rec in _records_of(butler, "visit", "visit", visits, cfg.instrument):
            fp.visit_regions[rec.id] = rec.region
            fp.regions.append(rec.region)  # visit-level tasks look up shards over the visit
            if getattr(rec, "day_obs", None) is not None:
                fp.values["day_obs"].add(rec.day_obs)
        for rec in _records_of(butler, "exposure", "exposure", fp.values["exposure"], cfg.instrument):
            if getattr(rec, "group", None) is not None:
                fp.values["group"].add(rec.group)
    fp.pairs[("exposure", "detector")] = ed
    return fp


class PlannedFile(BaseModel):
    """One file to place: which dataset it is, where it lives at the central site, who needs it."""

    id: str
    dataset_type: str
    run: str
    data_id: dict[str, Any]
    lfn: str = Field(description="path relative to the central datastore root (= Rucio LFN)")
    size: int
    adler32: str
    sites: list[str]


class Certification(BaseModel):
    """A calibration's validity range in a CALIBRATION collection (re-made at each site)."""

    id: str
    collection: str
    begin: str | None
    end: str | None


class PlacementPlan(BaseModel):
    """The phase-1 plan: per site the files to place, plus what the sites' collections look like."""

    campaign: str
    central: str
    sites: dict[str, list[str]] = Field(description="site -> ids of the files it needs")
    files: dict[str, PlannedFile]
    visits: dict[str, list[int]]
    detectors: dict[str, list[int]]
    boundary_visits: dict[int, list[str]] = Field(default_factory=dict)
    visit_owner: dict[int, str] = Field(default_factory=dict, description="each visit's canonical site")
    exposure_visit: dict[int, int] = Field(default_factory=dict, description="exposure -> its visit")
    certifications: list[Certification] = Field(default_factory=list)
    chains: dict[str, list[str]] = Field(default_factory=dict)
    calibration_collections: list[str] = Field(default_factory=list)
    dataset_types: list[str] = Field(default_factory=list)

    # -- figures ----------------------------------------------------------------------
    def site_files(self, site: str) -> list[PlannedFile]:
        return [self.files[i] for i in self.sites[site]]

    def counts(self) -> list[dict[str, Any]]:
        """Per site: files, bytes, visits; and the boundary overhead."""
        rows = []
        for site in self.sites:
            files = self.site_files(site)
            shared = [f for f in files if len(f.sites) > 1]
            row: dict[str, Any] = {
                "site": site,
                "files": len(files),
                "bytes": sum(f.size for f in files),
                "visits": len(self.visits[site]),
                "shared files": len(shared),
            }
            for dt in self.dataset_types:
                row[dt] = sum(1 for f in files if f.dataset_type == dt)
            rows.append(row)
        return rows

    @property
    def boundary_files(self) -> list[PlannedFile]:
        return [f for f in self.files.values() if len(f.sites) > 1 and f.dataset_type in self._obs_types()]

    def _obs_types(self) -> set[str]:
        return {f.dataset_type for f in self.files.values() if "exposure" in f.data_id or "visit" in f.data_id}

    def boundary_cost(self) -> dict[str, int]:
        """Extra copies and bytes caused by raws more than one site needs."""
        extra = [(len(f.sites) - 1, f.size) for f in self.boundary_files]
        return {
            "files": len(self.boundary_files),
            "extra_copies": sum(n for n, _ in extra),
            "extra_bytes": sum(n * s for n, s in extra),
        }

    def manifest_rows(self, site: str) -> list[dict[str, Any]]:
        return [
            {
                "dataset_type": f.dataset_type,
                "data_id": json.dumps(f.data_id, sort_keys=True),
                "uuid": f.id,
                "run": f.run,
                "file": f.lfn,
                "size": f.size,
                "adler32": f.adler32,
            }
            for f in self.site_files(site)
        ]

    def save(self, path: Path) -> Path:
        return atomic_write_text(path, self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: Path) -> PlacementPlan:
        return cls.model_validate_json(Path(path).read_text())


def _json_value(v: Any) -> Any:
    return v if isinstance(v, (int, str, float)) or v is None else str(v)


def datastore_roots(butler: Any) -> list[Path]:
    """The local datastore roots of a repository (= its RSE roots)."""
    return [Path(r.ospath) for r in butler.get_datastore_roots().values() if r is not None]


def describe_file(
    butler: Any, ref: Any, sites: list[str], roots: list[Path] | None = None, path: Path | None = None
) -> PlannedFile:
    """A dataset as a file to ship: LFN relative to its datastore root, size, adler32.

    ``path``: its location when already known (else the Butler is asked, one call per file).
    """
    roots = roots if roots is not None else datastore_roots(butler)
    path = path if path is not None else Path(butler.getURI(ref).ospath)
    base = next((r for r in roots if path.is_relative_to(r)), None)
    if base is None:
        raise PlanError(f"{path} is outside the datastore roots {[str(r) for r in roots]}")
    return PlannedFile(
        id=str(ref.id),
        dataset_type=ref.datasetType.name,
        run=ref.run,
        data_id={k: _json_value(v) for k, v in dict(ref.dataId.required).items()},
        lfn=str(path.relative_to(base)),
        size=path.stat().st_size,
        adler32=adler32_of(path),
        sites=sites,
    )


_URI_BATCH = 5000


def _describe_batch(
    butler: Any,
    batch: list[tuple[Any, list[str]]],
    roots: list[Path],
    files: dict[str, PlannedFile],
    by_site: dict[str, list[str]],
) -> None:
    """`describe_file` for many datasets, their locations asked in one call (~6x faster than
    ``getURI`` one by one); the batch is emptied."""
    if not batch:
        return
    uris = butler.get_many_uris([ref for ref, _ in batch])
    for ref, wanted in batch:
        rid = str(ref.id)
        files[rid] = describe_file(butler, ref, wanted, roots, path=Path(uris[ref].primaryURI.ospath))
        for s in wanted:
            by_site[s].append(rid)
    batch.clear()


def _chains(butler: Any, names: Iterable[str]) -> dict[str, list[str]]:
    from lsst.daf.butler import CollectionType

    out: dict[str, list[str]] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        info = butler.collections.get_info(name)
        if info.type == CollectionType.CHAINED and name not in out:
            out[name] = list(info.children)
            todo.extend(info.children)
    return out


def check_sky_units(campaign: Campaign, butler: Any) -> None:
    """Every sky unit of the campaign must exist in the central registry's sky map.

    Raises
    ------
    ConfigError
        Naming the campaign file, the key (``sites.<SITE>.sky_units[i]``) and the unit.
    """
    from .config import ConfigError

    skymap = campaign.config.skymap
    if not butler.query_dimension_records("skymap", where=f"skymap = '{skymap}'", limit=None, explain=False):
        raise ConfigError(f"{campaign.path}: key 'skymap': {skymap!r} is not in the central repository")
    patches = {
        (r.tract, r.id)
        for r in butler.query_dimension_records("patch", where=f"skymap = '{skymap}'", limit=None, explain=False)
    }
    tracts = {t for t, _ in patches}
    for site in campaign.remote_sites:
        for i, u in enumerate(campaign.sky_units(site)):
            if u.tract not in tracts or (u.patch is not None and (u.tract, u.patch) not in patches):
                raise ConfigError(
                    f"{campaign.path}: key 'sites.{site}.sky_units[{i}]': {u} is not in sky map {skymap!r}"
                )


def plan_placement(campaign: Campaign, butler: Any = None, wiring: Any = None) -> PlacementPlan:
    """Plan phase 1 from the central registry.

    Parameters
    ----------
    campaign
        The campaign (sites, sky units, pipeline, stage plan).
    butler
        The central repository (opened read-only from the manifest if not given).
    wiring
        The derived wiring (derived from the pipeline if not given).
    """
    from lsst.daf.butler import CollectionType

    from .butler_ops import open_butler
    from .wiring import derive_wiring, load_pipeline_graph

    own = butler is None
    if own:
        butler = open_butler(campaign.butler_repo(campaign.central))
    try:
        check_sky_units(campaign, butler)
        if wiring is None:
            graph = load_pipeline_graph(campaign.pipeline_path, registry=butler.registry)
            wiring = derive_wiring(graph, campaign.config.stages)
        inputs = list(campaign.config.collections.inputs)
        roots = datastore_roots(butler)
        footprints = {s: site_footprint(butler, campaign, s) for s in campaign.remote_sites}
        files: dict[str, PlannedFile] = {}
        by_site: dict[str, list[str]] = {s: [] for s in campaign.remote_sites}
        placed_types: list[str] = []
        for dt in wiring.placed:
            try:
                refs = butler.query_datasets(dt, collections=inputs, find_first=False, explain=False, limit=None)
            except Exception as exc:  # a placed type missing at the central site is a planning error
                raise PlanError(f"placement: cannot find {dt!r} in {inputs}: {exc}") from exc
            placed_types.append(dt)
            seen: set[str] = set()
            batch: list[tuple[Any, list[str]]] = []
            for ref in refs:
                rid = str(ref.id)
                if rid in seen:
                    continue
                seen.add(rid)
                wanted = [s for s, fp in footprints.items() if fp.admits(ref.dataId)]
                if not wanted:
                    continue
                batch.append((ref, wanted))
                if len(batch) >= _URI_BATCH:
                    _describe_batch(butler, batch, roots, files, by_site)
            _describe_batch(butler, batch, roots, files, by_site)
        # calibration collections among the inputs, and validity ranges of the planned calibs
        chains = _chains(butler, inputs)
        calib_colls = [
            i.name
            for i in butler.collections.query_info(inputs, flatten_chains=True)
            if i.type == CollectionType.CALIBRATION
        ]
        certs: list[Certification] = []
        if calib_colls:
            for dt in placed_types:
                if not butler.get_dataset_type(dt).isCalibration():
                    continue
                for assoc in butler.registry.queryDatasetAssociations(
                    dt, collections=calib_colls, collectionTypes={CollectionType.CALIBRATION}
                ):
                    if str(assoc.ref.id) in files and assoc.timespan is not None:
                        ts = assoc.timespan
                        certs.append(
                            Certification(
                                id=str(assoc.ref.id),
                                collection=assoc.collection,
                                begin=ts.begin.isot if ts.begin is not None else None,
                                end=ts.end.isot if ts.end is not None else None,
                            )
                        )
        visit_sites: dict[int, list[str]] = defaultdict(list)
        for s, fp in footprints.items():
            for v in fp.values["visit"]:
                visit_sites[v].append(s)
        owners = visit_owners({s: fp.visit_weight for s, fp in footprints.items()}, campaign.remote_sites)
        exposure_visit = {e: v for fp in footprints.values() for e, v in fp.exposure_visit.items()}
        per_site: dict[str, Any] = {
            "visits": {s: sorted(fp.values["visit"]) for s, fp in footprints.items()},
            "detectors": {s: sorted(fp.values["detector"]) for s, fp in footprints.items()},
        }
        boundary = {v: ss for v, ss in sorted(visit_sites.items()) if len(ss) > 1}
        collections: dict[str, Any] = {
            "certifications": certs,
            "chains": chains,
            "calibration_collections": calib_colls,
        }
        return PlacementPlan(
            campaign=campaign.name,
            central=campaign.central,
            sites=by_site,
            files=files,
            boundary_visits=boundary,
            visit_owner=owners,
            exposure_visit=exposure_visit,
            dataset_types=placed_types,
            **per_site,
            **collections,
        )
    finally:
        if own:
            butler.close()


# -- optional: suggest an assignment of sky units to sites -------------------------------


class UnitGroup(BaseModel):
    """Sky units that share visits (so they had better go to one site), and their volume."""

    units: list[str]
    keys: list[tuple[int, int | None]]
    visits: list[int]
    raws: int
    site: str | None = None


def suggest_assignment(
    campaign: Campaign,
    units: Iterable[SkyUnit] | None = None,
    butler: Any = None,
    *,
    keep_tracts_whole: bool | None = None,
) -> list[UnitGroup]:
    """Group sky units that share visits and spread the groups over the remote sites.

    Units linked by a common visit form one group (splitting them would make boundary
    visits); so do the units of one tract when a site stage has a task working on whole
    tracts (a split tract could not be consistent). Groups are handed out largest first to the
    site furthest below its share of the volume (``share`` in the campaign, equal shares
    where none is given).

    Parameters
    ----------
    units
        The candidate units (default: every unit the campaign assigns today).
    keep_tracts_whole
        Default: whether the campaign's stage plan has such a task.
    """
    from .ownership import whole_tract_tasks
    from .wiring import load_pipeline_graph

    if keep_tracts_whole is None:
        keep_tracts_whole = bool(whole_tract_tasks(campaign, load_pipeline_graph(campaign.pipeline_path)))
    from .butler_ops import open_butler

    cfg = campaign.config
    units = list(units) if units is not None else [u for s in campaign.remote_sites for u in campaign.sky_units(s)]
    own = butler is None
    if own:
        butler = open_butler(campaign.butler_repo(campaign.central))
    try:
        # one query for every unit (uploaded as data IDs); each row goes to the unit holding its patch
        from .butler_ops import unit_data_ids

        keys = {u.key for u in units}
        visits_of: dict[tuple[int, int | None], set[int]] = defaultdict(set)
        pairs_of: dict[tuple[int, int | None], set[tuple[int, int]]] = defaultdict(set)
        for did in unit_data_ids(
            butler, list(keys), cfg.skymap, ["visit", "detector", "patch"], instrument=cfg.instrument
        ):
            m = dict(did.mapping)
            tract, patch = int(m["tract"]), int(m["patch"])
            key = (tract, patch) if (tract, patch) in keys else (tract, None)
            if key not in keys:
                continue
            visits_of[key].add(int(m["visit"]))
            pairs_of[key].add((int(m["visit"]), int(m["detector"])))
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
        raws = len(set().union(*(pairs_of[u.key] for u in ms)))
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
