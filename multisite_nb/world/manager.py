"""The embedded world: real Rucio, one Butler per site and synthetic data, in one folder.

The world is a *deployment*, not a fake: phase code reaches it only through the site
manifest (``parameters/sites/embedded.yaml``), exactly as it reaches the real facilities
through ``parameters/sites/facilities.yaml``.

Layout of a world folder ``W``::

    W/rucio/            Rucio server config, SQLite DB, client config (credentials), logs, PIDs
    W/rse/<RSE>/        each site's RSE directory = its Butler datastore root
    W/butler/<SITE>/    each site's Butler repository (butler.yaml + SQLite registry)
    W/postgres/         with ``--db postgresql``: the PostgreSQL cluster holding Rucio's database
                        and every site's registry (one schema each), see :mod:`.postgres`
    W/world.json        what was set up, and when
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multisite_nb.adapters.butler.repo import registry_credentials
from multisite_nb.adapters.files import atomic_write_text
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.params import load_campaign
from multisite_nb.world.spec import DEFAULT_SPEC, SkySpec, load_spec

if TYPE_CHECKING:  # the services' modules load when a world uses them (`import multisite_nb` stays light)
    from multisite_nb.world.postgres import PostgresServer
    from multisite_nb.world.rucio_server import RucioServer

__all__ = ["DATABASES", "World", "default_world_dir", "has_services", "is_world", "world_env", "world_secrets"]

#: The world's database back ends: SQLite files (default) or one PostgreSQL server.
DATABASES = ("sqlite", "postgresql")


def default_world_dir() -> Path:
    """``$MSNB_WORLD`` or ``./world``."""
    return Path(os.environ.get("MSNB_WORLD", "world")).resolve()


def is_world(root: Path) -> bool:
    """Whether ``root`` holds a world (its ``world.json``, written when it was first brought up)."""
    return (Path(root) / "world.json").is_file()


def has_services(root: Path) -> bool:
    """Whether ``root`` holds a world's services, even one whose first ``up`` never finished."""
    return is_world(root) or any((Path(root) / part).is_dir() for part in ("rucio", "postgres"))


def world_secrets(root: Path) -> list[str]:
    """The world's own credentials (Rucio's and PostgreSQL's passwords), for the secret scan; never print them."""
    found: list[str] = []
    for part in ("rucio", "postgres"):
        try:
            found += [str(v) for v in json.loads((Path(root) / part / "secrets.json").read_text()).values() if v]
        except (OSError, ValueError):
            pass
    return found


def world_env(root: Path) -> dict[str, str]:
    """Environment under which the embedded manifest resolves to this world.

    On PostgreSQL it also points daf_butler at the world's credentials (``LSST_DB_AUTH``).
    """
    env = {**os.environ, "MSNB_WORLD": str(Path(root).resolve())}
    auth = Path(root).resolve() / "postgres" / "db-auth.yaml"
    if auth.exists():
        env["LSST_DB_AUTH"] = str(auth)
    return env


