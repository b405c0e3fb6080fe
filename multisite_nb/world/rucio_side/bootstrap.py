"""Bootstrap and idempotent set-up of the embedded world's Rucio database.

Run with the Rucio server venv, ``RUCIO_CONFIG`` pointing at the world's server config and
the directory of this file on ``PYTHONPATH``::

    .venv-rucio/bin/python bootstrap.py SPEC.json

``SPEC.json`` (written by ``multisite_nb.world.rucio_server``) holds the account, scopes,
RSEs (name -> prefix, attributes), quota and the path of the secrets file (JSON, mode 0600,
with the passwords). The script

1. builds the SQLite schema once (tables, alembic stamp at head, base VO, ``root`` account);
2. makes sure the service account (``admin`` attribute, userpass identity), the scopes, the
   RSEs (deterministic DISK, one posix ``file`` protocol with the given prefix, attributes),
   a distance between every ordered pair of RSEs and the account's quota on every RSE exist
   and match the spec. It never deletes anything.

It prints one JSON line (what was created or changed; never a secret) on stdout.
Imports only Rucio and the standard library.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import world_policy  # noqa: F401  (caps rucio.common.utils.chunks before rucio.core is imported)

PROTOCOL_IMPL = "rucio.rse.protocols.posix.Default"
ALL_OPS = {"read": 1, "write": 1, "delete": 1}
WAN_OPS = {"read": 1, "write": 1, "delete": 1, "third_party_copy_read": 1, "third_party_copy_write": 1}


def _schema_exists() -> bool:
    from rucio.db.sqla.session import get_engine
    from sqlalchemy import inspect

    inspector = inspect(get_engine())
    return inspector.has_table("alembic_version") and inspector.has_table("accounts")


def build_database(alembic_ini: str, root_password: str) -> None:
    """Create the schema, stamp it at alembic head, add the base VO and the root account."""
    from alembic import command
    from alembic.config import Config
    from rucio.common import config as rucio_config
    from rucio.db.sqla import models
    from rucio.db.sqla.session import get_engine
    from rucio.db.sqla.util import create_base_vo, create_root_account

    engine = get_engine()
    models.register_models(engine)
    alembic_cfg = Config(alembic_ini)
    alembic_cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    command.stamp(alembic_cfg, "head")
    create_base_vo()
    # The root password is injected in memory only: it is never written to the server config.
    parser = rucio_config.get_config()
    if not parser.has_section("bootstrap"):
        parser.add_section("bootstrap")
    parser.set("bootstrap", "userpass_pwd", root_password)
    create_root_account()


def _set_password(identity: str, password: str, session: Any) -> None:
    """Give an existing userpass identity a new salted password (same hashing as Rucio's)."""
    import hashlib

    from rucio.db.sqla import models
    from rucio.db.sqla.constants import IdentityType
    from sqlalchemy import select

    row = session.execute(
        select(models.Identity).where(
            models.Identity.identity == identity, models.Identity.identity_type == IdentityType.USERPASS
        )
    ).scalar_one()
    salt = os.urandom(255)
    row.salt = salt
    row.password = hashlib.sha256(salt + password.encode()).hexdigest()


def ensure_account(name: str, email: str, password: str, changes: list[str], session: Any) -> None:
    """Service account with the ``admin`` attribute and a userpass identity ``name``."""
    from rucio.common.exception import IdentityError, IdentityNotFound
    from rucio.common.types import InternalAccount
    from rucio.core import account as account_core
    from rucio.core import identity as identity_core
    from rucio.db.sqla.constants import AccountType, IdentityType

    account = InternalAccount(name)
    if not account_core.account_exists(account, session=session):
        account_core.add_account(account, AccountType.SERVICE, email, session=session)
        changes.append(f"account {name}")
    if not account_core.has_account_attribute(account, "admin", session=session):
        account_core.add_account_attribute(account, "admin", True, session=session)
        changes.append(f"account {name}: admin")
    try:
        identity_core.verify_identity(name, IdentityType.USERPASS, password, session=session)
    except IdentityNotFound:
        # Wrong password: the secrets file was regenerated while the database was kept.
        _set_password(name, password, session=session)
        changes.append(f"identity {name}: password reset")
    except IdentityError:
        identity_core.add_identity(name, IdentityType.USERPASS, email, password=password, session=session)
        changes.append(f"identity {name}")
    if not identity_core.exist_identity_account(name, IdentityType.USERPASS, account, session=session):
        identity_core.add_account_identity(name, IdentityType.USERPASS, account, email, default=True, session=session)
        changes.append(f"identity {name} -> account {name}")


def ensure_scopes(scopes: list[str], owner: str, changes: list[str], session: Any) -> None:
    """Scopes owned by ``owner``."""
    from rucio.common.types import InternalAccount, InternalScope
    from rucio.core import scope as scope_core

    existing = {s.external for s in scope_core.list_scopes(session=session)}
    for scope in scopes:
        if scope not in existing:
            scope_core.add_scope(InternalScope(scope), InternalAccount(owner), session=session)
            changes.append(f"scope {scope}")


def ensure_rse(name: str, prefix: str, attributes: dict[str, Any], changes: list[str], session: Any) -> str:
    """Deterministic DISK RSE with one posix ``file`` protocol at ``prefix``; returns its id."""
    from rucio.core import rse as rse_core

    if not rse_core.rse_exists(name, session=session):
        rse_core.add_rse(name, deterministic=True, volatile=False, session=session)
        changes.append(f"rse {name}")
    rse_id = rse_core.get_rse_id(name, include_deleted=False, session=session)
    current = rse_core.list_rse_attributes(rse_id, session=session)
    for key, value in attributes.items():
        if current.get(key) != value:
            rse_core.add_rse_attribute(rse_id, key, value, session=session)
            changes.append(f"rse {name}: {key}")
    protocols = [p for p in rse_core.get_rse_protocols(rse_id, session=session)["protocols"] if p["scheme"] == "file"]
    wanted_prefix = prefix.rstrip("/") + "/"
    if not protocols:
        rse_core.add_protocol(
            rse_id,
            {
                "scheme": "file",
                "hostname": "localhost",
                "port": 0,
                "prefix": wanted_prefix,
                "impl": PROTOCOL_IMPL,
                "domains": {"lan": dict(ALL_OPS), "wan": dict(WAN_OPS)},
            },
            session=session,
        )
        changes.append(f"rse {name}: file protocol")
    else:
        proto = protocols[0]
        if proto["prefix"] != wanted_prefix or proto["impl"] != PROTOCOL_IMPL:
            rse_core.update_protocols(
                rse_id,
                "file",
                {"prefix": wanted_prefix, "impl": PROTOCOL_IMPL},
                hostname=proto["hostname"],
                port=proto["port"],
                session=session,
            )
            changes.append(f"rse {name}: file protocol prefix")
    return rse_id


def ensure_distances(rse_ids: dict[str, str], distance: int, changes: list[str], session: Any) -> None:
    """A distance for every ordered pair of distinct RSEs."""
    from rucio.core import distance as distance_core

    for src, src_id in rse_ids.items():
        for dst, dst_id in rse_ids.items():
            if src == dst:
                continue
            if not distance_core.get_distances(src_rse_id=src_id, dest_rse_id=dst_id, session=session):
                distance_core.add_distance(src_id, dst_id, distance=distance, session=session)
                changes.append(f"distance {src}->{dst}")


def ensure_quotas(account: str, rse_ids: dict[str, str], quota_bytes: int, changes: list[str], session: Any) -> None:
    """The account's local limit on every RSE is ``quota_bytes`` (-1: unlimited)."""
    from rucio.common.types import InternalAccount
    from rucio.core import account_limit

    acc = InternalAccount(account)
    for name, rse_id in rse_ids.items():
        current = account_limit.get_local_account_limit(acc, rse_ids=rse_id, session=session)
        wanted = float("inf") if quota_bytes == -1 else quota_bytes
        if current != wanted:
            account_limit.set_local_account_limit(acc, rse_id, quota_bytes, session=session)
            changes.append(f"quota {account}@{name}")


def main(argv: list[str]) -> int:
    """Entry point: ``bootstrap.py SPEC.json``."""
    start = time.monotonic()
    spec = json.loads(Path(argv[1]).read_text())
    secrets = json.loads(Path(spec["secrets_file"]).read_text())
    changes: list[str] = []

    created_db = False
    if not _schema_exists():
        build_database(spec["alembic_ini"], secrets["root_password"])
        created_db = True
        changes.append("database")

    from rucio.db.sqla.constants import DatabaseOperationType
    from rucio.db.sqla.session import db_session

    with db_session(DatabaseOperationType.WRITE) as session:  # one transaction, one commit
        ensure_account(spec["account"], spec["email"], secrets["password"], changes, session)
        ensure_scopes(list(spec["scopes"]), spec["account"], changes, session)
        rse_ids = {
            name: ensure_rse(name, info["prefix"], info["attributes"], changes, session)
            for name, info in spec["rses"].items()
        }
        ensure_distances(rse_ids, int(spec.get("distance", 1)), changes, session)
        ensure_quotas(spec["account"], rse_ids, int(spec["quota_bytes"]), changes, session)

    print(json.dumps({"created_db": created_db, "changes": changes, "seconds": round(time.monotonic() - start, 3)}))
    return 0


if __name__ == "__main__":
    os.umask(0o077)
    sys.exit(main(sys.argv))
