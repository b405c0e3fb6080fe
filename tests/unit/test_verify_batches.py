"""Verification read batch by batch: a site's planned files stream through the Butler and disk
checks in batches, and what is wrong is named exactly, whichever batch it falls in.

A real (temporary) Butler repository and a real folder stand in for a site; no Rucio here (the
world tests cover that layer and the whole phase).
"""

from __future__ import annotations

import uuid
import zlib
from contextlib import ExitStack
from pathlib import Path

import pytest

from multisite_nb.adapters.tables import FileColumns
from multisite_nb.domain.verification import SiteReport
from multisite_nb.phases.verify import _ButlerLayer, _check_disk

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def repo(tmp_path: Path) -> tuple[str, dict[str, list[str]]]:
    """A repository with 12 ``thing`` datasets in run/a and 1 in run/b; returns it and the ids by run."""
    from lsst.daf.butler import Butler, DatasetType

    root = tmp_path / "repo"
    Butler.makeRepo(str(root))
    butler = Butler.from_config(str(root), writeable=True)
    reg = butler.registry
    reg.insertDimensionData(
        "instrument", {"name": "Cam", "detector_max": 100, "visit_max": 10, "exposure_max": 10, "class_name": "x.Y"}
    )
    reg.insertDimensionData("detector", *({"instrument": "Cam", "id": i, "full_name": f"d{i}"} for i in range(20)))
    thing = DatasetType("thing", ["instrument", "detector"], "StructuredDataDict", universe=reg.dimensions)
    reg.registerDatasetType(thing)
    ids: dict[str, list[str]] = {}
    for run, detectors in (("run/a", range(12)), ("run/b", range(12, 13))):
        reg.registerRun(run)
        refs = reg.insertDatasets("thing", [{"instrument": "Cam", "detector": d} for d in detectors], run=run)
        ids[run] = [str(r.id) for r in refs]
    butler.close()
    return str(root), ids


def _batches(rows: list[tuple[str, str, str]], size: int) -> list[FileColumns]:
    """Planned rows (id, run, lfn) of type ``thing`` cut into batches of ``size``."""
    out = []
    for start in range(0, len(rows), size):
        part = rows[start : start + size]
        out.append(
            FileColumns(
                id=[r[0] for r in part],
                dataset_type=["thing"] * len(part),
                run=[r[1] for r in part],
                lfn=[r[2] for r in part],
                size=[4] * len(part),
                adler32=[None] * len(part),
            )
        )
    return out


def test_butler_layer_names_the_missing_and_the_misplaced_whatever_the_batch(repo) -> None:
    root, ids = repo
    stranger = str(uuid.uuid4())
    planned = [(i, "run/a", f"a/{n}.json") for n, i in enumerate(ids["run/a"])]
    planned.insert(5, (stranger, "run/a", "a/stranger.json"))  # never registered
    planned.append((ids["run/b"][0], "run/a", "a/moved.json"))  # registered, in another RUN
    planned.append((str(uuid.uuid4()), "run/none", "n/x.json"))  # a RUN the site does not have
    for size in (1, 4, 100):
        report = SiteReport("SITE", len(planned))
        with ExitStack() as stack:
            layer = _ButlerLayer(report, root, stack)
            for batch in _batches(planned, size):
                layer.check(batch)
            layer.finish()
        got = sorted((p.layer, p.kind, p.what, p.detail.split(" ")[0]) for p in report.problems)
        assert got == [
            ("butler", "missing", "a/stranger.json", "thing"),
            ("butler", "missing", "n/x.json", "thing"),
            ("butler", "wrong", "a/moved.json", "in"),
        ], size
        assert report.checked["butler"] == len(planned)
        wrong = next(p for p in report.problems if p.kind == "wrong")
        assert wrong.detail == "in run/b, planned run/a"


def test_butler_layer_that_cannot_open_is_one_unreachable_problem(tmp_path: Path) -> None:
    report = SiteReport("SITE", 3)
    with ExitStack() as stack:
        layer = _ButlerLayer(report, str(tmp_path / "no-repo"), stack)
        for batch in _batches([(str(uuid.uuid4()), "r", "x")] * 3, 2):
            layer.check(batch)
        layer.finish()
    assert [(p.layer, p.kind) for p in report.problems] == [("butler", "unreachable")]
    assert "no-repo" in report.problems[0].what


class _Catalogue:
    """Rucio's catalogue of checksums, as :meth:`RucioOps.checksums` answers (asked per batch)."""

    def __init__(self, sums: dict[str, str]) -> None:
        self.sums, self.asked = sums, []

    def checksums(self, names):
        self.asked.append(list(names))
        return {n: self.sums[n] for n in names if n in self.sums}


def test_disk_checks_each_batch_by_directory_scan_and_checksums_from_the_catalogue(tmp_path: Path) -> None:
    root = tmp_path / "rse"
    rows, sums = [], {}
    for d in range(3):
        for n in range(4):
            lfn = f"run/d{d}/f{n}.fits"
            (root / f"run/d{d}").mkdir(parents=True, exist_ok=True)
            (root / lfn).write_bytes(b"abcd")
            rows.append((str(uuid.uuid4()), "run", lfn))
            sums[lfn] = f"{zlib.adler32(b'abcd'):08x}"
    (root / "run/d0/f1.fits").unlink()  # missing
    (root / "run/d1/f2.fits").write_bytes(b"abcdef")  # wrong size
    (root / "run/d2/f3.fits").write_bytes(b"abce")  # same size, other bytes
    del sums["run/d2/f0.fits"]  # Rucio does not know its checksum
    rows.append((str(uuid.uuid4()), "run", "run/gone/f.fits"))  # a folder that is not there
    catalogue = _Catalogue(sums)
    report = SiteReport("SITE", len(rows))
    batches = _batches(rows, 5)
    for batch in batches:
        _check_disk(report, root, batch, True, catalogue)  # type: ignore[arg-type]
    got = sorted((p.kind, p.what) for p in report.problems)
    assert got == [
        ("corrupt", "run/d1/f2.fits"),
        ("corrupt", "run/d2/f3.fits"),
        ("missing", "run/d0/f1.fits"),
        ("missing", "run/gone/f.fits"),
        ("unreachable", "run/d2/f0.fits"),
    ]
    assert report.checked["disk"] == len(rows)
    assert report.checked["disk_checksums"] == 9  # the 13 planned, less 2 missing, 1 wrong size, 1 unknown sum
    assert len(catalogue.asked) == len(batches)  # one catalogue call per batch, for the files on disk
    assert "run/d0/f1.fits" not in {n for part in catalogue.asked for n in part}


def test_disk_without_checksums_asks_no_catalogue(tmp_path: Path) -> None:
    root = tmp_path / "rse"
    (root / "r").mkdir(parents=True)
    (root / "r/a").write_bytes(b"abcd")
    catalogue = _Catalogue({})
    report = SiteReport("SITE", 1)
    _check_disk(report, root, _batches([(str(uuid.uuid4()), "r", "r/a")], 1)[0], False, catalogue)  # type: ignore[arg-type]
    assert report.problems == [] and catalogue.asked == [] and report.checked["disk_checksums"] == 0
