"""The toolkit's one door to the Butlers: opening repositories and the queries several phases share.

No other module constructs a ``Butler``. Everything here is typed with daf_butler's own
classes; errors opening a repository become :class:`~.errors.ButlerError` naming the repo.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from lsst.daf.butler import (
    Butler,
    CollectionType,
    DataCoordinate,
    DatasetRef,
    DimensionRecord,
    MissingCollectionError,
    MissingDatasetTypeError,
)
from lsst.daf.butler.queries import Query

from .errors import ButlerError

__all__ = [
    "collection_exists",
    "count_datasets",
    "dataset_counts",
    "has_data_ids",
    "datastore_roots",
    "export_dimension_records",
    "import_dimension_records",
    "find_refs",
    "open_butler",
    "repo_summary",
    "unit_data_ids",
    "unit_records",
]


def open_butler(repo: str, *, writeable: bool = False, run: str | None = None) -> Butler:
    """Open a site's repository (read-only unless asked).

    Raises
    ------
    ButlerError
        If it cannot be opened (the message names the repository).
    """
    writeable = writeable or run is not None
    try:
        return Butler.from_config(repo, writeable=writeable, run=run)
    except Exception as exc:
        if not writeable and "readonly database" in str(exc):
            # A writer killed mid-transaction (a step stopped by the operator) leaves SQLite's hot
            # journal, which only a writable connection may roll back: open once to do that, then
            # read-only again. Nothing of the dead transaction survives; committed data is untouched.
            try:
                Butler.from_config(repo, writeable=True).close()
                return Butler.from_config(repo, writeable=False)
            except Exception:
                pass
        raise ButlerError(f"the Butler repository {repo} cannot be opened: {type(exc).__name__}: {exc}") from exc


def collection_exists(repo: str, name: str) -> bool | None:
    """Whether ``name`` exists in ``repo``; `None` if the repository cannot be opened from here."""
    try:
        butler = open_butler(repo)
    except ButlerError:
        return None
    with butler:
        try:
            butler.collections.get_info(name)
            return True
        except MissingCollectionError:
            return False


def _runs(butler: Butler, collections: str | Sequence[str]) -> list[str]:
    try:
        return [i.name for i in butler.collections.query_info(collections, collection_types={CollectionType.RUN})]
    except MissingCollectionError:
        return []


def dataset_counts(butler: Butler, collections: str | Sequence[str] = "*") -> dict[str, int]:
    """Datasets per dataset type over the RUN collections matching ``collections`` (counted in the registry)."""
    runs = _runs(butler, collections)
    counts: dict[str, int] = {}
    if not runs:
        return counts
    with butler.query() as q:
        for dt in butler.registry.queryDatasetTypes():
            n = q.datasets(dt, collections=runs, find_first=False).count(exact=True)
            if n:
                counts[dt.name] = n
    return dict(sorted(counts.items()))


def count_datasets(butler: Butler, collections: str | Sequence[str] = "*") -> int:
    """All datasets in the RUN collections matching ``collections``."""
    return sum(dataset_counts(butler, collections).values())


def find_refs(
    butler: Butler, dataset_type: str, collections: Sequence[str], *, find_first: bool = True, records: bool = False
) -> list[DatasetRef]:
    """Every dataset of a type in ``collections``; none (not an error) if the type is unknown here."""
    try:
        return list(
            butler.query_datasets(
                dataset_type,
                collections=list(collections),
                find_first=find_first,
                with_dimension_records=records,
                explain=False,
                limit=None,
            )
        )
    except (MissingDatasetTypeError, MissingCollectionError):
        return []


def datastore_roots(butler: Butler) -> list[Path]:
    """The local datastore roots of a repository (= its RSE roots)."""
    return [Path(r.ospath) for r in butler.get_datastore_roots().values() if r is not None]


def repo_summary(repo: str) -> dict[str, Any]:
    """A small health report of one repository: collections and dataset counts."""
    with open_butler(repo) as butler:
        collections = sorted(butler.collections.query("*"))
        counts = dataset_counts(butler)
    return {"collections": len(collections), "datasets": sum(counts.values()), "by_type": counts}


# -- sky units ------------------------------------------------------------------------------
#
# A set of sky units spelled as one expression, ``(tract = t AND patch IN (...)) OR ...``, is
# rewritten by daf_butler into conjunctive normal form, which doubles with every tract: SQLite
# refuses it from about ten tracts ("Expression tree is too large"). The units travel as
# uploaded data IDs instead: whole tracts as (skymap, tract), the rest as (skymap, tract,
# patch), one query each, whatever their number.


def _unit_queries(
    butler: Butler, units: Iterable[tuple[int, int | None]], skymap: str, instrument: str | None
) -> Iterator[Query]:
    """One query per kind of unit (whole tracts; patches), joined with the units as data IDs."""
    whole = sorted({t for t, p in units if p is None})
    wholes = set(whole)
    patches = sorted({(t, p) for t, p in units if p is not None and t not in wholes})
    u = butler.dimensions
    groups = [
        [DataCoordinate.standardize(skymap=skymap, tract=t, universe=u) for t in whole],
        [DataCoordinate.standardize(skymap=skymap, tract=t, patch=p, universe=u) for t, p in patches],
    ]
    for coords in groups:
        if not coords:
            continue
        with butler.query() as query:
            query = query.join_data_coordinates(coords)
            yield query.where(instrument=instrument) if instrument else query


def unit_data_ids(
    butler: Butler,
    units: Iterable[tuple[int, int | None]],
    skymap: str,
    dimensions: Sequence[str],
    *,
    instrument: str | None = None,
    where: str = "",
    bind: Mapping[str, Any] | None = None,
) -> Iterator[DataCoordinate]:
    """The data IDs (of ``dimensions``) overlapping sky units given as (tract, patch or None), streamed.

    Each comes once when ``dimensions`` include ``patch`` (the whole-tract and patch queries
    cover different patches); the caller keeps what it needs, not the data IDs themselves.
    ``where`` and ``bind`` constrain them further (e.g. ``visit IN (v)`` with the visits bound).
    """
    units = list(units)
    for query in _unit_queries(butler, units, skymap, instrument):
        yield from (query.where(where, bind=bind) if where else query).data_ids(list(dimensions))


def unit_records(
    butler: Butler, units: Iterable[tuple[int, int | None]], skymap: str, element: str
) -> list[DimensionRecord]:
    """The ``element`` records (e.g. patches) of sky units given as (tract, patch or None)."""
    units = list(units)
    seen: dict[Any, DimensionRecord] = {}
    for query in _unit_queries(butler, units, skymap, None):
        for rec in query.dimension_records(element):
            seen.setdefault(rec.dataId, rec)
    return list(seen.values())


def has_data_ids(butler: Butler, dimensions: Sequence[str], where: str, rows: Iterable[Mapping[str, Any]] = ()) -> bool:
    """Whether any data ID of ``dimensions`` matches ``where`` joined with ``rows`` (uploaded data IDs)."""
    coords = [DataCoordinate.standardize(dict(r), universe=butler.dimensions) for r in rows]
    with butler.query() as query:
        if coords:
            query = query.join_data_coordinates(coords)
        return query.where(where).data_ids(list(dimensions)).any(exact=True)


def _records_loader() -> type | None:
    """libyaml's safe loader with the constructors daf_butler's import gives PyYAML's (times,
    timespans, regions, UUIDs): the same documents to the same objects, parsed in C. None without
    libyaml."""
    import lsst.daf.butler.transfers  # noqa: F401 - registers daf_butler's YAML tags on SafeLoader
    import yaml

    if not getattr(yaml, "__with_libyaml__", False):
        return None

    class _RecordsLoader(yaml.CSafeLoader):
        pass

    _RecordsLoader.yaml_constructors = dict(yaml.SafeLoader.yaml_constructors)
    _RecordsLoader.yaml_multi_constructors = dict(yaml.SafeLoader.yaml_multi_constructors)
    return _RecordsLoader


def _records_dumper() -> type:
    """libyaml's emitter with the representers daf_butler and sphgeom give PyYAML's ``Dumper``;
    PyYAML's own ``Dumper`` without libyaml."""
    import lsst.daf.butler.transfers  # noqa: F401 - registers daf_butler's YAML representers
    import yaml

    if not getattr(yaml, "__with_libyaml__", False):
        return yaml.Dumper

    class _RecordsDumper(yaml.CDumper):
        pass

    _RecordsDumper.yaml_representers = dict(yaml.Dumper.yaml_representers)
    _RecordsDumper.yaml_multi_representers = dict(yaml.Dumper.yaml_multi_representers)
    return _RecordsDumper


