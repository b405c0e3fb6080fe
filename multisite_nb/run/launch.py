"""Starting a chain for an operator: a run folder (new, or one to resume), the campaign's lock, the chain.

What the command line's ``run`` and ``campaign`` do, as plain functions the CLI calls; nothing here
prints except through ``log``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from multisite_nb.adapters.butler.lock import LockedError, chain_lock
from multisite_nb.adapters.files import check_writable
from multisite_nb.adapters.processes import live_pid
from multisite_nb.adapters.results import (
    RUN_RECORD,
    check_run_folder,
    load_result,
    load_results,
    load_run_record,
    run_state,
)
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import ConfigError, StorageError
from multisite_nb.domain.params import repo_root
from multisite_nb.domain.results import PhaseStatus, RunRecord
from multisite_nb.domain.summaries import PlacementSummary
from multisite_nb.phases.placement import run as placement
from multisite_nb.phases.readiness import check_ready
from multisite_nb.phases.registry import parse
from multisite_nb.phases.registry import phases as registered_phases
from multisite_nb.phases.submit.runner import close_dead_attempts
from multisite_nb.run.chain import ChainOutcome, run_chain
from multisite_nb.run.context import RunContext, load_for_world
from multisite_nb.run.folder import new_run, pid_records

__all__ = ["PhaseLine", "RunStatus", "campaign_of_run", "launch", "recorded_chain", "run_status"]


def launch(
    campaign: Campaign,
    phases: Sequence[str],
    *,
    runs_root: str | os.PathLike[str] | None = None,
    resume_dir: str | os.PathLike[str] | None = None,
    world: Path | None = None,
    secrets: Sequence[str] = (),
    log: Callable[[str], object] = print,
) -> tuple[Path, ChainOutcome]:
    """Run ``phases`` of ``campaign`` in a new run folder under ``runs_root`` (or resume ``resume_dir``).

    Raises
    ------
    ConfigError
        For a phase the campaign does not have (before any folder is made).
    NotReadyError
        When the campaign's systems cannot serve it (before any folder is made).
    StorageError
        For a folder that cannot hold the run.
    LockedError
        When another operator holds the campaign.
    """
    for spec in phases:
        try:
            parse(spec, campaign)
        except ConfigError as exc:
            raise ConfigError(f"--phases: {exc}") from None
    root = Path(runs_root) if runs_root else repo_root() / "runs"
    if resume_dir:
        if not Path(resume_dir).is_dir():
            raise ConfigError(f"--resume: {Path(resume_dir).resolve()} is not a folder: nothing to resume")
        run_dir = check_run_folder(resume_dir)
        if not (run_dir / RUN_RECORD).is_file():
            raise ConfigError(f"--resume: {run_dir} holds no {RUN_RECORD}: nothing to resume")
    else:  # a new run: its systems can serve it, before a run folder exists (a resumed run's phases
        check_ready(campaign)  # meet a site that is down site by site, as they do in a chain)
        check_writable(root)
        run_dir = new_run(root, campaign.name)
    log(f"run folder: {run_dir}")
    context = RunContext(campaign, run_dir, world)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(chain_lock(campaign, run_dir, resume=bool(resume_dir)))
        except LockedError:
            if not resume_dir and not any(run_dir.iterdir()):
                run_dir.rmdir()  # refused before it began: leave no empty run behind
            raise
        outcome = run_chain(
            list(phases),
            run_dir,
            context.notebook_parameters(),
            repo_root() / "notebooks",
            resume=bool(resume_dir),
            campaign=campaign.name,
            log=log,
            secrets=secrets,
            rucio_config=campaign.manifest.rucio.config,
        )
    return run_dir, outcome


def recorded_chain(run_dir: str | os.PathLike[str]) -> list[str] | None:
    """The phases (as ``--phases`` specs) a run folder's chain was started with (None: not recorded)."""
    try:
        record = load_run_record(Path(run_dir))
    except (OSError, ValueError):
        return None
    if record is None or not record.phases_requested:
        return None
    staged = sorted((p.name for p in registered_phases() if p.staged), key=len, reverse=True)

    def spec(label: str) -> str:
        name = next((n for n in staged if label.startswith(f"{n}_")), None)
        return f"{name}@{label[len(name) + 1 :]}" if name else label

    return [spec(label) for label in record.phases_requested]


