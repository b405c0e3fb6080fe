"""Gather to the central site, redistribute to the sites, bring the final products home.

All three are shipments (``transfer``) checked by the same reconciliation (``verify``);
what moves comes from the wiring, never from names written here:

* before a central stage, every dataset type the wiring says it needs from the sites is
  gathered from each site's output chain;
* after it, every dataset type the later site stages consume is split *per site*: a site
  receives only the data IDs it knows (its own visits, its own tracts), because a Butler
  rejects datasets whose dimension records it lacks;
* after the last site stage, the validation set (by default the site stages' final
  products) comes home.

Datasets keep their UUIDs and RUN collection names on the way, so what the central site
holds says where it was made.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import weakref
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from lsst.daf.butler import Butler

from multisite_nb.adapters.butler.datastore import describe_files
from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.adapters.tables import FileTableSource, FileTableWriter, install_tables, read_site
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import GateError
from multisite_nb.domain.naming import made_at, shipment_dataset, site_chain
from multisite_nb.domain.ownership import Ownership
from multisite_nb.domain.plan import PlanSummary
from multisite_nb.domain.records import ShipmentOutcome
from multisite_nb.phases.placement.footprints import footprints
from multisite_nb.phases.transfer.shipment import Shipment
from multisite_nb.phases.transfer.shipping import run_shipments
from multisite_nb.phases.verify import verify_shipments

__all__ = [
    "Collision",
    "GatherPlan",
    "plan_gather",
    "plan_redistribution",
    "ship_and_verify",
]

PAGE = 20_000  # datasets read, described and written at a time


@dataclass(frozen=True)
class Collision:
    """The same dataset type and data ID produced at more than one site."""

    dataset_type: str
    data_id: str
    sites: tuple[str, ...]


@dataclass
class GatherPlan:
    """Shipments of one gate, plus what the receiving side must add to its inputs.

    Each shipment's files are a table (:mod:`multisite_nb.adapters.tables`) in :attr:`tables`, read a
    part at a time; :attr:`summary` counts them per shipment (files, bytes, dataset types, RUNs).
    """

    kind: str
    shipments: list[Shipment] = field(default_factory=list)
    collisions: list[Collision] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # dataset type -> why nothing moves
    summary: PlanSummary = field(default_factory=PlanSummary)  # per shipment name
    tables: Path | None = None

    @property
    def runs(self) -> dict[str, list[str]]:
        """Per destination: the RUN collections the shipped datasets live in."""
        out: dict[str, set[str]] = defaultdict(set)
        for s in self.shipments:
            out[s.dest].update(self.summary.sites[s.name].runs)
        return {k: sorted(v) for k, v in out.items()}

    def counts(self) -> list[dict[str, Any]]:
        rows = []
        for s in self.shipments:
            c = self.summary.sites[s.name]
            rows.append(
                {
                    "shipment": s.name,
                    "from": s.source,
                    "to": s.dest,
                    "files": c.files,
                    "bytes": c.bytes,
                    **dict(sorted(c.by_type.items())),
                }
            )
        return rows


def _pages(butler: Butler, dataset_type: str, collections: Sequence[str]) -> Iterator[list[Any]]:
    """The datasets of a type the collections find first, in streamed pages of at most ``PAGE``."""
    from lsst.daf.butler import MissingDatasetTypeError

    page: list[Any] = []
    try:
        with butler.query() as query:
            for ref in query.datasets(dataset_type, collections=list(collections), find_first=True):
                page.append(ref)
                if len(page) >= PAGE:
                    yield page
                    page = []
    except MissingDatasetTypeError:
        return
    if page:
        yield page


def _key_hash(dataset_type: str, data_id_json: str) -> int:
    """An 8-byte hash of (dataset type, data ID): what collision finding holds per file."""
    digest = hashlib.blake2b(f"{dataset_type}|{data_id_json}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def find_collisions(tables: Path, sources: dict[str, str]) -> list[Collision]:
    """(dataset type, data ID) pairs in the tables of more than one source site.

    ``sources``: table name -> its source site. Each file is held as an 8-byte hash while
    looking (memory: 8 bytes a file); only the pairs whose hash several sites share are read back
    with their data IDs, and reported if they really are the same.
    """
    per_table: list[np.ndarray] = []  # each table's distinct hashes: a site's own repeats are no collision
    names = list(sources)
    for name in names:
        chunks = []
        for batch in read_site(tables, name, columns=["dataset_type", "data_id"]):
            cols = batch.to_pydict()
            keys = zip(cols["dataset_type"], cols["data_id"], strict=True)
            chunks.append(np.fromiter((_key_hash(t, d) for t, d in keys), dtype=np.uint64, count=batch.num_rows))
        if chunks:
            per_table.append(np.unique(np.concatenate(chunks)))
    if not per_table:
        return []
    values, counts = np.unique(np.concatenate(per_table), return_counts=True)
    shared = set(values[counts > 1].tolist())
    if not shared:
        return []
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for name in names:
        for batch in read_site(tables, name, columns=["dataset_type", "data_id"]):
            cols = batch.to_pydict()
            for t, d in zip(cols["dataset_type"], cols["data_id"], strict=True):
                if _key_hash(t, d) in shared:
                    found[(t, d)].add(sources[name])
    return [Collision(t, d, tuple(sorted(ss))) for (t, d), ss in sorted(found.items()) if len(ss) > 1]


@contextmanager
def _tables(plan: GatherPlan, names: Sequence[str], folder: Path | None) -> Iterator[FileTableWriter]:
    """A writer of one table per shipment; on leaving, the tables are put in place under ``folder``
    (``files/``; default a temporary folder, removed with the plan) and the plan's shipments read
    them. On an error nothing is left behind."""
    scratch = folder is None
    where = Path(tempfile.mkdtemp(prefix="msnb-gather-")) if folder is None else Path(folder)
    writer = FileTableWriter(where, list(names))
    try:
        yield writer
        plan.summary = writer.close()
        plan.tables = install_tables(writer.tables, where)
    except BaseException:
        writer.abort()
        if scratch:
            shutil.rmtree(where, ignore_errors=True)
        raise
    for s in plan.shipments:
        s.files = FileTableSource(plan.tables, s.name, plan.summary.sites[s.name].files, owner=plan)
    if scratch:  # a plan made outside a run folder leaves nothing behind
        weakref.finalize(plan, shutil.rmtree, where, True)


def plan_gather(
    campaign: Campaign,
    dataset_types: Sequence[str],
    label: str,
    *,
    sites: Sequence[str] | None = None,
    ownership: Ownership | None = None,
    folder: Path | None = None,
) -> GatherPlan:
    """Shipments bringing ``dataset_types`` from each remote site's chain to the central site.

    With ``ownership``, only each data ID's canonical copy is gathered: a boundary visit's
    products made at a site that does not own the visit stay there (counted in
    ``skipped["non-canonical"]``). Collisions that remain (global data IDs from several sites)
    are reported: a central stage's lookups would see only one of them.

    The datasets are read, described (datastore records in bulk) and written to each shipment's
    table a page at a time: memory does not grow with the number of files. ``folder``: where the
    tables go (``<folder>/files``; default a temporary folder, removed with the plan).
    """
    remote = list(sites or campaign.remote_sites)
    plan = GatherPlan(kind="gather")
    names = {site: shipment_dataset(campaign, label, site) for site in remote}
    noncanonical = 0
    with _tables(plan, list(names.values()), folder) as writer:
        for site in remote:
            with open_site_butler(campaign, site) as butler:
                chain = site_chain(campaign, site)
                if not butler.collections.query(chain):
                    raise GateError(f"gather: site {site} has no output collection {chain}: run its stage first")
                for dt in dataset_types:
                    for page in _pages(butler, dt, [chain]):
                        # only what the site made, not inputs that reached it from elsewhere
                        found = [r for r in page if made_at(campaign, site, r.run)]
                        if ownership is not None:
                            mine = [r for r in found if ownership.is_canonical(site, r.dataId.required)]
                            noncanonical += len(found) - len(mine)
                            found = mine
                        for f in describe_files(butler, found, [campaign.central]):
                            writer.add(**_row(f), tables=[names[site]])
            plan.shipments.append(Shipment(names[site], site, campaign.central, []))
    assert plan.tables is not None
    plan.collisions = find_collisions(plan.tables, {names[s]: s for s in remote})
    made = {dt for c in plan.summary.sites.values() for dt in c.by_type}
    for dt in dataset_types:
        if dt not in made:
            plan.skipped[dt] = "no site produced it"
    if noncanonical:
        plan.skipped["non-canonical"] = f"{noncanonical} datasets made at a site that does not own their data ID"
    return plan


def _row(f: Any) -> dict[str, Any]:
    return {
        "id": f.id,
        "dataset_type": f.dataset_type,
        "run": f.run,
        "data_id": f.data_id,
        "lfn": f.lfn,
        "size": f.size,
        "sites": f.sites,
    }


def plan_redistribution(
    campaign: Campaign,
    dataset_types: Sequence[str],
    runs: Sequence[str],
    label: str,
    *,
    folder: Path | None = None,
) -> GatherPlan:
    """Shipments splitting the central ``dataset_types`` (found in ``runs``) per remote site.

    Each site gets the datasets whose data IDs fall in its footprint (its visits,
    detectors, tracts, patches), found by the same spatial query as the placement.
    Read and written a page at a time, as :func:`plan_gather`.
    """

    plan = GatherPlan(kind="redistribute")
    names = {site: shipment_dataset(campaign, label, site) for site in campaign.remote_sites}
    unplaced = 0
    with _tables(plan, list(names.values()), folder) as writer:
        with open_site_butler(campaign, campaign.central) as butler:
            fps = footprints(butler, campaign)  # the same as placement's
            for dt in dataset_types:
                for page in _pages(butler, dt, runs):
                    placed = [False] * len(page)
                    for site, fp in fps.items():
                        mine = [i for i, r in enumerate(page) if fp.admits(r.dataId)]
                        for i in mine:
                            placed[i] = True
                        for f in describe_files(butler, [page[i] for i in mine], [site]):
                            writer.add(**_row(f), tables=[names[site]])
                    unplaced += placed.count(False)
        plan.shipments = [Shipment(names[s], campaign.central, s, []) for s in campaign.remote_sites]
    if unplaced:
        plan.skipped["(no site)"] = f"{unplaced} datasets belong to no site's footprint"
    made = {dt for c in plan.summary.sites.values() for dt in c.by_type}
    for dt in dataset_types:
        if dt not in made:
            plan.skipped[dt] = "nothing for any site"
    return plan


def ship_and_verify(
    campaign: Campaign, plan: GatherPlan, *, progress: bool = True
) -> tuple[list[ShipmentOutcome], list[Any]]:
    """Move a gather/redistribution plan with Rucio, ingest, then reconcile every shipment."""
    shipments = [s for s in plan.shipments if len(s.files)]
    outcomes = run_shipments(campaign, shipments, progress=progress, log=lambda m: None)
    ok = {o.name for o in outcomes if not o.error}
    reports = verify_shipments(campaign, [(s.dest, s.name, s.files) for s in shipments if s.name in ok])
    return outcomes, reports
