"""Site policy of the embedded world's Rucio: imported first by every Rucio-side process.

Run with the Rucio server venv (``.venv-rucio``); imports only Rucio and the standard library.

What must hold in every process that touches the Rucio database (the gunicorn app, the
site-services daemon, the bootstrap):

1. ``rucio.common.utils.chunks`` is capped at ``MAX_CHUNK`` *before* any ``rucio.core``
   module is imported. Rucio builds ``OR`` chains of up to 1,000 terms; SQLite's expression
   depth limit is 1,000, so bulk calls over >= 1,000 DIDs otherwise fail with a bare
   ``DatabaseException``.
2. :func:`patch_core` (called by the entry points after this import) splits the file list of
   ``rucio.core.replica.add_replicas`` into ``MAX_CHUNK`` pieces inside the caller's
   transaction: it builds one unchunked ``OR`` over all files, which fails on SQLite from
   ~1,000 files on.
3. The lfn2pfn algorithm ``butler_path`` is registered. It maps a file DID ``scope:NAME`` to
   ``<rse prefix>/NAME``: NAME is the path relative to the RSE root, which is also the site
   Butler's datastore root, so a Rucio replica and a Butler artifact are the same file.
   Rucio's built-in ``identity`` gives ``<prefix>/<scope>/NAME`` and ``hash`` adds
   ``<scope>/xx/yy/``. The server config names this module in ``[policy] lfn2pfn_module`` so
   any process reading that config registers it; clients (which do not know the algorithm)
   ask the server for PFNs (``RSEProtocol.__lfns2pfns_client``).
4. Rucio's JSON DID-metadata plugin accepts SQLite (Rubin's ``rubin_butler`` /
   ``rubin_sidecar`` file metadata), see :func:`_enable_json_metadata_on_sqlite`.
5. SQLite runs in WAL mode, see :func:`_sqlite_wal`.
"""

from __future__ import annotations

import rucio.common.utils as _utils

MAX_CHUNK = 500
LFN2PFN_ALGORITHM = "butler_path"

if not getattr(_utils.chunks, "_world_capped", False):
    _original_chunks = _utils.chunks

    def _capped_chunks(iterable, n):  # type: ignore[no-untyped-def]
        """Rucio's ``chunks`` with the chunk size capped for SQLite."""
        return _original_chunks(iterable, min(int(n), MAX_CHUNK))

    _capped_chunks._world_capped = True  # type: ignore[attr-defined]
    _utils.chunks = _capped_chunks


def butler_path(scope: str, name: str, rse: str, rse_attrs: dict, protocol_attrs: dict) -> str:
    """Return the path of ``scope:name`` below the RSE prefix: the name itself.

    Parameters
    ----------
    scope, name : str
        The file DID; ``name`` is a relative POSIX path such as ``HSC/raw/x.fits``.
    rse, rse_attrs, protocol_attrs
        Unused (part of Rucio's lfn2pfn signature).

    Returns
    -------
    str
        ``name`` without a leading ``/``.

    Raises
    ------
    rucio.common.exception.InvalidPath
        If ``name`` has an empty, ``.`` or ``..`` component (it would leave the RSE prefix or
        alias another file).
    """
    del scope, rse, rse_attrs, protocol_attrs
    path = name.lstrip("/")
    if any(part in ("", ".", "..") for part in path.split("/")):
        from rucio.common.exception import InvalidPath

        raise InvalidPath(f"name {name!r} is not a clean relative path")
    return path


def patch_core() -> None:
    """Make Rucio core calls that build unchunked ``OR`` chains work on SQLite (idempotent)."""
    import functools

    from rucio.core import replica
    from rucio.db.sqla.session import transactional_session

    if getattr(replica.add_replicas, "_world_chunked", False):
        return
    original = replica.add_replicas

    @transactional_session
    @functools.wraps(original)
    def add_replicas(rse_id, files, account, ignore_availability=True, dataset_meta=None, *, session):  # type: ignore[no-untyped-def]
        files = list(files)
        for start in range(0, len(files), MAX_CHUNK):
            original(
                rse_id, files[start : start + MAX_CHUNK], account, ignore_availability, dataset_meta, session=session
            )

    add_replicas._world_chunked = True  # type: ignore[attr-defined]
    replica.add_replicas = add_replicas
    _admins_declare_bad_replicas()


