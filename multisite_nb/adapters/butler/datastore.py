"""Datasets as files, from the datastore's own records, read in bulk.

The only module that uses daf_butler's private datastore API (each use says why): a data release
describes tens of millions of files, and the documented per-dataset calls (``getURI``, one
``StoredFileInfo`` per record) cost twice the time or more.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lsst.daf.butler import Butler, DatasetRef

from multisite_nb.adapters.butler.repo import datastore_roots
from multisite_nb.adapters.files import adler32_of
from multisite_nb.domain.errors import PlanError
from multisite_nb.domain.plan import PlannedFile, json_value


def describe_file(
    butler: Butler, ref: DatasetRef, sites: list[str], roots: list[Path] | None = None, path: Path | None = None
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
        data_id={k: json_value(v) for k, v in dict(ref.dataId.required).items()},
        lfn=str(path.relative_to(base)),
        size=path.stat().st_size,
        adler32=adler32_of(path),
        sites=sites,
    )


def describe_files(butler: Butler, refs: Sequence[DatasetRef], sites: list[str]) -> list[PlannedFile]:
    """Datasets as files to ship, from the datastore's records read in bulk (a page at a time).

    The LFN (relative to its datastore root) and size come from the records: no file is opened and
    no URI asked per file. The adler32 is left unset: registration reads it, at the source RSE,
    for the files Rucio does not know yet (as for a placement).

    Raises
    ------
    PlanError
        A dataset with no single file under the datastore roots (see :func:`file_records`).
    """
    roots = {name: Path(r.ospath) for name, r in butler.get_datastore_roots().items() if r is not None}
    out: list[PlannedFile] = []
    for start in range(0, len(refs), PAGE):
        page = [(ref, ref.id) for ref in refs[start : start + PAGE]]  # DatasetRef.id: a new UUID per call
        records = file_records(butler, page, roots)
        for ref, rid in page:
            lfn, size = records[rid]
            out.append(
                PlannedFile(
                    id=str(rid),
                    dataset_type=ref.datasetType.name,
                    run=ref.run,
                    data_id={k: json_value(v) for k, v in dict(ref.dataId.required).items()},
                    lfn=lfn,
                    size=size,
                    sites=list(sites),
                )
            )
    return out


PAGE = 20_000  # datasets per registry page and per datastore-records call


def ref_pages(
    butler: Butler, dataset_type: str, inputs: list[str], where: str = "", bind: dict[str, Any] | None = None
) -> Iterator[list[Any]]:
    """Every dataset of a type in the input collections, once each, in pages of at most ``PAGE``.

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
        for start in range(0, len(unique), PAGE):
            yield unique[start : start + PAGE]
    if runs:
        page: list[Any] = []
        with butler.query() as query:
            results = query.datasets(dataset_type, collections=runs, find_first=False)
            for ref in results.where(where, bind=bind) if where else results:
                if seen and ref.id in seen:
                    continue
                page.append(ref)
                if len(page) >= PAGE:
                    yield page
                    page = []
        if page:
            yield page


@dataclass(frozen=True, slots=True)
class _IdRef:
    """A dataset id as the datastore's bulk reads take it (they only ask for ``.id``)."""

    id: Any


def _datastore_rows(butler: Butler, ids: list[Any]) -> Iterator[tuple[str, Any, str, int | None]]:
    """(datastore name, dataset id, path, size) of each stored file of ``ids``, read in bulk.

    A file datastore's record rows are read as they are (``_export_rows``: the rows its documented
    ``export_records`` turns into one ``StoredFileInfo`` each, twice the time at a million files);
    any other datastore through ``export_records``.
    """
    # private API (1/2): a Butler gives no public handle on its datastore, whose records are the only
    # bulk source of the files' paths and sizes (getURI and stat per file cost 19x more at 1M files)
    store = butler._datastore
    for child in getattr(store, "datastores", None) or [store]:  # a chained datastore's members
        # private API (2/2): the record rows as stored; the public export_records makes a StoredFileInfo
        # of each, twice the time at a million files. Datastores without it take the public way below.
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


def file_records(
    butler: Butler, refs: list[tuple[Any, Any]], roots_by_name: dict[str, Path]
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
