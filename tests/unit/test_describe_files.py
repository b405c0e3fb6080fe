"""Gather and redistribution describe their datasets as files from the datastore's records in bulk.

A real (temporary) Butler repository with files written by ``Butler.put``: the bulk description
gives each dataset the same LFN and size as the per-file way (``getURI`` and ``stat`` per file),
page after page, without asking for a URI or touching a file; a dataset without a file is named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from multisite_nb.adapters.butler import datastore
from multisite_nb.adapters.butler.datastore import describe_file, describe_files
from multisite_nb.domain.errors import PlanError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def butler(tmp_path: Path) -> Any:
    """A repository holding 7 ``thing`` datasets as files (two RUNs)."""
    from lsst.daf.butler import Butler, DatasetType

    root = tmp_path / "repo"
    Butler.makeRepo(str(root))
    b = Butler.from_config(str(root), writeable=True)
    reg = b.registry
    reg.insertDimensionData("instrument", {"name": "Cam", "detector_max": 100, "class_name": "x.Y"})
    reg.insertDimensionData("detector", *({"instrument": "Cam", "id": i, "full_name": f"d{i}"} for i in range(7)))
    reg.registerDatasetType(
        DatasetType("thing", ["instrument", "detector"], "StructuredDataDict", universe=reg.dimensions)
    )
    for run in ("run/0", "run/1"):
        reg.registerRun(run)
    for d in range(7):
        b.put({"detector": d, "pad": "x" * (10 * d)}, "thing", instrument="Cam", detector=d, run=f"run/{d % 2}")
    yield b
    b.close()


def test_bulk_description_equals_the_per_file_way_page_by_page(butler: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    refs = sorted(
        butler.query_datasets("thing", collections=["run/0", "run/1"], explain=False),
        key=lambda r: r.dataId["detector"],
    )
    assert len(refs) == 7
    expected = [describe_file(butler, r, ["SITE"]).model_dump() | {"adler32": None} for r in refs]

    monkeypatch.setattr(datastore, "PAGE", 3)  # three pages: 3 + 3 + 1

    def no_uri(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("getURI asked per file")

    monkeypatch.setattr(butler, "getURI", no_uri)
    got = describe_files(butler, refs, ["SITE"])
    assert [f.model_dump() for f in got] == expected
    assert len({f.size for f in got}) == 7 and all(f.adler32 is None for f in got)  # read at registration


def test_sizes_come_from_the_records_not_the_disk(butler: Any) -> None:
    (ref,) = butler.query_datasets(
        "thing", collections=["run/0", "run/1"], where="instrument = 'Cam' AND detector = 3", explain=False
    )
    path = Path(butler.getURI(ref).ospath)
    size = path.stat().st_size
    path.write_bytes(b"")  # the file changes on disk after the Butler recorded it
    (described,) = describe_files(butler, [ref], ["SITE"])
    assert described.size == size and described.lfn == str(path.relative_to(butler._datastore.root.ospath))


def test_a_dataset_without_a_file_is_named(butler: Any) -> None:
    (ref,) = butler.query_datasets(
        "thing", collections=["run/0", "run/1"], where="instrument = 'Cam' AND detector = 5", explain=False
    )
    butler.pruneDatasets([ref], disassociate=False, unstore=True, purge=False)  # registered, no file
    with pytest.raises(PlanError, match=r"1 thing dataset\(s\) have no file in the datastore"):
        describe_files(butler, [ref], ["SITE"])
