"""A shipment's rules: the pin at the source, the data rule to the destination, and watching them."""

from __future__ import annotations

import time
from collections.abc import Sequence

from multisite_nb.adapters.rucio.ops import RucioOps
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.records import RuleRecord, ShipmentOutcome
from multisite_nb.phases.transfer.shipment import Shipment

#: Files from which a shipment's rules are asynchronous: made by Rucio's judge-injector after the
#: request returns (a rule takes the server about 1 ms a file, and a container's could not be made
#: within a request at all), while the toolkit goes on with the next shipment.
ASYNC_RULE_FILES = 1000


def rule_for(
    campaign: Campaign, ops: RucioOps, shipment: Shipment, dataset: str, rse: str, what: str = ""
) -> tuple[str, bool]:
    """A rule of the shipment (none expires: its files are ingested in place). Returns (id, created).

    The data files' rules of a shipment of :data:`ASYNC_RULE_FILES` or more are asynchronous."""
    comment = f"multisite_nb campaign {campaign.name}: {shipment.name} {shipment.source}->{shipment.dest}"
    return ops.ensure_rule(
        dataset,
        rse,
        lifetime_s=None,
        activity=campaign.config.activity,
        comment=f"{comment} ({what})" if what else comment,
        asynchronous=True if dataset == shipment.name and len(shipment.files) >= ASYNC_RULE_FILES else None,
    )


def pin_source(campaign: Campaign, ops: RucioOps, shipment: Shipment, outcome: ShipmentOutcome) -> None:
    """The data files' rule at the source RSE: the source site's Butler holds them in place, and a
    replica no rule protects is the first a reaper removes under space pressure."""
    src = campaign.site(shipment.source).rse
    t0 = time.monotonic()
    outcome.source_rule_id, _ = rule_for(campaign, ops, shipment, shipment.name, src, "pins the source copies")
    outcome.seconds["rule"] = outcome.seconds.get("rule", 0.0) + time.monotonic() - t0


def create_data_rule(campaign: Campaign, ops: RucioOps, shipment: Shipment, outcome: ShipmentOutcome) -> None:
    """The rule that moves the data files (after the records have arrived)."""
    dest = campaign.site(shipment.dest).rse
    t0 = time.monotonic()
    outcome.rule_id, outcome.rule_created = rule_for(campaign, ops, shipment, shipment.name, dest)
    outcome.seconds["rule"] = outcome.seconds.get("rule", 0.0) + time.monotonic() - t0


def smallest_first(shipments: Sequence[Shipment]) -> list[Shipment]:
    """The order to make the shipments' rules in: a small shipment's rule is made within its request,
    a large one's by Rucio's judge-injector after it (see :data:`ASYNC_RULE_FILES`). Made last, the
    large ones' locks are filled while the others' rules already stand, not while they are being
    made: on a catalogue with one writer (the SQLite world) a 16,000-file container's locks held a
    5,000-file rule's request for 29 s, and the next site's registration for 20 s."""
    return sorted(shipments, key=lambda s: len(s.files))


def watch_rules(
    ops: RucioOps,
    rule_ids: Sequence[str],
    *,
    timeout_s: float = 600,
    poll_s: float = 1.0,
    progress: bool = True,
    desc: str = "rules",
) -> dict[str, RuleRecord]:
    """Poll rules until each is OK or STUCK, or no lock has progressed for ``timeout_s``; show progress.

    The limit is on a stall, not on the whole wait: a data-release shipment replicating steadily
    for hours is not stuck, one whose locks stop moving is.
    """
    from tqdm.auto import tqdm

    states: dict[str, RuleRecord] = {}
    deadline = time.monotonic() + timeout_s
    bar = None
    last_done = -1
    while True:
        states = {rid: ops.rule(rid) for rid in rule_ids}
        total = sum(s.total for s in states.values())
        done = sum(s.locks_ok for s in states.values())
        if done > last_done:  # progress: the stall clock starts again
            last_done, deadline = done, time.monotonic() + timeout_s
        if progress:
            if bar is None:
                bar = tqdm(total=total, desc=desc, unit="file", leave=True, mininterval=1.0)
            bar.total = total
            bar.n = done
            bar.set_postfix_str(", ".join(f"{s.state}" for s in states.values())[:60], refresh=True)
        if all(s.state.settled for s in states.values()) or time.monotonic() > deadline:
            break
        time.sleep(poll_s)
    if bar is not None:
        bar.close()
    return states
