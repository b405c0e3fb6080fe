"""The toolkit's one door to the Butlers: opening repositories and the queries several phases share.

No other module constructs a ``Butler``. Everything here is typed with daf_butler's own
classes; errors opening a repository become :class:`~.errors.ButlerError` naming the repo.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from lsst.daf.butler import (
    Butler,
    CollectionType,
    DatasetRef,
    MissingCollectionError,
    MissingDatasetTypeError,
)

from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import ButlerError

__all__ = [
    "collection_exists",
    "count_datasets",
    "dataset_counts",
    "datastore_roots",
    "find_refs",
    "open_butler",
    "open_site_butler",
    "registry_credentials",
    "repo_summary",
]


_DB_AUTH = "LSST_DB_AUTH"
_DB_AUTH_LOCK = threading.RLock()


@contextlib.contextmanager
def registry_credentials(db_auth: str | None) -> Iterator[None]:
    """daf_butler's credentials file for a PostgreSQL registry, for the moment a Butler connects.

    daf_butler reads a registry's password only from the file ``$LSST_DB_AUTH`` names
    (``lsst.utils.db_auth.DbAuth``, which ``Butler.from_config`` gives no path), when it builds the
    connection; the variable is set for that moment, under a lock, and put back as it was. This is
    the one place the toolkit sets it; the step processes get it in their own environment.
    """
    if not db_auth:
        yield
        return
    with _DB_AUTH_LOCK:
        before = os.environ.get(_DB_AUTH)
        os.environ[_DB_AUTH] = db_auth
        try:
            yield
        finally:
            if before is None:
                os.environ.pop(_DB_AUTH, None)
            else:
                os.environ[_DB_AUTH] = before


def open_butler(repo: str, *, writeable: bool = False, run: str | None = None, db_auth: str | None = None) -> Butler:
    """Open a site's repository (read-only unless asked).

    ``db_auth``: daf_butler's credentials file of a PostgreSQL registry (the manifest's
    ``butler_db_auth``; see :func:`open_site_butler`).

    Raises
    ------
    ButlerError
        If it cannot be opened (the message names the repository).
    """
    writeable = writeable or run is not None
    with registry_credentials(db_auth):
        try:
            return Butler.from_config(repo, writeable=writeable, run=run)
        except Exception as exc:
            if not writeable and "readonly database" in str(exc):
                # A writer killed mid-transaction (a step stopped by the operator) leaves SQLite's hot
                # journal, which only a writable connection may roll back: open once to do that, then
                # read-only again. Nothing of the dead transaction survives; committed data is untouched.
                try:
                    Butler.from_config(repo, writeable=True).close()
                    return Butler.from_config(repo, writeable=False)
                except Exception:
                    pass
            raise ButlerError(f"the Butler repository {repo} cannot be opened: {type(exc).__name__}: {exc}") from exc


def open_site_butler(campaign: Campaign, site: str, *, writeable: bool = False, run: str | None = None) -> Butler:
    """Open a site's repository as the campaign's manifest gives it (its registry credentials too)."""
    return open_butler(campaign.butler_repo(site), writeable=writeable, run=run, db_auth=campaign.db_auth)


def collection_exists(repo: str, name: str, *, db_auth: str | None = None) -> bool | None:
    """Whether ``name`` exists in ``repo``; `None` if the repository cannot be opened from here."""
    try:
        butler = open_butler(repo, db_auth=db_auth)
    except ButlerError:
        return None
    with butler:
        try:
            butler.collections.get_info(name)
            return True
        except MissingCollectionError:
            return False


def _runs(butler: Butler, collections: str | Sequence[str]) -> list[str]:
    try:
        return [i.name for i in butler.collections.query_info(collections, collection_types={CollectionType.RUN})]
    except MissingCollectionError:
        return []


def dataset_counts(butler: Butler, collections: str | Sequence[str] = "*") -> dict[str, int]:
    """Datasets per dataset type over the RUN collections matching ``collections`` (counted in the registry)."""
    runs = _runs(butler, collections)
    counts: dict[str, int] = {}
    if not runs:
        return counts
    with butler.query() as q:
        for dt in butler.registry.queryDatasetTypes():
            n = q.datasets(dt, collections=runs, find_first=False).count(exact=True)
            if n:
                counts[dt.name] = n
    return dict(sorted(counts.items()))


def count_datasets(butler: Butler, collections: str | Sequence[str] = "*") -> int:
    """All datasets in the RUN collections matching ``collections``."""
    return sum(dataset_counts(butler, collections).values())


def find_refs(
    butler: Butler, dataset_type: str, collections: Sequence[str], *, find_first: bool = True, records: bool = False
) -> list[DatasetRef]:
    """Every dataset of a type in ``collections``; none (not an error) if the type is unknown here."""
    try:
        return list(
            butler.query_datasets(
                dataset_type,
                collections=list(collections),
                find_first=find_first,
                with_dimension_records=records,
                explain=False,
                limit=None,
            )
        )
    except (MissingDatasetTypeError, MissingCollectionError):
        return []


def datastore_roots(butler: Butler) -> list[Path]:
    """The local datastore roots of a repository (= its RSE roots)."""
    return [Path(r.ospath) for r in butler.get_datastore_roots().values() if r is not None]


def repo_summary(repo: str, *, db_auth: str | None = None) -> dict[str, Any]:
    """A small health report of one repository: collections and dataset counts."""
    with open_butler(repo, db_auth=db_auth) as butler:
        collections = sorted(butler.collections.query("*"))
        counts = dataset_counts(butler)
    return {"collections": len(collections), "datasets": sum(counts.values()), "by_type": counts}


# -- sky units ------------------------------------------------------------------------------
#
# A set of sky units spelled as one expression, ``(tract = t AND patch IN (...)) OR ...``, is
# rewritten by daf_butler into conjunctive normal form, which doubles with every tract: SQLite
# refuses it from about ten tracts ("Expression tree is too large"). The units travel as
# uploaded data IDs instead: whole tracts as (skymap, tract), the rest as (skymap, tract,
# patch), one query each, whatever their number.
