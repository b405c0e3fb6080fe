"""Run folders: making one, finding the one a notebook works in, checking one, and its processes.

A run folder ``runs/<campaign>/<run id>/`` holds everything a chain of phases left behind (see
:mod:`multisite_nb.run.chain`); the step attempts under ``artifacts/logs/`` record their process
(``pid.json``) so that what a dead chain left running can be found and stopped.
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from multisite_nb.adapters.processes import PidRecord, live_pid, read_pid_record, stop_groups
from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.params import repo_root
from multisite_nb.domain.results import utcnow
from multisite_nb.phases.registry import get

__all__ = ["interactive_run_dir", "new_run", "pid_records", "stop_orphans"]

_CAMPAIGN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def new_run(runs_root: str | os.PathLike[str], campaign: str) -> Path:
    """Create and return a fresh run folder ``<runs_root>/<campaign>/<run id>/``.

    The run id is ``YYYYMMDDTHHMMSSZ-<6 hex>`` (UTC), so ids sort by time.

    Parameters
    ----------
    runs_root : path
        Usually ``runs/`` at the repository root.
    campaign : str
        Campaign name (letters, digits, ``_ . -``).
    """
    if not _CAMPAIGN.match(campaign):
        raise ConfigError(f"campaign name {campaign!r} must be a plain folder name")
    parent = Path(runs_root) / campaign
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        run_id = f"{utcnow():%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        path = parent / run_id
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path.resolve()
    raise OSError(f"could not create a unique run folder under {parent}")  # pragma: no cover


def interactive_run_dir(campaign: str, phase: str, runs_root: str | os.PathLike[str] | None = None) -> Path:
    """The run folder a notebook opened by hand (no ``run_dir`` parameter) works in.

    ``$MSNB_RUN_DIR`` when set (the dashboard under Voilà, nbval); otherwise a fresh folder
    for a phase that starts a run (placement), or the campaign's latest run folder so that a
    later phase finds the earlier phases' results.
    """
    env = os.environ.get("MSNB_RUN_DIR")
    if env:
        path = Path(env).resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path
    root = Path(runs_root) if runs_root is not None else repo_root() / "runs"
    parent = root / campaign
    existing = sorted(p for p in parent.glob("*") if p.is_dir()) if parent.is_dir() else []
    if get(phase).starts_run or not existing:
        return new_run(root, campaign)
    return existing[-1].resolve()


def pid_records(run_dir: str | os.PathLike[str]) -> list[tuple[Path, PidRecord]]:
    """Every step process a run recorded (each attempt's ``pid.json``)."""
    folder = Path(run_dir)
    return [
        (p, rec) for p in sorted(folder.glob("artifacts/logs/**/pid.json")) if (rec := read_pid_record(p)) is not None
    ]


def stop_orphans(run_dir: str | os.PathLike[str]) -> list[str]:
    """Stop the step process groups a dead chain of this run left running.

    (Its phase kernels end by themselves: a kernel exits when the chain that started it is gone.)

    Returns what was stopped (paths relative to the run folder).
    """
    live = [(p, rec) for p, rec in pid_records(run_dir) if live_pid(rec) is not None]
    stop_groups([rec for _, rec in live])
    return [p.relative_to(run_dir).as_posix() for p, _ in live]
