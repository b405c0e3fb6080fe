"""Site Butler repos of the embedded world, and the synthetic inputs of the central one.

Each site has a SQLite repo whose config and registry live in ``W/butler/<SITE>/`` and whose
datastore root is the site's RSE directory ``W/rse/<RSE>/``, so a Butler artifact and a Rucio
replica are the same file (Rucio LFN = datastore-relative path).

`populate_central` writes everything step 1 needs (dimension records, raws, certified calibs,
a reference catalog, the sky map) into the central repo, through the Butler.
`copy_site_inputs` copies one site's share of them into a site repo with
`Butler.transfer_from` (a shortcut for tests and single-site reference runs; the campaign
phases move them with Rucio).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from lsst.daf.butler import (
    Butler,
    CollectionType,
    Config,
    DataCoordinate,
    DatasetIdGenEnum,
    DatasetRef,
    DatasetType,
    FileDataset,
    Timespan,
)
from lsst.sphgeom import HtmPixelization

from multisite_nb.domain.errors import ButlerError
from multisite_nb.world.synthetic import REFCAT_LEVEL, SkyModel, SkySpec, build_sky

__all__ = [
    "STORAGE_CLASS",
    "WorldCollections",
    "collections_for",
    "copy_site_inputs",
    "create_site_repo",
    "dimension_records",
    "populate_central",
]

_LOG = logging.getLogger(__name__)

STORAGE_CLASS = "StructuredDataDict"
"""Storage class of every synthetic dataset (YAML files; no science code needed)."""


@dataclass(frozen=True)
class WorldCollections:
    """Collection names of the synthetic inputs."""

    raw: str
    calib: str
    calib_run: str
    refcats: str
    skymaps: str
    defaults: str

    @property
    def chain(self) -> list[str]:
        """Members of the ``defaults`` chain, in search order."""
        return [self.raw, self.calib, self.refcats, self.skymaps]


def collections_for(spec: SkySpec) -> WorldCollections:
    """Collection names for ``spec``'s instrument (``HSC/raw/all``, ``HSC/calib``, ...)."""
    ins = spec.instrument
    return WorldCollections(
        raw=f"{ins}/raw/all",
        calib=f"{ins}/calib",
        calib_run=f"{ins}/calib/synthetic",
        refcats="refcats",
        skymaps="skymaps",
        defaults=f"{ins}/defaults",
    )


# --------------------------------------------------------------------------------------
# Repos
# --------------------------------------------------------------------------------------
def create_site_repo(
    repo: Path, datastore_root: Path, registry_db: str | None = None, namespace: str | None = None
) -> bool:
    """Create an empty Butler repo at ``repo`` with its datastore root at ``datastore_root``.

    Parameters
    ----------
    repo : `Path`
        Folder for ``butler.yaml`` (and ``gen3.sqlite3`` for a SQLite registry).
    datastore_root : `Path`
        Datastore root (the site's RSE directory); written as an absolute path.
    registry_db : `str`, optional
        URL of a PostgreSQL registry database (no password: daf_butler reads it from
        ``LSST_DB_AUTH``); default: SQLite in ``repo``.
    namespace : `str`, optional
        The repository's schema in that database (one per site).

    Returns
    -------
    created : `bool`
        False if a repo already exists there (nothing is changed).

    Raises
    ------
    ButlerError
        If a repo exists but points at another datastore root or registry, or is half made.
    """
    repo = Path(repo).absolute()
    root = Path(datastore_root).absolute()
    config_file, registry_file = repo / "butler.yaml", repo / "gen3.sqlite3"
    if config_file.exists():
        existing = Config(str(config_file))
        db = str(existing.get(("registry", "db")) or "")
        if registry_db is None and db.startswith("sqlite") and not registry_file.exists():
            raise ButlerError(f"{repo}: butler.yaml exists but gen3.sqlite3 does not (half-made repo)")
        if (registry_db is None) != db.startswith("sqlite") or (registry_db and registry_db != db):
            raise ButlerError(f"{repo}: its registry is {db or 'unknown'}, not {registry_db or 'SQLite'}")
        found = existing.get(("datastore", "root"))
        if found is not None and Path(str(found)).absolute() != root:
            raise ButlerError(f"{repo}: datastore root is {found}, not {root}")
        return False
    root.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {"datastore": {"root": str(root)}}
    if registry_db is not None:
        values["registry"] = {"db": registry_db, "namespace": namespace}
    Butler.makeRepo(str(repo), config=Config(values), forceConfigRoot=False)
    _LOG.info("created Butler repo %s (datastore root %s, registry %s)", repo, root, registry_db or "SQLite")
    return True