def _admins_declare_bad_replicas() -> None:
    """The world's site policy: accounts with the ``admin`` attribute may declare replicas bad.

    (The generic policy keeps it to root; a data facility's operators are trusted with it, and
    the toolkit's repair uses it to let Rucio re-replicate a corrupt or lost copy.)
    """
    from rucio.core.account import has_account_attribute
    from rucio.core.permission import generic

    def perm_declare_bad_file_replicas(issuer, kwargs, session):  # type: ignore[no-untyped-def]
        return generic._is_root(issuer) or has_account_attribute(account=issuer, key="admin", session=session)

    generic.perm_declare_bad_file_replicas = perm_declare_bad_file_replicas


def _register() -> None:
    from rucio.rse.translation import RSEDeterministicTranslation

    if not RSEDeterministicTranslation.supports(LFN2PFN_ALGORITHM):
        RSEDeterministicTranslation.register(butler_path, LFN2PFN_ALGORITHM)


_register()


def _enable_json_metadata_on_sqlite() -> None:
    """Let Rucio's JSON DID-metadata plugin work on SQLite.

    Rubin's conventions put custom keys on file DIDs (``rubin_butler``, ``rubin_sidecar``),
    which only the JSON metadata plugin stores. That plugin refuses SQLite because
    ``json_implemented()`` says no for it, yet SQLAlchemy's JSON column type (which the
    ``did_meta`` table uses) works on SQLite for setting and getting. Only JSON *filters* in
    DID listings are unsupported there; the toolkit does not use them.
    """
    import rucio.db.sqla.util as sqla_util

    if getattr(sqla_util.json_implemented, "_world_sqlite", False):
        return
    original = sqla_util.json_implemented

    def json_implemented(*, session=None):  # type: ignore[no-untyped-def]
        if session is None:
            from rucio.db.sqla.session import get_session

            session = get_session()
        if session.bind.dialect.name == "sqlite":
            return True
        return original(session=session)

    json_implemented._world_sqlite = True  # type: ignore[attr-defined]
    sqla_util.json_implemented = json_implemented
    import sys

    mod = sys.modules.get("rucio.core.did_meta_plugins.json_meta")
    if mod is not None:  # already imported: rebind its copy of the name too
        mod.json_implemented = json_implemented  # type: ignore[attr-defined]


_enable_json_metadata_on_sqlite()


def _sqlite_wal() -> None:
    """WAL mode and lazy ``BEGIN IMMEDIATE`` on every new SQLite connection.

    The server and the site-services daemon are two processes on one SQLite file, and Rucio
    itself sometimes opens a second connection inside a write transaction (e.g. ``config_get``
    reading the ``configs`` table during ``queue_requests``).

    * WAL (``synchronous=NORMAL``): readers never wait for a writer, a writer never waits for
      readers; writers queue on the busy timeout (``?timeout=`` in the database URL).
    * ``isolation_level = "IMMEDIATE"``: the driver still opens a transaction only right
      before the first INSERT/UPDATE/DELETE (read-only sessions never take the write lock),
      but opens it with ``BEGIN IMMEDIATE``. The write lock is then taken at BEGIN, where the
      busy timeout applies. With a plain deferred ``BEGIN``, a transaction whose first DML
      touches a TEMP table (Rucio's temporary-table joins in ``add_replicas``) reads the main
      database and then upgrades to writing, which SQLite refuses at once (``database is
      locked``) while the other process writes.

    Not ``BEGIN IMMEDIATE`` at the start of *every* transaction (an SQLAlchemy ``begin``
    event): read sessions then take the write lock too, so the nested ``config_get`` read
    above waits for the full busy timeout (a 500-file rule took 61 s instead of 1.3 s) and
    every REST read queues behind the daemon's writes.
    """
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    if getattr(Engine, "_world_sqlite_wal", False):
        return

    @event.listens_for(Engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        if isinstance(dbapi_conn, sqlite3.Connection):
            try:
                if dbapi_conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    dbapi_conn.execute("PRAGMA journal_mode=WAL")
                dbapi_conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.OperationalError:
                pass  # e.g. locked while another process switches it: WAL is persistent anyway
            dbapi_conn.isolation_level = "IMMEDIATE"

    @event.listens_for(Pool, "checkout")
    def _on_checkout(dbapi_conn, _record, _proxy):  # type: ignore[no-untyped-def]
        # SQLAlchemy resets the driver's isolation_level to "" (deferred) on the way.
        if isinstance(dbapi_conn, sqlite3.Connection) and dbapi_conn.isolation_level == "":
            dbapi_conn.isolation_level = "IMMEDIATE"

    Engine._world_sqlite_wal = True  # type: ignore[attr-defined]


_sqlite_wal()
