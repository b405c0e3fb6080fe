"""File tables: one Parquet file per site (or shipment), written while planning, read in batches.

A data release places tens of millions of files; a plan holding one Python object per file
(and a JSON file of all of them) does not fit in memory. The planner hands each file to a
:class:`FileTableWriter` as it finds it; rows are buffered column-wise and written out as a
row group every ``flush_rows`` rows, so memory stays bounded whatever the plan's size. While
writing it keeps the summaries the views need (per site, per site and tract, the boundary cost),
each updated once per file: linear, and read later without opening the table.

Layout under the plan's folder: ``files/<site>.parquet``, columns :data:`SCHEMA`. A file several
sites need is a row in each of their tables (its ``sites`` column lists them all). Gathers and
redistributions write the same tables, one per shipment. A :class:`FileTableSource` is what a
shipment and its verification read: counted from the summary, read a part or a column batch at a time.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from multisite_nb.adapters.files import atomic_write_text
from multisite_nb.domain.errors import PlanError
from multisite_nb.domain.plan import PlacementPlan, PlannedFile, PlanSummary, SiteCounts, TractCounts

__all__ = [
    "SCHEMA",
    "FileColumns",
    "FileTableSource",
    "FileTableWriter",
    "install_tables",
    "iter_site_columns",
    "iter_site_files",
    "load_plan",
    "manifest_rows",
    "read_site",
    "save_plan",
    "site_files",
    "site_source",
    "site_table",
    "site_table_path",
]

FILES_DIR = "files"

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("dataset_type", pa.string(), nullable=False),
        pa.field("run", pa.string(), nullable=False),
        pa.field("data_id", pa.string(), nullable=False),  # JSON of the required dimensions
        pa.field("tract", pa.int64()),  # the site's tract the file serves (null: not bound to one)
        pa.field("lfn", pa.string(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("adler32", pa.string()),  # null until Rucio or a reader of the file knows it
        pa.field("sites", pa.list_(pa.string()), nullable=False),
    ]
)


def site_table_path(tables: Path, site: str) -> Path:
    """The Parquet file of one site's planned files in a folder of tables (e.g. ``<plan folder>/files``)."""
    return Path(tables) / f"{site}.parquet"


