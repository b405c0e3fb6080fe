"""One site's flowing stage: its shipments one after the other, its groups starting as each is verified.

Two threads per site. The shipper moves the site's batches in order (:mod:`~multisite_nb.phases.transfer.batches`): each
shipment is moved end to end (:func:`~multisite_nb.phases.transfer.shipping.run_shipments`), the
site's collections are brought up to date, and the shipment's files are verified (Rucio, the
site's Butler, the disk); only then are its groups released. Once the first (common) shipment is
verified, the site waits for the stage's other sites to be compared with them (an
:class:`~multisite_nb.phases.alike.AlikeGate`): if the sites differ, no group is released anywhere.
The site's first step runs its groups as they are released, at most ``groups_in_flight`` at once
(:func:`~multisite_nb.phases.submit.stage.run_groups`); the stage's later steps run once the
first step's groups have all succeeded (they read its outputs). A shipment that fails, or that
verification finds wrong, holds back its own groups only (the common inputs, every group):
the others go on, and the gate names what is held back and why.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.adapters.grouptable import read_group_plan, write_group_plan
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import PlanError
from multisite_nb.domain.groups import GroupPlan
from multisite_nb.domain.naming import group_plan_file
from multisite_nb.domain.plan import PlacementPlan
from multisite_nb.domain.records import ShipmentOutcome, StepRecord, StepState
from multisite_nb.domain.results import utcnow
from multisite_nb.domain.verification import SiteReport
from multisite_nb.phases.alike import AlikeGate
from multisite_nb.phases.submit.groups import cut_step
from multisite_nb.phases.submit.selection import step_run
from multisite_nb.phases.submit.stage import run_groups, run_steps
from multisite_nb.phases.transfer.batches import Batch, plan_batches, raw_visits
from multisite_nb.phases.transfer.ingest import apply_collections
from multisite_nb.phases.transfer.shipping import placement_args, run_shipments
from multisite_nb.phases.verify import verify_shipments

__all__ = ["SiteFlowOutcome", "first_step_plan", "flow_site"]


@dataclass
class SiteFlowOutcome:
    """What one site's flow did: each batch's shipment and verification, and its steps."""

    site: str
    batches: list[Batch] = field(default_factory=list)
    outcomes: dict[str, ShipmentOutcome] = field(default_factory=dict)  # by shipment name
    reports: dict[str, SiteReport] = field(default_factory=dict)  # by shipment name
    withheld: dict[str, str] = field(default_factory=dict)  # group -> why it was not released
    steps: dict[str, StepRecord] = field(default_factory=dict)
    error: str = ""


def _first_problem(report: SiteReport) -> str:
    p = report.problems[0]
    return f"{len(report.problems)} problem(s), first: {p.layer} {p.kind} {p.what}" + (
        f" ({p.detail})" if p.detail else ""
    )


def first_step_plan(
    campaign: Campaign, plan: PlacementPlan, site: str, step: str, log_dir: str | os.PathLike[str]
) -> GroupPlan:
    """The first step's group plan at ``site``, cut from the visits placement gives it (kept in the run folder)."""
    path = group_plan_file(log_dir, site, step)
    if path.is_file():
        try:
            return read_group_plan(path)
        except PlanError:
            path.unlink()  # a plan cut, not a record of work done: cut it again
    visits = sorted({v for _, v in raw_visits(plan, site) if v is not None})
    gplan = cut_step(campaign, step_run(campaign, site, step, visits=visits))
    write_group_plan(path, gplan)
    return gplan


