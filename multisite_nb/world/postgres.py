"""The embedded world's PostgreSQL server: Debian's PostgreSQL, run by PID inside the world folder.

The facilities run their Butler registries and Rucio on PostgreSQL; ``multisite-nb world up
--db postgresql`` gives the world the same back end. Everything lives in one folder::

    W/postgres/data/         the cluster (initdb)
    W/postgres/run/          its Unix socket and our PID record
    W/postgres/logs/         the server log
    W/postgres/secrets.json  the superuser's password (mode 0600)
    W/postgres/db-auth.yaml  the same credential for daf_butler (``LSST_DB_AUTH``, mode 0600)

The server listens on 127.0.0.1 only (a free port, remembered) and on a socket in the folder;
every login needs the password (scram-sha-256). PostgreSQL refuses to run as root: when the
toolkit runs as root, the server runs as Debian's ``postgres`` user, which owns the cluster.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from multisite_nb.adapters.files import atomic_write_json, atomic_write_text
from multisite_nb.adapters.processes import PidRecord, live_pid, read_pid_record, start, stop_groups
from multisite_nb.domain.errors import ConfigError, ServiceError

__all__ = ["BUTLER_DATABASE", "BUTLER_DRIVER", "RUCIO_DATABASE", "PostgresServer", "find_postgres"]

RUCIO_DATABASE = "rucio"
BUTLER_DATABASE = "butler"
#: The toolkit's venv has psycopg2 (SQLAlchemy 2.1 would pick psycopg 3 for a bare ``postgresql://``).
BUTLER_DRIVER = "postgresql+psycopg2"
_SUPERUSER = "msnb"
_SETUP_HINT = "install it with `bash scripts/setup.sh --postgres` (Debian's postgresql package)"


def find_postgres() -> Path:
    """The ``bin`` folder of the newest PostgreSQL server installed by Debian (or on ``PATH``).

    Raises
    ------
    ConfigError
        If there is none, saying how to install it.
    """
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).resolve().parent
    raise ConfigError(f"no PostgreSQL server on this machine: {_SETUP_HINT}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a world folder, started and stopped by PID.

    Parameters
    ----------
    root
        ``W/postgres`` (created if missing).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.data = self.root / "data"
        self.run_dir = self.root / "run"
        #: daf_butler's credentials file for this server (what ``LSST_DB_AUTH`` points at).
        self.db_auth_file = self.root / "db-auth.yaml"
        self._pid_file = self.run_dir / "postgres.pid"
        self._child: subprocess.Popen[bytes] | None = None

    # -- facts ------------------------------------------------------------------------------

    @property
    def _server_user(self) -> str | None:
        """Who runs the server: ``postgres`` when we are root (PostgreSQL refuses root), else us."""
        return "postgres" if os.geteuid() == 0 else None

    def _state(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.root / "state.json").read_text()))
        except (OSError, ValueError):
            return {}

    @property
    def port(self) -> int | None:
        value = self._state().get("port")
        return int(value) if value else None

    def password(self) -> str:
        """The superuser's password (created on first use, mode 0600)."""
        path = self.root / "secrets.json"
        try:
            return str(json.loads(path.read_text())["password"])
        except (OSError, ValueError, KeyError):
            pass
        value = secrets.token_urlsafe(24)
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({"password": value}) + "\n", mode=0o600)
        return value

    def url(self, database: str, *, with_password: bool = False, driver: str = "postgresql") -> str:
        """A SQLAlchemy URL of one database (the password only where a config file must hold it)."""
        if self.port is None:
            raise ServiceError(f"{self.root}: PostgreSQL has not been started yet")
        cred = f"{_SUPERUSER}:{self.password()}" if with_password else _SUPERUSER
        return f"{driver}://{cred}@127.0.0.1:{self.port}/{database}"

    # -- lifecycle ----------------------------------------------------------------------
    def is_up(self) -> bool:
        return self._live() is not None and self._connect_ok()

    def up(self, timeout: float = 60.0) -> bool:
        """Initialise (first time), start, and make the world's databases; idempotent.

        Returns
        -------
        bool
            False if it was already up (nothing changed).

        Raises
        ------
        ConfigError
            If no PostgreSQL server is installed.
        ServiceError
            If it does not start (the message names the log).
        """
        if self.is_up():
            return False
        bindir = find_postgres()
        self._check_reachable()
        self.stop()  # leftovers of a half-started world
        for sub in (self.root, self.run_dir, self.root / "logs"):
            sub.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)  # the server user must reach data/ and run/, nothing else here
        user = self._server_user
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(self.run_dir, entry.pw_uid, entry.pw_gid)
        os.chmod(self.run_dir, 0o700 if user is None else 0o755)
        if not (self.data / "PG_VERSION").exists():
            self._initdb(bindir)
        port = self.port or _free_port()
        atomic_write_json(self.root / "state.json", {**self._state(), "port": port})
        cmd = [
            str(bindir / "postgres"),
            "-D",
            str(self.data),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={port}",
            "-c",
            f"unix_socket_directories={self.run_dir}",
            "-c",
            "max_connections=200",
            "-c",
            "synchronous_commit=off",  # a test world: a crash may lose the last commits, never corrupt
        ]
        log = self.root / "logs" / "postgres.log"
        self._child = start(cmd, log, env=self._env(), cwd=self.root, pid_file=self._pid_file, user=user)
        deadline = time.monotonic() + timeout
        while not self._connect_ok():
            if self._child.poll() is not None:
                raise ServiceError(f"PostgreSQL exited during start-up; see {log}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"PostgreSQL did not accept connections in {timeout:.0f} s; see {log}")
            time.sleep(0.1)
        self._ensure_databases()
        self._write_db_auth()
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: sessions are ended, the cluster is left clean); idempotent."""
        pid = self._live()
        if pid is not None:
            os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + timeout
            while live_pid(read_pid_record(self._pid_file), reap=True) is not None and time.monotonic() < deadline:
                if self._child is not None:
                    self._child.poll()
                time.sleep(0.05)
            left: list[subprocess.Popen[bytes] | PidRecord] = []
            record = read_pid_record(self._pid_file)
            if record is not None and live_pid(record, reap=True) is not None:
                left = stop_groups([record], timeout=5, kill_timeout=5)
            if left:
                raise ServiceError(f"could not stop PostgreSQL (pid {pid}); see {self.root / 'logs'}")
        if self._child is not None:
            self._child.poll()
            self._child = None
        self._pid_file.unlink(missing_ok=True)

    # -- internals ------------------------------------------------------------------------
    def _live(self) -> int | None:
        if self._child is not None:
            self._child.poll()
        return live_pid(read_pid_record(self._pid_file), reap=True)

    def _check_reachable(self) -> None:
        """The server user must be able to walk down to the cluster (when that user is not us)."""
        user = self._server_user
        if user is None:
            return
        uid = pwd.getpwnam(user).pw_uid
        for folder in reversed(self.root.parents):
            st = folder.stat()
            if not (st.st_mode & 0o001 or (st.st_uid == uid and st.st_mode & 0o100)):
                raise ConfigError(
                    f"{self.root}: the PostgreSQL server runs as {user!r}, which cannot enter {folder} "
                    f"(mode {st.st_mode & 0o777:o}); put the world elsewhere (--dir) or make it enterable (chmod o+x)"
                )

    def _env(self) -> dict[str, str]:
        keep = ("PATH", "LANG", "LC_ALL", "TZ")
        return {k: v for k, v in os.environ.items() if k in keep} | {"LC_ALL": "C.UTF-8"}

    def _initdb(self, bindir: Path) -> None:
        user = self._server_user
        if self.data.exists():
            shutil.rmtree(self.data)  # a half-made cluster (no PG_VERSION)
        pwfile = self.root / ".pwfile"
        atomic_write_text(pwfile, self.password() + "\n", mode=0o600)
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            self.data.mkdir(mode=0o700)
            os.chown(self.data, entry.pw_uid, entry.pw_gid)
        cmd = [
            str(bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            _SUPERUSER,
            "--pwfile",
            str(pwfile),
            "--auth",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--no-locale",
        ]
        log = self.root / "logs" / "initdb.log"
        try:
            proc = start(cmd, log, env=self._env(), cwd=self.root, user=user, echo=True)
            if proc.wait(timeout=120) != 0:
                raise ServiceError(f"initdb failed; see {log}")
        finally:
            pwfile.unlink(missing_ok=True)

    def _connect(self, database: str = "postgres") -> Any:
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=_SUPERUSER,
            password=self.password(),
            dbname=database,
            connect_timeout=2,
        )

    def _connect_ok(self) -> bool:
        if self.port is None:
            return False
        try:
            self._connect().close()
            return True
        except Exception:
            return False

    def _ensure_databases(self) -> None:
        conn = self._connect()
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                for name in (RUCIO_DATABASE, BUTLER_DATABASE):
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cur.fetchone() is None:
                        cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        conn = self._connect(BUTLER_DATABASE)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:  # daf_butler's timespan columns need it
                cur.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
        finally:
            conn.close()

    def _write_db_auth(self) -> None:
        # (lsst.utils.db_auth wants a bare dialect here; it matches any driver of it)
        entry = {"url": self.url(BUTLER_DATABASE), "username": _SUPERUSER, "password": self.password()}
        atomic_write_text(self.db_auth_file, yaml.safe_dump([entry]), mode=0o600)
