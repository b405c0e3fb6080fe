"""A flowing placement's shipments: what every group needs first, then the raws batch by batch of groups.

A site's planned files are split by the first step's group plan (cut from the visits the plan
places there, before any of them has arrived):

* batch 0, ``<placement>.common``: the files no group owns (calibrations, reference shards,
  anything without a visit): every group needs them, so they move once per site, first;
* batch k, ``<placement>.bNNNN``: the raws of ``groups_per_shipment`` consecutive groups.

Each batch is written as a plan table of its own (``<folder>/<site>/<batch>.parquet``, streamed a
record batch at a time), so a shipment and its verification read it as they read a whole
placement. The group plan is written where the step's groups are looked for
(:func:`~multisite_nb.domain.naming.group_plan_file`): the groups that run are the ones shipped.
A first step cut along anything but visits or exposures (or not cut) is one batch: its groups
start once every raw is there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.parquet as pq

from multisite_nb.adapters.grouptable import read_group_plan, write_group_plan
from multisite_nb.adapters.tables import SCHEMA, FileTableSource, read_site, site_table_path
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import PlanError
from multisite_nb.domain.groups import GroupPlan
from multisite_nb.domain.naming import group_plan_file, placement_batch
from multisite_nb.domain.plan import PlacementPlan
from multisite_nb.phases.submit.groups import cut_step
from multisite_nb.phases.submit.selection import step_run
from multisite_nb.phases.transfer.shipment import Shipment

__all__ = ["Batch", "first_step_plan", "plan_batches"]

#: The group dimensions whose groups own raws by visit.
_BY_VISIT = ("visit", "exposure")


@dataclass(frozen=True)
class Batch:
    """One shipment of a flowing placement and the first step's groups it releases once verified."""

    index: int
    shipment: Shipment
    groups: tuple[str, ...]
    files: int
    bytes: int

    @property
    def name(self) -> str:
        return self.shipment.name


def _raw_visits(plan: PlacementPlan, site: str) -> Iterator[tuple[int, int | None]]:
    """(row number, visit or None) of each of the site's planned files, streamed."""
    row = 0
    for batch in read_site(plan.tables, site, columns=["data_id"]):
        for text in batch.column("data_id").to_pylist():
            ids = json.loads(text)
            visit = ids.get("visit")
            if visit is None and "exposure" in ids:
                visit = plan.exposure_visit.get(int(ids["exposure"]))
            yield row, None if visit is None else int(visit)
            row += 1


def first_step_plan(
    campaign: Campaign, plan: PlacementPlan, site: str, step: str, log_dir: str | os.PathLike[str]
) -> GroupPlan:
    """The first step's group plan at ``site``, cut from the visits placement gives it (kept in the run folder)."""
    path = group_plan_file(log_dir, site, step)
    if path.is_file():
        try:
            return read_group_plan(path)
        except PlanError:
            path.unlink()  # a plan cut, not a record of work done: cut it again
    visits = sorted({v for _, v in _raw_visits(plan, site) if v is not None})
    gplan = cut_step(campaign, step_run(campaign, site, step, visits=visits))
    write_group_plan(path, gplan)
    return gplan


def _group_of_visit(gplan: GroupPlan) -> dict[int, int] | None:
    """Visit -> index of its group (0-based); None when the groups do not own visits."""
    if gplan.dimension not in _BY_VISIT or "visit" not in gplan.columns:
        return None
    at = gplan.columns.index("visit")
    return {int(row[at]): i for i, g in enumerate(gplan.groups) for row in g.rows}


def plan_batches(
    campaign: Campaign,
    plan: PlacementPlan,
    site: str,
    gplan: GroupPlan,
    folder: str | os.PathLike[str],
    *,
    groups_per_shipment: int,
    shipment_args: dict[str, object],
) -> list[Batch]:
    """The site's flowing shipments, batch 0 first (see the module's notes); empty batches are left out.

    Parameters
    ----------
    gplan
        The first step's group plan (:func:`first_step_plan`).
    folder
        Where the batches' tables go (``<folder>/<site>/<batch>.parquet``; written again each time).
    groups_per_shipment
        Consecutive groups whose raws travel together.
    shipment_args
        What every shipment of a placement carries besides its files (``raw_inputs``, ``value_links``, ...).
    """
    of_visit = _group_of_visit(gplan)
    names = [g.name for g in gplan.groups]

    def batch_of(visit: int | None) -> int:
        if of_visit is None:
            return 1
        if visit is None or visit not in of_visit:
            return 0
        return of_visit[visit] // groups_per_shipment + 1

    tables = Path(folder) / site
    tables.mkdir(parents=True, exist_ok=True)
    writers: dict[int, pq.ParquetWriter] = {}
    counts: dict[int, list[int]] = {}
    visits = _raw_visits(plan, site)
    try:
        for batch in read_site(plan.tables, site):
            keys = [batch_of(v) for _, v in (next(visits) for _ in range(batch.num_rows))]
            for key in sorted(set(keys)):
                mask = pa.array([k == key for k in keys])
                part = batch.filter(mask)
                if key not in writers:
                    tmp = site_table_path(tables, f"{_label(key)}.tmp")
                    writers[key] = pq.ParquetWriter(tmp, SCHEMA)
                    counts[key] = [0, 0]
                writers[key].write_batch(part)
                counts[key][0] += part.num_rows
                counts[key][1] += int(pa.compute.sum(part.column("size")).as_py() or 0)
    finally:
        for w in writers.values():
            w.close()
    for key in writers:
        os.replace(site_table_path(tables, f"{_label(key)}.tmp"), site_table_path(tables, _label(key)))
    out = []
    for key in sorted(writers):
        released = (
            ()
            if key == 0
            else tuple(names)
            if of_visit is None
            else tuple(names[(key - 1) * groups_per_shipment : key * groups_per_shipment])
        )
        files, size = counts[key]
        source = FileTableSource(tables, _label(key), files, owner=plan)
        shipment = Shipment(
            name=placement_batch(campaign, site, key),
            source=campaign.central,
            dest=site,
            files=source,
            **shipment_args,  # type: ignore[arg-type]
        )
        out.append(Batch(key, shipment, released, files, size))
    if of_visit is not None:  # groups whose visits brought no raws still wait for the common inputs
        shipped = {g for b in out for g in b.groups}
        orphans = tuple(n for n in names if n not in shipped)
        if orphans and out:
            first = out[0]
            out[0] = Batch(first.index, first.shipment, first.groups + orphans, first.files, first.bytes)
    return out


def _label(key: int) -> str:
    return "common" if key == 0 else f"b{key:04d}"
