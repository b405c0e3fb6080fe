"""A flowing placement's shipments: what every group needs first, then the raws batch by batch of groups.

A site's planned files are split by the first step's group plan (cut from the visits the plan
places there, before any of them has arrived):

* batch 0, ``<placement>.common``: the files no group owns (calibrations, reference shards,
  anything without a visit): every group needs them, so they move once per site, first;
* batch k, ``<placement>.bNNNN``: the raws of ``groups_per_shipment`` consecutive groups.

Each batch is written as a plan table of its own (``<run>/artifacts/flow/batches/<site>/<batch>.parquet``,
streamed a record batch at a time), so a shipment, its verification and a repair read it as they
read a whole placement (:func:`shipped_batches`). A first step cut along anything but visits or
exposures (or not cut) is one batch: its groups start once every raw is there.
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

from multisite_nb.adapters.tables import SCHEMA, FileTableSource, read_site, site_table_path
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.groups import GroupPlan
from multisite_nb.domain.naming import artifacts_dir, placement_batch
from multisite_nb.domain.plan import PlacementPlan
from multisite_nb.phases.transfer.shipment import Shipment
from multisite_nb.phases.transfer.shipping import placement_args

__all__ = ["Batch", "batches_dir", "plan_batches", "raw_visits", "shipped_batches"]

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


def raw_visits(plan: PlacementPlan, site: str) -> Iterator[tuple[int, int | None]]:
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
    visits = raw_visits(plan, site)
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


def batches_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Where a flowing placement's batch tables are (``<site>/<batch>.parquet``)."""
    return artifacts_dir(run_dir, "flow") / "batches"


def shipped_batches(
    campaign: Campaign, plan: PlacementPlan, site: str, run_dir: str | os.PathLike[str]
) -> list[Shipment] | None:
    """The shipments a flowing placement made to ``site`` (from its batch tables); None: it did not flow."""
    tables = batches_dir(run_dir) / site
    paths = sorted(tables.glob("*.parquet")) if tables.is_dir() else []
    out = []
    for path in paths:
        label = path.stem
        if label != "common" and not (label.startswith("b") and label[1:].isdigit()):
            continue
        key = 0 if label == "common" else int(label[1:])
        files = FileTableSource(tables, label, pq.ParquetFile(path).metadata.num_rows, owner=plan)
        out.append(
            Shipment(
                name=placement_batch(campaign, site, key),
                source=campaign.central,
                dest=site,
                files=files,
                **placement_args(campaign, plan, site),  # type: ignore[arg-type]
            )
        )
    return out or None


def _label(key: int) -> str:
    return "common" if key == 0 else f"b{key:04d}"
