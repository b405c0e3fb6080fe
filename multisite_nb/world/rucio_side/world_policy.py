"""Site policy of the embedded world's Rucio: imported first by every Rucio-side process.

Run with the Rucio server venv (``.venv-rucio``); imports only Rucio and the standard library.

Two things must hold in every process that touches the Rucio database (the gunicorn app,
the site-services daemon, the bootstrap):

1. ``rucio.common.utils.chunks`` is capped at ``MAX_CHUNK`` *before* any ``rucio.core``
   module is imported. Rucio builds ``OR`` chains of up to 1,000 terms; SQLite's expression
   depth limit is 1,000, so bulk calls over >= 1,000 DIDs otherwise fail with a bare
   ``DatabaseException``.
2. The lfn2pfn algorithm ``butler_path`` is registered. It maps a file DID ``scope:NAME`` to
   ``<rse prefix>/NAME``: NAME is the path relative to the RSE root, which is also the site
   Butler's datastore root, so a Rucio replica and a Butler artifact are the same file.
   Rucio's built-in ``identity`` gives ``<prefix>/<scope>/NAME`` and ``hash`` adds
   ``<scope>/xx/yy/``. The server config names this module in ``[policy] lfn2pfn_module`` so
   any process reading that config registers it; clients (which do not know the algorithm)
   ask the server for PFNs (``RSEProtocol.__lfns2pfns_client``).
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


def _register() -> None:
    from rucio.rse.translation import RSEDeterministicTranslation

    if not RSEDeterministicTranslation.supports(LFN2PFN_ALGORITHM):
        RSEDeterministicTranslation.register(butler_path, LFN2PFN_ALGORITHM)


_register()
