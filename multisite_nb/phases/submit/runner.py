"""Running one step at one site through the real middleware, and stopping what runs.

Every attempt gets a folder ``<log_dir>/<site>/<step>/attempt-NN/`` holding its log, quantum
graph, ``attempt.json`` (what was run), ``pid.json`` (the command running now: a later
process can find and stop it) and ``status.json`` (a `~multisite_nb.domain.records.StepRecord`:
``running`` while it runs, then how it ended). Nothing large is returned.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lsst.daf.butler import MissingCollectionError

from multisite_nb.adapters.butler.repo import collection_exists, open_butler
from multisite_nb.adapters.files import atomic_write_json
from multisite_nb.adapters.grouptable import read_group_plan
from multisite_nb.adapters.processes import ChildRegistry, PidRecord, live_pid, proc_start_time, read_pid_record
from multisite_nb.adapters.workflow import Attempt, Launch, executor_for
from multisite_nb.adapters.workflow.status import graph_status, log_tail_cause, summary_status
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import PreflightError
from multisite_nb.domain.groups import step_of_groups
from multisite_nb.domain.naming import REFERENCE, group_plan_file, logs_dir, safe_name
from multisite_nb.domain.records import QuantumFailure, StepRecord, StepState
from multisite_nb.domain.steps import StepRun
from multisite_nb.phases.submit.preflight import preflight

__all__ = ["close_dead_attempts", "latest_attempts", "run_step", "running_steps", "save_attempt", "stop_running_steps"]

#: The step commands this process is waiting for (what `stop_running_steps` stops).
_STEPS = ChildRegistry()


def running_steps() -> int:
    """How many step processes (``pipetask`` / ``bps``) this process has running now."""
    return _STEPS.count()


def stop_running_steps() -> int:
    """Stop every step process this process started and is still waiting for.

    Used when the operator interrupts a phase (e.g. the kernel's stop button while the sites
    run side by side): each command's whole process group is stopped, the interrupted steps
    end as failed or stopped, and a later run of the phase restarts them where they stopped.
    Returns how many were stopped.
    """
    return _STEPS.stop_all()


def run_step(
    campaign: Campaign,
    step_run: StepRun,
    mode: str | None = None,
    restart: bool = False,
    *,
    log_dir: str | os.PathLike[str],
    config_overrides: Sequence[str] = (),
    jobs: int | None = None,
    timeout: float | None = None,
    check: bool = True,
    max_failures: int = 100,
) -> StepRecord:
    """Run one step at one site through the real middleware and report what happened.

    Parameters
    ----------
    campaign, step_run
        What to run (see `~multisite_nb.phases.submit.step_run`).
    mode
        ``"pipetask"`` (``pipetask run`` here), ``"bps"`` (``bps submit`` with the manifest's
        BPS site config, waiting for the workflow to end) or a registered executor's name;
        default: the manifest's ``workflow.mode``.
    restart
        Finish an earlier attempt of the same run (pipetask: only the quanta without outputs
        run; bps: ``bps restart`` of the last BPS attempt). Without an existing run it is an
        ordinary first attempt.
    log_dir
        The attempt's folder is ``<log_dir>/<site>/<step>/attempt-NN/``.
    config_overrides
        Task config overrides ``label:name=value`` (``pipetask -c``), e.g. to inject a failure.
    jobs
        ``pipetask -j`` (default: the manifest's ``workflow.jobs``).
    timeout
        Seconds before the command's process group is killed (the step ends ``stopped``).
    check
        Run `~multisite_nb.phases.submit.preflight` first.
    max_failures
        How many failed quanta to describe in ``failures``.

    Returns
    -------
    StepRecord
        ``succeeded``, ``failed`` or ``stopped``; also written to the attempt's ``status.json``.

    Raises
    ------
    PreflightError
        If ``check`` and pre-flight found problems (nothing was started).
    ConfigError
        If ``mode`` names no executor, or the BPS site config is wrong.
    WorkflowError
        If the workflow system cannot restart the step.
    """
    executor = executor_for(campaign, mode)
    extend = bool(restart) and bool(collection_exists(step_run.repo, step_run.output_run, db_auth=step_run.db_auth))
    if check:
        problems = preflight(campaign, step_run, restart=extend)
        if problems:
            raise PreflightError(step_run.where, problems)
    base = Path(log_dir) / safe_name(step_run.site) / safe_name(step_run.step)
    if step_run.group:
        base = base / safe_name(step_run.group)
    previous = _attempts(base, step_run)
    number, folder = _new_attempt(base)
    attempt = Attempt(
        campaign=campaign,
        step_run=step_run,
        number=number,
        folder=folder,
        log=folder / executor.log_name,
        extend=extend,
        previous=previous,
        config_overrides=tuple(config_overrides),
        jobs=jobs or campaign.manifest.workflow.jobs,
        timeout=timeout,
        children=_STEPS,
        record={
            "run": step_run.output_run,
            "repo": step_run.repo,
            "mode": executor.mode,
            "executor": executor.name,
            "restart": extend,
            # the data ID table is a file beside the command or submit file: thousands of rows at scale
            "step_run": {
                **dataclasses.asdict(dataclasses.replace(step_run, data_id_table=None)),
                "data_id_table": str(step_run.data_id_table or ""),
            },
        },
    )
    t0 = time.monotonic()
    record = StepRecord(
        site=step_run.site,
        step=step_run.step,
        state=StepState.RUNNING,
        run=step_run.output_run,
        chain=step_run.output_chain,
        mode=executor.mode,
        log=str(attempt.log),
        attempt=number,
        restart=extend,
        started=datetime.now(UTC).isoformat(),
        owner_pid=os.getpid(),
        owner_start=proc_start_time(os.getpid()),
        owner_host=socket.gethostname(),
        group=step_run.group,
    )
    atomic_write_json(folder / "status.json", record.model_dump(mode="json"))
    _mark_running(Path(log_dir), folder)
    try:
        _prepare_chain(step_run)
        launch = executor.run(attempt)
    except BaseException as exc:  # interrupted, or the workflow system refused: say so, not 'running'
        state = StepState.STOPPED if isinstance(exc, KeyboardInterrupt) else StepState.FAILED
        _finish(
            folder,
            record.model_copy(
                update={
                    "state": state,
                    "seconds": round(time.monotonic() - t0, 2),
                    "note": f"ended by {type(exc).__name__}: {exc}"[:500],
                }
            ),
        )
        raise
    seconds = round(time.monotonic() - t0, 2)
    record = _outcome(record, attempt, launch, timeout=timeout, max_failures=max_failures)
    record.seconds = seconds
    return _finish(folder, record)


#: Under a log folder: one small file per attempt running now, naming its folder (what a look reads).
RUNNING_INDEX = ".running"


def _marker(log_dir: Path, folder: Path) -> Path:
    return log_dir / RUNNING_INDEX / (safe_name(str(folder.relative_to(log_dir)).replace("/", ".")) + ".json")


def _mark_running(log_dir: Path, folder: Path) -> None:
    """Index an attempt as running, so that a look reads the running attempts, not every attempt ever made."""
    atomic_write_json(_marker(log_dir, folder), {"folder": str(folder.relative_to(log_dir))})


def save_attempt(folder: Path, record: StepRecord) -> StepRecord:
    """Write an attempt's ``status.json`` (atomically): the one writer of attempt records."""
    atomic_write_json(folder / "status.json", record.model_dump(mode="json"))
    return record


def _finish(folder: Path, record: StepRecord) -> StepRecord:
    record.finished = datetime.now(UTC).isoformat()
    save_attempt(folder, record)
    for log_dir in folder.parents:  # the attempt is no longer running: out of the index
        marker = log_dir / RUNNING_INDEX
        if marker.is_dir():
            _marker(log_dir, folder).unlink(missing_ok=True)
            break
    return record


def _outcome(
    record: StepRecord, attempt: Attempt, launch: Launch, *, timeout: float | None, max_failures: int
) -> StepRecord:
    """The attempt's record once its commands ended (counts from the step's full graph)."""
    notes = [launch.note] if launch.note else []
    # The step's full graph: that of the first attempt of this run, if it was recorded here.
    reference = launch.graph
    if attempt.extend:
        firsts = [a for a in attempt.previous if not a.get("restart") and a.get("graph") and Path(a["graph"]).is_file()]
        if firsts:
            reference = Path(firsts[-1]["graph"])
        else:
            notes.append("the first attempt's quantum graph is not under this log dir: counts cover this attempt only")
    record = record.model_copy(update={"state": StepState.FAILED, "returncode": launch.returncode})
    if launch.already_done:
        # a restart of a finished run: nothing was left to run
        record.state, record.total, record.succeeded = StepState.SUCCEEDED, launch.already_done, launch.already_done
        notes = [f"nothing to do: all {launch.already_done} quanta had already succeeded"]
    elif reference is not None and reference.is_file():
        clean = None if attempt.extend or launch.returncode != 0 else summary_status(launch.summary)
        counts = clean or graph_status(attempt.step_run, reference, summary=launch.summary, max_failures=max_failures)
        record.total, record.succeeded = counts.total, counts.succeeded
        record.failed, record.pending = counts.failed, counts.pending
        record.failures, record.by_task = counts.failures, counts.by_task
        if record.failed or record.total == 0:
            record.state = StepState.FAILED
        elif record.pending or launch.timed_out:
            record.state = StepState.STOPPED
        else:
            record.state = StepState.SUCCEEDED
        if launch.timed_out:
            notes.append(f"killed after {timeout} s")
    else:
        record.failures = [
            QuantumFailure(task=None, data_id={}, cause=log_tail_cause(attempt.log, launch.timed_out, timeout))
        ]
    unmade = launch.graph is not None and not launch.graph.is_file()  # this attempt's graph was never written
    if attempt.extend and unmade and launch.returncode not in (0, None) and not launch.already_done:
        # the command failed before it built this attempt's graph: the cause is in its log, not the quanta
        cause = log_tail_cause(attempt.log, launch.timed_out, timeout)
        record.failures = [QuantumFailure(task="(command)", data_id={}, cause=cause), *record.failures]
        record.state = StepState.FAILED
    record.note = " ".join(notes)
    return record


def _status_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Every attempt's ``status.json`` of a run's campaign steps: ``<site>/<step>[/<group>]/attempt-NN``."""
    logs = logs_dir(run_dir)
    found = [*logs.glob("*/*/attempt-*/status.json"), *logs.glob("*/*/g*/attempt-*/status.json")]
    return sorted(p for p in found if p.relative_to(logs).parts[0] != REFERENCE)


def _running_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The ``status.json`` of each attempt indexed as running (a folder without the index: every attempt's)."""
    logs = logs_dir(run_dir)
    index = logs / RUNNING_INDEX
    if not index.is_dir():
        return _status_files(run_dir)  # written before attempts were indexed
    out = []
    for marker in sorted(index.glob("*.json")):
        try:
            folder = logs / str(json.loads(marker.read_text())["folder"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out.append(folder / "status.json")
    return out


def close_dead_attempts(run_dir: str | os.PathLike[str]) -> list[StepRecord]:
    """Close, as ``died``, every attempt of a run recorded ``running`` whose running process is gone.

    A chain killed while a step ran leaves its attempt's ``status.json`` saying ``running`` for ever
    (and perhaps its command still running, orphaned: named in the note). Each look at the run
    (``status``, the dashboard, ``--resume``) calls this; an attempt whose process lives, or that
    runs on another host (whose processes this one cannot see), is left as it is.
    Returns the records it closed.
    """
    closed = []
    for path in _running_files(run_dir):
        try:
            record = StepRecord.model_validate_json(path.read_bytes())
        except (OSError, ValueError):
            continue  # unreadable: the views report it as such
        if record.state is not StepState.RUNNING or record.owner_pid is None:
            continue
        if record.owner_host and record.owner_host != socket.gethostname():
            continue  # another host's process: this one cannot see whether it lives
        if live_pid(PidRecord(record.owner_pid, record.owner_start)) is not None:
            continue
        command = read_pid_record(path.parent / "pid.json")
        orphan = live_pid(command) if command is not None else None
        note = f"died: the process that ran it (pid {record.owner_pid}) is gone"
        if orphan is not None:
            note += f"; its command (pid {orphan}) still runs, orphaned: --resume stops it"
        closed.append(record.model_copy(update={"state": StepState.DIED, "note": note}))
        try:
            _finish(path.parent, closed[-1])
        except OSError:  # a run folder shared read-only: the look still tells the truth, unrecorded
            pass
    return closed


def latest_attempts(
    run_dir: str | os.PathLike[str], also: Iterable[tuple[str, str]] = ()
) -> dict[str, dict[str, StepRecord]]:
    """Site → step → the step as its attempts' ``status.json`` say now (dead ones closed), for every
    step with an attempt running or found dead by this look, and the (site, step) pairs in ``also``
    (those a result recorded in flight); the phases' results have the others.

    A step run as groups is one record of all its groups (each group's latest attempt), with
    its groups counted by state (:func:`~multisite_nb.domain.groups.step_of_groups`).
    """
    closed = {(r.site, r.step, r.group, r.attempt): r for r in close_dead_attempts(run_dir)}
    logs = logs_dir(run_dir)
    touched = {p.relative_to(logs).parts[:2] for p in _running_files(run_dir)}
    touched |= {(safe_name(r.site), safe_name(r.step)) for r in closed.values()}
    touched |= {(safe_name(site), safe_name(step)) for site, step in also}
    latest: dict[tuple[str, str, str], StepRecord] = {}
    paths = [p for p in _status_files(run_dir) if p.relative_to(logs).parts[:2] in touched]
    for path in paths:
        try:
            record = StepRecord.model_validate_json(path.read_bytes())
        except (OSError, ValueError):
            continue
        record = closed.get((record.site, record.step, record.group, record.attempt), record)
        key = (record.site, record.step, record.group)
        have = latest.get(key)
        if have is None or record.attempt > have.attempt:
            latest[key] = record
    by_step: dict[tuple[str, str], list[StepRecord]] = {}
    for (site, step, _), record in sorted(latest.items()):
        by_step.setdefault((site, step), []).append(record)
    out: dict[str, dict[str, StepRecord]] = {}
    for (site, step), records in by_step.items():
        if len(records) == 1 and not records[0].group:
            out.setdefault(site, {})[step] = records[0]
            continue
        plan = group_plan_file(logs_dir(run_dir), site, step)
        cut = read_group_plan(plan).cut if plan.is_file() else None
        out.setdefault(site, {})[step] = step_of_groups(site, step, records, cut, run=records[0].run.rsplit("/", 1)[0])
    return out


def _new_attempt(base: Path) -> tuple[int, Path]:
    base.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in base.iterdir() if (m := re.fullmatch(r"attempt-(\d+)", p.name))]
    n = max(numbers, default=0) + 1
    path = base / f"attempt-{n:02d}"
    path.mkdir()
    return n, path


def _attempts(base: Path, step_run: StepRun) -> list[dict[str, Any]]:
    """Recorded attempts of this step (oldest first) for the same output run."""
    out = []
    for p in sorted(base.glob("attempt-*/attempt.json")):
        try:
            rec = json.loads(p.read_text())
        except ValueError:
            continue
        if rec.get("run") == step_run.output_run and rec.get("repo") == step_run.repo:
            out.append(rec)
    return out


def _prepare_chain(step_run: StepRun) -> None:
    """Make ``P/S`` flat and append the step's inputs it lacks (so later steps see them).

    ``pipetask`` reads an existing output chain instead of ``-i`` and insists that the
    (flattened) inputs are a contiguous part of it; appending the missing inputs at the end
    keeps both true.
    """
    with open_butler(step_run.repo, writeable=True, db_auth=step_run.db_auth) as butler:
        try:
            children = list(butler.collections.get_info(step_run.output_chain).children)
        except MissingCollectionError:
            return
        flat = list(butler.collections.query(step_run.output_chain, flatten_chains=True))
        others = [c for c in step_run.inputs if c != step_run.output_chain]
        wanted = list(butler.collections.query(others, flatten_chains=True)) if others else []
        new = flat + [c for c in wanted if c not in flat]
        if new != children:
            butler.collections.redefine_chain(step_run.output_chain, new)
