"""Registering a shipment where its files sit: records first, then the data files with their sidecars.

The dimension records the destination needs travel as files of their own (Rubin's ``dim_file``),
one per part of the shipment; the data files are registered at the source RSE (LFN = path relative
to the RSE root) with Rubin's ``rubin_butler`` / ``rubin_sidecar`` metadata, as
``lsst-rucio-register`` does, a part at a time, attached to a dataset (a large shipment: a
container of datasets).
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lsst.daf.butler import Butler
from lsst.rucio.register.data_type import DataType
from lsst.rucio.register.rubin_meta import RubinMeta

from multisite_nb.adapters.butler.dimensions import export_records_file
from multisite_nb.adapters.files import adler32_many, adler32_of
from multisite_nb.adapters.rucio.ops import FileDid, RucioOps
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import PlanError
from multisite_nb.domain.naming import shard_dataset
from multisite_nb.domain.plan import PlannedFile
from multisite_nb.domain.queries import GOVERNORS
from multisite_nb.domain.records import ShipmentOutcome
from multisite_nb.phases.transfer.rules import rule_for
from multisite_nb.phases.transfer.shipment import Shipment, rse_root, values_of

SIDECAR_QUERY_FILES = 5_000  # files per sidecar query: bounds each bound IN list of data-ID values


def sidecar_refs(butler: Butler, files: Iterable[PlannedFile]) -> dict[str, Any]:
    """The expanded ``DatasetRef`` (with dimension records) of each planned file, by dataset id.

    One registry query per (dataset type, RUN collection, governor values) rather than one per
    file, bounded to the files' own data-ID values: each other dimension of the type in an
    ``IN`` list of bound values (a superset of the files, never the whole RUN of a data
    release). Datasets the Butler does not hold are simply absent from the answer.
    """
    wanted: dict[tuple[str, str, tuple[tuple[str, Any], ...]], list[PlannedFile]] = defaultdict(list)
    for f in files:
        governors = tuple(sorted((k, v) for k, v in f.data_id.items() if k in GOVERNORS))
        wanted[(f.dataset_type, f.run, governors)].append(f)
    found: dict[str, Any] = {}
    for (dataset_type, run, governors), everything in wanted.items():
        for start in range(0, len(everything), SIDECAR_QUERY_FILES):
            group = everything[start : start + SIDECAR_QUERY_FILES]
            found.update(_expanded_refs(butler, dataset_type, run, dict(governors), group))
    return found


def _expanded_refs(
    butler: Butler, dataset_type: str, run: str, governors: dict[str, Any], group: Sequence[PlannedFile]
) -> Iterator[tuple[str, Any]]:
    """(id, expanded ref) of the files of ``group`` found in ``run``: one query, each data-ID
    dimension bound to the group's values."""
    from lsst.daf.butler import MissingCollectionError, MissingDatasetTypeError

    ids = {f.id for f in group}
    values: dict[str, set[Any]] = defaultdict(set)
    for f in group:
        for k, v in f.data_id.items():
            if k not in GOVERNORS:
                values[k].add(v)
    names = sorted(values)
    try:
        refs = butler.query_datasets(
            dataset_type,
            collections=run,
            find_first=False,
            with_dimension_records=True,
            where=" AND ".join(f"{name} IN (v{i})" for i, name in enumerate(names)),
            bind={f"v{i}": sorted(values[name]) for i, name in enumerate(names)},
            data_id=governors,
            limit=None,
            explain=False,
        )
    except (MissingCollectionError, MissingDatasetTypeError):
        return
    for ref in refs:
        if str(ref.id) in ids:
            yield str(ref.id), ref


def _fill_checksums(root: Path, files: Sequence[PlannedFile]) -> None:
    """Adler-32 of the files that have none yet (the plan takes sizes from the datastore records but
    reads no file), read at the source RSE. Only files Rucio does not know yet get here: Rucio needs
    a checksum to register a replica."""
    todo = [f for f in files if not f.adler32]
    for f, value in zip(todo, adler32_many([root / f.lfn for f in todo]), strict=True):
        f.adler32 = value


