"""Ingest in place what arrived, with the planned UUIDs; re-make the calibrations' ranges and input chains."""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lsst.daf.butler import Butler, DimensionUniverse

from multisite_nb.adapters.butler.dimensions import import_dimension_records
from multisite_nb.adapters.rucio.ops import RucioOps
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import PlanError
from multisite_nb.domain.plan import PlacementPlan, PlannedFile
from multisite_nb.domain.records import ShipmentOutcome
from multisite_nb.phases.transfer.shipment import Shipment, rse_root

INGEST_PART = 10_000  # files ingested per Butler transaction (and held in memory at once)


def ingest_shipment(
    campaign: Campaign, ops: RucioOps, dest_butler: Butler, shipment: Shipment, outcome: ShipmentOutcome
) -> None:
    """Import the records, then ingest the arrived files in place with the planned UUIDs.

    The refs are built in bulk from the plan (dataset type, data ID, RUN, id) and the records
    just imported; each (dataset type, RUN) takes its type's definition from one file's Rucio
    sidecar, checked against the plan. No sidecar is parsed per file (~1 ms each).
    """
    from lsst.daf.butler import CollectionType, DataCoordinate, DatasetRef, FileDataset
    from lsst.daf.butler.registry import ConflictingDefinitionError

    root = Path(rse_root(campaign, shipment.dest))
    t0 = time.monotonic()
    for lfn in outcome.records_files:  # the shipment-wide file first, then a part's at a time
        import_dimension_records(dest_butler, root / lfn)
    outcome.seconds["import_records"] = time.monotonic() - t0
    types: dict[tuple[str, str], Any] = {}
    for part in shipment.parts(INGEST_PART):
        present = _present(dest_butler, part, shipment)
        todo = [f for f in part if f.id not in present]
        outcome.already_present += len(part) - len(todo)
        if not todo:
            continue
        new = [f for f in todo if (f.dataset_type, f.run) not in types]
        if new:
            types.update(_dataset_types(ops, dest_butler.dimensions, new, shipment))
        by_run: dict[str, list[Any]] = defaultdict(list)
        for f in todo:
            dataset_type = types[(f.dataset_type, f.run)]
            path = root / f.lfn
            if not path.exists():
                raise PlanError(f"{shipment.name}: {path} has not arrived (rule {outcome.state})")
            data_id = DataCoordinate.standardize(f.data_id, dimensions=dataset_type.dimensions)
            ref = DatasetRef(dataset_type, data_id, run=f.run, id=uuid.UUID(f.id))
            by_run[f.run].append(FileDataset(path=str(path), refs=[ref]))
        for run, datasets in by_run.items():
            dest_butler.collections.register(run, CollectionType.RUN)
            for dt in {fd.refs[0].datasetType for fd in datasets}:
                dest_butler.registry.registerDatasetType(dt)
            try:
                dest_butler.ingest(*datasets, transfer=None)
                outcome.ingested += len(datasets)
            except ConflictingDefinitionError:  # another operator ingested them meanwhile: check they are ours
                ids = {str(fd.refs[0].id) for fd in datasets}
                there = _present(dest_butler, [f for f in todo if f.id in ids], shipment)
                if len(there) != len(ids):
                    raise
                outcome.already_present += len(ids)
    outcome.seconds["ingest"] = time.monotonic() - t0


def _dataset_types(
    ops: RucioOps, universe: DimensionUniverse, files: Sequence[PlannedFile], shipment: Shipment
) -> dict[tuple[str, str], Any]:
    """The dataset type of each (dataset type name, RUN) among ``files``, from the Rucio sidecar of
    one of its files (what the source Butler registered), checked against the plan.

    Raises
    ------
    PlanError
        A sampled file without a sidecar, or whose sidecar names another dataset than the plan.
    """
    from lsst.daf.butler import DatasetRef

    first: dict[tuple[str, str], PlannedFile] = {}
    for f in files:
        first.setdefault((f.dataset_type, f.run), f)
    meta = ops.get_metadata_bulk([f.lfn for f in first.values()])
    out = {}
    for key, f in first.items():
        sidecar = meta.get(f.lfn, {}).get("rubin_sidecar")
        if not sidecar:
            raise PlanError(f"{shipment.name}: {f.lfn} has no rubin_sidecar metadata in Rucio")
        ref = DatasetRef.from_json(sidecar, universe=universe)
        if (str(ref.id), ref.datasetType.name, ref.run) != (f.id, f.dataset_type, f.run):
            raise PlanError(
                f"{shipment.name}: sidecar of {f.lfn} names dataset {ref.id} ({ref.datasetType.name} in "
                f"{ref.run}), the plan {f.id} ({f.dataset_type} in {f.run})"
            )
        out[key] = ref.datasetType
    return out


def _present(butler: Butler, files: Sequence[PlannedFile], shipment: Shipment) -> set[str]:
    """Ids of ``files`` the Butler holds already, each checked to be the planned dataset (type and RUN)."""
    planned = {f.id: f for f in files}
    found = butler.get_many_datasets(list(planned))
    for ref in found:
        f = planned[str(ref.id)]
        if ref.run != f.run or ref.datasetType.name != f.dataset_type:
            raise PlanError(
                f"{shipment.name}: dataset {f.id} is at {shipment.dest} as {ref.datasetType.name} in "
                f"{ref.run}, the plan says {f.dataset_type} in {f.run}"
            )
    return {str(r.id) for r in found}


def _exists(butler: Butler, name: str) -> bool:
    """Whether collection ``name`` is there yet (a flowing placement's chains fill as its batches land)."""
    from lsst.daf.butler import MissingCollectionError

    try:
        return bool(butler.collections.query(name, include_chains=True))
    except MissingCollectionError:
        return False


def apply_collections(butler: Butler, plan: PlacementPlan, site: str) -> dict[str, int]:
    """Re-make at a site the calibration validity ranges and the input chains of the plan."""
    from astropy.time import Time
    from lsst.daf.butler import CollectionType, Timespan

    certified = 0
    for coll in plan.calibration_collections:
        butler.collections.register(coll, CollectionType.CALIBRATION)
        have = set()
        for dt in {c.dataset_type for c in plan.certifications if c.collection == coll and site in c.sites}:
            for assoc in butler.registry.queryDatasetAssociations(
                dt, collections=[coll], collectionTypes={CollectionType.CALIBRATION}
            ):
                have.add(str(assoc.ref.id))
        groups: dict[tuple[str | None, str | None], list[str]] = defaultdict(list)
        for c in plan.certifications:
            if c.collection == coll and site in c.sites and c.id not in have:
                groups[(c.begin, c.end)].append(c.id)
        for (begin, end), ids in groups.items():
            ts = Timespan(
                Time(begin, format="isot", scale="tai") if begin else None,
                Time(end, format="isot", scale="tai") if end else None,
            )
            butler.registry.certify(coll, butler.get_many_datasets(ids), ts)
            certified += len(ids)
    chains = 0
    for name, children in plan.chains.items():
        butler.collections.register(name, CollectionType.CHAINED)
        existing = [c for c in children if _exists(butler, c)]
        if list(butler.collections.get_info(name).children) != existing:
            butler.collections.redefine_chain(name, existing)
            chains += 1
    return {"certified": certified, "chains": chains}