# --------------------------------------------------------------------------------------
# Dimension records
# --------------------------------------------------------------------------------------
def dimension_records(model: SkyModel) -> dict[str, list[dict[str, Any]]]:
    """Every dimension record of the synthetic world, by element, in insertion order."""
    spec = model.spec
    ins = spec.instrument
    obs = model.observations
    band_of = {b.physical_filter: b.band for b in spec.bands}
    records: dict[str, list[dict[str, Any]]] = {
        "instrument": [
            {
                "name": ins,
                "class_name": spec.instrument_class,
                "visit_system": 0,
                "visit_max": max(o.visit for o in obs) + 1,
                "exposure_max": max(o.exposure for o in obs) + 1,
                "detector_max": max(d.id for d in model.detectors) + 1,
            }
        ],
        "physical_filter": [{"instrument": ins, "name": pf, "band": b} for pf, b in band_of.items()],
        "detector": [
            {
                "instrument": ins,
                "id": d.id,
                "full_name": d.full_name,
                "name_in_raft": f"{d.x}",
                "raft": f"{d.y}",
                "purpose": "SCIENCE",
            }
            for d in model.detectors
        ],
        "day_obs": [
            {"instrument": ins, "id": day, "timespan": Timespan(*model.day_obs_span(day))}
            for day in model.day_obs_values
        ],
        "group": [{"instrument": ins, "name": o.group} for o in obs],
        "visit_system": [{"instrument": ins, "id": 0, "name": "one-to-one"}],
        "skymap": [
            {
                "name": spec.skymap,
                "hash": bytes.fromhex(spec.digest()),
                "tract_max": max(model.tracts) + 1,
                "patch_nx_max": spec.patches_per_side,
                "patch_ny_max": spec.patches_per_side,
            }
        ],
        "tract": [{"skymap": spec.skymap, "id": t.id, "region": t.region} for t in model.tracts.values()],
        "patch": [
            {"skymap": spec.skymap, "tract": p.tract, "id": p.id, "cell_x": p.x, "cell_y": p.y, "region": p.region}
            for t in model.tracts.values()
            for p in t.patches
        ],
        "exposure": [],
        "visit": [],
        "visit_definition": [],
        "visit_system_membership": [],
        "visit_detector_region": [],
    }
    for o in obs:
        timespan = Timespan(o.begin, o.end)
        target = f"{spec.skymap}:" + ",".join(
            f"{spec.targets[i].tract}/{'+'.join(map(str, spec.targets[i].patches))}" for i in o.targets
        )
        records["exposure"].append(
            {
                "instrument": ins,
                "id": o.exposure,
                "obs_id": o.obs_id,
                "physical_filter": o.physical_filter,
                "group": o.group,
                "day_obs": o.day_obs,
                "exposure_time": spec.exposure_time,
                "dark_time": spec.exposure_time,
                "observation_type": "science",
                "observation_reason": "science",
                "seq_num": o.seq_num,
                "seq_start": o.seq_num,
                "seq_end": o.seq_num,
                "target_name": target,
                "science_program": "synthetic",
                "tracking_ra": o.ra,
                "tracking_dec": o.dec,
                "sky_angle": o.sky_angle,
                "azimuth": 0.0,
                "zenith_angle": 30.0,
                "has_simulated": True,
                "can_see_sky": True,
                "timespan": timespan,
            }
        )
        records["visit"].append(
            {
                "instrument": ins,
                "id": o.visit,
                "name": o.obs_id,
                "physical_filter": o.physical_filter,
                "day_obs": o.day_obs,
                "seq_num": o.seq_num,
                "exposure_time": spec.exposure_time,
                "target_name": target,
                "observation_reason": "science",
                "science_program": "synthetic",
                "azimuth": 0.0,
                "zenith_angle": 30.0,
                "region": o.region,
                "timespan": timespan,
            }
        )
        records["visit_definition"].append({"instrument": ins, "exposure": o.exposure, "visit": o.visit})
        records["visit_system_membership"].append({"instrument": ins, "visit": o.visit, "visit_system": 0})
        records["visit_detector_region"].extend(
            {"instrument": ins, "visit": o.visit, "detector": d, "region": r} for d, r in o.detector_regions.items()
        )
    return records


