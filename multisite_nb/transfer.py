"""Register → rule → watch → ingest: moving Butler datasets between sites with Rucio.

One *shipment* moves a set of Butler datasets from a source site to a destination site:

1. the dimension records the destination needs are exported from the source Butler to
   YAML files (Rubin's ``dim_file``; one per part of the shipment, bounded), registered in
   Rucio and moved *first*;
2. the data files are registered where they sit at the source (``add_replicas`` on the
   source RSE, LFN = path relative to the RSE root, DID metadata ``rubin_butler`` and
   ``rubin_sidecar`` = the serialized ``DatasetRef``, as Rubin's ``lsst-rucio-register``
   does), attached to a dataset, and one replication rule moves that dataset;
3. the rules are watched to completion (STUCK rules come back with Rucio's reason);
4. what arrived is ingested in place into the destination Butler with the same dataset
   UUIDs, read from the sidecars.

Every step reads the real state first, so a second run creates no rule and no dataset
twice. Placement, gather and redistribution are all shipments.
"""

from __future__ import annotations

import hashlib
import itertools
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lsst.rucio.register.data_type import DataType
from lsst.rucio.register.rubin_meta import RubinMeta

from .config import Campaign
from .errors import ConfigError, MsnbError, PlanError
from .naming import placement_dataset, records_dataset, shard_dataset
from .placement import PlannedFile
from .plan_files import FileTableSource
from .records import RuleRecord, RuleState, ShipmentOutcome
from .rucio_ops import FileDid, RucioOps

if TYPE_CHECKING:
    from lsst.daf.butler import Butler

__all__ = [
    "Shipment",
    "ShipmentOutcome",
    "export_records",
    "records_needed",
    "register_shipment",
    "sidecar_refs",
    "watch_rules",
    "ingest_shipment",
    "run_shipments",
]

GOVERNORS = ("instrument", "skymap")
INGEST_PART = 10_000  # files ingested per Butler transaction (and held in memory at once)
SIDECAR_QUERY_FILES = 5_000  # files per sidecar query: bounds each bound IN list of data-ID values


@dataclass
class Shipment:
    """Datasets to move from one site to another under one Rucio dataset name."""

    name: str  # Rucio dataset name of the data files (the records get "<name>.dimensions")
    source: str
    dest: str
    files: Sequence[PlannedFile] | FileTableSource  # a table: read a part at a time
    extra_values: Mapping[str, Iterable[Any]] = field(default_factory=dict)  # shipment-wide, exported once
    raw_inputs: bool = False  # placement of pipeline inputs: observations are Rubin "raw_file"s
    # (from, to, mapping): each part's values of dimension ``to`` are the mapped values of its
    # files' ``from`` values (a placement: exposure -> visit, from the plan)
    value_links: Sequence[tuple[str, str, Mapping[Any, Any]]] = ()

    @property
    def records_dataset(self) -> str:
        return records_dataset(self.name)

    def parts(self, size: int) -> Iterator[Sequence[PlannedFile]]:
        """The files in consecutive parts of ``size``: what registration and ingest hold at a time."""
        if isinstance(self.files, FileTableSource):
            yield from self.files.parts(size)
        else:
            for start in range(0, len(self.files), size):
                yield self.files[start : start + size]


# -- dimension records ------------------------------------------------------------------


def _values_of(
    files: Iterable[PlannedFile],
    extra: Mapping[str, Iterable[Any]],
    links: Sequence[tuple[str, str, Mapping[Any, Any]]] = (),
) -> dict[str, set[Any]]:
    """The data-ID values of ``files`` by dimension, with ``extra`` values and those ``links`` map to."""
    values: dict[str, set[Any]] = defaultdict(set)
    for f in files:
        for k, v in f.data_id.items():
            values[k].add(v)
    for k, vs in extra.items():
        values[k].update(vs)
    for source, target, mapping in links:
        linked = {mapping[v] for v in values.get(source, ()) if v in mapping}
        if linked:
            values[target].update(linked)
    return values


