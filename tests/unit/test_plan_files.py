"""The placement plan's file tables: written in row groups as files come, counted while written."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from multisite_nb.adapters.tables import (
    FileTableWriter,
    install_tables,
    read_site,
    site_files,
    site_source,
    site_table_path,
)
from multisite_nb.domain.errors import PlanError


def _write(folder: Path, n: int, flush_rows: int) -> FileTableWriter:
    writer = FileTableWriter(folder, ["A", "B"], flush_rows=flush_rows)
    for i in range(n):
        sites = ["A", "B"] if i % 10 == 0 else (["A"] if i % 2 else ["B"])
        writer.add(
            id=f"id-{i}",
            dataset_type="raw" if i % 3 else "bias",
            run="r",
            data_id={"exposure": i, "detector": i % 7},
            lfn=f"raw/{i}.fits",
            size=100 + i,
            sites=sites,
            tracts={s: i % 5 for s in sites},
            boundary=True,
        )
    return writer


def test_rows_stream_out_in_row_groups_and_the_summary_matches_the_tables(tmp_path: Path) -> None:
    n = 10_000
    writer = _write(tmp_path, n, flush_rows=500)
    summary = writer.close()
    tables = install_tables(writer.tables, tmp_path)
    assert tables == tmp_path / "files"
    for site in ("A", "B"):
        meta = pq.ParquetFile(site_table_path(tables, site)).metadata
        assert meta.num_row_groups >= 9  # written as the rows came, not held to the end
        rows = [r for batch in read_site(tables, site, batch_rows=1234) for r in batch.to_pylist()]
        assert len(rows) == summary.sites[site].files == meta.num_rows
        assert sum(r["size"] for r in rows) == summary.sites[site].bytes
        assert sum(len(r["sites"]) > 1 for r in rows) == summary.sites[site].shared_files
        assert sum(summary.sites[site].by_type.values()) == len(rows)
        per_tract = {t.tract: t.files for t in summary.tracts if t.site == site}
        assert per_tract == {t: sum(r["tract"] == t for r in rows) for t in range(5)}
        assert all(json.loads(r["data_id"])["exposure"] == int(r["id"][3:]) for r in rows)
    shared = [i for i in range(n) if i % 10 == 0]
    assert summary.boundary_files == summary.boundary_extra_copies == len(shared)
    assert summary.boundary_extra_bytes == sum(100 + i for i in shared)
    assert not list(tmp_path.glob(".files.*"))  # no partial folder left


def test_tables_are_put_in_place_whole_and_an_unfinished_plan_leaves_the_previous_ones(tmp_path: Path) -> None:
    first = _write(tmp_path, 100, flush_rows=10)
    first.close()
    install_tables(first.tables, tmp_path)
    second = _write(tmp_path, 40, flush_rows=10)
    second.close()
    # written but not installed yet (the plan record is saved with them): the previous tables stand
    assert pq.ParquetFile(site_table_path(tmp_path / "files", "A")).metadata.num_rows == 60
    install_tables(second.tables, tmp_path)
    assert pq.ParquetFile(site_table_path(tmp_path / "files", "A")).metadata.num_rows == 24  # 20 odd ids + 4 shared
    broken = _write(tmp_path, 1000, flush_rows=10)
    broken.abort()
    assert pq.ParquetFile(site_table_path(tmp_path / "files", "A")).metadata.num_rows == 24
    assert not list(tmp_path.glob(".files.*"))


def test_a_missing_or_foreign_table_is_named(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="A.parquet"):
        list(read_site(tmp_path, "A"))
    path = site_table_path(tmp_path, "A")
    path.write_text("not parquet")
    with pytest.raises(PlanError, match=r"A\.parquet.*cannot be read"):
        list(read_site(tmp_path, "A"))
    import pyarrow as pa

    pq.write_table(pa.table({"id": ["x"]}), path)
    with pytest.raises(PlanError, match="no column 'dataset_type'"):
        list(read_site(tmp_path, "A"))


def _plan(tmp_path: Path, n: int):
    from multisite_nb.domain.plan import PlacementPlan

    writer = _write(tmp_path, n, flush_rows=300)
    summary = writer.close()
    plan = PlacementPlan(campaign="c", central="C", sites=["A", "B"], summary=summary, visits={}, detectors={})
    plan.attach_tables(install_tables(writer.tables, tmp_path))
    return plan


def test_a_shipment_reads_a_sites_files_a_part_at_a_time(tmp_path: Path) -> None:
    from multisite_nb.phases.transfer.shipment import Shipment

    plan = _plan(tmp_path, 2_500)
    source = site_source(plan, "A")
    whole = site_files(plan, "A")
    assert len(source) == len(whole) == plan.summary.sites["A"].files
    assert [f.id for f in source] == [f.id for f in whole]  # streamed in table order
    shipment = Shipment(name="s", source="C", dest="A", files=source)
    parts = list(shipment.parts(400))
    assert [len(p) for p in parts[:-1]] == [400] * (len(parts) - 1) and 0 < len(parts[-1]) <= 400
    assert [f.id for p in parts for f in p] == [f.id for f in whole]
    in_memory = Shipment(name="s", source="C", dest="A", files=whole)  # files made outside a table: a list
    assert [[f.id for f in p] for p in in_memory.parts(400)] == [[f.id for f in p] for p in parts]
    # verification reads the same files as columns, batch by batch
    assert [i for batch in source.columns(batch_rows=700) for i in batch.id] == [f.id for f in whole]
    with pytest.raises(PlanError, match="no site 'Z'"):
        site_source(plan, "Z")


def test_a_gathers_tables_are_named_by_shipment_and_collisions_found_by_hash(tmp_path: Path) -> None:
    """A gather writes one table per shipment (rows go to the table named, whatever their
    destination); a (dataset type, data ID) in the tables of two source sites is a collision,
    found holding 8 bytes a file and read back with its data ID."""
    from multisite_nb.phases.gather_redistribute.plan import find_collisions

    writer = FileTableWriter(tmp_path, ["g.A", "g.B"], flush_rows=50)
    for site, visits in (("A", range(0, 120)), ("B", range(118, 200))):  # visits 118 and 119 at both
        for v in visits:
            for dt in ("sourceTable_visit", "visitSummary"):
                writer.add(
                    id=f"{site}-{dt}-{v}",
                    dataset_type=dt,
                    run=f"p/{site}/step1/{v % 2}",
                    data_id={"instrument": "Cam", "visit": v},
                    lfn=f"{dt}/{v}.parquet",
                    size=10,
                    sites=["CENTRAL"],
                    tables=[f"g.{site}"],
                )
    # a site's own duplicate is not a collision between sites
    writer.add(id="A-again", dataset_type="visitSummary", run="p/A/x", data_id={"instrument": "Cam", "visit": 1},
               lfn="x", size=1, sites=["CENTRAL"], tables=["g.A"])  # fmt: skip
    summary = writer.close()
    tables = install_tables(writer.tables, tmp_path)
    assert summary.sites["g.A"].files == 241 and summary.sites["g.B"].files == 164
    assert summary.sites["g.A"].runs == ["p/A/step1/0", "p/A/step1/1", "p/A/x"]
    assert {r["sites"][0] for b in read_site(tables, "g.B") for r in b.to_pylist()} == {"CENTRAL"}

    found = find_collisions(tables, {"g.A": "A", "g.B": "B"})
    assert [(c.dataset_type, json.loads(c.data_id)["visit"], c.sites) for c in found] == [
        (dt, v, ("A", "B")) for dt in ("sourceTable_visit", "visitSummary") for v in (118, 119)
    ]
    assert find_collisions(tables, {"g.A": "A"}) == []
