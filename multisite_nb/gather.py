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

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import Campaign
from .errors import GateError
from .naming import made_at, shipment_dataset, site_chain
from .ownership import Ownership
from .placement import PlannedFile, describe_files, site_footprint
from .transfer import Shipment, ShipmentOutcome, run_shipments

__all__ = [
    "Collision",
    "GatherPlan",
    "plan_gather",
    "plan_redistribution",
    "ship_and_verify",
]


@dataclass(frozen=True)
class Collision:
    """The same dataset type and data ID produced at more than one site."""

    dataset_type: str
    data_id: str
    sites: tuple[str, ...]


@dataclass
class GatherPlan:
    """Shipments of one gate, plus what the receiving side must add to its inputs."""

    kind: str
    shipments: list[Shipment] = field(default_factory=list)
    collisions: list[Collision] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # dataset type -> why nothing moves

    @property
    def runs(self) -> dict[str, list[str]]:
        """Per destination: the RUN collections the shipped datasets live in."""
        out: dict[str, set[str]] = defaultdict(set)
        for s in self.shipments:
            out[s.dest].update(f.run for f in s.files)
        return {k: sorted(v) for k, v in out.items()}

    def counts(self) -> list[dict[str, Any]]:
        rows = []
        for s in self.shipments:
            by_type: dict[str, int] = defaultdict(int)
            for f in s.files:
                by_type[f.dataset_type] += 1
            rows.append(
                {
                    "shipment": s.name,
                    "from": s.source,
                    "to": s.dest,
                    "files": len(s.files),
                    "bytes": sum(f.size for f in s.files),
                    **dict(sorted(by_type.items())),
                }
            )
        return rows


def _planned(butler: Any, refs: Sequence[Any], dest: str) -> list[PlannedFile]:
    """Describe datasets of ``butler`` as files to ship to ``dest`` (datastore records in bulk)."""
    return describe_files(butler, refs, [dest])


def _query(butler: Any, dataset_type: str, collections: Sequence[str]) -> list[Any]:
    from lsst.daf.butler import MissingDatasetTypeError

    try:
        return list(
            butler.query_datasets(
                dataset_type, collections=list(collections), find_first=True, explain=False, limit=None
            )
        )
    except MissingDatasetTypeError:
        return []


def plan_gather(
    campaign: Campaign,
    dataset_types: Sequence[str],
    label: str,
    *,
    sites: Sequence[str] | None = None,
    ownership: Ownership | None = None,
) -> GatherPlan:
    """Shipments bringing ``dataset_types`` from each remote site's chain to the central site.

    With ``ownership``, only each data ID's canonical copy is gathered: a boundary visit's
    products made at a site that does not own the visit stay there (counted in
    ``skipped["non-canonical"]``). Collisions that remain (global data IDs from several sites)
    are reported: a central stage's lookups would see only one of them.
    """
    from .butler_ops import open_butler

    plan = GatherPlan(kind="gather")
    seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    noncanonical = 0
    for site in sites or campaign.remote_sites:
        with open_butler(campaign.butler_repo(site)) as butler:
            chain = site_chain(campaign, site)
            if not butler.collections.query(chain):
                raise GateError(f"gather: site {site} has no output collection {chain}: run its stage first")
            refs = []
            for dt in dataset_types:
                found = _query(butler, dt, [chain])
                # only what the site made, not inputs that reached it from elsewhere
                found = [r for r in found if made_at(campaign, site, r.run)]
                if ownership is not None:
                    mine = [r for r in found if ownership.is_canonical(site, r.dataId.required)]
                    noncanonical += len(found) - len(mine)
                    found = mine
                refs.extend(found)
            for r in refs:
                seen[(r.datasetType.name, str(r.dataId.required))].append(site)
            files = _planned(butler, refs, campaign.central)
        plan.shipments.append(Shipment(shipment_dataset(campaign, label, site), site, campaign.central, files))
    plan.collisions = [Collision(dt, did, tuple(ss)) for (dt, did), ss in sorted(seen.items()) if len(ss) > 1]
    for dt in dataset_types:
        if not any(f.dataset_type == dt for s in plan.shipments for f in s.files):
            plan.skipped[dt] = "no site produced it"
    if noncanonical:
        plan.skipped["non-canonical"] = f"{noncanonical} datasets made at a site that does not own their data ID"
    return plan


def plan_redistribution(
    campaign: Campaign, dataset_types: Sequence[str], runs: Sequence[str], label: str
) -> GatherPlan:
    """Shipments splitting the central ``dataset_types`` (found in ``runs``) per remote site.

    Each site gets the datasets whose data IDs fall in its footprint (its visits,
    detectors, tracts, patches), found by the same spatial query as the placement.
    """
    from .butler_ops import open_butler

    plan = GatherPlan(kind="redistribute")
    with open_butler(campaign.butler_repo(campaign.central)) as butler:
        refs = [r for dt in dataset_types for r in _query(butler, dt, runs)]
        footprints = {s: site_footprint(butler, campaign, s) for s in campaign.remote_sites}
        for site, fp in footprints.items():
            mine = [r for r in refs if fp.admits(r.dataId)]
            files = _planned(butler, mine, site)
            plan.shipments.append(Shipment(shipment_dataset(campaign, label, site), campaign.central, site, files))
        unplaced = [r for r in refs if not any(fp.admits(r.dataId) for fp in footprints.values())]
        if unplaced:
            plan.skipped["(no site)"] = f"{len(unplaced)} datasets belong to no site's footprint"
    for dt in dataset_types:
        if not any(f.dataset_type == dt for s in plan.shipments for f in s.files):
            plan.skipped[dt] = "nothing for any site"
    return plan


def ship_and_verify(
    campaign: Campaign, plan: GatherPlan, *, progress: bool = True
) -> tuple[list[ShipmentOutcome], list[Any]]:
    """Move a gather/redistribution plan with Rucio, ingest, then reconcile every shipment."""
    from .verify import verify_shipments

    shipments = [s for s in plan.shipments if s.files]
    outcomes = run_shipments(campaign, shipments, progress=progress, log=lambda m: None)
    ok = {o.name for o in outcomes if not o.error}
    reports = verify_shipments(campaign, [(s.dest, s.name, list(s.files)) for s in shipments if s.name in ok])
    return outcomes, reports
