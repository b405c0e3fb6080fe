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