def flow_site(
    campaign: Campaign,
    plan: PlacementPlan,
    site: str,
    steps: Sequence[str],
    log_dir: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    stop: threading.Event,
    progress: Callable[[Mapping[str, StepRecord]], None] | None = None,
    checksums: bool = True,
    timeout_s: float = 900,
    log: Callable[[str], None] = lambda m: None,
    alike: AlikeGate | None = None,
) -> SiteFlowOutcome:
    """Ship, verify and run one site's stage, its groups starting as their inputs are verified (module notes).

    ``alike``: the stage's sites compared once each has its common shipment (none: not compared).
    """
    out = SiteFlowOutcome(site)
    try:
        gplan = first_step_plan(campaign, plan, site, steps[0], log_dir)
        out.batches = plan_batches(
            campaign,
            plan,
            site,
            gplan,
            Path(folder),
            groups_per_shipment=campaign.config.processing.groups_per_shipment,
            shipment_args=placement_args(campaign, plan, site),
        )
    except BaseException:
        if alike is not None:
            alike.leave(site)
        raise
    released: queue.Queue[str | None] = queue.Queue()

    def hold(batch: Batch, why: str) -> None:
        for g in batch.groups:
            out.withheld[g] = why

    def ship() -> None:
        common_ok = True
        unlike = ""  # why the stage's sites are not alike ("" while they are, or not yet compared)
        try:
            for batch in out.batches:
                if stop.is_set():
                    hold(batch, "the flow was stopped before its shipment")
                    continue
                o = run_shipments(campaign, [batch.shipment], progress=False, timeout_s=timeout_s, log=log)[0]
                out.outcomes[batch.name] = o
                if not o.error:
                    try:  # calibration ranges and input chains, for what has arrived so far
                        with open_site_butler(campaign, site, writeable=True) as butler:
                            apply_collections(butler, plan, site)
                    except Exception as exc:
                        o.error = f"collections at {site}: {type(exc).__name__}: {exc}"
                if o.error:
                    hold(batch, f"its shipment {batch.name} failed: {o.error}"[:500])
                    common_ok = common_ok and batch.index != 0
                    if alike is not None and batch.index == 0:
                        alike.leave(site)  # the other sites are compared without it
                    continue
                report = verify_shipments(campaign, [(site, batch.name, batch.shipment.files)], checksums=checksums)[0]
                out.reports[batch.name] = report
                if not report.ok:
                    hold(batch, f"its shipment {batch.name} failed verification: {_first_problem(report)}"[:500])
                    common_ok = common_ok and batch.index != 0
                    if alike is not None and batch.index == 0:
                        alike.leave(site)
                    continue
                o.verified_at = utcnow()
                if alike is not None and batch.index == 0:
                    problems = alike.ready(site, stop)
                    unlike = problems[0] if problems else ""
                if unlike:
                    hold(batch, unlike)
                    continue
                if not common_ok:
                    hold(batch, "the inputs every group needs (the common shipment) are not verified")
                    continue
                for g in batch.groups:
                    released.put(g)
        except BaseException as exc:  # noqa: BLE001 - recorded, and the groups are told there is no more
            out.error = f"shipping to {site}: {type(exc).__name__}: {exc}"[:500]
            for b in out.batches:
                if b.name not in out.outcomes:
                    hold(b, out.error)
        finally:
            if alike is not None:
                alike.leave(site)
            released.put(None)

    def release() -> Iterator[str]:
        while (g := released.get()) is not None:
            yield g

    shipper = threading.Thread(target=ship, name=f"{site}-ship", daemon=True)
    shipper.start()
    first = steps[0]
    try:
        out.steps[first] = run_groups(
            campaign,
            site,
            first,
            log_dir,
            stop=stop,
            release=release(),
            withheld=out.withheld,
            progress=(lambda rec: progress({first: rec})) if progress else None,
        )
    finally:
        shipper.join()
    if out.steps[first].state is StepState.SUCCEEDED and len(steps) > 1 and not stop.is_set():
        done = dict(out.steps)

        def later(records: Mapping[str, StepRecord]) -> None:
            if progress:
                progress({**done, **records})

        out.steps.update(run_steps(campaign, site, steps[1:], log_dir, stop=stop, progress=later))
    if progress:
        progress(out.steps)
    return out
