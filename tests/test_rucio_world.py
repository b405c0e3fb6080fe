"""The embedded world's real Rucio service: server, conveyor with the posix transfertool, judge, abacus.

No mocks: the module starts its own Rucio 41 server (gunicorn + SQLite) and site daemons in a
temporary folder on a free loopback port, talks to it with rucio-clients and the ``rucio`` CLI,
and stops it by PID at the end (also on failure).
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from multisite_nb.world.rucio_server import RucioServer, _default_venv, _port_listening

pytestmark = [pytest.mark.world, pytest.mark.timeout(180)]

RSES = ("USDF_DISK", "IN2P3_DISK", "RAL_DISK", "LANCS_DISK")
SCOPE = "hsc_test"

if not (_default_venv() / "bin" / "python").exists():
    pytest.skip(f"no Rucio server venv at {_default_venv()} (scripts/setup.sh)", allow_module_level=True)


def adler32_of(data: bytes) -> str:
    return "%08x" % (zlib.adler32(data) & 0xFFFFFFFF)


def file_adler32(path: Path) -> str:
    return adler32_of(path.read_bytes())


@contextlib.contextmanager
def rucio_env(server: RucioServer) -> Iterator[None]:
    """Point rucio-clients at this world's client config (and restore afterwards)."""
    from rucio.common.config import clean_cached_config

    saved = {k: os.environ.get(k) for k in server.client_env()}
    os.environ.update(server.client_env())
    clean_cached_config()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        clean_cached_config()


@pytest.fixture(scope="module")
def rucio_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("rucio_world")
    rses = {name: base / "rse" / name for name in RSES}
    server = RucioServer(base / "rucio", rses, [SCOPE, "other"])
    try:
        t0 = time.monotonic()
        assert server.up() is True
        up_seconds = time.monotonic() - t0
        with rucio_env(server):
            from rucio.client import Client

            client = Client()
        yield {"server": server, "rses": rses, "client": client, "up_seconds": up_seconds}
    finally:
        server.down()


def register(client: Any, prefix: Path, names_data: dict[str, bytes], dataset: str) -> list[dict[str, Any]]:
    """Write files under ``prefix``, register them at USDF_DISK, attach them to ``dataset``."""
    files = []
    for name, data in names_data.items():
        path = prefix / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        files.append({"scope": SCOPE, "name": name, "bytes": len(data), "adler32": adler32_of(data)})
    client.add_replicas(rse="USDF_DISK", files=files)
    with contextlib.suppress(Exception):
        client.add_dataset(scope=SCOPE, name=dataset)
    client.attach_dids(scope=SCOPE, name=dataset, dids=[{"scope": SCOPE, "name": f["name"]} for f in files])
    return files