def export_records(butler: Any, values: Mapping[str, set[Any]], path: Path) -> int:
    """Export every dimension record a set of data-ID values needs (:func:`records_needed`) to a
    YAML file. Returns the number of records written."""
    from .butler_ops import export_dimension_records

    return export_dimension_records(butler, records_needed(butler, values), path)


def records_needed(butler: Any, values: Mapping[str, set[Any]]) -> dict[str, list[Any]]:
    """Every dimension record a set of data-ID values needs, by element name.

    An element is exported when all its required dimensions have values (or are governors
    such as instrument); its records are those whose required values are all in ``values``.
    An element constrained only in part tells the values of its other dimensions (a visit's
    visit systems, a visit's exposures), except the dimension whose records it belongs to
    (daf_butler's ``populated_by``): a detector never brings in the visits that saw it, nor a
    visit system all its visits. Records of implied dimensions (physical filters, day_obs,
    groups) follow automatically.
    """
    universe = butler.dimensions
    values = {k: set(v) for k, v in values.items()}
    _add_implied(butler, values)
    elements = [e for e in universe.getStaticElements() if e.has_own_table]
    # pass 1: elements constrained only in part (e.g. visit_system_membership by visit) tell
    # the values of their other dimensions (the visit systems), so those records go too
    for element in elements:
        req = [d.name for d in element.required]
        owner = getattr(element.populated_by, "name", None)
        constrained = {d: values[d] for d in req if values.get(d)}
        missing = [d for d in req if d not in constrained and d not in GOVERNORS]
        if missing and owner not in missing and any(d not in GOVERNORS for d in constrained):
            for rec in _records(butler, element.name, constrained, values):
                for d in missing:
                    values.setdefault(d, set()).add(rec.dataId[d])
    _add_implied(butler, values)  # of the values pass 1 found (a visit's exposures: their groups)
    # pass 2: every element whose required dimensions all have values
    chosen: dict[str, list[Any]] = {}
    for element in elements:
        req = [d.name for d in element.required]
        constrained = {d: values[d] for d in req if values.get(d)}
        if any(d not in constrained and d not in GOVERNORS for d in req):
            continue
        recs = list(_records(butler, element.name, constrained, values))
        if recs:
            chosen[element.name] = recs
    return chosen


def _add_implied(butler: Any, values: dict[str, set[Any]]) -> None:
    """Add the values of the dimensions ``values``' dimensions imply (exposure -> physical_filter,
    day_obs, group), until nothing new comes."""
    universe = butler.dimensions
    static = universe.getStaticDimensions().names
    done: dict[str, set[Any]] = {}
    todo = [k for k in values if k in static]
    while todo:
        name = todo.pop()
        dim = universe[name]
        new = values[name] - done.get(name, set())
        if not new or not dim.implied:
            continue
        done.setdefault(name, set()).update(new)
        for rec in _records(butler, name, {name: new}, values):
            for imp in dim.implied:
                v = getattr(rec, imp.name, None)
                if v is not None and v not in values.setdefault(imp.name, set()):
                    values[imp.name].add(v)
                    todo.append(imp.name)


def _records(butler: Any, element: str, constrained: Mapping[str, set[Any]], values: Mapping[str, set[Any]]):
    """Records of ``element`` whose required values are all in ``constrained``.

    Governor dimensions (instrument, skymap) must be constrained by equality, so the query
    runs once per combination of their values; the others go in ``IN`` terms.
    """
    import itertools

    terms, bind = [], {}
    for i, (d, vs) in enumerate(sorted((d, vs) for d, vs in constrained.items() if d not in GOVERNORS)):
        bind[f"v{i}"] = sorted(vs)
        terms.append(f"{d} IN (v{i})")
    governors = sorted(g for g in GOVERNORS if g in constrained or (g in values and g in _required(butler, element)))
    combos = itertools.product(*[sorted(values.get(g) or constrained.get(g) or []) for g in governors])
    out = []
    for combo in combos:
        out.extend(
            butler.query_dimension_records(
                element,
                where=" AND ".join(terms),
                bind=bind,
                limit=None,
                explain=False,
                **dict(zip(governors, combo, strict=True)),
            )
        )
    return out


