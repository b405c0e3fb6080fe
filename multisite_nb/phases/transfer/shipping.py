"""Register → rule → watch → ingest: moving Butler datasets between sites with Rucio.

One *shipment* moves a set of Butler datasets from a source site to a destination site:

1. the dimension records the destination needs are exported from the source Butler to
   YAML files (Rubin's ``dim_file``; one per part of the shipment, bounded), registered in
   Rucio and moved *first*;
2. the data files are registered where they sit at the source (``add_replicas`` on the
   source RSE, LFN = path relative to the RSE root, DID metadata ``rubin_butler`` and
   ``rubin_sidecar`` = the serialized ``DatasetRef``, as Rubin's ``lsst-rucio-register``
   does), attached to a dataset, and one replication rule moves that dataset;
3. the rules are watched to completion (STUCK rules come back with Rucio's reason);
4. what arrived is ingested in place into the destination Butler with the same dataset
   UUIDs, read from the sidecars.

Every step reads the real state first, so a second run creates no rule and no dataset
twice. Placement, gather and redistribution are all shipments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.adapters.rucio.ops import RucioOps
from multisite_nb.adapters.tables import site_source
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import MsnbError
from multisite_nb.domain.naming import placement_dataset
from multisite_nb.domain.plan import PlacementPlan
from multisite_nb.domain.records import RuleRecord, RuleState, ShipmentOutcome
from multisite_nb.domain.results import utcnow
from multisite_nb.phases.collisions import claim
from multisite_nb.phases.transfer.ingest import apply_collections, ingest_shipment
from multisite_nb.phases.transfer.register import register_shipment
from multisite_nb.phases.transfer.rules import create_data_rule, pin_source, smallest_first, watch_rules
from multisite_nb.phases.transfer.shipment import Shipment

if TYPE_CHECKING:
    from lsst.daf.butler import Butler

__all__ = [
    "Shipment",
    "ShipmentOutcome",
    "claim_sites",
    "ingest_shipment",
    "placement_args",
    "register_shipment",
    "run_shipments",
    "watch_rules",
]


# -- dimension records ------------------------------------------------------------------


# -- the steps --------------------------------------------------------------------------


def placement_args(campaign: Campaign, plan: PlacementPlan, site: str) -> dict[str, object]:
    """What a placement's shipment to ``site`` carries besides its files (whole, or one batch of it)."""
    return {
        "raw_inputs": True,
        # a part's visits are its raws' exposures' (the detectors come with the raws)
        "value_links": [("exposure", "visit", plan.exposure_visit)],
        "extra_values": {
            "tract": {u.tract for u in campaign.sky_units(site)},
            "patch": {u.patch for u in campaign.sky_units(site) if u.patch is not None},
            "skymap": {campaign.config.skymap},
            "instrument": {campaign.config.instrument},
        },
    }


def claim_sites(
    campaign: Campaign, sites: Sequence[str], name: Callable[[str], str]
) -> tuple[list[str], list[ShipmentOutcome]]:
    """Claim the output prefix at the central site, then at each of ``sites``: (claimed, refused outcomes)."""
    claim(campaign, campaign.central)  # the campaign acts here from now on: its output prefix is its own
    refused: list[ShipmentOutcome] = []
    ready = []
    for site in sites:
        try:
            claim(campaign, site)
            ready.append(site)
        except Exception as exc:  # that site's part fails; the others go on
            refused.append(
                ShipmentOutcome(
                    name=name(site), dest=site, error=f"claim {campaign.output_prefix}/ at {site}: {exc}"[:500]
                )
            )
    return ready, refused


def place_data(
    campaign: Campaign,
    plan: PlacementPlan,
    *,
    progress: bool = True,
    timeout_s: float = 900,
    log: Callable[[str], None] = print,
    sites: Sequence[str] | None = None,
) -> list[ShipmentOutcome]:
    """Phase 2: one shipment per remote site from the central site, then the sites' collections.

    Parameters
    ----------
    plan
        The ``PlacementPlan`` of phase 1.
    sites
        Only these remote sites (default: all).
    """
    ready, refused = claim_sites(campaign, sites or campaign.remote_sites, lambda s: placement_dataset(campaign, s))
    shipments = [
        Shipment(
            name=placement_dataset(campaign, site),
            source=campaign.central,
            dest=site,
            files=site_source(plan, site),
            **placement_args(campaign, plan, site),  # type: ignore[arg-type]
        )
        for site in ready
    ]
    outcomes = run_shipments(campaign, shipments, progress=progress, timeout_s=timeout_s, log=log)
    for o in outcomes:
        if o.error:
            continue
        try:
            with open_site_butler(campaign, o.dest, writeable=True) as butler:
                apply_collections(butler, plan, o.dest)
        except Exception as exc:  # this site's collections fail; the others stand
            o.error = f"collections at {o.dest}: {type(exc).__name__}: {exc}"
    return refused + outcomes


