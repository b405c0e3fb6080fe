"""Registry queries over sky units and bound id lists, streamed.

A set of sky units spelled as one expression, ``(tract = t AND patch IN (...)) OR ...``, is
rewritten by daf_butler into conjunctive normal form, which doubles with every tract: SQLite
refuses it from about ten tracts ("Expression tree is too large"). The units travel as
uploaded data IDs instead: whole tracts as (skymap, tract), the rest as (skymap, tract,
patch), one query each, whatever their number.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

from lsst.daf.butler import Butler, DataCoordinate, DimensionRecord
from lsst.daf.butler.queries import Query

#: Ids bound in one query at most: SQLite refuses more than 32,766 variables in a statement, and
#: PostgreSQL more than 65,535 parameters; a query with more ids runs once per chunk.
BIND_CHUNK = 10_000


def chunked[T](values: Iterable[T], size: int = BIND_CHUNK) -> Iterator[list[T]]:
    """``values`` in lists of at most ``size`` (for ``IN (ids)`` terms whose ids are bound)."""
    it = iter(values)
    while part := list(islice(it, size)):
        yield part


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


def records_of(butler: Butler, element: str, key: str, ids: Iterable[int], instrument: str) -> list[DimensionRecord]:
    """Dimension records of ``element`` whose ``key`` is one of ``ids`` (bound, not spelled out, in chunks)."""
    out: list[DimensionRecord] = []
    for part in chunked(sorted(ids)):
        out += butler.query_dimension_records(
            element, where=f"{key} IN (ids)", bind={"ids": part}, instrument=instrument, limit=None, explain=False
        )
    return out