@dataclass
class World:
    """The embedded deployment for one campaign.

    Parameters
    ----------
    root
        The world folder.
    campaign_file
        A campaign whose manifest describes this world (sites, RSEs, repos).
    spec_file
        The world spec (sky, instrument, observations) to build it from; default: the one it
        was built from (``world.json``), else :data:`~.spec.DEFAULT_SPEC`.
    db
        The database back end (:data:`DATABASES`); default: the one it was built with, else SQLite.
    """

    root: Path
    campaign_file: Path
    spec_file: Path | None = None
    db: str | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()
        self.campaign: Campaign = load_campaign(self.campaign_file, env=world_env(self.root))
        self._check_distinct()
        built_with = self._read_state().get("db")
        if self.db is not None and self.db not in DATABASES:
            raise ConfigError(f"--db {self.db!r}: expected one of {', '.join(DATABASES)}")
        if self.db is not None and built_with is not None and self.db != built_with:
            raise ConfigError(
                f"the world {self.root} was built on {built_with}, not {self.db}; nothing was changed: "
                "build the other back end in another world folder (--dir)"
            )
        self.db = self.db or built_with or "sqlite"

    def _check_distinct(self) -> None:
        """On one machine every site needs its own Butler repository and RSE root.

        (At the facilities each path is local to its own site, so the same path at two sites
        is fine there; here two sites would write into one place.)
        """
        for key in ("butler", "rse_root"):
            owner: dict[str, str] = {}
            for site in self.campaign.all_sites:
                value = getattr(self.campaign.site(site), key)
                if value is None:
                    continue
                where = str(Path(value).resolve()) if "/" in value else value
                if where in owner:
                    raise ConfigError(
                        f"{self.campaign.manifest_path}: key 'sites.{site}.{key}': {value} is also "
                        f"site {owner[where]}'s; in one machine's world every site needs its own"
                    )
                owner[where] = site

    # -- parts ----------------------------------------------------------------------
    @property
    def rucio(self) -> RucioServer:
        from multisite_nb.world.rucio_server import RucioServer

        rses = {self.campaign.site(s).rse: Path(self.rse_root(s)) for s in self.campaign.all_sites}
        database = None
        if self.postgres is not None and self.postgres.port is not None:  # (not started yet: no URL to give)
            from multisite_nb.world.postgres import RUCIO_DATABASE

            database = self.postgres.url(RUCIO_DATABASE, with_password=True, driver="postgresql+psycopg")
        return RucioServer(self.root / "rucio", rses, [self.campaign.scope], database=database)

    @property
    def postgres(self) -> PostgresServer | None:
        """The world's PostgreSQL server, or None on SQLite."""
        if self.db != "postgresql":
            return None
        from multisite_nb.world.postgres import PostgresServer

        return PostgresServer(self.root / "postgres")

    def rse_root(self, site: str) -> str:
        spec = self.campaign.site(site)
        if spec.rse_root is None:
            raise ConfigError(f"{self.campaign.manifest_path}: key 'sites.{site}.rse_root' is needed for the world")
        return spec.rse_root

    @property
    def state_file(self) -> Path:
        return self.root / "world.json"

    def env(self) -> dict[str, str]:
        """Environment for tools run against this world (rucio CLI, butler CLI, notebooks)."""
        return {**world_env(self.root), **self.rucio.client_env()}

    def _registry(self, site: str) -> tuple[str | None, str | None]:
        """(database URL, schema) of a site's registry; (None, None) for SQLite."""
        if self.postgres is None:
            return None, None
        from multisite_nb.world.postgres import BUTLER_DATABASE, BUTLER_DRIVER

        return self.postgres.url(BUTLER_DATABASE, driver=BUTLER_DRIVER), site.lower()

    # -- lifecycle --------------------------------------------------------------------
    def spec(self) -> tuple[Path, SkySpec]:
        """The world spec to build from, checked against the one the world was built from.

        Raises
        ------
        ConfigError
            If the world was built from another spec (nothing is changed).
        """
        state = self._read_state()
        built_from = state.get("spec_file")
        path, spec = load_spec(self.spec_file or built_from)
        if state.get("central_populated") and state.get("spec_digest", SkySpec().digest()) != spec.digest():
            raise ConfigError(
                f"{path}: the world {self.root} was built from another spec ({built_from or DEFAULT_SPEC}); "
                "nothing was changed: build this spec in another world folder (--dir)"
            )
        return path, spec

    def up(self, log: Callable[[str], None] = print) -> bool:
        """Bring the world up; idempotent. Returns False when it was already up (nothing changed).

        Raises
        ------
        ConfigError
            If the world was built from another spec than the one asked for, before anything starts.
        """
        t0 = time.monotonic()
        spec_path, spec = self.spec()
        self.root.mkdir(parents=True, exist_ok=True)
        for site in self.campaign.all_sites:
            Path(self.rse_root(site)).mkdir(parents=True, exist_ok=True)
        pg_started = rucio_started = False
        try:
            if self.postgres is not None:
                pg_started = self.postgres.up()
                log(f"postgresql: {'started' if pg_started else 'already up'} ({time.monotonic() - t0:.1f} s)")
            rucio_started = self.rucio.up()
            log(f"rucio: {'started' if rucio_started else 'already up'} ({time.monotonic() - t0:.1f} s)")
            created, populated, state = self._build(spec_path, spec, log)
        except BaseException:
            if rucio_started or pg_started:  # all or nothing: what this call started does not stay up half-built
                log("world up failed part way: stopping the services it started")
                try:
                    if rucio_started:
                        self.rucio.down()
                    if pg_started and self.postgres is not None:
                        self.postgres.stop()
                except Exception as exc:  # the first failure is the one to report
                    log(f"  and stopping them failed too: {type(exc).__name__}: {exc}")
            raise
        started = rucio_started or pg_started
        state.setdefault("created", datetime.now(UTC).isoformat(timespec="seconds"))
        state["db"] = self.db
        state["campaign_file"] = str(self.campaign.path)
        self._write_state(state)
        changed = started or bool(created) or not populated
        log(
            f"world {'up' if changed else 'was already up; nothing changed'} "
            f"in {time.monotonic() - t0:.1f} s: {self.root}"
        )
        return changed

    def _build(
        self, spec_path: Path, spec: SkySpec, log: Callable[[str], None]
    ) -> tuple[list[str], object, dict[str, Any]]:
        """The sites' repositories (made if missing) and the central one populated (once)."""
        from multisite_nb.world.butler_world import create_site_repo, populate_central

        with registry_credentials(self.campaign.db_auth):  # this process opens the sites' Butlers too
            created = []
            for site in self.campaign.all_sites:
                if create_site_repo(
                    Path(self.campaign.butler_repo(site)), Path(self.rse_root(site)), *self._registry(site)
                ):
                    created.append(site)
            if created:
                log(f"butler: created repos for {', '.join(created)}")
            state = self._read_state()
            populated = state.get("central_populated")
            if not populated:
                counts = populate_central(Path(self.campaign.butler_repo(self.campaign.central)), spec)
                state["central_populated"] = datetime.now(UTC).isoformat(timespec="seconds")
                state["central_counts"] = counts
                state["spec_file"] = str(spec_path)
                state["spec_digest"] = spec.digest()
                central = self.campaign.central
                log(f"butler: central repo {central} populated from {spec_path.name}: {counts['datasets']}")
        return created, populated, state

    def down(self, log: Callable[[str], None] = print) -> None:
        """Stop every process the world started (by PID). Data stay on disk."""
        self.rucio.down()
        if self.postgres is not None:
            self.postgres.stop()
        log(f"world down: {self.root}")

    def status(self) -> dict[str, Any]:
        """Each site's health: Rucio reachable, RSE known, Butler repo answering, dataset counts."""
        from multisite_nb.adapters.butler import repo as butler_ops

        rucio_status = self.rucio.status()
        sites: dict[str, Any] = {}
        for site in self.campaign.all_sites:
            spec = self.campaign.site(site)
            entry: dict[str, Any] = {"rse": spec.rse, "butler": spec.butler}
            entry["rse_known"] = bool(rucio_status.get("rses", {}).get(spec.rse, {}).get("exists"))
            try:
                entry.update(butler_ops.repo_summary(spec.butler, db_auth=self.campaign.db_auth))
                entry["butler_ok"] = True
            except Exception as exc:  # report, do not raise: status must always answer
                entry["butler_ok"] = False
                entry["butler_error"] = f"{type(exc).__name__}: {exc}"
            sites[site] = entry
        database: dict[str, Any] = {"kind": self.db}
        if self.postgres is not None:
            database.update(port=self.postgres.port, up=self.postgres.is_up())
        return {"root": str(self.root), "db": database, "rucio": rucio_status, "sites": sites}

    # -- state --------------------------------------------------------------------------
    def _read_state(self) -> dict[str, Any]:
        if self.state_file.exists():
            state: dict[str, Any] = json.loads(self.state_file.read_text())
            return state
        return {}

    def _write_state(self, state: dict[str, Any]) -> None:
        atomic_write_text(self.state_file, json.dumps(state, indent=2, sort_keys=True))
