"""A site's step as groups: the plan (cut once, kept in the run folder), and a group run with its retries.

The cut follows :mod:`multisite_nb.domain.groups`; the plan is written to
``<log_dir>/<site>/<step>/groups.parquet`` the first time the step is reached, and read from there
afterwards (a resumed run keeps its groups). A group is one attempt after another of the same
RUN ``P/S/T/gNNNN`` (a retry reruns only its failed quanta); once it succeeds its RUN is chained
into the step's CHAINED ``P/S/T``, and that chain into the site's ``P/S``, so later steps, the
gathers and QA read every succeeded group and nothing of a group that did not finish.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from lsst.daf.butler import CollectionType, MissingCollectionError

from multisite_nb.adapters.butler.repo import open_butler
from multisite_nb.adapters.grouptable import read_group_plan, write_group_plan
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import PlanError
from multisite_nb.domain.groups import Group, GroupPlan, cut_selection, cut_values, group_dimension
from multisite_nb.domain.naming import group_chain, group_name, group_plan_file, group_run, safe_name
from multisite_nb.domain.records import StepRecord, StepState
from multisite_nb.domain.steps import StepRun, site_units
from multisite_nb.phases.submit.runner import run_step, save_attempt
from multisite_nb.phases.submit.selection import data_selection, step_run

__all__ = [
    "whole_step_check",
    "cut_step",
    "first_group",
    "group_runs",
    "last_record",
    "link_group",
    "linked_groups",
    "plan_groups",
    "run_group",
]

#: Chain edits of one repository are made one at a time (groups of a site end side by side).
_CHAIN_LOCK = threading.Lock()


def plan_groups(
    campaign: Campaign, site: str, step: str, log_dir: str | os.PathLike[str], *, extra_inputs: Sequence[str] = ()
) -> tuple[StepRun, GroupPlan]:
    """The site's whole step (its collections and selection) and its group plan.

    The plan is read from the run folder if this step was reached before; otherwise it is cut
    now from the step's selection and written there.
    """
    base = step_run(campaign, site, step, extra_inputs=extra_inputs)
    path = group_plan_file(log_dir, site, step)
    if path.is_file():
        try:
            return base, read_group_plan(path)
        except PlanError:
            path.unlink()  # a plan cut, not a record of work done: cut it again
    plan = cut_step(campaign, base)
    write_group_plan(path, plan)
    return base, plan


def cut_step(campaign: Campaign, base: StepRun) -> GroupPlan:
    """Cut ``base`` (a site's whole step) into groups by the campaign's group sizes."""
    sizes = campaign.config.processing.sizes
    dim = group_dimension(str(campaign.pipeline_path), base.step, sizes)
    size = sizes[dim] if dim else 0
    plan = cut_selection(base.site, base.step, base.data_query, base.data_id_table, dim, size)
    if plan is not None:
        return plan
    if dim == "tract":  # selected by an IN list of tracts (or by visits): each group its own tracts
        units = site_units(campaign, base.site)
        groups: list[Group] = []
        columns: tuple[str, ...] = ()
        for i, tracts in enumerate(cut_values((u.tract for u in units), size)):
            chosen = [u for u in units if u.tract in set(tracts)]
            query, table = data_selection(campaign, base.site, base.step, chosen)
            columns = table.columns if table is not None else columns
            groups.append(Group(group_name(i + 1), query, table.rows if table is not None else ()))
        return GroupPlan(base.site, base.step, "tract", size, columns, tuple(groups))
    return cut_selection(base.site, base.step, base.data_query, base.data_id_table, None, 0) or GroupPlan(
        base.site, base.step, "", 0, (), (Group(group_name(1), base.data_query, ()),)
    )


def group_runs(campaign: Campaign, base: StepRun, plan: GroupPlan) -> list[StepRun]:
    """Every group of ``plan`` as a `StepRun` of its own (its RUN, its chain, its data)."""
    return [
        plan.restrict(
            base,
            g,
            run=group_run(campaign, base.site, base.step, g.name),
            chain=group_chain(campaign, base.site, base.step, g.name),
        )
        for g in plan.groups
    ]


def run_group(
    campaign: Campaign,
    sr: StepRun,
    log_dir: str | os.PathLike[str],
    *,
    retries: int,
    mode: str | None = None,
    stop: threading.Event | None = None,
    config_overrides: Sequence[str] = (),
    on_attempt: Callable[[StepRecord], None] | None = None,
) -> StepRecord:
    """Run one group to its end: attempts until it succeeds, or ``retries`` reruns failed and it is held.

    Each attempt restarts the group's RUN (only quanta without outputs run). An attempt that
    was stopped (an interrupt, a timeout) is not retried: it is left for a later run of the
    phase. Once the group succeeds its RUN is chained into the step's collection (`link_group`).
    """
    record: StepRecord | None = None
    for n in range(retries + 1):
        if stop is not None and stop.is_set() and record is not None:
            break
        record = run_step(
            campaign, sr, mode, restart=True, log_dir=log_dir, check=False, config_overrides=config_overrides
        )
        if on_attempt:
            on_attempt(record)
        if record.state is StepState.SUCCEEDED:
            link_group(sr)
            return record
        if record.state is not StepState.FAILED:
            return record  # stopped or died: not a failure of the data, a later run restarts it
        if n == retries:
            held = record.model_copy(
                update={
                    "state": StepState.HELD,
                    "note": (f"held after {n + 1} attempt(s); " + record.note).strip("; "),
                }
            )
            return _mark_held(held)
    assert record is not None
    return record


def _mark_held(record: StepRecord) -> StepRecord:
    """Record the group's last attempt as held (its ``status.json``, beside its log)."""
    return save_attempt(Path(record.log).parent, record) if record.log else record


def link_group(sr: StepRun) -> None:
    """Chain a succeeded group's RUN into the step's ``P/S/T`` (group order), and ``P/S/T`` into the site's chain.

    The site's chain ``P/S`` lists its steps' collections newest first, then the RUNs of every
    input collection a step read (the campaign's inputs, runs delivered to the site), as
    ``pipetask -o`` made it when a step was one run. Idempotent: linking a group again changes nothing.
    """
    with _CHAIN_LOCK, open_butler(sr.repo, writeable=True, db_auth=sr.db_auth) as butler:
        step = sr.chain_into
        butler.collections.register(step, CollectionType.CHAINED)
        children = list(butler.collections.get_info(step).children)
        if sr.output_run not in children:
            butler.collections.redefine_chain(step, sorted([*children, sr.output_run]))
        chain = step.rsplit("/", 1)[0]
        butler.collections.register(chain, CollectionType.CHAINED)
        have = list(butler.collections.get_info(chain).children)
        flat = set(butler.collections.query(chain, flatten_chains=True)) if have else set()
        wanted = [c for c in sr.inputs if c != chain]
        others = [c for c in butler.collections.query(wanted, flatten_chains=True) if c not in flat] if wanted else []
        new = ([step] if step not in have else []) + have + [c for c in dict.fromkeys(others) if c not in have]
        if new != have:
            butler.collections.redefine_chain(chain, new)


def linked_groups(base: StepRun) -> set[str]:
    """The RUNs already chained into the step's collection (groups that succeeded before)."""
    with open_butler(base.repo, db_auth=base.db_auth) as butler:
        try:
            return set(butler.collections.get_info(base.output_run).children)
        except MissingCollectionError:
            return set()


def last_record(log_dir: str | os.PathLike[str], sr: StepRun) -> StepRecord | None:
    """The record of a group's latest attempt under ``log_dir``, if there is one."""
    folder = Path(log_dir) / safe_name(sr.site) / safe_name(sr.step) / safe_name(sr.group)
    for path in sorted(folder.glob("attempt-*/status.json"), reverse=True):
        try:
            return StepRecord.model_validate_json(path.read_bytes())
        except (OSError, ValueError):
            continue
    return None


def whole_step_check(campaign: Campaign, base: StepRun, plan: GroupPlan) -> StepRun:
    """What pre-flight checks before a site's groups start: the whole site's data, group 1's collections."""
    first = group_runs(
        campaign, base, GroupPlan(plan.site, plan.step, plan.dimension, plan.size, plan.columns, plan.groups[:1])
    )[0]
    return dataclasses.replace(base, output_run=first.output_run, output_chain=first.output_chain)


def first_group(campaign: Campaign, site: str, step: str) -> StepRun:
    """The first group of a site's step, cut now (what a sample submit file or an offline preparation shows)."""
    base = step_run(campaign, site, step)
    return group_runs(campaign, base, cut_step(campaign, base))[0]
