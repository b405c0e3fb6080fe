"""Machine-readable phase results: the gate every phase ends in.

A phase notebook (or library code run without a notebook) finishes by calling
:func:`record_result` with a :class:`PhaseResult`; the chain runner, the next
phase and the dashboard read it back with :func:`load_result` /
:func:`load_results`.  Files live in ``<run_dir>/results/<phase>.json``;
long tables go beside them under ``<run_dir>/artifacts/<phase>/`` via
:func:`save_table`, and notebooks show only :func:`summarize`.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from .fileio import atomic_write_text

if TYPE_CHECKING:  # pandas is imported lazily: results.py must stay cheap to import
    import pandas as pd

__all__ = [
    "PHASE_NAME",
    "atomic_write_text",
    "finish_phase",
    "PhaseResult",
    "PhaseRun",
    "PhaseStatus",
    "RunOutcome",
    "RunRecord",
    "load_result",
    "load_results",
    "load_run_record",
    "record_result",
    "results_dir",
    "save_table",
    "summarize",
    "utcnow",
    "write_run_record",
]

#: A phase name: lower case letters, digits and underscores, starting with a letter.
PHASE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

_TABLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def utcnow() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (use multisite_nb.results.utcnow())")
    return value.astimezone(UTC)


class PhaseResult(BaseModel):
    """Outcome of one phase: its gate and a few figures.

    Attributes
    ----------
    phase : str
        Phase name without the number prefix (``"transfer"``, not ``"02_transfer"``).
    passed : bool
        Whether the gate passed.
    reason : str
        One human sentence saying why the gate passed or failed.
    started, finished : datetime
        Timezone-aware UTC timestamps (naive datetimes are rejected).
    summary : dict
        Small JSON-able figures (counts, sizes, ids), not tables.
    artifacts : list of str
        POSIX paths relative to the run folder (see :func:`record_result`).
    """

    model_config = ConfigDict(extra="forbid")

    phase: str
    passed: bool
    reason: str
    started: datetime = Field(default_factory=utcnow)
    finished: datetime = Field(default_factory=utcnow)
    summary: dict[str, Any] = Field(default_factory=dict)
    artifacts: list[str] = Field(default_factory=list)

    @field_validator("phase")
    @classmethod
    def _check_phase(cls, value: str) -> str:
        if not PHASE_NAME.match(value):
            raise ValueError(f"phase name {value!r} must match {PHASE_NAME.pattern}")
        return value

    @field_validator("summary")
    @classmethod
    def _check_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"summary must be JSON (small figures, not tables or objects): {exc}") from None
        return value

    @field_validator("started", "finished")
    @classmethod
    def _check_utc(cls, value: datetime) -> datetime:
        return _as_utc(value)

    @field_validator("artifacts", mode="before")
    @classmethod
    def _paths_to_str(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]
        return value

    @property
    def duration_s(self) -> float:
        """Seconds between ``started`` and ``finished``."""
        return (self.finished - self.started).total_seconds()

    @property
    def status(self) -> str:
        """``"pass"`` or ``"fail"``."""
        return "pass" if self.passed else "fail"


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
    if not _TABLE_NAME.match(name):
        raise ValueError(f"table name {name!r} must be a plain file name")
    filename = name if name.endswith(".csv") else f"{name}.csv"
    target = Path(run_dir) / "artifacts" / phase / filename
    atomic_write_text(target, df.to_csv(index=index))
    return target


def summarize(df: pd.DataFrame, max_rows: int = 20) -> pd.DataFrame:
    """Return at most ``max_rows`` rows of ``df`` for display in a notebook.

    Longer tables are cut to their head and tail with a ``…`` row between, so
    an executed notebook stays small; save the full table with
    :func:`save_table`.
    """
    import pandas as pd

    if len(df) <= max_rows:
        return df
    if max_rows < 3:
        return df.head(max(max_rows, 0))
    head = max_rows // 2
    tail = max_rows - head - 1
    gap = pd.DataFrame(
        [["…"] * df.shape[1]],
        columns=df.columns,
        index=pd.Index([f"… {len(df) - head - tail} more rows"]),
    )
    return pd.concat([df.head(head).astype(object), gap, df.tail(tail).astype(object)])


# --------------------------------------------------------------------------- run record

RUN_RECORD = "run.json"


class PhaseStatus(StrEnum):
    """A phase as the chain runner saw it."""

    PASS = "pass"
    FAIL = "fail"
    NOT_RUN = "not run"


class RunOutcome(StrEnum):
    """How a chain run ended (``running`` while it runs)."""

    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


class PhaseRun(BaseModel):
    """How the chain runner saw one phase (kept in ``run.json``).

    Attributes
    ----------
    phase : str
        Phase name.
    notebook : str or None
        Executed notebook, relative to the run folder (``None`` if never written).
    status : {"pass", "fail", "not run"}
        The gate as the runner saw it.
    reason : str
        Gate reason, or why the phase did not run.
    started, finished : datetime or None
        Runner's wall-clock times (kernel start-up included).
    resumed : bool
        True when the phase was skipped because it had already passed.
    """

    phase: str
    notebook: str | None = None
    status: PhaseStatus = PhaseStatus.NOT_RUN
    reason: str = ""
    started: datetime | None = None
    finished: datetime | None = None
    resumed: bool = False

    @property
    def duration_s(self) -> float | None:
        """Wall-clock seconds, if the phase ran."""
        if self.started is None or self.finished is None:
            return None
        return (self.finished - self.started).total_seconds()


class RunRecord(BaseModel):
    """``<run_dir>/run.json``: who ran what, when, and how it ended."""

    campaign: str
    run_id: str
    who: str
    host: str
    started: datetime
    finished: datetime | None = None
    resumed_at: list[datetime] = Field(default_factory=list)
    phases_requested: list[str]
    parameters: dict[str, JsonValue] = Field(default_factory=dict)
    outcome: RunOutcome = RunOutcome.RUNNING
    reason: str = ""
    phases: list[PhaseRun] = Field(default_factory=list)
    secret_findings: list[str] = Field(default_factory=list)
    pid: int | None = None
    pid_start: int | None = None
    heartbeat: datetime | None = None

    def state(self, now: datetime | None = None) -> str:
        """The outcome, or ``died`` for a run recorded as running whose process is gone.

        On the run's own host its process is looked up (PID and start time); elsewhere a
        heartbeat older than :data:`HEARTBEAT_STALE_S` means it died.
        """
        if self.outcome is not RunOutcome.RUNNING:
            return str(self.outcome)
        import socket

        from .procs import PidRecord, live_pid

        if self.pid is not None and self.host == socket.gethostname():
            return "running" if live_pid(PidRecord(self.pid, self.pid_start)) else "died"
        beat = self.heartbeat or self.started
        age = ((now or utcnow()) - beat).total_seconds()
        return "running" if age < HEARTBEAT_STALE_S else "died"


#: Seconds without a heartbeat after which a run on another host counts as died.
HEARTBEAT_STALE_S = 120.0
#: Seconds between a running chain's heartbeats (``run.json``).
HEARTBEAT_EVERY_S = 15.0


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
