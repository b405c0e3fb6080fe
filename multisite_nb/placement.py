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

import itertools
import json
import shutil
import weakref
import zlib
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr

from .config import Campaign, SkyUnit
from .errors import PlanError
from .fileio import atomic_write_text
from .overlaps import PatchBoxes, detector_hits
from .ownership import visit_owners
from .plan_files import (
    FILES_DIR,
    SCHEMA,
    FileColumns,
    FileTableSource,
    FileTableWriter,
    PlanSummary,
    SiteCounts,
    install_tables,
    planned_files,
    read_site,
)

__all__ = [
    "Footprint",
    "PlannedFile",
    "Certification",
    "PlacementPlan",
    "site_footprint",
    "footprints",
    "plan_placement",
    "units_where",
    "id_ranges",
    "adler32_of",
    "adler32_many",
    "describe_files",
    "check_sky_units",
    "suggest_assignment",
    "one_sky",
]


def adler32_of(path: Path, blocksize: int = 1 << 20) -> str:
    """Adler-32 of a file as Rucio writes it (8 hex digits)."""
    value = 1
    with open(path, "rb") as fh:
        while chunk := fh.read(blocksize):
            value = zlib.adler32(chunk, value)
    return f"{value & 0xFFFFFFFF:08x}"


def adler32_many(paths: Sequence[Path], workers: int = 4) -> list[str]:
    """:func:`adler32_of` of many files, read in parallel threads (zlib and reads let go of the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(adler32_of, paths))


def id_ranges(values: Iterable[int]) -> str:
    """Integers as the inside of a registry ``IN`` list, consecutive runs as inclusive ranges:
    ``0..1049, 1200, 1300..1349``.

    daf_butler turns each literal of an ``IN`` list into its own equality, OR-ed together, and
    SQLite refuses an expression deeper than 1,000; a range is one ``BETWEEN``. A site's tracts,
    contiguous sky, are a few runs however many tracts they are.
    """
    ordered = sorted(set(values))
    runs: list[str] = []
    start = prev = None
    for v in [*ordered, None]:
        if v is not None and prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            runs.append(str(start) if start == prev else f"{start}..{prev}")
        start = prev = v
    return ", ".join(runs)


def units_where(units: Iterable[SkyUnit], skymap: str) -> str:
    """A registry expression selecting a set of sky units: the whole tracts as one ``IN`` list of
    ranges (:func:`id_ranges`), and one term per tract of which only some patches are units.

    daf_butler rewrites an OR of ``(tract = t AND patch IN (...))`` terms into conjunctive normal
    form, which grows exponentially (10 terms already fail on SQLite): where the registry can be
    read, use data ID tables (:func:`multisite_nb.butler_ops.unit_data_ids`) for patch-level units.
    """
    whole: set[int] = set()
    patches: dict[int, set[int]] = defaultdict(set)
    for u in units:
        if u.patch is None:
            whole.add(u.tract)
        else:
            patches[u.tract].add(u.patch)
    terms = [
        f"(tract = {tract} AND patch IN ({', '.join(str(p) for p in sorted(ps))}))"
        for tract, ps in sorted(patches.items())
        if tract not in whole
    ]
    if whole:
        terms.append(f"tract IN ({id_ranges(whole)})")
    return f"skymap = '{skymap}' AND ({' OR '.join(terms)})"


@dataclass
class Footprint:
    """The data IDs a site touches: observation pairs, dimension values and sky regions."""

    site: str
    visit_detectors: dict[int, frozenset[int]] = field(default_factory=dict)  # every detector of each visit
    values: dict[str, set[Any]] = field(default_factory=lambda: defaultdict(set))
    regions: list[Any] = field(default_factory=list)  # sky units, their tracts, the site's visits
    visit_regions: dict[int, Any] = field(default_factory=dict)
    visit_weight: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # overlaps with the units
    visit_tract: dict[int, int] = field(default_factory=dict)  # the lowest of the site's tracts a visit overlaps
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
        return self.admits_mapping(mapping, data_id.universe)

    def admits_mapping(self, mapping: dict[str, Any], universe: Any) -> bool:
        """:meth:`admits` for a data ID already turned into a dict (dimension name -> value)."""
        instrument = mapping.get("instrument")  # IDs of exposures, visits, detectors are per instrument
        if instrument is not None and instrument not in self.values.get("instrument", ()):
            return False
        if "detector" in mapping:
            if "visit" in mapping:
                return mapping["detector"] in self.visit_detectors.get(mapping["visit"], ())
            if "exposure" in mapping:
                visit = self.exposure_visit.get(mapping["exposure"])
                return visit is not None and mapping["detector"] in self.visit_detectors.get(visit, ())
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


_VISIT_KEYS = ("instrument", "visit", "physical_filter", "band", "day_obs", "skymap")  # a footprint's values

_VisitHits = tuple[int, list[int], dict[str, Any], dict[int, list[tuple[int, list[int]]]]]


def _visit_hits(
    butler: Any,
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
    it disjoint (:func:`~multisite_nb.overlaps.detector_hits`). Joining detectors with patches in the registry
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
    from .butler_ops import unit_data_ids

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
        for rec in _records_of(butler, "visit_detector_region", "visit", chunk, instrument):
            regions[rec.visit][rec.detector] = rec.region
        outline = {rec.id: rec.region for rec in _records_of(butler, "visit", "visit", chunk, instrument)}
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


def _unit_overlaps(
    butler: Any,
    units: list[tuple[int, int | None]],
    skymap: str,
    instrument: str,
    patch_regions: dict[tuple[int, int], Any],
) -> _Overlaps:
    """The visits the units meet, summed up for a footprint (:func:`_visit_hits`).

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
    for visit, dets, data_id, hits in _visit_hits(butler, units, skymap, instrument, patch_regions):
        met[visit] = (data_id, {t: sum(len(ds) for _, ds in ps) for t, ps in hits.items()})
        detectors[visit] = shared.setdefault(tuple(dets), dets)
    return met, detectors