def campaign_of_run(
    run_dir: Path, params: str | None = None, world: str | os.PathLike[str] | None = None, *, pipeline: bool = True
) -> Campaign:
    """The campaign a run folder was made for (its placement result, or ``run.json``), or ``params``.

    Raises
    ------
    ConfigError
        When neither names it and no ``params`` is given.
    """
    if not params:
        placed = load_result(run_dir, placement.name)
        record = load_run_record(run_dir)
        named = placed.summary.campaign_file if placed and isinstance(placed.summary, PlacementSummary) else ""
        recorded = record.parameters.get("campaign_file") if record else None
        params = named or (str(recorded) if recorded else "")
        if not params:
            raise ConfigError(
                f"{run_dir}: neither its placement result nor run.json names its campaign file: give --params"
            )
    return load_for_world(params, world, pipeline=pipeline)


@dataclass(frozen=True)
class PhaseLine:
    """One requested phase of a run as ``status`` shows it."""

    phase: str
    status: str
    note: str


@dataclass(frozen=True)
class RunStatus:
    """How a run stands: its record, its state, each phase, and the step processes still running."""

    record: RunRecord
    state: str
    phases: list[PhaseLine]
    still_running: list[tuple[int, str]]

    @property
    def bad(self) -> bool:
        return self.state in ("failed", "died", "interrupted")


def _progress(label: str, campaign: Campaign | None, run_dir: Path) -> str:
    """What a phase that died while running had done, from the systems it acts on (when it says)."""
    declared = next(
        (p for p in registered_phases() if p.name == label or (p.staged and label.startswith(f"{p.name}_"))), None
    )
    if campaign is None or declared is None or declared.progress is None:
        return ""
    try:
        return "had done: " + declared.progress(campaign, run_dir)
    except Exception as exc:  # a status never raises for a system it cannot read
        return f"what it had done cannot be read: {type(exc).__name__}: {exc}"[:300]


def run_status(run_dir: str | os.PathLike[str], campaign: Campaign | None = None) -> RunStatus:
    """Read a run folder's state (its record, results and the processes it recorded); with ``campaign``,
    a phase that died while running says what it had done (read from Rucio or the Butlers).

    Raises
    ------
    StorageError
        When the folder holds no ``run.json``.
    """
    folder = Path(run_dir).resolve()
    record = load_run_record(folder)
    if record is None:
        raise StorageError(f"{folder}: no {RUN_RECORD}: not a chain's run folder")
    closed = close_dead_attempts(folder)  # a killed chain's attempts say "running" until someone looks
    results = load_results(folder, strict=False)
    state = run_state(record)
    lines = []
    for entry in record.phases:
        res = results.get(entry.phase)
        note = res.reason if res else entry.reason
        status = str(entry.status)
        if res is not None and res.summary.in_progress:
            note = "in progress when last recorded: " + note
        if entry.started is not None and entry.finished is None and entry.status is PhaseStatus.NOT_RUN:
            if state in ("died", "interrupted"):
                status = f"{state} while running"
                note = _progress(entry.phase, campaign, folder) or note
            elif state == "running":
                status = "running"
        lines.append(PhaseLine(entry.phase, status, note))
    for attempt in closed:
        lines.append(PhaseLine(f"  {attempt.site} {attempt.step}", "died", attempt.note))
    live: list[tuple[int, str]] = []
    for path, rec in pid_records(folder):
        if live_pid(rec) is not None:
            live.append((rec.pid, path.relative_to(folder).as_posix()))
    return RunStatus(record, state, lines, live)