def register_shipment(
    campaign: Campaign, ops: RucioOps, source_butler: Butler, shipment: Shipment, outcome: ShipmentOutcome
) -> None:
    """Register the records files and the data files at the source RSE, attach them, and make the
    records' rule. The data files' rules (at the destination, and the pin at the source) are
    :func:`create_data_rule` and :func:`pin_source`'s."""
    src = campaign.site(shipment.source)
    dest = campaign.site(shipment.dest)
    src_root = Path(rse_root(campaign, shipment.source))

    # 1. dimension records, a file per part of the shipment (the records its files' data IDs need)
    #    plus one of the shipment-wide values: memory and each file stay bounded at any shipment
    #    size. Files are content-addressed, so a re-run with the same content is a no-op.
    t0 = time.monotonic()
    limit = campaign.manifest.rucio.max_files_per_dataset
    staging = src_root / campaign.output_prefix / "dimensions" / shipment.dest
    shipment_wide = [values_of([], shipment.extra_values)] if shipment.extra_values else []
    records = []
    per_part = (values_of(part, {}, shipment.value_links) for part in shipment.parts(limit))
    for part_values in itertools.chain(shipment_wide, per_part):
        lfn = export_records_file(source_butler, part_values, staging, shipment.name, src_root)
        if lfn is not None and lfn not in outcome.records_files:
            outcome.records_files.append(lfn)
            path = src_root / lfn
            kind = RubinMeta(rubin_butler=DataType.DIM_FILE).model_dump()
            records.append(FileDid(lfn, path.stat().st_size, adler32_of(path), kind))
    ops.ensure_dataset(shipment.records_dataset)
    ops.add_replicas(src.rse, records)
    ops.set_metadata(records)
    ops.attach(shipment.records_dataset, [r.name for r in records])
    outcome.records_rule_id, _ = rule_for(
        campaign, ops, shipment, shipment.records_dataset, dest.rse, "dimension records"
    )
    outcome.seconds["records"] = time.monotonic() - t0

    # 2. data files with their sidecars; a large shipment is a container of datasets of at most
    #    `max_files_per_dataset` files (Rucio's practice: bounded datasets, one rule on the container),
    #    registered one such part at a time (the expanded refs and sidecars of one part in memory)
    t0 = time.monotonic()
    kind_now = ops.did_type(shipment.name)  # an earlier run's choice stands
    sharded = kind_now == "CONTAINER" if kind_now else len(shipment.files) > limit
    known = ops.contents(shipment.name) if kind_now else {}  # registered and attached already
    if sharded:
        ops.ensure_container(shipment.name)
    else:
        ops.ensure_dataset(shipment.name)
    # the Butler side of part i+1 (expanded refs, sidecars, checksums) is made while a worker
    # thread has Rucio register part i: the server's work and ours overlap, and Rucio still sees
    # the parts one after another, each part in the container before its files
    added_n = 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rucio-register") as rucio:
        pending: Future[int] | None = None
        try:
            for i, chunk in enumerate(shipment.parts(limit)):
                if pending is not None and pending.done():  # a failed part stops the next one early
                    added_n += pending.result()
                    pending = None
                part = shard_dataset(shipment.name, i) if sharded else shipment.name
                dids = _part_dids(source_butler, shipment, src_root, chunk, known, outcome)
                if pending is not None:
                    added_n += pending.result()
                container = shipment.name if sharded else None
                pending = rucio.submit(_catalogue_part, ops, src.rse, dids, known, part, container, outcome)
            if pending is not None:
                added_n += pending.result()
        except Exception as exc:  # Rucio's side of the previous part may have failed too: say so
            if pending is not None and (other := pending.exception()) is not None and other is not exc:
                exc.add_note(f"Rucio's side of the part before also failed: {type(other).__name__}: {other}")
            raise
    outcome.newly_registered = added_n
    outcome.seconds["register"] = time.monotonic() - t0
    outcome.registered = len(shipment.files)


def _part_dids(
    source_butler: Butler,
    shipment: Shipment,
    src_root: Path,
    files: Sequence[PlannedFile],
    known: Mapping[str, tuple[int, str]],
    outcome: ShipmentOutcome,
) -> list[FileDid]:
    """The Butler side of registering one part: each file Rucio does not know yet, with its size,
    adler32 and Rubin metadata (the expanded ref as sidecar). Files in ``known`` (registered and
    attached already) are checked to have the planned size and left out. The time goes to
    ``outcome.seconds["sidecars"]``."""
    t0 = time.monotonic()
    todo = []
    for f in files:
        registered = known.get(f.lfn)
        if registered is None:
            todo.append(f)
        elif registered[0] != f.size:
            raise PlanError(
                f"{shipment.name}: {f.lfn} is registered in Rucio with {registered[0]} bytes, the plan says {f.size}"
            )
    if not todo:
        return []
    refs = sidecar_refs(source_butler, todo)
    _fill_checksums(src_root, todo)
    dids = []
    for f in todo:
        ref = refs.get(f.id)
        if ref is None:
            raise PlanError(
                f"{shipment.name}: dataset {f.id} ({f.dataset_type}) is not in the {shipment.source} Butler"
            )
        kind = DataType.RAW_FILE if shipment.raw_inputs and "exposure" in f.data_id else DataType.DATA_PRODUCT
        meta = RubinMeta(rubin_butler=kind, rubin_sidecar=ref.to_json())  # Rubin's own metadata model
        dids.append(FileDid(f.lfn, f.size, str(f.adler32), meta.model_dump()))
    outcome.seconds["sidecars"] = outcome.seconds.get("sidecars", 0.0) + time.monotonic() - t0
    return dids


def _catalogue_part(
    ops: RucioOps,
    rse: str,
    dids: Sequence[FileDid],
    known: Mapping[str, tuple[int, str]],
    dataset: str,
    container: str | None,
    outcome: ShipmentOutcome,
) -> int:
    """The Rucio side of registering one part: its ``dataset`` (attached to ``container`` first, when
    the shipment is one), the replicas with their metadata, the files attached. Returns how many
    replicas this call registered; the time goes to ``outcome.seconds["catalogue"]``."""
    t0 = time.monotonic()
    if container is not None:  # in the container before its files: a re-run after a stop finds what was done
        ops.ensure_dataset(dataset)
        ops.attach_datasets(container, [dataset])
    if not dids:
        return 0
    added = set(ops.add_replicas(rse, dids, known=known))  # new file DIDs get their metadata with them
    # a file registered before (by another shipment: a calibration every site needs) has its
    # metadata already, and its DID may be locked by a daemon filling that rule; one registered by
    # an interrupted run of an older toolkit (replica added, metadata not yet set) gets it now
    others = [d.name for d in dids if d.name not in added]
    have = ops.get_metadata_bulk(others) if others else {}
    ops.set_metadata([d for d in dids if d.name in have and not have[d.name].get("rubin_sidecar")])
    ops.attach(dataset, [d.name for d in dids])
    outcome.seconds["catalogue"] = outcome.seconds.get("catalogue", 0.0) + time.monotonic() - t0
    return len(added)