def _overlaps_job(repo: str, units: list[tuple[int, int | None]], skymap: str, instrument: str) -> _Overlaps:
    """:func:`_unit_overlaps` of some of a site's units, in a worker process with its own Butler."""
    from .butler_ops import open_butler, unit_records

    with open_butler(repo) as butler:
        regions = {(r.tract, r.id): r.region for r in unit_records(butler, units, skymap, "patch")}
        return _unit_overlaps(butler, units, skymap, instrument, regions)


def site_footprint(butler: Any, campaign: Campaign, site: str, overlaps: _Overlaps | None = None) -> Footprint:
    """Spatially query the registry for everything a site's sky units overlap.

    ``overlaps``: the visits the units meet and their detectors (:func:`_unit_overlaps`),
    if already found (by worker processes, see :func:`footprints`).
    """
    from .butler_ops import unit_records

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
        overlaps = _unit_overlaps(butler, units, cfg.skymap, cfg.instrument, patch_regions)
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
    for rec in butler.query_dimension_records(
        "tract",
        where=f"skymap = '{cfg.skymap}' AND tract IN (t)",
        bind={"t": sorted(fp.values["tract"])},
        limit=None,
        explain=False,
    ):
        fp.regions.append(rec.region)
    visits = sorted(fp.values["visit"])
    if visits:
        for rec in _records_of(butler, "visit_definition", "visit", visits, cfg.instrument):
            fp.values["exposure"].add(rec.exposure)
            fp.exposure_visit[rec.exposure] = rec.visit
        for rec in _records_of(butler, "visit", "visit", visits, cfg.instrument):
            fp.visit_regions[rec.id] = rec.region
            fp.regions.append(rec.region)  # visit-level tasks look up shards over the visit
            if getattr(rec, "day_obs", None) is not None:
                fp.values["day_obs"].add(rec.day_obs)
        for rec in _records_of(butler, "exposure", "exposure", fp.values["exposure"], cfg.instrument):
            if getattr(rec, "group", None) is not None:
                fp.values["group"].add(rec.group)
    return fp


class PlannedFile(BaseModel):
    """One file to place: which dataset it is, where it lives at the central site, who needs it."""

    id: str
    dataset_type: str
    run: str
    data_id: dict[str, Any]
    lfn: str = Field(description="path relative to the central datastore root (= Rucio LFN)")
    size: int
    adler32: str | None = Field(default=None, description="None until Rucio or a reader of the file knows it")
    sites: list[str]


class Certification(BaseModel):
    """A calibration's validity range in a CALIBRATION collection (re-made at each site)."""

    id: str
    collection: str
    begin: str | None
    end: str | None
    dataset_type: str = ""
    sites: list[str] = Field(default_factory=list, description="the sites the calibration is placed at")


