"""The embedded world's real Rucio service: server, database and site daemons, by PID.

:class:`RucioServer` runs Rucio 41 from its own venv (``.venv-rucio``; its pins clash with the
toolkit's) on 127.0.0.1 with a SQLite database, everything inside one folder::

    ROOT/
      server.cfg         server-side Rucio config (no secret in it)
      client.cfg         client config for the toolkit, the CLI and notebooks (mode 0600:
                         it holds the service account's password)
      secrets.json       generated passwords (mode 0600)
      state.json         the port, remembered across ups
      spec.json          account, scopes, RSEs, quota: input of rucio_side/bootstrap.py
      rucio.db           the SQLite database
      tokens/token       the client's cached auth token (auth_token_file_path)
      transfers/         job files of the posix transfertool
      run/*.pid          PIDs of gunicorn and the site-services daemon (own process groups)
      logs/              gunicorn.log, site_services.log (rotated), bootstrap.log

Processes: ``gunicorn app:application`` (``-w 1 --threads 1``: SQLite) and
``site_services.py`` (Rucio's conveyor submitter/poller/finisher with a posix transfertool,
judge injector/evaluator/repairer/cleaner, abacus), both from ``rucio_side/``.

Only the standard library and the toolkit's own process supervision (:mod:`multisite_nb.adapters.processes`)
and atomic writer (:mod:`multisite_nb.adapters.files`) are used here: the toolkit never imports the
Rucio server.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from multisite_nb.adapters.files import atomic_write_json, atomic_write_text
from multisite_nb.adapters.processes import PidRecord, live_pid, read_pid_record, start, stop_groups
from multisite_nb.world.rucio_files import RUCIO_SIDE, write_client_config, write_server_config, write_spec

__all__ = ["RucioServer", "RucioServerError"]

_PROCESSES = ("gunicorn", "site_services")
_LOG_MAX_BYTES = 5 * 1024 * 1024


class RucioServerError(RuntimeError):
    """The Rucio service could not be started or configured (the message names the log)."""


def _default_venv() -> Path:
    env = os.environ.get("MULTISITE_NB_RUCIO_VENV")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / ".venv-rucio"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _port_bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _rotate(log: Path) -> None:
    if log.exists() and log.stat().st_size > _LOG_MAX_BYTES:
        os.replace(log, log.with_name(log.name + ".1"))


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class RucioServer:
    """A real Rucio server with site daemons for the embedded world, managed by PID.

    Parameters
    ----------
    root : Path
        The world's Rucio folder (config, database, logs, PIDs; created if missing).
    rses : Mapping[str, Path]
        RSE name -> its prefix directory. A file DID ``scope:NAME`` lives at ``<prefix>/NAME``.
    scopes : Sequence[str]
        Scopes to create (owned by ``account``).
    venv : Path, optional
        The Rucio server venv; default ``$MULTISITE_NB_RUCIO_VENV`` or ``<repo>/.venv-rucio``.
    port : int, optional
        Loopback port; None picks a free one on the first ``up`` and remembers it.
    account : str
        The service account the clients use (``admin`` attribute, userpass identity).
    quota_bytes : int
        The account's local limit on every RSE (-1: unlimited).
    database : str, optional
        SQLAlchemy URL of the server's database (with its password); default: SQLite in ``root``.
    """

    def __init__(
        self,
        root: Path,
        rses: Mapping[str, Path],
        scopes: Sequence[str],
        *,
        venv: Path | None = None,
        port: int | None = None,
        account: str = "multisite",
        quota_bytes: int = 100 * 1024**4,
        database: str | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.rses = {name: Path(prefix).resolve() for name, prefix in rses.items()}
        self.scopes = list(dict.fromkeys(scopes))
        self.venv = Path(venv) if venv is not None else _default_venv()
        self._port_arg = port
        self.account = account
        self.quota_bytes = quota_bytes
        self.database = database
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._cached_token: tuple[str, float, int] | None = None  # token, obtained at, port
        #: The server-side Rucio config (no secrets).
        self.server_config = self.root / "server.cfg"
        #: The client config: host, userpass credentials, token file inside ``root``.
        self.client_config = self.root / "client.cfg"
        #: Where gunicorn, the site services and the bootstrap log.
        self.log_dir = self.root / "logs"

    # -- the port ----------------------------------------------------------------------------

    @property
    def port(self) -> int | None:
        """The port in use or remembered (None before the first ``up`` with ``port=None``)."""
        if self._port_arg is not None:
            return self._port_arg
        return self._state().get("port")

    @property
    def url(self) -> str | None:
        """``http://127.0.0.1:<port>`` or None."""
        return f"http://127.0.0.1:{self.port}" if self.port else None

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialize up/down of this world across processes (``run/lock``, flock)."""
        (self.root / "run").mkdir(parents=True, exist_ok=True)
        with open(self.root / "run" / "lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def client_env(self) -> dict[str, str]:
        """Environment for Rucio clients (rucio-clients, ``rucio`` CLI) of this world."""
        return {"RUCIO_CONFIG": str(self.client_config)}

    # -- lifecycle -------------------------------------------------------------------------
    def up(self, timeout: float = 90.0) -> bool:
        """Start the server and the site daemons; idempotent.

        Parameters
        ----------
        timeout : float
            Seconds to wait for the bootstrap, ``/ping`` and the site daemons' start.

        Returns
        -------
        bool
            False if it was already up and healthy (nothing changed), True if started.

        Raises
        ------
        RucioServerError
            If a step fails; what was started is stopped again, the message names the log.
        """
        with self._lock():
            if self.is_up():
                return False
            self._down()  # leftovers of a partial world (e.g. one process died)
            self._start(timeout)
        return True

    def _start(self, timeout: float) -> None:
        python = self.venv / "bin" / "python"
        if not python.exists():
            raise RucioServerError(f"no Rucio server venv at {self.venv} (run scripts/setup.sh)")
        for sub in ("", "logs", "run", "tokens", "transfers"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        for prefix in self.rses.values():
            prefix.mkdir(parents=True, exist_ok=True)
        port = self._choose_port()
        creds = self._secrets()
        self._write_server_config()
        self._write_client_config(port, creds["password"])
        self._write_spec()
        for name in ("gunicorn.log", "site_services.out", "bootstrap.log"):
            _rotate(self.log_dir / name)
        ready = self.root / "run" / "site_services.ready"
        ready.unlink(missing_ok=True)
        deadline = time.monotonic() + timeout
        spec_digest = self._spec_digest()
        # The bootstrap (~1.5 s) is skipped when the database exists and was last set up from
        # this very spec; ``sync()`` forces it.
        sqlite_missing = self.database is None and not (self.root / "rucio.db").exists()
        need_bootstrap = sqlite_missing or self._state().get("spec_sha256") != spec_digest
        try:
            # gunicorn imports Rucio (~1.5 s) while the bootstrap builds/updates the database.
            self._spawn(
                "gunicorn",
                [
                    str(python),
                    "-m",
                    "gunicorn",
                    "--bind",
                    f"127.0.0.1:{port}",
                    "--workers",
                    "1",
                    "--threads",
                    "1",
                    "--no-control-socket",
                    "--timeout",
                    "900",
                    "--graceful-timeout",
                    "10",
                    "--pythonpath",
                    str(RUCIO_SIDE),
                    "--error-logfile",
                    "-",
                    "app:application",
                ],
                self.log_dir / "gunicorn.log",
            )
            if need_bootstrap:
                result = self._run_bootstrap(python, deadline)
                if result["created_db"]:
                    # A new database knows no token: drop a token cached for an older one.
                    (self.root / "tokens" / "token").unlink(missing_ok=True)
                self._update_state(spec_sha256=spec_digest)
            self._spawn(
                "site_services",
                [
                    str(python),
                    str(RUCIO_SIDE / "site_services.py"),
                    "--log",
                    str(self.log_dir / "site_services.log"),
                    "--ready-file",
                    str(ready),
                ],
                self.log_dir / "site_services.out",
            )
            self._wait_ready(port, ready, deadline)
        except BaseException:
            self._down()
            raise

    def down(self, timeout: float = 20.0) -> None:
        """Stop every process this world started (SIGTERM to its group, then SIGKILL); idempotent.

        Parameters
        ----------
        timeout : float
            Seconds to wait for a graceful stop before killing.
        """
        if not self.root.is_dir():
            return
        with self._lock():
            self._down(timeout)

    def _down(self, timeout: float = 20.0) -> None:
        # our own children are stopped through their Popen (reaped there), others by their records
        running: dict[str, subprocess.Popen[bytes] | PidRecord] = {}
        for name in _PROCESSES:
            record = self._read_pid(name)
            if record is not None and self._live_pid(name) == record.pid:
                child = self._children.get(name)
                running[name] = child if child is not None and child.pid == record.pid else record
        left = stop_groups(running.values(), timeout=timeout, kill_timeout=5)
        if left:
            names = sorted(n for n, t in running.items() if t in left)
            raise RucioServerError(f"could not stop {names} (pids {sorted(t.pid for t in left)})")
        for name in _PROCESSES:
            (self.root / "run" / f"{name}.pid").unlink(missing_ok=True)
        port = self.port
        port_deadline = time.monotonic() + 5
        while port and _port_listening(port) and time.monotonic() < port_deadline:
            time.sleep(0.05)

    def pids(self) -> dict[str, int]:
        """The live processes of this world's Rucio: name (``gunicorn``, ``site_services``) -> PID."""
        return {name: pid for name in _PROCESSES if (pid := self._live_pid(name)) is not None}

    def is_up(self) -> bool:
        """True if both processes are alive and the server answers ``/ping``."""
        return all(self._live_pid(n) is not None for n in _PROCESSES) and self._ping() is not None

    def status(self) -> dict[str, Any]:
        """What is running and what Rucio knows, without raising.

        Returns
        -------
        dict
            ``up``, ``reachable``, ``version``, ``port``, ``url``, ``root``, ``client_config``,
            ``processes`` (name -> pid, alive) and ``rses`` (name -> ``exists`` in Rucio (None if
            unreachable), ``prefix``, ``prefix_exists``, ``lfn2pfn_algorithm``).
        """
        processes = {}
        for name in _PROCESSES:
            pid = self._live_pid(name)
            recorded = self._read_pid(name)
            processes[name] = {
                "pid": pid if pid is not None else (recorded.pid if recorded else None),
                "alive": pid is not None,
            }
        ping = self._ping()
        rses: dict[str, dict[str, Any]] = {}
        known: dict[str, dict[str, Any]] | None = None
        if ping is not None:
            for _attempt in range(2):  # a cached token may belong to a recreated database
                try:
                    known = self._rse_attributes()
                    break
                except Exception:  # noqa: BLE001 - status must always answer
                    self._cached_token = None
                    known = None
        for name, prefix in self.rses.items():
            rses[name] = {
                "exists": None if known is None else name in known,
                "prefix": str(prefix),
                "prefix_exists": prefix.is_dir(),
                "lfn2pfn_algorithm": (known or {}).get(name, {}).get("lfn2pfn_algorithm"),
            }
        return {
            "up": ping is not None and all(p["alive"] for p in processes.values()),
            "reachable": ping is not None,
            "version": (ping or {}).get("version"),
            "port": self.port,
            "url": self.url,
            "root": str(self.root),
            "client_config": str(self.client_config),
            "account": self.account,
            "processes": processes,
            "rses": rses,
        }

    def sync(self) -> list[str]:
        """Re-apply account/scopes/RSEs/distances/quotas (e.g. after adding an RSE); returns changes.

        Safe while up (the daemons pick RSE changes up within ~30 s). Never deletes anything.
        """
        with self._lock():
            for sub in ("logs", "run"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            creds = self._secrets()
            if self.port:
                self._write_client_config(self.port, creds["password"])
            for prefix in self.rses.values():
                prefix.mkdir(parents=True, exist_ok=True)
            self._write_spec()
            result = self._run_bootstrap(self.venv / "bin" / "python", time.monotonic() + 120)
            self._update_state(spec_sha256=self._spec_digest())
        return result["changes"]

    def _spec_digest(self) -> str:
        # Spec and secrets: a regenerated password must reach the database too.
        data = (self.root / "spec.json").read_bytes() + (self.root / "secrets.json").read_bytes()
        data += (self.database or "sqlite").encode()
        return hashlib.sha256(data).hexdigest()

    # -- internals: configuration ----------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        try:
            return json.loads((self.root / "state.json").read_text())
        except (OSError, ValueError):
            return {}

    def _choose_port(self) -> int:
        if self._port_arg is not None:
            if not _port_bindable(self._port_arg):
                raise RucioServerError(f"port {self._port_arg} on 127.0.0.1 is in use")
            port = self._port_arg
        else:
            remembered = self._state().get("port")
            port = remembered if remembered and _port_bindable(remembered) else _free_port()
        self._update_state(port=port)
        return port

    def _update_state(self, **values: Any) -> None:
        state = self._state()
        state.update(values)
        atomic_write_json(self.root / "state.json", state, indent=1)

    def _secrets(self) -> dict[str, str]:
        path = self.root / "secrets.json"
        try:
            data = json.loads(path.read_text())
            if data.get("password") and data.get("root_password"):
                return data
        except (OSError, ValueError):
            pass
        data = {"password": secrets.token_urlsafe(24), "root_password": secrets.token_urlsafe(24)}
        atomic_write_text(path, json.dumps(data) + "\n", mode=0o600)
        return data

    def _write_server_config(self) -> None:
        write_server_config(self.root, self.server_config, self.database)

    def _write_client_config(self, port: int, password: str) -> None:
        write_client_config(self.client_config, port, self.account, password, self.root / "tokens" / "token")

    def _write_spec(self) -> None:
        write_spec(
            self.root / "spec.json",
            self.account,
            self.scopes,
            self.quota_bytes,
            self.rses,
            secrets_file=self.root / "secrets.json",
        )

    # -- internals: processes --------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "GUNICORN_CMD_ARGS") and not k.startswith("RUCIO_")
        }
        env.update(
            {
                "RUCIO_CONFIG": str(self.server_config),
                "PYTHONPATH": str(RUCIO_SIDE),
                "PYTHONWARNINGS": "ignore::DeprecationWarning",
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    def _run_bootstrap(self, python: Path, deadline: float) -> dict[str, Any]:
        log = self.log_dir / "bootstrap.log"
        with open(log, "a") as err:
            proc = subprocess.run(
                [str(python), str(RUCIO_SIDE / "bootstrap.py"), str(self.root / "spec.json")],
                cwd=self.root,
                env=self._env(),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                timeout=max(5.0, deadline - time.monotonic()),
                check=False,
            )
        if proc.returncode != 0:
            raise RucioServerError(f"Rucio bootstrap failed (exit {proc.returncode}); see {log}:\n{_tail(log)}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        with open(log, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {json.dumps(result)}\n")
        return result

    def _spawn(self, name: str, cmd: list[str], log: Path) -> None:
        """Start daemon ``name`` in its own process group, its PID record in ``run/<name>.pid``."""
        self._children[name] = start(
            cmd, log, env=self._env(), cwd=self.root, pid_file=self.root / "run" / f"{name}.pid"
        )

    def _read_pid(self, name: str) -> PidRecord | None:
        return read_pid_record(self.root / "run" / f"{name}.pid")

    def _live_pid(self, name: str) -> int | None:
        """PID of process ``name`` if it is alive and is the one we started (not a reused PID)."""
        self._reap()
        # reap=True: a zombie here is our own child started by another instance (ours are reaped above)
        return live_pid(self._read_pid(name), reap=True)

    def _reap(self) -> None:
        for name, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[name]

    def _wait_ready(self, port: int, ready: Path, deadline: float) -> None:
        pinged = daemon_ready = False
        while time.monotonic() < deadline:
            for name, log in (("gunicorn", "gunicorn.log"), ("site_services", "site_services.out")):
                if self._live_pid(name) is None:
                    raise RucioServerError(
                        f"{name} exited during start-up; see {self.log_dir / log}:\n{_tail(self.log_dir / log)}"
                    )
            pinged = pinged or self._ping(port) is not None
            daemon_ready = daemon_ready or ready.exists()
            if pinged and daemon_ready:
                return
            time.sleep(0.05)
        raise RucioServerError(
            f"Rucio not ready after the timeout (ping: {pinged}, site services: {daemon_ready}); see {self.log_dir}"
        )

    # -- internals: HTTP -------------------------------------------------------------------
    def _ping(self, port: int | None = None) -> dict[str, Any] | None:
        port = port or self.port
        if not port:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as resp:
                return json.loads(resp.read().decode())
        except (OSError, ValueError):
            return None

    def _token(self) -> str:
        """An auth token for status queries, kept in memory (never on disk) for 30 minutes."""
        if (
            self._cached_token
            and self._cached_token[2] == self.port
            and time.monotonic() - self._cached_token[1] < 1800
        ):
            return self._cached_token[0]
        cfg = configparser.ConfigParser(interpolation=None)
        cfg.read(self.client_config)
        client = cfg["client"]
        req = urllib.request.Request(
            f"{self.url}/auth/userpass",
            headers={
                "X-Rucio-Account": client["account"],
                "X-Rucio-Username": client["username"],
                "X-Rucio-Password": client["password"],
            },
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            token = resp.headers["X-Rucio-Auth-Token"]
        self._cached_token = (token, time.monotonic(), self.port or 0)
        return token

    def _rse_attributes(self) -> dict[str, dict[str, Any]]:
        """RSE name -> attributes, for the RSEs of this world that Rucio knows."""
        token = self._token()
        found: dict[str, dict[str, Any]] = {}
        for name in self.rses:
            req = urllib.request.Request(f"{self.url}/rses/{name}/attr/", headers={"X-Rucio-Auth-Token": token})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    found[name] = json.loads(resp.read().decode())
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
        return found


def main(argv: Sequence[str] | None = None) -> int:
    """Tiny CLI for manual use: ``python -m multisite_nb.world.rucio_server ROOT up|down|status``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[1] not in ("up", "down", "status"):
        print("usage: rucio_server ROOT up|down|status  (RSEs/scopes from ROOT/spec.json)", file=sys.stderr)
        return 2
    root = Path(args[0])
    spec = json.loads((root / "spec.json").read_text())
    server = RucioServer(
        root,
        {n: Path(r["prefix"]) for n, r in spec["rses"].items()},
        spec["scopes"],
        account=spec["account"],
        quota_bytes=spec["quota_bytes"],
    )
    if args[1] == "up":
        print("started" if server.up() else "already up")
    elif args[1] == "down":
        server.down()
    else:
        print(json.dumps(server.status(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