class FileTableWriter:
    """Write a plan's files site by site, a row group at a time; count as it goes.

    Parameters
    ----------
    folder
        The plan's folder; the tables are written to a partial folder in it (see :attr:`tables`).
    sites
        The tables' names: the remote sites (or shipments); each gets a table, empty if nothing is
        written to it.
    flush_rows
        Rows buffered per site before a row group is written.
    """

    def __init__(self, folder: Path, sites: Sequence[str], *, flush_rows: int = 50_000) -> None:
        self.folder = Path(folder)
        self.sites = list(sites)
        self.flush_rows = flush_rows
        self._tmp = self.folder / f".{FILES_DIR}.{os.getpid()}.partial"
        if self._tmp.exists():
            shutil.rmtree(self._tmp)
        self._tmp.mkdir(parents=True)
        self._writers = {s: pq.ParquetWriter(self._tmp / f"{s}.parquet", SCHEMA) for s in self.sites}
        self._buf: dict[str, dict[str, list[Any]]] = {s: self._empty() for s in self.sites}
        # plain counters while writing (a model's validated setattr per file costs more than the row)
        self._site_counts = {s: [0, 0, 0] for s in self.sites}  # files, bytes, shared files
        self._tracts: dict[tuple[str, int], list[int]] = {}
        self._by_type: dict[str, dict[str, int]] = {s: defaultdict(int) for s in self.sites}
        self._runs: dict[str, set[str]] = {s: set() for s in self.sites}
        self._boundary = [0, 0, 0]  # files, extra copies, extra bytes
        self.summary = PlanSummary(sites={s: SiteCounts() for s in self.sites})

    @staticmethod
    def _empty() -> dict[str, list[Any]]:
        return {name: [] for name in SCHEMA.names}

    def add(
        self,
        *,
        id: str,
        dataset_type: str,
        run: str,
        data_id: dict[str, Any],
        lfn: str,
        size: int,
        sites: list[str],
        tracts: Mapping[str, int | None] | None = None,
        adler32: str | None = None,
        boundary: bool = False,
        tables: Sequence[str] | None = None,
    ) -> None:
        """One planned file, needed by ``sites``.

        ``tracts``: per table, the tract the file serves there (none: not bound to a tract);
        ``boundary``: the file is an observation's (raw, visit-level), so several sites needing it
        is a boundary cost; ``tables``: the tables the row goes to (default: those of ``sites``).
        """
        data_json = json.dumps(data_id, sort_keys=True)
        n = len(sites)
        shared = int(n > 1)
        if boundary and shared:
            self._boundary[0] += 1
            self._boundary[1] += n - 1
            self._boundary[2] += (n - 1) * size
        for site in sites if tables is None else tables:
            tract = tracts.get(site) if tracts else None
            buf = self._buf[site]
            buf["id"].append(id)
            buf["dataset_type"].append(dataset_type)
            buf["run"].append(run)
            buf["data_id"].append(data_json)
            buf["tract"].append(tract)
            buf["lfn"].append(lfn)
            buf["size"].append(size)
            buf["adler32"].append(adler32)
            buf["sites"].append(sites)
            counts = self._site_counts[site]
            counts[0] += 1
            counts[1] += size
            counts[2] += shared
            self._by_type[site][dataset_type] += 1
            self._runs[site].add(run)
            if tract is not None:
                tc = self._tracts.get((site, tract))
                if tc is None:
                    tc = self._tracts[(site, tract)] = [0, 0, 0]
                tc[0] += 1
                tc[1] += size
                tc[2] += shared
            if len(buf["id"]) >= self.flush_rows:
                self._flush(site)

    def _flush(self, site: str) -> None:
        buf = self._buf[site]
        if buf["id"]:
            self._writers[site].write_table(pa.Table.from_pydict(buf, schema=SCHEMA))
            self._buf[site] = self._empty()

    def close(self) -> PlanSummary:
        """Write what is buffered and return the summary; the tables stay in :attr:`tables` until
        :func:`install_tables` puts them in place (with the plan record they belong to)."""
        for site in self.sites:
            self._flush(site)
            self._writers[site].close()
        self.summary = PlanSummary(
            sites={
                s: SiteCounts(
                    files=c[0],
                    bytes=c[1],
                    shared_files=c[2],
                    by_type=dict(self._by_type[s]),
                    runs=sorted(self._runs[s]),
                )
                for s, c in self._site_counts.items()
            },
            tracts=[
                TractCounts(site=site, tract=tract, files=c[0], bytes=c[1], shared_files=c[2])
                for (site, tract), c in sorted(self._tracts.items())
            ],
            boundary_files=self._boundary[0],
            boundary_extra_copies=self._boundary[1],
            boundary_extra_bytes=self._boundary[2],
        )
        return self.summary

    def absorb(self, tables: Path, summary: PlanSummary) -> None:
        """Append the tables another writer wrote (a shard of the same plan, same sites) and add
        its counts; the rows follow those already added. ``tables`` is removed afterwards."""
        for site in self.sites:
            self._flush(site)
            path = site_table_path(tables, site)
            if path.exists():
                pf = pq.ParquetFile(path)
                for i in range(pf.num_row_groups):
                    self._writers[site].write_table(pf.read_row_group(i))
            c = summary.sites.get(site)
            if c is None:
                continue
            counts = self._site_counts[site]
            counts[0] += c.files
            counts[1] += c.bytes
            counts[2] += c.shared_files
            for dt, n in c.by_type.items():
                self._by_type[site][dt] += n
            self._runs[site].update(c.runs)
        for t in summary.tracts:
            tc = self._tracts.setdefault((t.site, t.tract), [0, 0, 0])
            tc[0] += t.files
            tc[1] += t.bytes
            tc[2] += t.shared_files
        self._boundary[0] += summary.boundary_files
        self._boundary[1] += summary.boundary_extra_copies
        self._boundary[2] += summary.boundary_extra_bytes
        shutil.rmtree(tables, ignore_errors=True)

    @property
    def tables(self) -> Path:
        """Where the tables are written (a partial folder until :func:`install_tables` puts them in place)."""
        return self._tmp

    def abort(self) -> None:
        """Drop what was written (the previous tables stay)."""
        for w in self._writers.values():
            try:
                w.close()
            except Exception:  # noqa: BLE001 - best effort on the way out of a failure
                pass
        shutil.rmtree(self._tmp, ignore_errors=True)


