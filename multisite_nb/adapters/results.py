"""A run folder's records on disk: phase results, the run record, long tables.

A phase finishes by calling :func:`record_result` (or :func:`finish_phase`) with a
:class:`~multisite_nb.domain.results.PhaseResult`; the chain runner, the next phase and the
views read it back with :func:`load_result` / :func:`load_results`. Files live in
``<run_dir>/results/<phase>.json``; long tables go beside them under
``<run_dir>/artifacts/<phase>/`` via :func:`save_table`. Every file is written atomically.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from multisite_nb.adapters.files import atomic_write_text, check_writable
from multisite_nb.adapters.processes import PidRecord, live_pid
from multisite_nb.domain.errors import StorageError
from multisite_nb.domain.naming import table_path
from multisite_nb.domain.results import (
    HEARTBEAT_STALE_S,
    PHASE_NAME,
    TABLE_NAME,
    PhaseResult,
    RunOutcome,
    RunRecord,
    utcnow,
)

if TYPE_CHECKING:  # pandas is imported lazily: this module must stay cheap to import
    import pandas as pd

__all__ = [
    "RUN_RECORD",
    "check_run_folder",
    "finish_phase",
    "load_result",
    "load_results",
    "load_run_record",
    "record_result",
    "results_dir",
    "run_state",
    "save_table",
    "write_run_record",
]


def results_dir(run_dir: str | os.PathLike[str]) -> Path:
    """Return ``<run_dir>/results``."""
    return Path(run_dir) / "results"


def _relative_artifact(run_dir: Path, artifact: str) -> str:
    """Normalise an artifact path to a POSIX path relative to ``run_dir``."""
    path = Path(artifact)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(run_dir.resolve())
        except ValueError:
            raise ValueError(f"artifact {artifact} is outside the run folder {run_dir}") from None
    rel = PurePosixPath(path.as_posix())
    if ".." in rel.parts or rel.is_absolute() or str(rel) in ("", "."):
        raise ValueError(f"artifact path {artifact!r} must stay inside the run folder")
    return str(rel)


def record_result(run_dir: str | os.PathLike[str], result: PhaseResult) -> Path:
    """Write ``result`` atomically to ``<run_dir>/results/<phase>.json``.

    Artifact paths may be given absolute (e.g. what :func:`save_table` returns)
    as long as they lie inside ``run_dir``; they are stored relative to it.

    Parameters
    ----------
    run_dir : path
        The run folder.
    result : PhaseResult
        The phase's outcome.

    Returns
    -------
    Path
        The JSON file written.
    """
    run_dir = Path(run_dir)
    artifacts = [_relative_artifact(run_dir, a) for a in result.artifacts]
    result = result.model_copy(update={"artifacts": artifacts})
    target = results_dir(run_dir) / f"{result.phase}.json"
    atomic_write_text(target, result.model_dump_json(indent=2) + "\n")
    return target


def finish_phase(
    run_dir: str | os.PathLike[str], phase: str, passed: bool, reason: str, started: datetime, **fields: Any
) -> PhaseResult:
    """Record a phase's gate (``summary``, ``artifacts`` in ``fields``), finished now; returns the result."""
    result = PhaseResult(phase=phase, passed=passed, reason=reason, started=started, finished=utcnow(), **fields)
    record_result(run_dir, result)
    return result


def load_result(run_dir: str | os.PathLike[str], phase: str) -> PhaseResult | None:
    """Read ``<run_dir>/results/<phase>.json``; ``None`` if it does not exist.

    Raises
    ------
    pydantic.ValidationError
        If the file exists but is not a valid result.
    """
    path = results_dir(run_dir) / f"{phase}.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return PhaseResult.model_validate_json(text)


def load_results(run_dir: str | os.PathLike[str], *, strict: bool = True) -> dict[str, PhaseResult]:
    """Read every result in ``<run_dir>/results``, keyed by phase name (sorted).

    With ``strict=False`` an unreadable or invalid file is skipped instead of
    raising.
    """
    out: dict[str, PhaseResult] = {}
    folder = results_dir(run_dir)
    if not folder.is_dir():
        return out
    for path in sorted(folder.glob("*.json")):
        if PHASE_NAME.match(path.stem):
            try:
                out[path.stem] = PhaseResult.model_validate_json(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                if strict:
                    raise
    return out


def save_table(
    run_dir: str | os.PathLike[str], phase: str, name: str, df: pd.DataFrame, *, index: bool = False
) -> Path:
    """Save a long table as CSV under ``<run_dir>/artifacts/<phase>/<name>.csv``.

    Parameters
    ----------
    run_dir : path
        The run folder.
    phase : str
        Phase name (the artifact sub-folder).
    name : str
        File stem (``.csv`` is appended unless already there).
    df : pandas.DataFrame
        The table.
    index : bool, optional
        Whether to write the index as a column.

    Returns
    -------
    Path
        The CSV written; pass it in ``PhaseResult.artifacts``.
    """
    if not PHASE_NAME.match(phase):
        raise ValueError(f"phase name {phase!r} must match {PHASE_NAME.pattern}")
    if not TABLE_NAME.match(name):
        raise ValueError(f"table name {name!r} must be a plain file name")
    target = table_path(run_dir, phase, name)
    atomic_write_text(target, df.to_csv(index=index))
    return target


RUN_RECORD = "run.json"


def write_run_record(run_dir: str | os.PathLike[str], record: RunRecord) -> Path:
    """Write ``record`` atomically to ``<run_dir>/run.json``."""
    target = Path(run_dir) / RUN_RECORD
    atomic_write_text(target, record.model_dump_json(indent=2) + "\n")
    return target


def load_run_record(run_dir: str | os.PathLike[str]) -> RunRecord | None:
    """Read ``<run_dir>/run.json``; ``None`` if absent."""
    try:
        text = (Path(run_dir) / RUN_RECORD).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return RunRecord.model_validate_json(text)


def run_state(record: RunRecord, now: datetime | None = None) -> str:
    """A run's outcome, or ``died`` for a run recorded as running whose process is gone.

    On the run's own host its process is looked up (PID and start time); elsewhere a heartbeat
    older than :data:`~multisite_nb.domain.results.HEARTBEAT_STALE_S` means it died.
    """
    if record.outcome is not RunOutcome.RUNNING:
        return str(record.outcome)
    if record.pid is not None and record.host == socket.gethostname():
        return "running" if live_pid(PidRecord(record.pid, record.pid_start)) else "died"
    beat = record.heartbeat or record.started
    age = ((now or utcnow()) - beat).total_seconds()
    return "running" if age < HEARTBEAT_STALE_S else "died"


def check_run_folder(run_dir: str | os.PathLike[str]) -> Path:
    """A folder fit to hold a run: new or empty, or one that already holds a run; writable, with room.

    Raises
    ------
    StorageError
        For a folder holding something else (a checkout, a home directory...), a read-only
        folder, or a full disk — before anything acts.
    """
    path = Path(run_dir).resolve()
    if path.is_dir() and any(path.iterdir()) and not ((path / RUN_RECORD).is_file() or results_dir(path).is_dir()):
        raise StorageError(
            f"{path}: not a run folder (it holds other files and no run.json or results/); "
            "give a new folder, or one a run made"
        )
    check_writable(path)
    return path
