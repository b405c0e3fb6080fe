"""Thin, typed helpers over ``lsst.daf.butler`` used by several phases."""

from __future__ import annotations

from collections import Counter
from typing import Any

from lsst.daf.butler import Butler, CollectionType

__all__ = ["open_butler", "repo_summary", "dataset_counts"]


def open_butler(repo: str, *, writeable: bool = False, run: str | None = None) -> Butler:
    """Open a site's repository (read-only unless asked)."""
    return Butler.from_config(repo, writeable=writeable or run is not None, run=run)


def dataset_counts(butler: Butler, collections: str | list[str] = "*") -> dict[str, int]:
    """Number of datasets per dataset type over the given collections (all RUNs by default)."""
    runs = [
        info.name
        for info in butler.collections.query_info(collections, collection_types={CollectionType.RUN})
    ]
    counts: Counter[str] = Counter()
    if not runs:
        return {}
    for dt in butler.registry.queryDatasetTypes():
        n = len(butler.query_datasets(dt, collections=runs, find_first=False, explain=False, limit=None))
        if n:
            counts[dt.name] = n
    return dict(sorted(counts.items()))


def repo_summary(repo: str) -> dict[str, Any]:
    """A small health report of one repository: collections and dataset counts."""
    with open_butler(repo) as butler:
        collections = sorted(butler.collections.query("*"))
        counts = dataset_counts(butler)
    return {"collections": len(collections), "datasets": sum(counts.values()), "by_type": counts}