class PlacementPlan(BaseModel):
    """The phase-1 plan: what the sites' data look like, with the files in a table beside it.

    The files (one row per file and site, see :mod:`multisite_nb.plan_files`) are in Parquet tables
    under the folder the plan is saved in; this record holds the summaries and the per-site
    visits, detectors and collections, small beside the files.
    """

    campaign: str
    central: str
    sites: list[str] = Field(description="the remote sites, each with a table of the files it needs")
    summary: PlanSummary = Field(default_factory=PlanSummary)
    visits: dict[str, list[int]]
    detectors: dict[str, list[int]]
    boundary_visits: dict[int, list[str]] = Field(default_factory=dict)
    visit_owner: dict[int, str] = Field(default_factory=dict, description="each visit's canonical site")
    exposure_visit: dict[int, int] = Field(default_factory=dict, description="exposure -> its visit")
    certifications: list[Certification] = Field(default_factory=list)
    chains: dict[str, list[str]] = Field(default_factory=dict)
    calibration_collections: list[str] = Field(default_factory=list)
    dataset_types: list[str] = Field(default_factory=list)
    _tables: Path | None = PrivateAttr(default=None)

    @property
    def tables(self) -> Path:
        """The folder of the plan's file tables (``files/`` beside a saved plan)."""
        if self._tables is None:
            raise PlanError(f"plan of {self.campaign}: its file tables are not on disk (plan neither made nor loaded)")
        return self._tables

    # -- the files --------------------------------------------------------------------
    def iter_site_files(self, site: str, *, batch_rows: int = 50_000) -> Iterator[list[PlannedFile]]:
        """A site's planned files, ``batch_rows`` at a time (memory bounded by the batch)."""
        self._known(site)
        for batch in read_site(self.tables, site, batch_rows=batch_rows):
            yield planned_files(batch)

    def iter_site_columns(self, site: str, *, batch_rows: int = 50_000) -> Iterator[FileColumns]:
        """A site's planned files as column batches of ``batch_rows`` rows (no object per file)."""
        self._known(site)
        for batch in read_site(self.tables, site, columns=FileColumns.COLUMNS, batch_rows=batch_rows):
            yield FileColumns.from_batch(batch)

    def site_source(self, site: str) -> FileTableSource:
        """A site's planned files for a shipment: counted, and read a part at a time."""
        self._known(site)
        return FileTableSource(self.tables, site, self.summary.sites[site].files, owner=self)

    def site_files(self, site: str) -> list[PlannedFile]:
        """All of a site's planned files (memory grows with the site's share: prefer :meth:`iter_site_files`)."""
        return [f for batch in self.iter_site_files(site) for f in batch]

    def site_table(self, site: str, columns: Sequence[str] | None = None) -> Any:
        """A site's planned files as a pyarrow table (only ``columns`` if given)."""
        import pyarrow as pa

        self._known(site)
        batches = list(read_site(self.tables, site, columns=columns))
        if batches:
            return pa.Table.from_batches(batches)
        empty = SCHEMA.empty_table()
        return empty.select(list(columns)) if columns else empty

    def _known(self, site: str) -> None:
        if site not in self.sites:
            raise PlanError(f"plan of {self.campaign}: no site {site!r} (sites: {', '.join(self.sites)})")

    # -- figures ----------------------------------------------------------------------
    def counts(self) -> list[dict[str, Any]]:
        """Per site: files, bytes, visits, shared files and files per dataset type."""
        rows = []
        for site in self.sites:
            c = self.summary.sites.get(site, SiteCounts())
            row: dict[str, Any] = {
                "site": site,
                "files": c.files,
                "bytes": c.bytes,
                "visits": len(self.visits.get(site, [])),
                "shared files": c.shared_files,
            }
            for dt in self.dataset_types:
                row[dt] = c.by_type.get(dt, 0)
            rows.append(row)
        return rows

    def boundary_cost(self) -> dict[str, int]:
        """Extra copies and bytes caused by raws more than one site needs (counted while planning)."""
        return {
            "files": self.summary.boundary_files,
            "extra_copies": self.summary.boundary_extra_copies,
            "extra_bytes": self.summary.boundary_extra_bytes,
        }

    def tract_rows(self) -> list[dict[str, Any]]:
        """Per site and tract: files, bytes, shared files (the per-tract summary the views read)."""
        return [t.model_dump() for t in self.summary.tracts]

    def manifest_rows(self, site: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The first ``limit`` rows of a site's table (all if None) as display rows."""
        rows: list[dict[str, Any]] = []
        for batch in self.iter_site_files(site, batch_rows=min(limit or 50_000, 50_000)):
            for f in batch:
                if limit is not None and len(rows) >= limit:
                    return rows
                rows.append(
                    {
                        "dataset_type": f.dataset_type,
                        "data_id": json.dumps(f.data_id, sort_keys=True),
                        "uuid": f.id,
                        "run": f.run,
                        "file": f.lfn,
                        "size": f.size,
                        "adler32": f.adler32,
                    }
                )
        return rows

    def save(self, path: Path) -> Path:
        """Write the plan record to ``path`` with its file tables in ``files/`` beside it.

        A new plan's tables (still in the partial folder they were written to) are put in place
        here, the previous ones replaced whole, just before the record: a planning that failed
        after writing its tables leaves the previous plan and its tables as they were.
        """
        path = Path(path)
        final = path.parent / FILES_DIR
        if self._tables is not None and self._tables.resolve() != final.resolve():
            self._tables = install_tables(self._tables, path.parent)
        out = atomic_write_text(path, self.model_dump_json(indent=1))
        self._tables = final
        return out

    @classmethod
    def load(cls, path: Path) -> PlacementPlan:
        """Read a saved plan (its tables are read when asked for)."""
        path = Path(path)
        try:
            plan = cls.model_validate_json(path.read_text())
        except OSError as exc:
            raise PlanError(f"{path}: cannot read the placement plan: {exc}") from exc
        except ValueError as exc:
            raise PlanError(f"{path}: not a placement plan of this toolkit: {exc}") from exc
        plan._tables = path.parent / FILES_DIR
        return plan


def _json_value(v: Any) -> Any:
    return v if isinstance(v, (int, str, float)) or v is None else str(v)


def describe_file(
    butler: Any, ref: Any, sites: list[str], roots: list[Path] | None = None, path: Path | None = None
) -> PlannedFile:
    """A dataset as a file to ship: LFN relative to its datastore root, size, adler32.

    ``path``: its location when already known (else the Butler is asked, one call per file).
    """
    from .butler_ops import datastore_roots

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


def describe_files(butler: Any, refs: Sequence[Any], sites: list[str]) -> list[PlannedFile]:
    """Datasets as files to ship, from the datastore's records read in bulk (a page at a time).

    The LFN (relative to its datastore root) and size come from the records: no file is opened and
    no URI asked per file. The adler32 is left unset: registration reads it, at the source RSE,
    for the files Rucio does not know yet (as for a placement).

    Raises
    ------
    PlanError
        A dataset with no single file under the datastore roots (see :func:`_file_records`).
    """
    roots = {name: Path(r.ospath) for name, r in butler.get_datastore_roots().items() if r is not None}
    out: list[PlannedFile] = []
    for start in range(0, len(refs), _PAGE):
        page = [(ref, ref.id) for ref in refs[start : start + _PAGE]]  # DatasetRef.id: a new UUID per call
        records = _file_records(butler, page, roots)
        for ref, rid in page:
            lfn, size = records[rid]
            out.append(
                PlannedFile(
                    id=str(rid),
                    dataset_type=ref.datasetType.name,
                    run=ref.run,
                    data_id={k: _json_value(v) for k, v in dict(ref.dataId.required).items()},
                    lfn=lfn,
                    size=size,
                    sites=list(sites),
                )
            )
    return out


_PAGE = 20_000  # datasets per registry page and per datastore-records call
_VISIT_CHUNK = 2_000  # visits whose detector regions are held at once


def _ref_pages(
    butler: Any, dataset_type: str, inputs: list[str], where: str = "", bind: dict[str, Any] | None = None
) -> Iterator[list[Any]]:
    """Every dataset of a type in the input collections, once each, in pages of at most ``_PAGE``.

    A dataset is in exactly one RUN collection, so the RUN collections among the inputs are read as
    one streamed query with no duplicate to drop; datasets reachable only through a TAGGED or
    CALIBRATION collection (calibrations, typically few) are read first and remembered. ``where``
    (with ``bind``): only the datasets it admits (a shard).
    """
    from lsst.daf.butler import CollectionType

    infos = list(butler.collections.query_info(inputs, flatten_chains=True))
    runs = [i.name for i in infos if i.type == CollectionType.RUN]
    others = [i.name for i in infos if i.type in (CollectionType.TAGGED, CollectionType.CALIBRATION)]
    seen: set[Any] = set()
    if others:
        refs = butler.query_datasets(
            dataset_type, collections=others, find_first=False, where=where, bind=bind, explain=False, limit=None
        )
        unique = []
        for r in refs:
            if r.id not in seen:
                seen.add(r.id)
                unique.append(r)
        for start in range(0, len(unique), _PAGE):
            yield unique[start : start + _PAGE]
    if runs:
        page: list[Any] = []
        with butler.query() as query:
            results = query.datasets(dataset_type, collections=runs, find_first=False)
            for ref in results.where(where, bind=bind) if where else results:
                if seen and ref.id in seen:
                    continue
                page.append(ref)
                if len(page) >= _PAGE:
                    yield page
                    page = []
        if page:
            yield page


@dataclass(frozen=True, slots=True)
class _IdRef:
    """A dataset id as the datastore's bulk reads take it (they only ask for ``.id``)."""

    id: Any


def _datastore_rows(butler: Any, ids: list[Any]) -> Iterator[tuple[str, Any, str, int | None]]:
    """(datastore name, dataset id, path, size) of each stored file of ``ids``, read in bulk.

    A file datastore's record rows are read as they are (``_export_rows``: the rows its documented
    ``export_records`` turns into one ``StoredFileInfo`` each, twice the time at a million files);
    any other datastore through ``export_records``.
    """
    store = butler._datastore
    for child in getattr(store, "datastores", None) or [store]:  # a chained datastore's members
        rows = getattr(child, "_export_rows", None)
        if rows is not None:
            for batch in rows(ids):
                for row in batch:
                    yield child.name, row["dataset_id"], row["path"], row["file_size"]
            continue
        for name, data in child.export_records([_IdRef(i) for i in ids]).items():
            for dataset_id, tables in data.records.items():
                for items in tables.values():
                    for info in items:
                        yield name, dataset_id, info.path, info.file_size


def _file_records(
    butler: Any, refs: list[tuple[Any, Any]], roots_by_name: dict[str, Path]
) -> dict[Any, tuple[str, int]]:
    """Each dataset's file as (path relative to its datastore root, size), from the datastore's records.

    One bulk read of the records table per page: no file is opened or listed (a size the records
    lack is taken by ``stat``).

    Raises
    ------
    PlanError
        A dataset with no file, or stored as several (disassembled), or outside the datastore roots.
    """
    from lsst.resources import ResourcePath

    roots = list(roots_by_name.values())
    out: dict[Any, tuple[str, int]] = {}
    store_of: dict[Any, str] = {}
    for name, dataset_id, path, file_size in _datastore_rows(butler, [rid for _, rid in refs]):
        root = roots_by_name.get(name)
        if dataset_id in out:
            if store_of[dataset_id] != name:
                continue  # a chained datastore's later copy: the first in chain order is shipped
            raise PlanError(
                f"dataset {dataset_id}: several files in datastore {name} (disassembled); placement ships one"
            )
        store_of[dataset_id] = name
        if "://" in path or path.startswith("/"):  # ingested in place outside the root: absolute
            full = Path(ResourcePath(path).ospath)
            base = next((r for r in roots if full.is_relative_to(r)), None)
            if base is None:
                raise PlanError(f"{full} is outside the datastore roots {[str(r) for r in roots]}")
            path = str(full.relative_to(base))
        elif root is None:
            raise PlanError(f"dataset {dataset_id}: datastore {name} is none of the roots {roots}")
        else:
            full = root / path
        size = file_size if file_size is not None and file_size >= 0 else full.stat().st_size
        out[dataset_id] = (path, size)
    missing = [r for r, rid in refs if rid not in out]
    if missing:
        r = missing[0]
        raise PlanError(
            f"{len(missing)} {r.datasetType.name} dataset(s) have no file in the datastore "
            f"(first: {r.id} {dict(r.dataId.required)} in {r.run})"
        )
    return out


_SHARD_MIN_FILES = 200_000  # observation files (visit-detector pairs) from which a type is read in shards


@dataclass(frozen=True)
class _Shard:
    """One process's part of a dataset type: the datasets whose exposure (or visit) is in [lo, hi)."""

    repo: str
    dataset_type: str
    inputs: list[str]
    key: str
    lo: int
    hi: int
    instrument: str
    roots: dict[str, Path]
    calibration: bool
    footprints: dict[str, Footprint]


def _shards(
    footprints: dict[str, Footprint], dims: set[str], workers: int, repo: str, dataset_type: str, **common: Any
) -> list[_Shard]:
    """Split an observation type's reading into ``workers`` shards of about as many exposures (or
    visits) each, by ID range: only datasets of the sites' exposures can be placed, so the ranges
    cover them all. No shards for few files (a process's start costs seconds)."""
    pairs = sum(len(d) for fp in footprints.values() for d in fp.visit_detectors.values())
    if workers < 2 or pairs < _SHARD_MIN_FILES:
        return []
    key = "exposure" if "exposure" in dims else "visit"
    values = sorted(set().union(*(fp.values[key] for fp in footprints.values())))
    if len(values) < workers:
        return []
    bounds = [int(values[i * len(values) // workers]) for i in range(workers)] + [int(values[-1]) + 1]
    return [
        _Shard(repo, dataset_type, key=key, lo=lo, hi=hi, footprints=footprints, **common)
        for lo, hi in itertools.pairwise(bounds)
    ]


def _plan_shard(shard: _Shard, folder: Path) -> tuple[Path, PlanSummary, dict[str, tuple[str, list[str]]]]:
    """Plan one shard in this (worker) process into its own tables: (tables, their summary, calibrations)."""
    from .butler_ops import open_butler

    writer = FileTableWriter(folder, list(shard.footprints))
    calibs: dict[str, tuple[str, list[str]]] = {}
    try:
        with open_butler(shard.repo) as butler:
            where = f"{shard.key} >= lo AND {shard.key} < hi AND instrument = inst"
            bind = {"lo": shard.lo, "hi": shard.hi, "inst": shard.instrument}
            for refs in _ref_pages(butler, shard.dataset_type, shard.inputs, where, bind):
                _plan_page(butler, refs, shard.footprints, shard.roots, writer, True, calibs, shard.calibration)
        summary = writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer.tables, summary, calibs


class _Workers:
    """Worker processes for placement, started when first needed (spawned: each opens its own Butler)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._pool: Any = None

    def pool(self) -> Any:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(max_workers=self.n, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    def close(self, *, stop: bool = False) -> None:
        """Shut the workers down; ``stop``: without letting running jobs finish (after an error)."""
        if self._pool is None:
            return
        if stop:
            for proc in list(getattr(self._pool, "_processes", {}).values()):
                proc.terminate()  # a job already running would read its whole range first
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None


def default_workers() -> int:
    """The CPUs this process may use, at most 4."""
    import os

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return min(4, cpus)


_PARALLEL_MIN_UNITS = 500  # sky units (all sites) from which footprints are found by worker processes


def footprints(butler: Any, campaign: Campaign, workers: _Workers | None = None) -> dict[str, Footprint]:
    """Each remote site's :class:`Footprint`.

    With ``workers`` and many units, the spatial part (which visits and detectors overlap which
    units: a registry join and every detector region of those visits) is split into jobs of
    about equal numbers of units, run side by side; a visit met by two jobs is read by both and
    its overlaps merged. The rest is settled here, site by site.
    """
    cfg = campaign.config
    units = {s: [(u.tract, u.patch) for u in campaign.sky_units(s)] for s in campaign.remote_sites}
    total = sum(len(us) for us in units.values())
    if workers is None or workers.n < 2 or total < _PARALLEL_MIN_UNITS:
        return {s: site_footprint(butler, campaign, s) for s in campaign.remote_sites}
    size = -(-total // (2 * workers.n))  # two jobs a worker: the sites' shares are uneven
    repo = str(campaign.butler_repo(campaign.central))
    jobs = [(s, us[i : i + size]) for s, us in units.items() for i in range(0, len(us), size)]
    pool = workers.pool()
    futures = [pool.submit(_overlaps_job, repo, chunk, cfg.skymap, cfg.instrument) for _, chunk in jobs]
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


def _run_shards(
    shards: list[_Shard],
    writer: FileTableWriter,
    calibs: dict[str, tuple[str, list[str]]],
    scratch: Path,
    workers: _Workers,
) -> None:
    """Plan the shards in the worker processes, then append their tables to ``writer`` in shard order."""
    pool = workers.pool()
    futures = [pool.submit(_plan_shard, sh, scratch / f"shard-{i}") for i, sh in enumerate(shards)]
    try:
        for sh, fut in zip(shards, futures, strict=True):
            try:
                tables, summary, found = fut.result()
            except PlanError:
                raise
            except Exception as exc:
                raise PlanError(f"placement: reading {sh.dataset_type} ({sh.key} {sh.lo}..{sh.hi - 1}): {exc}") from exc
            writer.absorb(tables, summary)
            calibs.update(found)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise


def _tract_of(mapping: dict[str, Any], fp: Footprint) -> int | None:
    """The tract of the site's a file serves: its own, or that of its visit (raws: their exposure's)."""
    if "tract" in mapping:
        return int(mapping["tract"])
    visit = mapping.get("visit")
    if visit is None and "exposure" in mapping:
        visit = fp.exposure_visit.get(mapping["exposure"])
    return fp.visit_tract.get(visit) if visit is not None else None


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
    # data IDs, not records (a sky map has ~2 million patches, each record a region to decode), and
    # patches only of the tracts the units name patches of
    tracts = {int(d["tract"]) for d in butler.query_data_ids(["tract"], skymap=skymap, limit=None, explain=False)}
    asked = sorted({u.tract for s in campaign.remote_sites for u in campaign.sky_units(s) if u.patch is not None})
    patches: set[tuple[int, int]] = set()
    if asked:
        for d in butler.query_data_ids(
            ["patch"], where="tract IN (asked)", bind={"asked": asked}, skymap=skymap, limit=None, explain=False
        ):
            patches.add((int(d["tract"]), int(d["patch"])))
    for site in campaign.remote_sites:
        for i, u in enumerate(campaign.sky_units(site)):
            if u.tract not in tracts or (u.patch is not None and (u.tract, u.patch) not in patches):
                raise ConfigError(
                    f"{campaign.path}: key 'sites.{site}.sky_units[{i}]': {u} is not in sky map {skymap!r}"
                )


def plan_placement(
    campaign: Campaign,
    butler: Any = None,
    wiring: Any = None,
    *,
    folder: Path | None = None,
    workers: int | None = None,
) -> PlacementPlan:
    """Plan phase 1 from the central registry, streaming the files into per-site tables.

    Parameters
    ----------
    campaign
        The campaign (sites, sky units, pipeline, stage plan).
    butler
        The central repository (opened read-only from the manifest if not given).
    wiring
        The derived wiring (derived from the pipeline if not given).
    folder
        Where the file tables are written, in a partial folder until :meth:`PlacementPlan.save` puts
        them beside the plan record (default: a temporary folder, removed with the plan object).
    workers
        Worker processes (default: the CPUs this process may use, at most 4). From
        ``_PARALLEL_MIN_UNITS`` sky units they find the footprints' spatial part, and an
        observation type (raws) of at least ``_SHARD_MIN_FILES`` visit-detector pairs is read by
        them, an exposure range each. They open the campaign's central repository themselves
        (spawned: a script calling this needs the ``if __name__ == "__main__":`` guard).
    """
    import os
    import tempfile

    from lsst.daf.butler import CollectionType

    from .butler_ops import open_butler
    from .wiring import derive_wiring, load_pipeline_graph

    if workers is None:
        workers = default_workers()
    scratch = folder is None
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="msnb-plan-"))
    own = butler is None
    if own:
        butler = open_butler(campaign.butler_repo(campaign.central))
    pool = _Workers(workers)
    try:
        check_sky_units(campaign, butler)
        if wiring is None:
            graph = load_pipeline_graph(campaign.pipeline_path, registry=butler.registry)
            wiring = derive_wiring(graph, campaign.config.stages)
        inputs = list(campaign.config.collections.inputs)
        roots = {name: Path(r.ospath) for name, r in butler.get_datastore_roots().items() if r is not None}
        fps = footprints(butler, campaign, pool)
        placed_types: list[str] = []
        calibs: dict[str, tuple[str, list[str]]] = {}  # planned calibration id -> (type, sites)
        writer = FileTableWriter(folder, campaign.remote_sites)
        shard_dir = folder / f".shards.{os.getpid()}"
        try:
            for dt in wiring.placed:
                try:
                    dstype = butler.get_dataset_type(dt)
                except Exception as exc:  # a placed type missing at the central site is a planning error
                    raise PlanError(f"placement: cannot find {dt!r} in {inputs}: {exc}") from exc
                dims = set(dstype.dimensions.names)
                observation = "exposure" in dims or "visit" in dims
                shards = (
                    _shards(
                        fps, dims, workers, str(campaign.butler_repo(campaign.central)), dt,
                        inputs=inputs, instrument=campaign.config.instrument, roots=roots,
                        calibration=dstype.isCalibration(),
                    )
                    if observation
                    else []
                )  # fmt: skip
                if shards:
                    placed_types.append(dt)
                    _run_shards(shards, writer, calibs, shard_dir, pool)
                    continue
                try:  # another instrument's datasets are not even read
                    per_instrument = "instrument" in dims
                    bind = {"inst": campaign.config.instrument} if per_instrument else None
                    pages = _ref_pages(butler, dt, inputs, "instrument = inst" if per_instrument else "", bind)
                    first = next(pages, None)
                except Exception as exc:
                    raise PlanError(f"placement: cannot find {dt!r} in {inputs}: {exc}") from exc
                placed_types.append(dt)
                for refs in itertools.chain([first] if first else [], pages):
                    _plan_page(butler, refs, fps, roots, writer, observation, calibs, dstype.isCalibration())
            summary = writer.close()
        except BaseException:
            pool.close(stop=True)  # before the shards' folders go: no worker writes there afterwards
            writer.abort()
            raise
        finally:
            shutil.rmtree(shard_dir, ignore_errors=True)
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
                    placed = calibs.get(str(assoc.ref.id))
                    if placed is not None and assoc.timespan is not None:
                        ts = assoc.timespan
                        certs.append(
                            Certification(
                                id=str(assoc.ref.id),
                                collection=assoc.collection,
                                begin=ts.begin.isot if ts.begin is not None else None,
                                end=ts.end.isot if ts.end is not None else None,
                                dataset_type=placed[0],
                                sites=placed[1],
                            )
                        )
        visit_sites: dict[int, list[str]] = defaultdict(list)
        for s, fp in fps.items():
            for v in fp.values["visit"]:
                visit_sites[v].append(s)
        owners = visit_owners({s: fp.visit_weight for s, fp in fps.items()}, campaign.remote_sites)
        exposure_visit = {e: v for fp in fps.values() for e, v in fp.exposure_visit.items()}
        per_site: dict[str, Any] = {
            "visits": {s: sorted(fp.values["visit"]) for s, fp in fps.items()},
            "detectors": {s: sorted(fp.values["detector"]) for s, fp in fps.items()},
        }
        boundary = {v: ss for v, ss in sorted(visit_sites.items()) if len(ss) > 1}
        collections: dict[str, Any] = {
            "certifications": certs,
            "chains": chains,
            "calibration_collections": calib_colls,
        }
        plan = PlacementPlan(
            campaign=campaign.name,
            central=campaign.central,
            sites=list(campaign.remote_sites),
            summary=summary,
            boundary_visits=boundary,
            visit_owner=owners,
            exposure_visit=exposure_visit,
            dataset_types=placed_types,
            **per_site,
            **collections,
        )
        plan._tables = writer.tables
        # a plan never saved leaves nothing behind: its partial tables (and scratch folder) go with it
        weakref.finalize(plan, shutil.rmtree, folder if scratch else writer.tables, True)
        return plan
    except BaseException:
        pool.close(stop=True)
        if scratch:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        pool.close()
        if own:
            butler.close()


def _plan_page(
    butler: Any,
    refs: list[Any],
    footprints: dict[str, Footprint],
    roots: dict[str, Path],
    writer: FileTableWriter,
    observation: bool,
    calibs: dict[str, tuple[str, list[str]]],
    calibration: bool,
) -> None:
    """Find which sites need each dataset of a page; write those with their file's records."""
    universe = butler.dimensions
    group = refs[0].dataId.dimensions  # one dataset type a page: the same dimensions throughout
    required, full = list(group.required), list(group.data_coordinate_keys)
    wanted_refs = []
    for ref in refs:
        did = ref.dataId  # values as tuples, not a mapping built per data ID
        mapping = (
            dict(zip(full, did.full_values, strict=True))
            if did.hasFull()
            else dict(zip(required, did.required_values, strict=True))
        )
        wanted = [s for s, fp in footprints.items() if fp.admits_mapping(mapping, universe)]
        if wanted:
            wanted_refs.append((ref, ref.id, mapping, wanted))  # DatasetRef.id makes a new UUID at each call
    if not wanted_refs:
        return
    records = _file_records(butler, [(r, i) for r, i, _, _ in wanted_refs], roots)
    name = refs[0].datasetType.name
    for ref, rid, mapping, wanted in wanted_refs:
        lfn, size = records[rid]
        sid = str(rid)
        if calibration:
            calibs[sid] = (name, wanted)
        values = ref.dataId.required_values
        writer.add(
            id=sid,
            dataset_type=name,
            run=ref.run,
            data_id={k: _json_value(v) for k, v in zip(required, values, strict=True)},
            lfn=lfn,
            size=size,
            sites=wanted,
            tracts={s: _tract_of(mapping, footprints[s]) for s in wanted},
            boundary=observation,
        )


# -- optional: suggest an assignment of sky units to sites -------------------------------


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
        from .butler_ops import unit_records

        keys = {u.key for u in units}
        patch_regions = {(r.tract, r.id): r.region for r in unit_records(butler, list(keys), cfg.skymap, "patch")}
        visits_of: dict[tuple[int, int | None], set[int]] = defaultdict(set)
        # a visit's raws, counted once: all the units a visit meets end in one group (no per-raw set)
        raws_of: dict[int, int] = {}
        for visit, _, _, hits in _visit_hits(butler, list(keys), cfg.skymap, cfg.instrument, patch_regions):
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
