"""A stage's steps at its sites: each site's steps in order, the sites side by side.

Each step is checked (pre-flight) just before it runs, and a site stops at its first step
that does not succeed. Steps always run with ``restart=True``: an existing run of a step is
finished, not redone, so running a phase again is safe. An interrupt (the kernel's stop
button) stops every running step's process group, records the phase as interrupted, and a
new run of the phase restarts the steps where they stopped.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from multisite_nb.domain.config import Campaign
from multisite_nb.domain.groups import step_of_groups
from multisite_nb.domain.records import StepRecord, StepState
from multisite_nb.domain.steps import StepRun
from multisite_nb.phases.submit.groups import (
    group_runs,
    last_record,
    linked_groups,
    plan_groups,
    run_group,
    whole_step_check,
)
from multisite_nb.phases.submit.preflight import preflight
from multisite_nb.phases.submit.runner import run_step, stop_running_steps
from multisite_nb.phases.submit.summary import InFlight

__all__ = ["run_groups", "run_sites", "run_steps"]


def run_steps(
    campaign: Campaign,
    site: str,
    steps: Sequence[str],
    log_dir: str | os.PathLike[str],
    *,
    extra_inputs: Sequence[str] = (),
    progress: Callable[[Mapping[str, StepRecord]], None] | None = None,
    stop: threading.Event | None = None,
    mode: str | None = None,
    make_run: Callable[[str], StepRun] | None = None,
) -> dict[str, StepRecord]:
    """Run ``steps`` in order at one site (pre-flight, run or restart); stop at the first that fails.

    Parameters
    ----------
    campaign, site, steps
        Where and what.
    log_dir
        Where the attempts' folders go (see `~multisite_nb.phases.submit.run_step`).
    extra_inputs
        More input collections for every step (e.g. runs delivered by an earlier gate).
    progress
        Called with the site's steps so far, the current one ``running`` while it runs.
    stop
        Once set, no further step starts.
    mode
        The executor (default: the manifest's ``workflow.mode``).
    make_run
        The `StepRun` of a step (default: `~multisite_nb.phases.submit.step_run` at ``site``).

    Returns
    -------
    dict
        Step -> its record; a step that failed pre-flight is `StepRecord.not_started`.
    """
    out: dict[str, StepRecord] = {}
    for step in steps:
        if stop is not None and stop.is_set():
            break
        if progress:
            progress({**out, step: StepRecord.in_progress(site, step)})
        try:
            if make_run is None:  # the campaign's own steps: in groups
                report = (lambda rec, done=dict(out): progress({**done, rec.step: rec})) if progress else None
                out[step] = run_groups(
                    campaign, site, step, log_dir, extra_inputs=extra_inputs, stop=stop, mode=mode, progress=report
                )
            else:
                sr = make_run(step)
                problems = preflight(campaign, sr, restart=True)
                if problems:
                    out[step] = StepRecord.not_started(site, step, problems)
                    break
                # checked just above (restart=True: an existing run of this step is finished, not redone)
                out[step] = run_step(campaign, sr, mode, restart=True, log_dir=log_dir, check=False)
        except Exception as exc:  # this site's step fails with the reason; the other sites go on
            out[step] = StepRecord.not_started(site, step, [f"{type(exc).__name__}: {exc}"])
        if out[step].state is not StepState.SUCCEEDED:
            break
    if progress:
        progress(out)
    return out


def run_groups(
    campaign: Campaign,
    site: str,
    step: str,
    log_dir: str | os.PathLike[str],
    *,
    extra_inputs: Sequence[str] = (),
    stop: threading.Event | None = None,
    mode: str | None = None,
    progress: Callable[[StepRecord], None] | None = None,
    release: Iterable[str] | None = None,
    withheld: Mapping[str, str] | None = None,
) -> StepRecord:
    """Run one site's step as its groups, at most the manifest's ``workflow.groups_in_flight`` at once.

    The step is checked (pre-flight, over the whole site's selection) before any group starts.
    Groups whose RUN is already chained into the step's collection succeeded before and are not
    touched; every other group runs to its end (`run_group`: retried, then held), whatever
    happens to the others. Returns the step as one record, its groups counted by state
    (``progress`` gets it each time a group starts or ends).

    With ``release`` (a flowing campaign), a group starts when its name comes out of it (its
    inputs verified at the site), each checked on its own just before it runs; a group never
    released does not run: it is recorded not started, with its reason from ``withheld``
    (group -> why its inputs are not there, read once ``release`` has run out).
    """
    base, plan = plan_groups(campaign, site, step, log_dir, extra_inputs=extra_inputs)
    runs = group_runs(campaign, base, plan)
    if release is None:
        problems = preflight(campaign, whole_step_check(campaign, base, plan), restart=True)
        if problems:
            return StepRecord.not_started(site, step, problems)
    done = linked_groups(base)
    records: dict[str, StepRecord] = {}
    for sr in runs:
        if sr.output_run in done:
            before = last_record(log_dir, sr)
            records[sr.group] = (
                before
                if before and before.state is StepState.SUCCEEDED
                else StepRecord(site=site, step=step, group=sr.group, state=StepState.SUCCEEDED, run=sr.output_run)
            )
    todo = [sr for sr in runs if sr.group not in records]
    lock = threading.Lock()

    def whole() -> StepRecord:
        with lock:
            now = list(records.values())
        return step_of_groups(site, step, now, plan.cut, run=base.output_run, chain=base.output_chain)

    def one(sr: StepRun) -> None:
        if stop is not None and stop.is_set():
            return
        with lock:
            records[sr.group] = StepRecord.in_progress(site, step).model_copy(update={"group": sr.group})
        if progress:
            progress(whole())
        try:
            problems = preflight(campaign, sr, restart=True) if release is not None else []
            if problems:
                rec = StepRecord.not_started(site, step, problems).model_copy(update={"group": sr.group})
            else:
                rec = run_group(campaign, sr, log_dir, retries=campaign.config.processing.retries, mode=mode, stop=stop)
        except Exception as exc:  # the workflow system refused this group: it fails, the others go on
            rec = StepRecord.not_started(site, step, [f"{sr.where}: {type(exc).__name__}: {exc}"])
            rec = rec.model_copy(update={"group": sr.group})
        with lock:
            records[sr.group] = rec
        if progress:
            progress(whole())

    if todo:
        in_flight = min(len(todo), campaign.manifest.workflow.groups_in_flight)
        by_name = {sr.group: sr for sr in todo}
        order = (by_name[g] for g in release if g in by_name) if release is not None else iter(todo)
        with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix=f"{site}-groups") as pool:
            for future in [pool.submit(one, sr) for sr in order]:
                future.result()
    elif release is not None:
        for _ in release:  # nothing to run: let the releases run out
            pass
    if release is not None and not (stop is not None and stop.is_set()):
        why = withheld or {}
        for g in plan.groups:
            if g.name not in records:
                cause = why.get(g.name, "its inputs were not verified at the site")
                records[g.name] = StepRecord.not_started(site, step, [cause]).model_copy(update={"group": g.name})
    return whole()


def run_sites(
    campaign: Campaign,
    sites: Sequence[str],
    steps: Sequence[str],
    log_dir: str | os.PathLike[str],
    *,
    extra: Mapping[str, Sequence[str]] | None = None,
    live: InFlight | None = None,
    check_first: bool = True,
) -> dict[str, dict[str, StepRecord]]:
    """Run ``steps`` at every site of ``sites``, the sites side by side (`run_steps` each).

    At most the manifest's ``workflow.sites_at_once`` sites run at the same time (default:
    all, as the facilities do).

    Parameters
    ----------
    campaign, sites, steps, log_dir
        What, where, and where the attempts' folders go.
    extra
        Site -> more input collections for its steps.
    live
        Keeps the phase's result current while the steps run.
    check_first
        Pre-flight every site's first step before anything runs: a site with problems does not
        run (its first step comes back `StepRecord.not_started`, naming them) while the other
        sites go on (later steps read what earlier ones write, so they are checked just before
        they run).

    Raises
    ------
    BaseException
        Whatever interrupted the sites (e.g. `KeyboardInterrupt`), after every running step
        was stopped and ``live`` recorded the phase as interrupted.
    """
    extra = extra or {}
    refused: dict[str, dict[str, StepRecord]] = {}
    if check_first and steps:
        first = steps[0]
        for site in sites:
            try:
                base, plan = plan_groups(campaign, site, first, log_dir, extra_inputs=extra.get(site, ()))
                problems = preflight(campaign, whole_step_check(campaign, base, plan), restart=True)
            except Exception as exc:  # a site that cannot even be checked is that site's problem
                problems = [f"{site} {first}: cannot be checked: {type(exc).__name__}: {exc}"]
            if problems:
                refused[site] = {first: StepRecord.not_started(site, first, problems)}
        sites = [s for s in sites if s not in refused]
        if not sites:
            return refused
    at_once = min(len(sites), campaign.manifest.workflow.sites_at_once or len(sites)) or 1
    stop = threading.Event()
    interrupted: BaseException | None = None
    stopped = 0
    with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="site") as pool:
        futures = {
            site: pool.submit(
                run_steps,
                campaign,
                site,
                steps,
                log_dir,
                extra_inputs=extra.get(site, ()),
                progress=live.site(site) if live else None,
                stop=stop,
            )
            for site in sites
        }
        try:
            done = {site: futures[site].result() for site in sites}
        # interrupted, or a site raised: start nothing more, stop what runs (re-raised below)
        except BaseException as exc:  # noqa: BLE001
            stop.set()
            stopped = stop_running_steps()
            interrupted = exc
    if interrupted is not None:  # the sites' threads have ended: record where things stand, not 'running'
        what = "interrupted" if isinstance(interrupted, KeyboardInterrupt) else f"stopped by {interrupted!r}"
        if live is not None:
            live.end(f"{what}; {stopped} running step(s) stopped, a new run of the phase restarts them")
        raise interrupted
    return {**refused, **done}
