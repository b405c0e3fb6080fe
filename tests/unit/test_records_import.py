"""A shipment's dimension records (Rubin's ``dim_file``, a daf_butler YAML export): written by the
fast writer, the file is what ``Butler.export`` writes to any reader; imported at the destination,
the fast reader gives the registry exactly what ``Butler.import_`` gives, and files it does not
read are left to ``Butler.import_``.

Real repositories: the synthetic world's records (times, timespans, regions) exported by daf_butler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from lsst.daf.butler import Butler, CollectionType

from multisite_nb.adapters.butler.dimensions import export_dimension_records, import_dimension_records
from multisite_nb.world.butler_world import create_site_repo, dimension_records
from multisite_nb.world.synthetic import SkySpec, build_sky

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _repo(root: Path, name: str) -> Butler:
    create_site_repo(root / name, root / "rse" / name)
    return Butler.from_config(str(root / name), writeable=True)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> tuple[Path, dict[str, list[dict[str, Any]]]]:
    """A records file exported from a repository holding the synthetic world's records."""
    root = tmp_path_factory.mktemp("records")
    source = _repo(root, "source")
    records = dimension_records(build_sky(SkySpec()))
    with source.transaction():
        for element, rows in records.items():
            source.registry.insertDimensionData(element, *rows)
    path = root / "records.yaml"
    with source.export(filename=str(path), format="yaml") as out:
        for element in source.dimensions.sorted(records):
            out.saveDimensionData(element, list(source.registry.queryDimensionRecords(element.name)))
    source.close()
    return path, records


def _contents(butler: Butler, elements) -> dict[str, list[tuple]]:
    """Every record of each element, comparable: (sorted field items) with regions encoded."""
    out = {}
    for element in elements:
        rows = []
        for rec in butler.registry.queryDimensionRecords(element):
            d = rec.toDict()
            rows.append(
                tuple(
                    sorted((k, v.encode() if hasattr(v, "encode") and k == "region" else str(v)) for k, v in d.items())
                )
            )
        out[element] = sorted(rows)
    return out


def test_fast_import_gives_what_butler_import_gives(export, tmp_path: Path) -> None:
    path, records = export
    reference, fast = _repo(tmp_path, "reference"), _repo(tmp_path, "fast")
    reference.import_(filename=str(path), skip_dimensions=None)
    n = import_dimension_records(fast, path)
    assert n == sum(len(rows) for rows in records.values())
    want = _contents(reference, records)
    assert want["visit_detector_region"] and want["patch"]  # regions and timespans among them
    assert _contents(fast, records) == want
    # a second import (a re-run of the shipment) keeps what is there and adds nothing
    assert import_dimension_records(fast, path) == n
    assert _contents(fast, records) == want


def test_other_exports_go_through_butler_import(export, tmp_path: Path) -> None:
    path, records = export
    source = _repo(tmp_path, "with-collections")
    source.collections.register("some/run", CollectionType.RUN)
    other = tmp_path / "collections.yaml"
    with source.export(filename=str(other), format="yaml") as out:
        out.saveCollection("some/run")
    target = _repo(tmp_path, "target")
    assert import_dimension_records(target, other) is None  # not a records-only file: import_ read it
    assert "some/run" in target.collections.query("*")


def test_fast_export_reads_back_as_butler_export(export, tmp_path: Path) -> None:
    import yaml

    path, records = export
    source = _repo(tmp_path, "source")
    source.import_(filename=str(path), skip_dimensions=None)
    chosen = {e: list(source.registry.queryDimensionRecords(e)) for e in records}
    ours = tmp_path / "ours.yaml"
    assert export_dimension_records(source, chosen, ours) == sum(len(v) for v in chosen.values())
    # the same document as Butler.export's, parsed by PyYAML's own safe loader
    assert yaml.safe_load(ours.read_text()) == yaml.safe_load(path.read_text())
    # and daf_butler's import reads it into the same registry
    target = _repo(tmp_path, "target")
    target.import_(filename=str(ours), skip_dimensions=None)
    assert _contents(target, records) == _contents(source, records)
    assert not list(tmp_path.glob(".*partial"))  # written atomically, nothing left beside it
