"""One page of a dataset type's datasets: which sites need each, written to the plan's tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lsst.daf.butler import Butler, DatasetRef

from multisite_nb.adapters.butler.datastore import file_records
from multisite_nb.adapters.tables import FileTableWriter
from multisite_nb.domain.footprint import Footprint
from multisite_nb.domain.plan import json_value


def tract_of(mapping: dict[str, Any], fp: Footprint) -> int | None:
    """The tract of the site's a file serves: its own, or that of its visit (raws: their exposure's)."""
    if "tract" in mapping:
        return int(mapping["tract"])
    visit = mapping.get("visit")
    if visit is None and "exposure" in mapping:
        visit = fp.exposure_visit.get(mapping["exposure"])
    return fp.visit_tract.get(visit) if visit is not None else None


def plan_page(
    butler: Butler,
    refs: list[DatasetRef],
    footprints: dict[str, Footprint],
    roots: dict[str, Path],
    writer: FileTableWriter,
    observation: bool,
    calibs: dict[str, tuple[str, list[str]]],
    calibration: bool,
) -> None:
    """Find which sites need each dataset of a page; write those with their file's records."""
    universe = butler.dimensions
    group = refs[0].dataId.dimensions  # one dataset type a page: the same dimensions throughout
    required, full = list(group.required), list(group.data_coordinate_keys)
    wanted_refs = []
    for ref in refs:
        did = ref.dataId  # values as tuples, not a mapping built per data ID
        mapping = (
            dict(zip(full, did.full_values, strict=True))
            if did.hasFull()
            else dict(zip(required, did.required_values, strict=True))
        )
        wanted = [s for s, fp in footprints.items() if fp.admits_mapping(mapping, universe)]
        if wanted:
            wanted_refs.append((ref, ref.id, mapping, wanted))  # DatasetRef.id makes a new UUID at each call
    if not wanted_refs:
        return
    records = file_records(butler, [(r, i) for r, i, _, _ in wanted_refs], roots)
    name = refs[0].datasetType.name
    for ref, rid, mapping, wanted in wanted_refs:
        lfn, size = records[rid]
        sid = str(rid)
        if calibration:
            calibs[sid] = (name, wanted)
        values = ref.dataId.required_values
        writer.add(
            id=sid,
            dataset_type=name,
            run=ref.run,
            data_id={k: json_value(v) for k, v in zip(required, values, strict=True)},
            lfn=lfn,
            size=size,
            sites=wanted,
            tracts={s: tract_of(mapping, footprints[s]) for s in wanted},
            boundary=observation,
        )