def _insert_records(butler: Butler, records: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    with butler.transaction():
        for element, rows in records.items():
            if rows:
                butler.registry.insertDimensionData(element, *rows, skip_existing=True)
            counts[element] = len(rows)
    return counts


# --------------------------------------------------------------------------------------
# Central inputs
# --------------------------------------------------------------------------------------
def _input_dataset_types(butler: Butler, spec: SkySpec) -> dict[str, DatasetType]:
    u = butler.dimensions
    return {
        "raw": DatasetType("raw", ["instrument", "exposure", "detector"], STORAGE_CLASS, universe=u),
        "bias": DatasetType("bias", ["instrument", "detector"], STORAGE_CLASS, universe=u, isCalibration=True),
        "flat": DatasetType(
            "flat", ["instrument", "detector", "physical_filter"], STORAGE_CLASS, universe=u, isCalibration=True
        ),
        spec.refcat: DatasetType(spec.refcat, [f"htm{REFCAT_LEVEL}"], STORAGE_CLASS, universe=u),
        "skyMap": DatasetType("skyMap", ["skymap"], STORAGE_CLASS, universe=u),
    }


def _put_missing(
    butler: Butler, dataset_type: DatasetType, run: str, items: Iterable[tuple[dict[str, Any], Any]]
) -> tuple[list[DatasetRef], int]:
    """Put each (data ID, object-factory) whose data ID is not yet in ``run``; return (all refs, n new)."""
    existing = {
        ref.dataId.required_values: ref
        for ref in butler.query_datasets(dataset_type, collections=run, find_first=False, explain=False)
    }
    refs: list[DatasetRef] = []
    written = 0
    for data_id, factory in items:
        coord = DataCoordinate.standardize(data_id, dimensions=dataset_type.dimensions)
        ref = existing.get(coord.required_values)
        if ref is None:
            ref = butler.put(factory(), dataset_type, coord, run=run)
            written += 1
        refs.append(ref)
    return refs, written


def _ingest_missing(
    butler: Butler,
    dataset_type: DatasetType,
    run: str,
    items: Iterable[tuple[dict[str, Any], Callable[[], Any], str]],
    chunk: int = 5000,
) -> tuple[list[DatasetRef], int]:
    """Like `_put_missing`, in bulk: files written at ``<datastore root>/<relative path>`` and
    ingested in place, ``chunk`` at a time (``put`` is ~100 datasets/s; a scale world has a million).

    ``items``: (data ID, object factory, path relative to the datastore root). The file is the
    object as JSON, which the storage class's YAML formatter reads.
    """
    root = next(Path(r.ospath) for r in butler.get_datastore_roots().values() if r is not None)
    existing = {
        ref.dataId.required_values: ref
        for ref in butler.query_datasets(dataset_type, collections=run, find_first=False, explain=False, limit=None)
    }
    refs: list[DatasetRef] = []
    todo: list[FileDataset] = []
    written = 0

    def flush() -> None:
        nonlocal written
        if todo:
            butler.ingest(*todo, transfer=None)
            written += len(todo)
            todo.clear()

    for data_id, factory, rel in items:
        coord = DataCoordinate.standardize(data_id, dimensions=dataset_type.dimensions)
        ref = existing.get(coord.required_values)
        if ref is None:
            ref = DatasetRef(dataset_type, coord, run=run, id_generation_mode=DatasetIdGenEnum.DATAID_TYPE_RUN)
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(factory(), separators=(",", ":")))
            todo.append(FileDataset(path=str(path), refs=[ref]))
            if len(todo) >= chunk:
                flush()
        refs.append(ref)
    flush()
    return refs, written