def run_shipments(
    campaign: Campaign,
    shipments: Sequence[Shipment],
    *,
    progress: bool = True,
    timeout_s: float = 900,
    log: Callable[[str], None] = print,
) -> list[ShipmentOutcome]:
    """Move a set of shipments end to end; returns one outcome per shipment.

    Every shipment is registered first, then each gets its pin at the source, smallest first (see
    :func:`smallest_first`); the records follow (all records rules watched to OK, records imported),
    then the data rules, smallest first again. Each shipment stands alone: a STUCK rule, a Butler
    that cannot be opened or an error while registering or ingesting fails that shipment (its
    outcome names the reason) while the others go on; a rerun does only what is missing.
    """

    ops = RucioOps.for_campaign(campaign)
    ops.ensure_scope()
    outcomes = {s.name: ShipmentOutcome(name=s.name, dest=s.dest) for s in shipments}
    butlers: dict[str, Butler] = {}

    def butler(site: str) -> Butler:
        if site not in butlers:
            butlers[site] = open_site_butler(campaign, site, writeable=True)
        return butlers[site]

    def watch(ops: RucioOps, rule_ids: list[str], desc: str) -> dict[str, RuleRecord]:
        return watch_rules(ops, rule_ids, timeout_s=timeout_s, progress=progress, desc=desc)

    def do_register(s: Shipment) -> None:
        register_shipment(campaign, ops, butler(s.source), s, outcomes[s.name])

    def do_pin(s: Shipment) -> None:
        pin_source(campaign, ops, s, outcomes[s.name])

    def do_rule(s: Shipment) -> None:
        create_data_rule(campaign, ops, s, outcomes[s.name])

    def do_ingest(s: Shipment) -> None:
        ingest_shipment(campaign, ops, butler(s.dest), s, outcomes[s.name])

    def isolated(s: Shipment, what: str, step: Callable[[Shipment], None]) -> bool:
        """Run one shipment's step; an error fails that shipment only."""
        o = outcomes[s.name]
        try:
            step(s)
            return True
        except MsnbError as exc:
            o.error = f"{what}: {exc}"
        except Exception as exc:  # a site's service failing must not stop the other sites
            o.error = f"{what}: {type(exc).__name__}: {exc}"
        log(f"{s.name}: {o.error}")
        return False

    try:
        ok = [s for s in shipments if isolated(s, "register", do_register)]
        ok = [s for s in smallest_first(ok) if isolated(s, "pin at the source", do_pin)]
        rec_states = watch(ops, [outcomes[s.name].records_rule_id or "" for s in ok], "dimension records")
        ruled = []
        for s in ok:
            o = outcomes[s.name]
            st = rec_states.get(o.records_rule_id or "")
            if st is None or st.state is not RuleState.OK:
                o.state = st.state if st else None
                o.error = f"dimension records rule {o.records_rule_id}: {st.error if st else 'not found'}"
                continue
            if isolated(s, "rule", do_rule):
                ruled.append(s)
        states = watch(ops, [outcomes[s.name].rule_id or "" for s in ruled], "data rules")
        for s in ruled:
            o = outcomes[s.name]
            st = states[o.rule_id or ""]
            o.state = st.state
            if st.state is not RuleState.OK:
                o.error = st.error or f"rule {st.state}: no lock moved for {timeout_s:.0f} s"
                log(f"{s.name}: rule {o.rule_id} {st.state}: {o.error}")
                continue
            if isolated(s, f"ingest at {s.dest}", do_ingest):
                o.ok_at = utcnow()
        for s in ok:  # a pin the judge-injector filled meanwhile, and found it could not hold
            o = outcomes[s.name]
            pin = ops.rule(o.source_rule_id) if o.error is None and o.source_rule_id else None
            if pin is not None and pin.state.bad:
                o.error = f"pin at the source {o.source_rule_id} {pin.state}: {pin.error or 'no reason given'}"
                log(f"{s.name}: {o.error}")
    finally:
        for b in butlers.values():
            b.close()
    return list(outcomes.values())
