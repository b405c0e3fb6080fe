"""A large observation type read by worker processes, an exposure (or visit) range each.

Only datasets of the sites' exposures can be placed, so the ranges cover them all; each worker
plans its range into its own tables, appended to the plan's in order.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multisite_nb.adapters.butler.datastore import ref_pages
from multisite_nb.adapters.butler.repo import open_butler
from multisite_nb.adapters.tables import FileTableWriter
from multisite_nb.domain.errors import PlanError
from multisite_nb.domain.footprint import Footprint
from multisite_nb.domain.plan import PlanSummary
from multisite_nb.phases.placement.pages import plan_page
from multisite_nb.phases.placement.workers import Workers

SHARD_MIN_FILES = 200_000  # observation files (visit-detector pairs) from which a type is read in shards


@dataclass(frozen=True)
class Shard:
    """One process's part of a dataset type: the datasets whose exposure (or visit) is in [lo, hi)."""

    repo: str
    db_auth: str | None
    dataset_type: str
    inputs: list[str]
    key: str
    lo: int
    hi: int
    instrument: str
    roots: dict[str, Path]
    calibration: bool
    footprints: dict[str, Footprint]


def shards_for(
    footprints: dict[str, Footprint], dims: set[str], workers: int, repo: str, dataset_type: str, **common: Any
) -> list[Shard]:
    """Split an observation type's reading into ``workers`` shards of about as many exposures (or
    visits) each, by ID range: only datasets of the sites' exposures can be placed, so the ranges
    cover them all. No shards for few files (a process's start costs seconds)."""
    pairs = sum(len(d) for fp in footprints.values() for d in fp.visit_detectors.values())
    if workers < 2 or pairs < SHARD_MIN_FILES:
        return []
    key = "exposure" if "exposure" in dims else "visit"
    values = sorted(set().union(*(fp.values[key] for fp in footprints.values())))
    if len(values) < workers:
        return []
    bounds = [int(values[i * len(values) // workers]) for i in range(workers)] + [int(values[-1]) + 1]
    db_auth = common.pop("db_auth", None)
    return [
        Shard(repo, db_auth, dataset_type, key=key, lo=lo, hi=hi, footprints=footprints, **common)
        for lo, hi in itertools.pairwise(bounds)
    ]


def _plan_shard(shard: Shard, folder: Path) -> tuple[Path, PlanSummary, dict[str, tuple[str, list[str]]]]:
    """Plan one shard in this (worker) process into its own tables: (tables, their summary, calibrations)."""
    writer = FileTableWriter(folder, list(shard.footprints))
    calibs: dict[str, tuple[str, list[str]]] = {}
    try:
        with open_butler(shard.repo, db_auth=shard.db_auth) as butler:
            where = f"{shard.key} >= lo AND {shard.key} < hi AND instrument = inst"
            bind = {"lo": shard.lo, "hi": shard.hi, "inst": shard.instrument}
            for refs in ref_pages(butler, shard.dataset_type, shard.inputs, where, bind):
                plan_page(butler, refs, shard.footprints, shard.roots, writer, True, calibs, shard.calibration)
        summary = writer.close()
    except BaseException:
        writer.abort()
        raise
    return writer.tables, summary, calibs


def run_shards(
    shards: list[Shard],
    writer: FileTableWriter,
    calibs: dict[str, tuple[str, list[str]]],
    scratch: Path,
    workers: Workers,
) -> None:
    """Plan the shards in the worker processes, then append their tables to ``writer`` in shard order."""
    pool = workers.pool()
    futures = [pool.submit(_plan_shard, sh, scratch / f"shard-{i}") for i, sh in enumerate(shards)]
    try:
        for sh, fut in zip(shards, futures, strict=True):
            try:
                tables, summary, found = fut.result()
            except PlanError:
                raise
            except Exception as exc:
                raise PlanError(f"placement: reading {sh.dataset_type} ({sh.key} {sh.lo}..{sh.hi - 1}): {exc}") from exc
            writer.absorb(tables, summary)
            calibs.update(found)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