def populate_central(repo: Path, spec: SkySpec | None = None) -> dict[str, Any]:
    """Write the synthetic world's inputs into the central repo (idempotent).

    Inserts every dimension record, registers the input dataset types, puts raws, bias and
    flat (certified in the CALIBRATION collection ``<ins>/calib`` over a range covering all
    exposures), the reference catalog shards and the sky map, and defines the chained
    collection ``<ins>/defaults`` = [raw, calib, refcats, skymaps].

    Returns
    -------
    counts : `dict`
        ``records`` (per element), ``datasets`` (per dataset type, present after the call),
        ``written`` (per dataset type, by this call), ``certified`` (new certifications),
        ``collections`` (names).
    """
    spec = spec or SkySpec()
    model = build_sky(spec)
    cols = collections_for(spec)
    butler = Butler.from_config(str(repo), writeable=True)
    try:
        records = _insert_records(butler, dimension_records(model))
        types = _input_dataset_types(butler, spec)
        for dt in types.values():
            butler.registry.registerDatasetType(dt)
        for run in (cols.raw, cols.calib_run, cols.refcats, cols.skymaps):
            butler.collections.register(run, CollectionType.RUN)
        butler.collections.register(cols.calib, CollectionType.CALIBRATION)
        ins = spec.instrument
        datasets: dict[str, int] = {}
        written: dict[str, int] = {}

        def record(name: str, result: tuple[list[DatasetRef], int]) -> list[DatasetRef]:
            datasets[name], written[name] = len(result[0]), result[1]
            return result[0]

        record(
            "raw",
            _ingest_missing(
                butler,
                types["raw"],
                cols.raw,
                (
                    (
                        {"instrument": ins, "exposure": o.exposure, "detector": d},
                        partial(model.raw_content, o, d),
                        f"{cols.raw}/raw/{o.day_obs}/{o.exposure}/raw_{o.exposure}_{d:03d}.yaml",
                    )
                    for o in model.observations
                    for d in o.detector_regions
                ),
            ),
        )
        bias = record(
            "bias",
            _put_missing(
                butler,
                types["bias"],
                cols.calib_run,
                (
                    ({"instrument": ins, "detector": d.id}, lambda d=d: model.bias_content(d.id))
                    for d in model.detectors
                ),
            ),
        )
        flat = record(
            "flat",
            _put_missing(
                butler,
                types["flat"],
                cols.calib_run,
                (
                    (
                        {"instrument": ins, "detector": d.id, "physical_filter": b.physical_filter},
                        lambda d=d, b=b: model.flat_content(d.id, b.physical_filter),
                    )
                    for d in model.detectors
                    for b in spec.bands
                ),
            ),
        )
        record(
            spec.refcat,
            _ingest_missing(
                butler,
                types[spec.refcat],
                cols.refcats,
                (
                    (
                        {f"htm{REFCAT_LEVEL}": s},
                        partial(model.refcat_content, s),
                        f"{cols.refcats}/{spec.refcat}/{s // 1000}/{spec.refcat}_{s}.yaml",
                    )
                    for s in model.refcat_shards()
                ),
            ),
        )
        record(
            "skyMap",
            _put_missing(butler, types["skyMap"], cols.skymaps, [({"skymap": spec.skymap}, model.skymap_content)]),
        )
        certified = _certify_missing(butler, cols.calib, bias + flat, Timespan(*model.validity_range()))
        butler.collections.register(cols.defaults, CollectionType.CHAINED)
        if list(butler.collections.get_info(cols.defaults).children) != cols.chain:
            butler.collections.redefine_chain(cols.defaults, cols.chain)
        return {
            "records": records,
            "datasets": datasets,
            "written": written,
            "certified": certified,
            "collections": {
                "raw": cols.raw,
                "calib": cols.calib,
                "calib_run": cols.calib_run,
                "refcats": cols.refcats,
                "skymaps": cols.skymaps,
                "defaults": cols.defaults,
            },
        }
    finally:
        butler.close()


def _certify_missing(butler: Butler, collection: str, refs: Sequence[DatasetRef], timespan: Timespan) -> int:
    """Certify the refs not yet in CALIBRATION ``collection``; return how many were certified."""
    done: set[Any] = set()
    for name in {ref.datasetType.name for ref in refs}:
        done.update(a.ref.id for a in butler.registry.queryDatasetAssociations(name, collections=[collection]))
    todo = [ref for ref in refs if ref.id not in done]
    if todo:
        butler.registry.certify(collection, todo, timespan)
    return len(todo)