def wait_rule(client: Any, rule_id: str, states: tuple[str, ...], timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        rule = client.get_replication_rule(rule_id)
        if rule["state"] in states or time.monotonic() > deadline:
            return rule
        time.sleep(0.2)


def test_up_is_idempotent_and_status(rucio_world: dict[str, Any]) -> None:
    server: RucioServer = rucio_world["server"]
    assert server.is_up()
    t0 = time.monotonic()
    assert server.up() is False  # already up and healthy: nothing changes
    print(f"\nup when already up: {time.monotonic() - t0:.1f} s")
    status = server.status()
    assert status["up"] and status["reachable"] and status["version"].startswith("41.")
    assert status["port"] and _port_listening(status["port"])
    assert all(p["alive"] for p in status["processes"].values())
    for name, prefix in rucio_world["rses"].items():
        assert status["rses"][name] == {
            "exists": True,
            "prefix": str(prefix.resolve()),
            "prefix_exists": True,
            "lfn2pfn_algorithm": "butler_path",
        }
    assert server.client_env() == {"RUCIO_CONFIG": str(server.client_config)}
    client = rucio_world["client"]
    assert client.whoami()["account"] == server.account
    assert {SCOPE, "other"} <= set(client.list_scopes())
    # distances between all pairs, quotas everywhere
    for src in RSES:
        for dst in RSES:
            if src != dst:
                assert client.get_distance(src, dst)[0]["distance"] == 1
    limits = client.get_local_account_limits(server.account)
    assert set(limits) == set(RSES) and all(v > 0 for v in limits.values())


def test_dataset_replicates_with_butler_paths(rucio_world: dict[str, Any]) -> None:
    client, rses = rucio_world["client"], rucio_world["rses"]
    names = {
        "a/b/c.yaml": b"a: 1\nb: [2, 3]\n",
        "HSC/raw/all/raw/20240101/HSC-I/raw_HSC_903334_042.yaml": os.urandom(20_000),
        "HSC/raw/all/raw/20240101/HSC-I/raw_HSC_903334_043.yaml": os.urandom(3_000),
    }
    register(client, rses["USDF_DISK"], names, "ds_ok")
    t0 = time.monotonic()
    rule_id = client.add_replication_rule([{"scope": SCOPE, "name": "ds_ok"}], 1, "IN2P3_DISK")[0]
    rule = wait_rule(client, rule_id, ("OK", "STUCK"))
    assert rule["state"] == "OK", rule
    print(f"\nrule OK after {time.monotonic() - t0:.1f} s")
    for name, data in names.items():
        # lfn2pfn 'butler_path': scope:NAME lives at <prefix>/NAME, on every RSE
        dst = rses["IN2P3_DISK"] / name
        assert dst.is_file() and dst.read_bytes() == data
        assert file_adler32(dst) == adler32_of(data)
    assert not list(rses["IN2P3_DISK"].rglob(".*.part-*"))  # no temporary files left
    reps = list(client.list_replicas([{"scope": SCOPE, "name": "a/b/c.yaml"}]))[0]
    assert set(reps["rses"]) == {"USDF_DISK", "IN2P3_DISK"}
    assert reps["rses"]["IN2P3_DISK"] == [f"file://localhost{(rses['IN2P3_DISK'] / 'a/b/c.yaml').resolve()}"]

    # A file attached to a dataset that already has a rule gets a lock (judge-evaluator) and moves.
    late = {"HSC/raw/all/raw/20240101/HSC-I/raw_HSC_903334_044.yaml": b"late file\n" * 10}
    register(client, rses["USDF_DISK"], late, "ds_ok")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rule = client.get_replication_rule(rule_id)
        if rule["state"] == "OK" and rule["locks_ok_cnt"] == 4:
            break
        time.sleep(0.2)
    assert (rule["state"], rule["locks_ok_cnt"]) == ("OK", 4), rule
    assert (rses["IN2P3_DISK"] / next(iter(late))).read_bytes() == next(iter(late.values()))

    # abacus-collection-replica: dataset-level counts are real
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        dreps = {r["rse"]: r for r in client.list_dataset_replicas(SCOPE, "ds_ok")}
        if dreps.get("IN2P3_DISK", {}).get("available_length") == 4:
            break
        time.sleep(0.2)
    assert dreps["IN2P3_DISK"]["length"] == 4 and dreps["IN2P3_DISK"]["available_length"] == 4, dreps
    total = sum(len(d) for d in names.values()) + sum(len(d) for d in late.values())
    assert dreps["IN2P3_DISK"]["available_bytes"] == total

    # The real rucio CLI (rucio-clients 41: `rucio rule list`) agrees.
    rucio_cli = Path(sys.executable).parent / "rucio"
    out = subprocess.run(
        [str(rucio_cli), "rule", "list", "--did", f"{SCOPE}:ds_ok", "--csv"],
        env={**os.environ, **rucio_world["server"].client_env()},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    row = next(line for line in out.splitlines() if line.startswith(rule_id))
    assert ",OK[4/0/0],IN2P3_DISK," in row, out


def test_bad_sources_fail_and_rule_gets_stuck(rucio_world: dict[str, Any]) -> None:
    client, rses = rucio_world["client"], rucio_world["rses"]
    good = b"the registered content " * 40
    register(client, rses["USDF_DISK"], {"bad/checksum.fits": good}, "ds_checksum")
    register(client, rses["USDF_DISK"], {"bad/truncated.fits": good}, "ds_size")
    # Bytes change after registration: same size but different content; and a truncated file.
    (rses["USDF_DISK"] / "bad/checksum.fits").write_bytes(good.upper())
    (rses["USDF_DISK"] / "bad/truncated.fits").write_bytes(good[:100])
    rules = {
        "checksum": client.add_replication_rule([{"scope": SCOPE, "name": "ds_checksum"}], 1, "RAL_DISK")[0],
        "size": client.add_replication_rule([{"scope": SCOPE, "name": "ds_size"}], 1, "RAL_DISK")[0],
    }
    for what, rule_id in rules.items():
        rule = wait_rule(client, rule_id, ("OK", "STUCK"))
        assert rule["state"] == "STUCK", rule
        assert what in rule["error"].lower(), rule["error"]
        assert "TRANSFER_FAILED" in rule["error"]
        report = client.examine_replication_rule(rule_id)
        assert what in report["rule_error"].lower()
        (transfer,) = report["transfers"]
        assert transfer["last_error"] == "RequestState.FAILED"
        assert transfer["attempts"] >= 2  # retried by the finisher before giving up
        assert transfer["last_source"] == "USDF_DISK"
    assert not (rses["RAL_DISK"] / "bad").exists() or not any((rses["RAL_DISK"] / "bad").iterdir())


def test_no_secret_outside_the_client_config(rucio_world: dict[str, Any]) -> None:
    server: RucioServer = rucio_world["server"]
    root = server.root
    assert stat.S_IMODE(server.client_config.stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "secrets.json").stat().st_mode) == 0o600
    password = next(
        line.split("=", 1)[1].strip()
        for line in server.client_config.read_text().splitlines()
        if line.startswith("password")
    )
    assert len(password) >= 20
    checked = 0
    for path in root.rglob("*"):
        if (
            path.is_file()
            and path.name not in ("client.cfg", "secrets.json", "rucio.db")
            and not path.name.startswith("rucio.db")
        ):
            assert password not in path.read_text(errors="replace"), path
            checked += 1
    assert checked >= 5


def test_sync_adds_an_rse_while_up(rucio_world: dict[str, Any], tmp_path: Path) -> None:
    server: RucioServer = rucio_world["server"]
    server.rses["EXTRA_DISK"] = tmp_path / "EXTRA_DISK"
    try:
        changes = server.sync()
        assert "rse EXTRA_DISK" in changes and "distance USDF_DISK->EXTRA_DISK" in changes
        assert server.sync() == []  # idempotent
        extra = server.status()["rses"]["EXTRA_DISK"]
        assert extra["exists"] and extra["prefix_exists"] and extra["lfn2pfn_algorithm"] == "butler_path"
    finally:
        del server.rses["EXTRA_DISK"]


def test_down_stops_everything_and_up_again(rucio_world: dict[str, Any]) -> None:
    server: RucioServer = rucio_world["server"]
    status = server.status()
    pids = [p["pid"] for p in status["processes"].values()]
    port = status["port"]
    t0 = time.monotonic()
    server.down()
    down_seconds = time.monotonic() - t0
    assert not server.is_up()
    for pid in pids:  # each process group is gone (gunicorn master + worker, daemon)
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert not _port_listening(port)
    status = server.status()
    assert not status["reachable"] and not any(p["alive"] for p in status["processes"].values())
    server.down()  # safe when already down
    t0 = time.monotonic()
    assert server.up() is True  # warm: existing database, same spec
    warm_seconds = time.monotonic() - t0
    assert server.up() is False
    assert server.status()["port"] == port  # the remembered port
    client = rucio_world["client"]
    assert client.get_replication_rule(client.list_replication_rules({"scope": SCOPE}).__next__()["id"])["state"] in (
        "OK",
        "STUCK",
    )
    print(
        f"\nrucio world: cold up {rucio_world['up_seconds']:.1f} s, down {down_seconds:.1f} s, "
        f"warm up {warm_seconds:.1f} s"
    )


def test_transient_database_errors_are_retried_then_raised() -> None:
    """PostgreSQL's NOWAIT row locks fail a bulk write while a daemon holds the rows: retried."""
    from rucio.common.exception import DatabaseException, Duplicate

    from multisite_nb.adapters.rucio.calls import transient_retry

    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise DatabaseException("could not obtain lock on row in relation replicas")
        return "done"

    assert transient_retry(flaky, first_wait_s=0) == "done" and len(calls) == 3

    def locked() -> None:
        calls.append(1)
        raise DatabaseException("still locked")

    calls.clear()
    with pytest.raises(DatabaseException) as raised:  # a lock that outlives the retries is the caller's error
        transient_retry(locked, tries=2, first_wait_s=0)
    assert len(calls) == 2
    assert raised.value.__notes__ == ["the server refused it 2 times over 0 s (a lock, or not transient)"]

    def duplicate() -> None:
        calls.append(1)
        raise Duplicate("already there")

    calls.clear()
    with pytest.raises(Duplicate):  # not transient: no retry
        transient_retry(duplicate, first_wait_s=0)
    assert len(calls) == 1
