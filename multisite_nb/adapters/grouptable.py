"""A step's group plan at a site as a Parquet file: one row per data ID, written once and read back.

Columns: ``group`` (``gNNNN``), ``query`` (the group's data query; dictionary-encoded, so one copy
per distinct text), then the data-ID table's columns. A group selected by its query alone is one
row with no data-ID columns. The file's metadata keeps the cut (dimension, size) and the columns.
Written atomically; a resumed run reads it instead of cutting again, so its groups never change
under it.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from multisite_nb.adapters.files import atomic_write_bytes
from multisite_nb.domain.errors import PlanError
from multisite_nb.domain.groups import Group, GroupPlan

__all__ = ["read_group_plan", "write_group_plan"]

_META = b"multisite_nb.group_plan"


def write_group_plan(path: str | os.PathLike[str], plan: GroupPlan) -> Path:
    """Write ``plan`` to ``path`` (atomically)."""
    names: list[str] = []
    queries: list[str] = []
    values: list[list[str | int | None]] = [[] for _ in plan.columns]
    for g in plan.groups:
        rows = g.rows or ((None,) * len(plan.columns),)
        for row in rows:
            names.append(g.name)
            queries.append(g.query)
            for i, v in enumerate(row):
                values[i].append(v)
    arrays = [pa.array(names, pa.string()), pa.array(queries, pa.string()).dictionary_encode()]
    arrays += [pa.array(v) for v in values]
    meta = {"site": plan.site, "step": plan.step, "dimension": plan.dimension, "size": plan.size}
    meta["columns"] = list(plan.columns)
    table = pa.Table.from_arrays(arrays, names=["group", "query", *(f"id:{c}" for c in plan.columns)])
    table = table.replace_schema_metadata({_META: json.dumps(meta).encode()})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return atomic_write_bytes(path, buf.getvalue())


def read_group_plan(path: str | os.PathLike[str]) -> GroupPlan:
    """Read a group plan written by :func:`write_group_plan`.

    Raises
    ------
    PlanError
        Naming the file, when it cannot be read or is not a group plan.
    """
    try:
        table = pq.read_table(path)
        meta = json.loads((table.schema.metadata or {})[_META])
        columns = tuple(meta["columns"])
        names = table.column("group").to_pylist()
        queries = table.column("query").to_pylist()
        ids = [table.column(f"id:{c}").to_pylist() for c in columns]
    except (OSError, KeyError, ValueError, pa.ArrowException) as exc:
        raise PlanError(f"{path}: not a readable group plan of this toolkit: {exc}") from exc
    groups: list[Group] = []
    rows: list[tuple[str | int, ...]] = []
    for i, name in enumerate(names):
        if not groups or groups[-1].name != name:
            if groups:
                groups[-1] = Group(groups[-1].name, groups[-1].query, tuple(rows))
            groups.append(Group(name, queries[i], ()))
            rows = []
        if columns and ids[0][i] is not None:
            rows.append(tuple(col[i] for col in ids))
    if groups:
        groups[-1] = Group(groups[-1].name, groups[-1].query, tuple(rows))
    return GroupPlan(meta["site"], meta["step"], meta["dimension"], int(meta["size"]), columns, tuple(groups))
