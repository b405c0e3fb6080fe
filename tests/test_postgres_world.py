"""The embedded world on PostgreSQL, as the facilities run Rucio and their Butler registries.

The test builds its own small PostgreSQL world through the CLI in every session. A whole
campaign on PostgreSQL (the neighbours campaign, ``tests/test_neighbours_e2e.py``) runs in the
session whose world is on PostgreSQL (``pytest --db postgresql``, the CI step after the main
suite), together with the phase 1–3 tests on the session's PostgreSQL world.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import reachable_tmpdir

from multisite_nb.adapters.processes import live_pid, read_pid_record
from multisite_nb.domain.params import repo_root

CLI = str(repo_root() / ".venv" / "bin" / "multisite-nb")


def _cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, check=check, timeout=1500)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    yield from reachable_tmpdir("msnb-pg-world-")


def test_world_up_on_postgresql_and_down_leaves_nothing(pg_dir: Path) -> None:
    up = _cli("world", "up", "--db", "postgresql", "--dir", str(pg_dir))
    try:
        assert "postgresql: started" in up.stdout
        state = json.loads((pg_dir / "world.json").read_text())
        assert state["db"] == "postgresql"
        # every site's registry is a schema of the world's PostgreSQL; Rucio's database too
        pg_port = json.loads((pg_dir / "postgres" / "state.json").read_text())["port"]
        for site in ("USDF", "IN2P3", "RAL", "LANCS"):
            registry = yaml.safe_load((pg_dir / "butler" / site / "butler.yaml").read_text())["registry"]
            assert registry["db"].startswith("postgresql") and f":{pg_port}/" in registry["db"]
            assert registry["namespace"] == site.lower()
            assert not (pg_dir / "butler" / site / "gen3.sqlite3").exists()
        server_cfg = (pg_dir / "rucio" / "server.cfg").read_text()
        assert "postgresql+psycopg://msnb:" in server_cfg and f":{pg_port}/rucio" in server_cfg
        assert (pg_dir / "rucio" / "server.cfg").stat().st_mode & 0o077 == 0  # it holds the password
        assert (pg_dir / "postgres" / "db-auth.yaml").stat().st_mode & 0o077 == 0
        # the password is in the world's config only: not in a repository's config
        password = json.loads((pg_dir / "postgres" / "secrets.json").read_text())["password"]
        assert password not in (pg_dir / "butler" / "USDF" / "butler.yaml").read_text()
        # the real CLIs work on it: butler (credentials from LSST_DB_AUTH) and rucio
        env = {
            **os.environ,
            "LSST_DB_AUTH": str(pg_dir / "postgres" / "db-auth.yaml"),
            "RUCIO_CONFIG": str(pg_dir / "rucio" / "client.cfg"),
        }
        bin_ = repo_root() / ".venv" / "bin"
        raws = subprocess.run(
            [str(bin_ / "butler"), "query-datasets", str(pg_dir / "butler" / "USDF"), "raw", "--collections", "*"],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        assert raws.stdout.count("HSC/raw/all") == 72
        rses = subprocess.run([str(bin_ / "rucio"), "rse", "list"], capture_output=True, text=True, env=env, check=True)
        assert {"USDF_DISK", "IN2P3_DISK", "RAL_DISK", "LANCS_DISK"} <= set(rses.stdout.split())
        # asking for the other back end is refused, nothing changed
        before = (pg_dir / "world.json").read_text()
        other = _cli("world", "up", "--db", "sqlite", "--dir", str(pg_dir), check=False)
        assert other.returncode != 0 and "built on postgresql" in other.stderr
        assert (pg_dir / "world.json").read_text() == before
        records = {
            name: read_pid_record(path)
            for name, path in [
                ("postgres", pg_dir / "postgres" / "run" / "postgres.pid"),
                ("gunicorn", pg_dir / "rucio" / "run" / "gunicorn.pid"),
                ("site_services", pg_dir / "rucio" / "run" / "site_services.pid"),
            ]
        }
        assert all(live_pid(r) is not None for r in records.values()), records
        rucio_port = json.loads((pg_dir / "rucio" / "state.json").read_text())["port"]
        assert _listening(pg_port) and _listening(rucio_port)
    finally:
        _cli("world", "down", "--dir", str(pg_dir), check=False)
    assert all(live_pid(r) is None for r in records.values())
    assert not _listening(pg_port) and not _listening(rucio_port)
    # and it comes back on its data
    again = _cli("world", "up", "--dir", str(pg_dir))
    try:
        assert "populated" not in again.stdout and "postgresql: started" in again.stdout
    finally:
        _cli("world", "down", "--dir", str(pg_dir))