def _required(butler: Any, element: str) -> set[str]:
    return {d.name for d in butler.dimensions[element].required}


def _content_name(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _export_records_file(
    butler: Any, values: Mapping[str, set[Any]], staging: Path, name: str, root: Path
) -> str | None:
    """Export the records ``values`` need to ``staging/<name>.<content hash>.yaml``; returns its path
    relative to ``root`` (the LFN), or None when there is no record to export."""
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f".{name}.yaml"
    if not export_records(butler, values, tmp):
        tmp.unlink(missing_ok=True)
        return None
    final = staging / f"{name}.{_content_name(tmp)}.yaml"
    if final.exists():
        tmp.unlink()
    else:
        tmp.replace(final)
    return str(final.relative_to(root))


# -- the steps --------------------------------------------------------------------------


def sidecar_refs(butler: Any, files: Iterable[PlannedFile]) -> dict[str, Any]:
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
    butler: Any, dataset_type: str, run: str, governors: dict[str, Any], group: Sequence[PlannedFile]
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
    from .placement import adler32_many

    todo = [f for f in files if not f.adler32]
    for f, value in zip(todo, adler32_many([root / f.lfn for f in todo]), strict=True):
        f.adler32 = value


def register_shipment(
    campaign: Campaign, ops: RucioOps, source_butler: Any, shipment: Shipment, outcome: ShipmentOutcome
) -> None:
    """Register the records files and the data files at the source RSE, attach them, and make the
    records' rule. The data files' rules (at the destination, and the pin at the source) are
    :func:`create_data_rule` and :func:`pin_source`'s."""
    from .placement import adler32_of

    src = campaign.site(shipment.source)
    dest = campaign.site(shipment.dest)
    src_root = Path(_rse_root(campaign, shipment.source))

    # 1. dimension records, a file per part of the shipment (the records its files' data IDs need)
    #    plus one of the shipment-wide values: memory and each file stay bounded at any shipment
    #    size. Files are content-addressed, so a re-run with the same content is a no-op.
    t0 = time.monotonic()
    limit = campaign.manifest.rucio.max_files_per_dataset
    staging = src_root / campaign.output_prefix / "dimensions" / shipment.dest
    shipment_wide = [_values_of([], shipment.extra_values)] if shipment.extra_values else []
    records = []
    per_part = (_values_of(part, {}, shipment.value_links) for part in shipment.parts(limit))
    for part_values in itertools.chain(shipment_wide, per_part):
        lfn = _export_records_file(source_butler, part_values, staging, shipment.name, src_root)
        if lfn is not None and lfn not in outcome.records_files:
            outcome.records_files.append(lfn)
            path = src_root / lfn
            kind = RubinMeta(rubin_butler=DataType.DIM_FILE).model_dump()
            records.append(FileDid(lfn, path.stat().st_size, adler32_of(path), kind))
    ops.ensure_dataset(shipment.records_dataset)
    ops.add_replicas(src.rse, records)
    ops.set_metadata(records)
    ops.attach(shipment.records_dataset, [r.name for r in records])
    outcome.records_rule_id, _ = _rule(campaign, ops, shipment, shipment.records_dataset, dest.rse, "dimension records")
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
    source_butler: Any,
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


#: Files from which a shipment's rules are asynchronous: made by Rucio's judge-injector after the
#: request returns (a rule takes the server about 1 ms a file, and a container's could not be made
#: within a request at all), while the toolkit goes on with the next shipment.
ASYNC_RULE_FILES = 1000


def _rule(
    campaign: Campaign, ops: RucioOps, shipment: Shipment, dataset: str, rse: str, what: str = ""
) -> tuple[str, bool]:
    """A rule of the shipment (none expires: its files are ingested in place). Returns (id, created).

    The data files' rules of a shipment of :data:`ASYNC_RULE_FILES` or more are asynchronous."""
    comment = f"multisite_nb campaign {campaign.name}: {shipment.name} {shipment.source}->{shipment.dest}"
    return ops.ensure_rule(
        dataset,
        rse,
        lifetime_s=None,
        activity=campaign.config.activity,
        comment=f"{comment} ({what})" if what else comment,
        asynchronous=True if dataset == shipment.name and len(shipment.files) >= ASYNC_RULE_FILES else None,
    )


def pin_source(campaign: Campaign, ops: RucioOps, shipment: Shipment, outcome: ShipmentOutcome) -> None:
    """The data files' rule at the source RSE: the source site's Butler holds them in place, and a
    replica no rule protects is the first a reaper removes under space pressure."""
    src = campaign.site(shipment.source).rse
    t0 = time.monotonic()
    outcome.source_rule_id, _ = _rule(campaign, ops, shipment, shipment.name, src, "pins the source copies")
    outcome.seconds["rule"] = outcome.seconds.get("rule", 0.0) + time.monotonic() - t0


def create_data_rule(campaign: Campaign, ops: RucioOps, shipment: Shipment, outcome: ShipmentOutcome) -> None:
    """The rule that moves the data files (after the records have arrived)."""
    dest = campaign.site(shipment.dest).rse
    t0 = time.monotonic()
    outcome.rule_id, outcome.rule_created = _rule(campaign, ops, shipment, shipment.name, dest)
    outcome.seconds["rule"] = outcome.seconds.get("rule", 0.0) + time.monotonic() - t0


def smallest_first(shipments: Sequence[Shipment]) -> list[Shipment]:
    """The order to make the shipments' rules in: a small shipment's rule is made within its request,
    a large one's by Rucio's judge-injector after it (see :data:`ASYNC_RULE_FILES`). Made last, the
    large ones' locks are filled while the others' rules already stand, not while they are being
    made: on a catalogue with one writer (the SQLite world) a 16,000-file container's locks held a
    5,000-file rule's request for 29 s, and the next site's registration for 20 s."""
    return sorted(shipments, key=lambda s: len(s.files))


def watch_rules(
    ops: RucioOps,
    rule_ids: Sequence[str],
    *,
    timeout_s: float = 600,
    poll_s: float = 1.0,
    progress: bool = True,
    desc: str = "rules",
) -> dict[str, RuleRecord]:
    """Poll rules until each is OK or STUCK, or no lock has progressed for ``timeout_s``; show progress.

    The limit is on a stall, not on the whole wait: a data-release shipment replicating steadily
    for hours is not stuck, one whose locks stop moving is.
    """
    from tqdm.auto import tqdm

    states: dict[str, RuleRecord] = {}
    deadline = time.monotonic() + timeout_s
    bar = None
    last_done = -1
    while True:
        states = {rid: ops.rule(rid) for rid in rule_ids}
        total = sum(s.total for s in states.values())
        done = sum(s.locks_ok for s in states.values())
        if done > last_done:  # progress: the stall clock starts again
            last_done, deadline = done, time.monotonic() + timeout_s
        if progress:
            if bar is None:
                bar = tqdm(total=total, desc=desc, unit="file", leave=True, mininterval=1.0)
            bar.total = total
            bar.n = done
            bar.set_postfix_str(", ".join(f"{s.state}" for s in states.values())[:60], refresh=True)
        if all(s.state.settled for s in states.values()) or time.monotonic() > deadline:
            break
        time.sleep(poll_s)
    if bar is not None:
        bar.close()
    return states


def _rse_root(campaign: Campaign, site: str) -> str:
    root = campaign.site(site).rse_root
    if root is None:
        raise ConfigError(f"{campaign.manifest_path}: key 'sites.{site}.rse_root' is needed to ingest in place")
    return root


def ingest_shipment(
    campaign: Campaign, ops: RucioOps, dest_butler: Any, shipment: Shipment, outcome: ShipmentOutcome
) -> None:
    """Import the records, then ingest the arrived files in place with the planned UUIDs.

    The refs are built in bulk from the plan (dataset type, data ID, RUN, id) and the records
    just imported; each (dataset type, RUN) takes its type's definition from one file's Rucio
    sidecar, checked against the plan. No sidecar is parsed per file (~1 ms each).
    """
    from lsst.daf.butler import CollectionType, DataCoordinate, DatasetRef, FileDataset
    from lsst.daf.butler.registry import ConflictingDefinitionError

    from .butler_ops import import_dimension_records

    root = Path(_rse_root(campaign, shipment.dest))
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
    ops: RucioOps, universe: Any, files: Sequence[PlannedFile], shipment: Shipment
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


def _present(butler: Any, files: Sequence[PlannedFile], shipment: Shipment) -> set[str]:
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


def place_data(
    campaign: Campaign,
    plan: Any,
    *,
    progress: bool = True,
    timeout_s: float = 900,
    log: Callable[[str], None] = print,
    sites: Sequence[str] | None = None,
) -> list[ShipmentOutcome]:
    """Phase 2: one shipment per remote site from the central site, then the sites' collections.

    Parameters
    ----------
    plan
        The ``PlacementPlan`` of phase 1.
    sites
        Only these remote sites (default: all).
    """
    from .butler_ops import open_butler
    from .collisions import claim

    claim(campaign, campaign.central)  # the campaign acts here from now on: its output prefix is its own
    refused: list[ShipmentOutcome] = []
    ready = []
    for site in sites or campaign.remote_sites:
        try:
            claim(campaign, site)
            ready.append(site)
        except Exception as exc:  # that site's part fails; the others go on
            refused.append(
                ShipmentOutcome(
                    name=placement_dataset(campaign, site),
                    dest=site,
                    error=f"claim {campaign.output_prefix}/ at {site}: {exc}"[:500],
                )
            )
    shipments = [
        Shipment(
            name=placement_dataset(campaign, site),
            source=campaign.central,
            dest=site,
            files=plan.site_source(site),
            raw_inputs=True,
            # a part's visits are its raws' exposures' (the detectors come with the raws)
            value_links=[("exposure", "visit", plan.exposure_visit)],
            extra_values={
                "tract": {u.tract for u in campaign.sky_units(site)},
                "patch": {u.patch for u in campaign.sky_units(site) if u.patch is not None},
                "skymap": {campaign.config.skymap},
                "instrument": {campaign.config.instrument},
            },
        )
        for site in ready
    ]
    outcomes = run_shipments(campaign, shipments, progress=progress, timeout_s=timeout_s, log=log)
    for o in outcomes:
        if o.error:
            continue
        try:
            with open_butler(campaign.butler_repo(o.dest), writeable=True) as butler:
                apply_collections(butler, plan, o.dest)
        except Exception as exc:  # this site's collections fail; the others stand
            o.error = f"collections at {o.dest}: {type(exc).__name__}: {exc}"
    return refused + outcomes


def apply_collections(butler: Any, plan: Any, site: str) -> dict[str, int]:
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
        existing = [c for c in children if butler.collections.query(c, include_chains=True)]
        if list(butler.collections.get_info(name).children) != existing:
            butler.collections.redefine_chain(name, existing)
            chains += 1
    return {"certified": certified, "chains": chains}


def run_shipments(
    campaign: Campaign,
    shipments: Sequence[Shipment],
    *,
    progress: bool = True,
    timeout_s: float = 900,
    log: Callable[[str], None] = print,
) -> list[ShipmentOutcome]:
    """Move a set of shipments end to end; returns one outcome per shipment.

    Every shipment is registered first, then each gets its pin at the source, smallest first (see
    :func:`smallest_first`); the records follow (all records rules watched to OK, records imported),
    then the data rules, smallest first again. Each shipment stands alone: a STUCK rule, a Butler
    that cannot be opened or an error while registering or ingesting fails that shipment (its
    outcome names the reason) while the others go on; a rerun does only what is missing.
    """
    from .butler_ops import open_butler

    ops = RucioOps.for_campaign(campaign)
    ops.ensure_scope()
    outcomes = {s.name: ShipmentOutcome(name=s.name, dest=s.dest) for s in shipments}
    butlers: dict[str, Butler] = {}

    def butler(site: str) -> Butler:
        if site not in butlers:
            butlers[site] = open_butler(campaign.butler_repo(site), writeable=True)
        return butlers[site]

    def watch(ops: RucioOps, rule_ids: list[str], desc: str) -> dict[str, RuleRecord]:
        return watch_rules(ops, rule_ids, timeout_s=timeout_s, progress=progress, desc=desc)

    def do_register(s: Shipment) -> None:
        register_shipment(campaign, ops, butler(s.source), s, outcomes[s.name])

    def do_pin(s: Shipment) -> None:
        pin_source(campaign, ops, s, outcomes[s.name])

    def do_rule(s: Shipment) -> None:
        create_data_rule(campaign, ops, s, outcomes[s.name])

    def do_ingest(s: Shipment) -> None:
        ingest_shipment(campaign, ops, butler(s.dest), s, outcomes[s.name])

    def isolated(s: Shipment, what: str, step: Callable[[Shipment], None]) -> bool:
        """Run one shipment's step; an error fails that shipment only."""
        o = outcomes[s.name]
        try:
            step(s)
            return True
        except MsnbError as exc:
            o.error = f"{what}: {exc}"
        except Exception as exc:  # a site's service failing must not stop the other sites
            o.error = f"{what}: {type(exc).__name__}: {exc}"
        log(f"{s.name}: {o.error}")
        return False

    try:
        ok = [s for s in shipments if isolated(s, "register", do_register)]
        ok = [s for s in smallest_first(ok) if isolated(s, "pin at the source", do_pin)]
        rec_states = watch(ops, [outcomes[s.name].records_rule_id or "" for s in ok], "dimension records")
        ruled = []
        for s in ok:
            o = outcomes[s.name]
            st = rec_states.get(o.records_rule_id or "")
            if st is None or st.state is not RuleState.OK:
                o.state = st.state if st else None
                o.error = f"dimension records rule {o.records_rule_id}: {st.error if st else 'not found'}"
                continue
            if isolated(s, "rule", do_rule):
                ruled.append(s)
        states = watch(ops, [outcomes[s.name].rule_id or "" for s in ruled], "data rules")
        for s in ruled:
            o = outcomes[s.name]
            st = states[o.rule_id or ""]
            o.state = st.state
            if st.state is not RuleState.OK:
                o.error = st.error or f"rule {st.state}: no lock moved for {timeout_s:.0f} s"
                log(f"{s.name}: rule {o.rule_id} {st.state}: {o.error}")
                continue
            isolated(s, f"ingest at {s.dest}", do_ingest)
        for s in ok:  # a pin the judge-injector filled meanwhile, and found it could not hold
            o = outcomes[s.name]
            pin = ops.rule(o.source_rule_id) if o.error is None and o.source_rule_id else None
            if pin is not None and pin.state.bad:
                o.error = f"pin at the source {o.source_rule_id} {pin.state}: {pin.error or 'no reason given'}"
                log(f"{s.name}: {o.error}")
    finally:
        for b in butlers.values():
            b.close()
    return list(outcomes.values())