def export_dimension_records(butler: Butler, records: Mapping[str, Sequence[DimensionRecord]], path: Path) -> int:
    """Write dimension records as daf_butler's YAML export (Rubin's ``dim_file``), atomically;
    returns how many.

    The document is the one ``Butler.export`` writes (its header and blocks come from daf_butler's
    YAML export backend), emitted by libyaml instead of PyYAML's pure-Python emitter: ~35 s for
    the records of 16,000 raws, most of a shipment's registration. Any daf_butler import reads it.
    """
    import io

    import yaml
    from lsst.daf.butler.transfers import YamlRepoExportBackend

    universe = butler.dimensions
    blocks = YamlRepoExportBackend(io.StringIO(), universe)
    n = 0
    for element in universe.sorted(records):
        blocks.saveDimensionData(element, *records[element.name])
        n += len(records[element.name])
    header = io.StringIO()
    YamlRepoExportBackend(header, universe).finish()  # an empty export: description, versions
    document = yaml.safe_load(header.getvalue())
    document["data"] = blocks.data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w") as stream:
        yaml.dump(document, stream, Dumper=_records_dumper(), sort_keys=False)
    tmp.replace(path)
    return n


def import_dimension_records(butler: Butler, path: Path) -> int | None:
    """Import a file of dimension records exported by daf_butler (Rubin's ``dim_file``); returns
    how many records it holds (None when it went through ``Butler.import_``).

    ``Butler.import_`` parses YAML with PyYAML's pure-Python parser: ~40 s for the records of
    16,000 raws, most of a shipment's ingest. A file holding only dimension records, written
    for this repository's dimension universe, is read here with libyaml's parser instead (same
    constructors, ~10x faster) and inserted element by element in the universe's order, records
    already there kept (as ``import_`` does), in one transaction. Any other file (other content,
    another universe or format version) goes through ``Butler.import_`` unchanged.
    """
    import datetime

    import astropy.time
    import yaml

    loader = _records_loader()
    if loader is not None:
        with open(path) as stream:
            wrapper = yaml.load(stream, Loader=loader)  # noqa: S506 - a safe loader (CSafeLoader)
        universe = butler.dimensions
        same_universe = (
            str(wrapper.get("version", "")).startswith("1.")
            and wrapper.get("universe_version") == universe.version
            and wrapper.get("universe_namespace") == universe.namespace
        )
        blocks = wrapper.get("data") or []
        if same_universe and all(b.get("type") == "dimension" for b in blocks):
            records: dict[Any, list[DimensionRecord]] = {}
            for block in blocks:
                element = universe[block["element"]]
                for rec in block["records"]:
                    for key, value in rec.items():
                        if isinstance(value, datetime.datetime):  # older exports' native timestamps
                            rec[key] = astropy.time.Time(value, scale="utc")
                records.setdefault(element, []).extend(element.RecordClass(**rec) for rec in block["records"])
            with butler.transaction():
                for element in universe.sorted(records):
                    butler.registry.insertDimensionData(element, *records[element], skip_existing=True)
            return sum(len(v) for v in records.values())
    butler.import_(filename=str(path), skip_dimensions=None)
    return None
