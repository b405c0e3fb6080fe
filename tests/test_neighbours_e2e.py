"""Real sky splits end to end: the neighbours world and campaign, as the README says to build them.

Tracts 0 and 1 are each shared by two sites patch by patch, with boundary visits on both edges.
``multisite-nb world up --spec parameters/worlds/neighbours.yaml ...`` then ``multisite-nb
campaign parameters/campaign_neighbours.yaml --world W`` ends with ``verdict: PASS``: the
placement gate reports the boundary visits, only canonical copies are gathered, and every
product of the validation set equals the single-site reference.

It runs on PostgreSQL, as the facilities' registries and Rucio do: in the session whose world is
on PostgreSQL (``pytest --db postgresql``, the CI step after the main suite), on a world of its
own. The 3x3 campaign runs on SQLite in the main session (``tests/test_campaign_e2e.py``); one
whole campaign per back end keeps the suite's time down.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import reachable_tmpdir

from multisite_nb.domain.params import repo_root

pytestmark = [pytest.mark.slow, pytest.mark.world]

BIN = Path(sys.executable).parent
SPEC = "parameters/worlds/neighbours.yaml"
CAMPAIGN = "parameters/campaign_neighbours.yaml"


@pytest.fixture(scope="module")
def pg_tmp(db: str) -> Iterator[Path]:
    if db != "postgresql":
        pytest.skip("runs in the PostgreSQL session (pytest --db postgresql; a CI step)")
    yield from reachable_tmpdir("msnb-neighbours-")


@pytest.fixture(scope="module")
def neighbours(pg_tmp: Path):
    world, runs = pg_tmp / "world", pg_tmp / "runs"
    nb = [str(BIN / "multisite-nb")]
    try:
        up = subprocess.run(
            [*nb, "world", "up", "--spec", SPEC, "--params", CAMPAIGN, "--db", "postgresql", "--dir", str(world)],
            cwd=repo_root(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        proc = subprocess.run(
            [*nb, "campaign", CAMPAIGN, "--world", str(world), "--runs-root", str(runs)],
            cwd=repo_root(),
            capture_output=True,
            text=True,
            timeout=2400,
        )
    finally:
        subprocess.run(
            [*nb, "world", "down", "--dir", str(world)], cwd=repo_root(), capture_output=True, text=True, timeout=120
        )
    folder = runs / "neighbours"
    run_dirs = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.exists() else []
    secrets, config = world / "postgres" / "secrets.json", world / "butler" / "RAL" / "butler.yaml"
    password = json.loads(secrets.read_text())["password"] if secrets.exists() else None
    registry = yaml.safe_load(config.read_text())["registry"] if config.exists() else {}
    return proc, run_dirs, password, registry, _server_errors(world)


def _server_errors(world: Path, keep: int = 40) -> str:
    """The database's and Rucio server's own error lines, for a failing campaign's message: a
    client-side ``DatabaseException`` is bare, and the world's server logs from WARNING while Rucio
    logs that exception's traceback at DEBUG, so PostgreSQL's log (its ERROR, DETAIL and STATEMENT
    lines: a lock not obtained, a deadlock) is what names the cause. Its complaints about tables
    that do not exist yet during the bootstrap are left out."""
    lines: list[str] = []
    for log, pattern in (
        (world / "postgres" / "logs" / "postgres.log", r"(ERROR|DETAIL|STATEMENT|FATAL):"),
        (world / "rucio" / "logs" / "gunicorn.log", r"Error|Exception|Traceback"),
    ):
        if not log.exists():
            continue
        found: list[str] = []
        with log.open(errors="replace") as fh:
            for ln in fh:
                if 'relation "configs" does not exist' in ln:  # its STATEMENT line goes with it
                    found.append("")
                elif re.search(pattern, ln) and not (found and found[-1] == "" and "STATEMENT:" in ln):
                    found.append(f"{log.name}: {ln.rstrip()[:400]}")
        lines += [ln for ln in found if ln][-keep:]
    return "\n".join(lines) or "(no server-side errors logged)"


def _result(run_dir: Path, phase: str) -> dict:
    return json.loads((run_dir / "results" / f"{phase}.json").read_text())


def test_the_neighbours_campaign_passes(neighbours) -> None:
    proc, run_dirs, _, registry, server_errors = neighbours
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:] + "\nserver side:\n" + server_errors
    assert re.search(r"verdict:\s+PASS: complete and consistent", proc.stdout), proc.stdout[-2000:]
    assert len(run_dirs) == 1
    assert registry["db"].startswith("postgresql")


def test_the_database_password_is_in_no_file_of_the_run_folder(neighbours) -> None:
    _, (run_dir,), password, _, _ = neighbours
    assert password
    files = [f for f in run_dir.rglob("*") if f.is_file()]  # executed notebooks, logs, results
    assert len(files) > 50
    assert not [f for f in files if password.encode() in f.read_bytes()]


def test_placement_reports_the_boundary_visits_of_both_shared_tracts(neighbours) -> None:
    _, (run_dir,), _, _, _ = neighbours
    placement = _result(run_dir, "placement")
    assert placement["passed"] and "4 boundary visits" in placement["reason"]
    assert placement["summary"]["boundary_by_sites"] == {"IN2P3+RAL": 2, "IN2P3+LANCS": 2}
    plan = json.loads((run_dir / "artifacts" / "placement" / "plan.json").read_text())
    owners = {int(v): site for v, site in plan["visit_owner"].items()}
    for visit, sites in plan["boundary_visits"].items():
        assert owners[int(visit)] in sites  # each boundary visit has one canonical site among those sharing it


def test_only_canonical_copies_cross_and_qa_compares_every_product(neighbours) -> None:
    _, (run_dir,), _, _, _ = neighbours
    gather = _result(run_dir, "gather_redistribute_calibration")
    assert gather["passed"]
    qa = _result(run_dir, "qa")
    assert qa["passed"] and qa["summary"]["mismatches"] == 0 and qa["summary"]["missing"] == 0
    assert all(m["agree"] for m in qa["summary"]["metrics"])
    assert {m["site"] for m in qa["summary"]["metrics"]} == {"IN2P3", "RAL", "LANCS"}
