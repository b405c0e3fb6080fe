"""The embedded world's Butler side: synthetic sky, site repos, central inputs, spatial joins."""

from __future__ import annotations

from pathlib import Path

import pytest
from lsst.daf.butler import Butler

from multisite_nb.domain.errors import ButlerError
from multisite_nb.world.butler_world import collections_for, create_site_repo, populate_central
from multisite_nb.world.synthetic import SkySpec, TargetSpec, TractSpec, build_sky, regions_overlap

SKYMAP = "hsc_rings_3x3"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A world folder with an empty site repo (IN2P3) and a populated central repo (USDF)."""
    root = tmp_path_factory.mktemp("bw")
    assert create_site_repo(root / "butler" / "USDF", root / "rse" / "USDF_DISK")
    assert create_site_repo(root / "butler" / "IN2P3", root / "rse" / "IN2P3_DISK")
    populate_central(root / "butler" / "USDF", SkySpec())
    return root


def test_sky_is_deterministic() -> None:
    a, b = build_sky(), build_sky()
    assert [o.visit for o in a.observations] == [o.visit for o in b.observations]
    assert [o.region.encode() for o in a.observations] == [o.region.encode() for o in b.observations]
    assert a.raw_content(a.observations[0], 2) == b.raw_content(b.observations[0], 2)
    assert a.refcat_shards() == b.refcat_shards()
    c = build_sky(SkySpec(seed=1))
    assert a.raw_content(a.observations[0], 2) != c.raw_content(c.observations[0], 2)
    # a world records its spec's digest: fields added later must not change it while unset
    assert SkySpec().digest() == "9b7a19343be26ec508090e671f36a87ddcf1451c"
    assert SkySpec(visit_size_deg=3.5).digest() != SkySpec().digest()


def test_default_sky_shape() -> None:
    sky = build_sky()
    assert sorted(sky.tracts) == [0, 1, 2]
    assert all(len(t.patches) == 9 for t in sky.tracts.values())
    assert len(sky.observations) == 3 * 3 * 2  # targets x bands x visits
    for i, target in enumerate(sky.spec.targets):
        assert (target.tract, target.patches) == (i, [3, 4])
        visits = sky.observations_for_target(i)
        assert {o.band for o in visits} == {"g", "r", "i"}
        for o in visits:
            # Covers both target patches, touches no other patch and no other tract.
            touched = [p.id for p in sky.tracts[target.tract].patches if regions_overlap(o.region, p.region)]
            assert touched == [3, 4]
            assert not any(regions_overlap(o.region, t.region) for t in sky.tracts.values() if t.id != i)
    assert not sky.boundary_observations()


def test_boundary_visits_need_neighbours() -> None:
    with pytest.raises(ValueError, match="neighbouring targets"):
        build_sky(SkySpec(boundary_visits=1))


def test_boundary_visits_in_adjacent_tracts() -> None:
    spec = SkySpec(
        tracts=[TractSpec(id=0, ra=150.0, dec=0.0), TractSpec(id=1, ra=150.6, dec=0.0)],
        targets=[TargetSpec(tract=0, patches=[5]), TargetSpec(tract=1, patches=[3])],
        boundary_visits=2,
    )
    sky = build_sky(spec)
    boundary = sky.boundary_observations()
    assert len(boundary) == 2 * 3  # per band
    for o in boundary:
        assert o.targets == (0, 1)
        assert regions_overlap(o.region, sky.patch(0, 5).region)
        assert regions_overlap(o.region, sky.patch(1, 3).region)


def test_create_site_repo_is_idempotent(world: Path) -> None:
    repo, root = world / "butler" / "IN2P3", world / "rse" / "IN2P3_DISK"
    assert create_site_repo(repo, root) is False
    assert (repo / "butler.yaml").exists() and (repo / "gen3.sqlite3").exists()
    with pytest.raises(ButlerError, match="datastore root"):
        create_site_repo(repo, world / "rse" / "ELSEWHERE")
    butler = Butler.from_config(str(repo))
    assert butler.collections.query("*") == []
    assert butler.query_dimension_records("instrument", explain=False) == []


def test_populate_central_is_idempotent(world: Path) -> None:
    counts = populate_central(world / "butler" / "USDF", SkySpec())
    assert counts["datasets"] == {"raw": 72, "bias": 4, "flat": 12, "ps1_pv3_3pi_20170110": 12, "skyMap": 1}
    assert all(n == 0 for n in counts["written"].values())
    assert counts["certified"] == 0
    assert counts["records"]["visit"] == 18 and counts["records"]["visit_detector_region"] == 72


def test_central_holds_inputs_inside_its_rse(world: Path) -> None:
    butler = Butler.from_config(str(world / "butler" / "USDF"))
    cols = collections_for(SkySpec())
    assert list(butler.collections.get_info(cols.defaults).children) == [
        "HSC/raw/all",
        "HSC/calib",
        "refcats",
        "skymaps",
    ]
    raws = butler.query_datasets("raw", collections=cols.defaults, explain=False)
    assert len(raws) == 72
    rse = (world / "rse" / "USDF_DISK").resolve()
    uri = Path(butler.getURI(raws[0]).ospath).resolve()
    assert uri.is_relative_to(rse) and uri.exists() and 1_000 < uri.stat().st_size < 20_000
    raw = butler.get(raws[0])
    assert len(raw["pixels"]) == 24 * 24 and raw["exposure"] == raws[0].dataId["exposure"]
    # Calibs are certified: a lookup by exposure (timespan) through the chain finds them.
    for name in ("bias", "flat"):
        found = butler.query_datasets(
            name,
            collections=cols.defaults,
            data_id={"instrument": "HSC", "exposure": 2003, "detector": 1},
            explain=False,
        )
        assert len(found) == 1 and found[0].run == cols.calib_run
    assert len(butler.query_datasets("skyMap", collections=cols.defaults, explain=False)) == 1


def test_each_repo_answers(world: Path) -> None:
    for site in ("USDF", "IN2P3"):
        butler = Butler.from_config(str(world / "butler" / site))
        assert isinstance(butler.query_dimension_records("instrument", explain=False), list)


@pytest.mark.parametrize("tract", [0, 1, 2])
def test_spatial_join_returns_exactly_the_target_visits(world: Path, tract: int) -> None:
    butler = Butler.from_config(str(world / "butler" / "USDF"))
    ids = butler.query_data_ids(
        ["visit", "detector"], where=f"skymap='{SKYMAP}' AND tract={tract} AND patch IN (3,4)", explain=False
    )
    expected_visits = set(range((tract + 1) * 1000 + 1, (tract + 1) * 1000 + 7))
    assert {d["visit"] for d in ids} == expected_visits
    assert {(d["visit"], d["detector"]) for d in ids} == {(v, det) for v in expected_visits for det in range(4)}
    # The other patches of the tract and the other tracts see none of these visits.
    others = butler.query_data_ids(
        ["visit"], where=f"skymap='{SKYMAP}' AND tract={tract} AND patch NOT IN (3,4)", explain=False
    )
    assert others == []
    elsewhere = butler.query_data_ids(["visit"], where=f"skymap='{SKYMAP}' AND tract != {tract}", explain=False)
    assert not expected_visits & {d["visit"] for d in elsewhere}


def test_boundary_visits_are_found_by_a_spatial_query(tmp_path: Path) -> None:
    spec = SkySpec.neighbours_example(boundary_visits=1)
    repo = tmp_path / "butler" / "USDF"
    create_site_repo(repo, tmp_path / "rse" / "USDF_DISK")
    populate_central(repo, spec)
    butler = Butler.from_config(str(repo))

    def visits(patch: int) -> set[int]:
        rows = butler.query_data_ids(["visit"], where=f"skymap='{SKYMAP}' AND tract=0 AND patch={patch}", explain=False)
        return {d["visit"] for d in rows}

    shared = visits(3) & visits(4)
    expected = {o.visit for o in build_sky(spec).boundary_observations()}
    assert len(expected) == 3 and shared == expected


def test_a_tract_grid_is_a_contiguous_sky_of_many_tracts() -> None:
    """Scale worlds: tracts side by side, every k-th observed once per band, 189-detector visits."""
    from multisite_nb.world.spec import load_spec
    from multisite_nb.world.synthetic import build_sky, regions_overlap

    _, spec = load_spec("parameters/worlds/scale_20k.yaml")
    assert len(spec.tracts) == 1500 and [t.id for t in spec.tracts] == list(range(1500))
    model = build_sky(spec)
    assert len(model.detectors) == 189
    assert len(model.observations) == len(range(0, 1500, 14))
    assert sum(len(o.detector_regions) for o in model.observations) == 108 * 189
    # neighbours in a row and across rows do not overlap, and each visit stays in its tract
    t = model.tracts
    assert not regions_overlap(t[0].region, t[1].region) and not regions_overlap(t[0].region, t[50].region)
    for obs in model.observations[:20]:
        (target,) = obs.targets
        home = spec.targets[target].tract
        assert regions_overlap(obs.region, t[home].region)
        assert not any(regions_overlap(obs.region, t[n].region) for n in (home - 1, home + 1, home + 50) if n in t)
    with pytest.raises(ValueError, match="either tracts or tract_grid"):
        SkySpec(tracts=[{"id": 0, "ra": 0.0, "dec": 0.0}], tract_grid={"n_ra": 2, "n_dec": 2})


def test_wide_visits_reach_the_neighbouring_tracts() -> None:
    """``visit_size_deg``: LSSTCam-sized visits meet a few hundred patches of up to nine tracts."""
    from multisite_nb.world.spec import load_spec
    from multisite_nb.world.synthetic import build_sky, regions_overlap

    _, spec = load_spec("parameters/worlds/scale_wide.yaml")
    assert spec.visit_size_deg == 3.5 and len(spec.tracts) == 1500
    model = build_sky(spec)
    assert len(model.observations) == 500 and len(model.detectors) == 189
    obs = next(o for o in model.observations if spec.targets[o.targets[0]].tract == 1275)  # inside the grid
    near = [1274, 1276, 1225, 1325, 1224, 1226, 1324, 1326]  # its eight neighbours
    assert sum(regions_overlap(obs.region, model.tracts[n].region) for n in near) >= 6  # dithered: not all eight
    patches = [p for n in [1275, *near] for p in model.tracts[n].patches if regions_overlap(obs.region, p.region)]
    assert 250 < len(patches) < 400
    with pytest.raises(ValueError, match="boundary_visits: 0"):
        SkySpec(boundary_visits=1, visit_size_deg=3.5)


def test_a_repository_a_killed_writer_left_mid_transaction_opens_read_only(tmp_path) -> None:
    """A step killed while writing leaves SQLite's hot journal; read-only opens must still work
    (the operator's resume, the status page), and the dead transaction must be gone."""
    import signal
    import subprocess
    import sys
    import time

    from lsst.daf.butler import Butler

    from multisite_nb.adapters.butler.repo import open_butler

    repo = tmp_path / "repo"
    Butler.makeRepo(str(repo))
    db = repo / "gen3.sqlite3"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
            "c.execute('PRAGMA cache_size=1')\n"
            "c.execute('BEGIN IMMEDIATE')\n"
            "c.execute('CREATE TABLE dead_transaction (x BLOB)')\n"
            "c.executemany('INSERT INTO dead_transaction VALUES (randomblob(4000))', [()] * 2000)\n"
            "print('written', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "written"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    time.sleep(0.1)
    assert (repo / "gen3.sqlite3-journal").exists()  # the hot journal of the killed writer
    with open_butler(str(repo)) as butler:
        assert butler.collections.query("*") == []
    import sqlite3

    tables = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
    assert "dead_transaction" not in tables