# --------------------------------------------------------------------------------------
# Copy a site's share (tests, reference runs)
# --------------------------------------------------------------------------------------
def copy_site_inputs(
    central: Path, site: Path, spec: SkySpec | None = None, targets: Sequence[int] = (0,), transfer: str = "copy"
) -> dict[str, int]:
    """Copy the inputs of ``targets`` from the central repo into a site repo (idempotent).

    Raws of every visit overlapping the targets (boundary visits included), all bias and
    flat (re-certified with the central validity ranges: `Butler.transfer_from` does not
    carry CALIBRATION associations), the refcat shards overlapping the targets' tracts and
    visits, the sky map, the visit/tract/patch dimension records, and the ``defaults`` chain.
    UUIDs are kept.

    Returns
    -------
    counts : `dict` [`str`, `int`]
        Datasets selected per dataset type.
    """
    spec = spec or SkySpec()
    model = build_sky(spec)
    cols = collections_for(spec)
    obs = sorted(
        {o.visit: o for i in targets for o in model.observations_for_target(i)}.values(), key=lambda o: o.visit
    )
    tract_ids = sorted({spec.targets[i].tract for i in targets})
    pix = HtmPixelization(REFCAT_LEVEL)
    shards: set[int] = set()
    for region in [model.tracts[t].region for t in tract_ids] + [o.region for o in obs]:
        for begin, end in pix.envelope(region):
            shards.update(range(begin, end))
    src = Butler.from_config(str(central))
    dst = Butler.from_config(str(site), writeable=True)
    try:
        ins = spec.instrument
        refs: dict[str, list[DatasetRef]] = {
            "raw": src.query_datasets(
                "raw",
                collections=cols.raw,
                where="instrument = ins AND exposure IN (exps)",
                bind={"ins": ins, "exps": [o.exposure for o in obs]},
                explain=False,
            ),
            "bias": src.query_datasets("bias", collections=cols.calib_run, find_first=False, explain=False),
            "flat": src.query_datasets("flat", collections=cols.calib_run, find_first=False, explain=False),
            spec.refcat: src.query_datasets(
                spec.refcat,
                collections=cols.refcats,
                where=f"htm{REFCAT_LEVEL} IN (px)",
                bind={"px": sorted(shards)},
                explain=False,
            ),
            "skyMap": src.query_datasets("skyMap", collections=cols.skymaps, explain=False),
        }
        with src.query() as q:
            visit_ids = list(
                q.data_ids(["instrument", "visit"])
                .where("instrument = ins AND visit IN (vs)", bind={"ins": ins, "vs": [o.visit for o in obs]})
                .with_dimension_records()
            )
            patch_ids = list(
                q.data_ids(["skymap", "tract", "patch"])
                .where("skymap = sm AND tract IN (ts)", bind={"sm": spec.skymap, "ts": tract_ids})
                .with_dimension_records()
            )
        dst.transfer_dimension_records_from(src, visit_ids + patch_ids)
        all_refs = [r for rs in refs.values() for r in rs]
        dst.transfer_from(src, all_refs, transfer=transfer, register_dataset_types=True, transfer_dimensions=True)
        dst.collections.register(cols.calib, CollectionType.CALIBRATION)
        for name in ("bias", "flat"):
            by_span: dict[Timespan, list[DatasetRef]] = {}
            for assoc in src.registry.queryDatasetAssociations(name, collections=[cols.calib]):
                if assoc.timespan is not None:
                    by_span.setdefault(assoc.timespan, []).append(assoc.ref)
            for span, span_refs in by_span.items():
                _certify_missing(dst, cols.calib, span_refs, span)
        for run in cols.chain:
            if run != cols.calib:
                dst.collections.register(run, CollectionType.RUN)
        dst.collections.register(cols.defaults, CollectionType.CHAINED)
        if list(dst.collections.get_info(cols.defaults).children) != cols.chain:
            dst.collections.redefine_chain(cols.defaults, cols.chain)
        return {name: len(rs) for name, rs in refs.items()}
    finally:
        src.close()
        dst.close()
