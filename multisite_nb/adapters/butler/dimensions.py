"""Dimension records: which a set of data IDs needs, and their files (Rubin's ``dim_file``).

Written and read with libyaml in daf_butler's own export format and YAML tags.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lsst.daf.butler import Butler, DimensionRecord

from multisite_nb.adapters.butler.queries import BIND_CHUNK, chunked
from multisite_nb.domain.queries import GOVERNORS


def _records_loader() -> type | None:
    """libyaml's safe loader with the constructors daf_butler's import gives PyYAML's (times,
    timespans, regions, UUIDs): the same documents to the same objects, parsed in C. None without
    libyaml."""
    import lsst.daf.butler.transfers  # noqa: F401 - registers daf_butler's YAML tags on SafeLoader
    import yaml

    if not getattr(yaml, "__with_libyaml__", False):
        return None

    class _RecordsLoader(yaml.CSafeLoader):
        pass

    _RecordsLoader.yaml_constructors = dict(yaml.SafeLoader.yaml_constructors)
    _RecordsLoader.yaml_multi_constructors = dict(yaml.SafeLoader.yaml_multi_constructors)
    return _RecordsLoader


def _records_dumper() -> type:
    """libyaml's emitter with the representers daf_butler and sphgeom give PyYAML's ``Dumper``;
    PyYAML's own ``Dumper`` without libyaml."""
    import lsst.daf.butler.transfers  # noqa: F401 - registers daf_butler's YAML representers
    import yaml

    if not getattr(yaml, "__with_libyaml__", False):
        return yaml.Dumper

    class _RecordsDumper(yaml.CDumper):
        pass

    _RecordsDumper.yaml_representers = dict(yaml.Dumper.yaml_representers)
    _RecordsDumper.yaml_multi_representers = dict(yaml.Dumper.yaml_multi_representers)
    return _RecordsDumper


def export_dimension_records(butler: Butler, records: Mapping[str, Sequence[DimensionRecord]], path: Path) -> int:
    """Write dimension records as daf_butler's YAML export (Rubin's ``dim_file``), atomically;
    returns how many.

    The document is the one ``Butler.export`` writes (its header and blocks come from daf_butler's
    YAML export backend), emitted by libyaml instead of PyYAML's pure-Python emitter: ~35 s for
    the records of 16,000 raws, most of a shipment's registration. Any daf_butler import reads it.
    """
    import io

    import yaml
    from lsst.daf.butler.transfers import YamlRepoExportBackend

    universe = butler.dimensions
    blocks = YamlRepoExportBackend(io.StringIO(), universe)
    n = 0
    for element in universe.sorted(records):
        blocks.saveDimensionData(element, *records[element.name])
        n += len(records[element.name])
    header = io.StringIO()
    YamlRepoExportBackend(header, universe).finish()  # an empty export: description, versions
    document = yaml.safe_load(header.getvalue())
    document["data"] = blocks.data
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w") as stream:
        yaml.dump(document, stream, Dumper=_records_dumper(), sort_keys=False)
    tmp.replace(path)
    return n


def import_dimension_records(butler: Butler, path: Path) -> int | None:
    """Import a file of dimension records exported by daf_butler (Rubin's ``dim_file``); returns
    how many records it holds (None when it went through ``Butler.import_``).

    ``Butler.import_`` parses YAML with PyYAML's pure-Python parser: ~40 s for the records of
    16,000 raws, most of a shipment's ingest. A file holding only dimension records, written
    for this repository's dimension universe, is read here with libyaml's parser instead (same
    constructors, ~10x faster) and inserted element by element in the universe's order, records
    already there kept (as ``import_`` does), in one transaction. Any other file (other content,
    another universe or format version) goes through ``Butler.import_`` unchanged.
    """
    import datetime

    import astropy.time
    import yaml

    loader = _records_loader()
    if loader is not None:
        with open(path) as stream:
            wrapper = yaml.load(stream, Loader=loader)  # noqa: S506 - a safe loader (CSafeLoader)
        universe = butler.dimensions
        same_universe = (
            str(wrapper.get("version", "")).startswith("1.")
            and wrapper.get("universe_version") == universe.version
            and wrapper.get("universe_namespace") == universe.namespace
        )
        blocks = wrapper.get("data") or []
        if same_universe and all(b.get("type") == "dimension" for b in blocks):
            records: dict[Any, list[DimensionRecord]] = {}
            for block in blocks:
                element = universe[block["element"]]
                for rec in block["records"]:
                    for key, value in rec.items():
                        if isinstance(value, datetime.datetime):  # older exports' native timestamps
                            rec[key] = astropy.time.Time(value, scale="utc")
                records.setdefault(element, []).extend(element.RecordClass(**rec) for rec in block["records"])
            with butler.transaction():
                for element in universe.sorted(records):
                    butler.registry.insertDimensionData(element, *records[element], skip_existing=True)
            return sum(len(v) for v in records.values())
    butler.import_(filename=str(path), skip_dimensions=None)
    return None


def export_records(butler: Butler, values: Mapping[str, set[Any]], path: Path) -> int:
    """Export every dimension record a set of data-ID values needs (:func:`records_needed`) to a
    YAML file. Returns the number of records written."""
    return export_dimension_records(butler, records_needed(butler, values), path)


def records_needed(butler: Butler, values: Mapping[str, set[Any]]) -> dict[str, list[Any]]:
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


def _add_implied(butler: Butler, values: dict[str, set[Any]]) -> None:
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


def _records(
    butler: Butler, element: str, constrained: Mapping[str, set[Any]], values: Mapping[str, set[Any]]
) -> list[DimensionRecord]:
    """Records of ``element`` whose required values are all in ``constrained``.

    Governor dimensions (instrument, skymap) must be constrained by equality, so the query
    runs once per combination of their values; the others go in ``IN`` terms.
    """
    import itertools

    terms, bind = [], {}
    for i, (d, vs) in enumerate(sorted((d, vs) for d, vs in constrained.items() if d not in GOVERNORS)):
        bind[f"v{i}"] = sorted(vs)
        terms.append(f"{d} IN (v{i})")
    # every id list bound a chunk at a time, all of them together within the databases' limits on
    # bound parameters; each combination of chunks is a distinct set of records
    size = max(1, BIND_CHUNK // max(1, len(bind)))
    names = sorted(bind)
    chunk_sets = itertools.product(*[list(chunked(bind[k], size)) for k in names])
    binds = [dict(zip(names, parts, strict=True)) for parts in chunk_sets]
    governors = sorted(g for g in GOVERNORS if g in constrained or (g in values and g in _required(butler, element)))
    combos = itertools.product(*[sorted(values.get(g) or constrained.get(g) or []) for g in governors])
    out = []
    for combo in combos:
        for part in binds:
            out.extend(
                butler.query_dimension_records(
                    element,
                    where=" AND ".join(terms),
                    bind=part,
                    limit=None,
                    explain=False,
                    **dict(zip(governors, combo, strict=True)),
                )
            )
    return out


def _required(butler: Butler, element: str) -> set[str]:
    return {d.name for d in butler.dimensions[element].required}


def _content_name(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def export_records_file(
    butler: Butler, values: Mapping[str, set[Any]], staging: Path, name: str, root: Path
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