def install_tables(src: Path, folder: Path) -> Path:
    """Put the tables of ``src`` in place as ``folder/files``, replacing the previous ones whole.

    ``src`` is moved when it is on the same file system (else copied, and left for its owner).
    Returns the installed folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / FILES_DIR
    new = folder / f".{FILES_DIR}.{os.getpid()}.new"
    old = folder / f".{FILES_DIR}.{os.getpid()}.old"
    for leftover in (new, old):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        Path(src).replace(new)
    except OSError:  # another file system
        shutil.copytree(src, new)
    if final.exists():
        final.replace(old)
    new.replace(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_site(
    tables: Path, site: str, *, columns: Sequence[str] | None = None, batch_rows: int = 50_000
) -> Iterator[pa.RecordBatch]:
    """A site's planned files in record batches of at most ``batch_rows`` rows.

    Raises
    ------
    PlanError
        When the table is missing or is not a plan table (naming the file).
    """
    path = site_table_path(tables, site)
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise PlanError(f"{path}: the plan's table of {site}'s files cannot be read: {exc}") from exc
    missing = [n for n in (columns or SCHEMA.names) if n not in pf.schema_arrow.names]
    if missing:
        raise PlanError(f"{path}: not a placement table (no column {missing[0]!r})")
    yield from pf.iter_batches(batch_size=batch_rows, columns=list(columns) if columns else None)


@dataclass(frozen=True)
class FileColumns:
    """A batch of planned files as parallel columns: what checking a site's files needs, without
    one object per file (the fields of :class:`~multisite_nb.domain.plan.PlannedFile` but the
    data ID and the sites)."""

    id: list[str]
    dataset_type: list[str]
    run: list[str]
    lfn: list[str]
    size: list[int]
    adler32: list[str | None]

    #: The table columns a batch is read from.
    COLUMNS = ("id", "dataset_type", "run", "lfn", "size", "adler32")

    def __len__(self) -> int:
        return len(self.id)

    @classmethod
    def from_batch(cls, batch: pa.RecordBatch) -> FileColumns:
        """The columns of a record batch of a plan table (read with at least :attr:`COLUMNS`)."""
        return cls(**{name: batch.column(name).to_pylist() for name in cls.COLUMNS})

    @classmethod
    def from_planned(cls, files: Sequence[PlannedFile]) -> FileColumns:
        """The same files from planned-file records (shipments made outside the plan's tables)."""
        return cls(
            id=[f.id for f in files],
            dataset_type=[f.dataset_type for f in files],
            run=[f.run for f in files],
            lfn=[f.lfn for f in files],
            size=[f.size for f in files],
            adler32=[f.adler32 for f in files],
        )


def planned_files(batch: pa.RecordBatch) -> list[PlannedFile]:
    """The rows of a batch as :class:`~multisite_nb.domain.plan.PlannedFile` records."""
    cols = batch.to_pydict()
    return [
        PlannedFile(
            id=cols["id"][i],
            dataset_type=cols["dataset_type"][i],
            run=cols["run"][i],
            data_id=json.loads(cols["data_id"][i]),
            lfn=cols["lfn"][i],
            size=cols["size"][i],
            adler32=cols["adler32"][i],
            sites=cols["sites"][i],
        )
        for i in range(batch.num_rows)
    ]


class FileTableSource:
    """The files of one table (a site's placement, a shipment's gather) as a shipment and its
    verification read them: counted from the summary, read a part or a column batch at a time
    (never all in memory)."""

    def __init__(self, tables: Path, name: str, files: int, owner: Any = None) -> None:
        self.tables, self.name, self.files = Path(tables), name, files
        self.owner = owner  # what the tables belong to: kept alive while they are read

    def __len__(self) -> int:
        return self.files

    def __iter__(self) -> Iterator[PlannedFile]:
        for batch in read_site(self.tables, self.name):
            yield from planned_files(batch)

    def parts(self, size: int) -> Iterator[list[PlannedFile]]:
        """The files in consecutive parts of ``size`` (the last may be shorter)."""
        for batch in read_site(self.tables, self.name, batch_rows=size):
            yield planned_files(batch)

    def columns(self, batch_rows: int = 50_000) -> Iterator[FileColumns]:
        """The files as column batches (no object per file): what verification reads."""
        for batch in read_site(self.tables, self.name, columns=FileColumns.COLUMNS, batch_rows=batch_rows):
            yield FileColumns.from_batch(batch)


# -- a placement plan's tables -------------------------------------------------------------


def iter_site_files(plan: PlacementPlan, site: str, *, batch_rows: int = 50_000) -> Iterator[list[PlannedFile]]:
    """A site's planned files, ``batch_rows`` at a time (memory bounded by the batch)."""
    plan.check_site(site)
    for batch in read_site(plan.tables, site, batch_rows=batch_rows):
        yield planned_files(batch)


def iter_site_columns(plan: PlacementPlan, site: str, *, batch_rows: int = 50_000) -> Iterator[FileColumns]:
    """A site's planned files as column batches of ``batch_rows`` rows (no object per file)."""
    plan.check_site(site)
    for batch in read_site(plan.tables, site, columns=FileColumns.COLUMNS, batch_rows=batch_rows):
        yield FileColumns.from_batch(batch)


def site_source(plan: PlacementPlan, site: str) -> FileTableSource:
    """A site's planned files for a shipment: counted, and read a part at a time."""
    plan.check_site(site)
    return FileTableSource(plan.tables, site, plan.summary.sites[site].files, owner=plan)


def site_files(plan: PlacementPlan, site: str) -> list[PlannedFile]:
    """All of a site's planned files (memory grows with the site's share: prefer :func:`iter_site_files`)."""
    return [f for batch in iter_site_files(plan, site) for f in batch]


def site_table(plan: PlacementPlan, site: str, columns: Sequence[str] | None = None) -> pa.Table:
    """A site's planned files as a pyarrow table (only ``columns`` if given)."""
    plan.check_site(site)
    batches = list(read_site(plan.tables, site, columns=columns))
    if batches:
        return pa.Table.from_batches(batches)
    empty = SCHEMA.empty_table()
    return empty.select(list(columns)) if columns else empty


def manifest_rows(plan: PlacementPlan, site: str, limit: int | None = None) -> list[dict[str, Any]]:
    """The first ``limit`` rows of a site's table (all if None) as display rows."""
    rows: list[dict[str, Any]] = []
    for batch in iter_site_files(plan, site, batch_rows=min(limit or 50_000, 50_000)):
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


def save_plan(plan: PlacementPlan, path: Path) -> Path:
    """Write the plan record to ``path`` with its file tables in ``files/`` beside it.

    A new plan's tables (still in the partial folder they were written to) are put in place
    here, the previous ones replaced whole, just before the record: a planning that failed
    after writing its tables leaves the previous plan and its tables as they were.
    """
    path = Path(path)
    final = path.parent / FILES_DIR
    tables = plan.tables
    if tables.resolve() != final.resolve():
        install_tables(tables, path.parent)
    out = atomic_write_text(path, plan.model_dump_json(indent=1))
    plan.attach_tables(final)
    return out


def load_plan(path: Path) -> PlacementPlan:
    """Read a saved plan (its tables are read when asked for).

    Raises
    ------
    PlanError
        Naming the file, when it cannot be read or is not a plan.
    """
    path = Path(path)
    try:
        plan = PlacementPlan.model_validate_json(path.read_text())
    except OSError as exc:
        raise PlanError(f"{path}: cannot read the placement plan: {exc}") from exc
    except ValueError as exc:
        raise PlanError(f"{path}: not a placement plan of this toolkit: {exc}") from exc
    plan.attach_tables(path.parent / FILES_DIR)
    return plan
