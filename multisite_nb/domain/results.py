"""Phase results and run records: the gate every phase ends in, and how a chain saw its phases.

The records only; :mod:`multisite_nb.adapters.results` writes and reads them in a run folder.
"""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    SerializeAsAny,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from multisite_nb.domain.summaries import PhaseSummary, summary_model

__all__ = [
    "HEARTBEAT_EVERY_S",
    "HEARTBEAT_STALE_S",
    "PHASE_NAME",
    "TABLE_NAME",
    "PhaseResult",
    "PhaseRun",
    "PhaseStatus",
    "RunOutcome",
    "RunRecord",
    "utcnow",
]

#: A phase name: lower case letters, digits and underscores, starting with a letter.
PHASE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

#: A table (artifact) name: a plain file name.
TABLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def utcnow() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (use multisite_nb.domain.results.utcnow())")
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
    summary : PhaseSummary
        The phase's own typed summary (:mod:`multisite_nb.domain.summaries`): small figures,
        not tables; given as a model or as its JSON, read as the model of the phase.
    artifacts : list of str
        POSIX paths relative to the run folder (see :func:`record_result`).
    """

    model_config = ConfigDict(extra="forbid")

    phase: str
    passed: bool
    reason: str
    started: datetime = Field(default_factory=utcnow)
    finished: datetime = Field(default_factory=utcnow)
    summary: SerializeAsAny[PhaseSummary] = Field(default_factory=PhaseSummary)
    artifacts: list[str] = Field(default_factory=list)

    @field_validator("phase")
    @classmethod
    def _check_phase(cls, value: str) -> str:
        if not PHASE_NAME.match(value):
            raise ValueError(f"phase name {value!r} must match {PHASE_NAME.pattern}")
        return value

    @field_validator("summary", mode="wrap")
    @classmethod
    def _typed_summary(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        """The summary as the model of this result's phase (a dict, or another phase's model, is converted)."""
        phase = info.data.get("phase")
        if not isinstance(phase, str):
            return handler(value)
        model = summary_model(phase)
        if isinstance(value, PhaseSummary) and not isinstance(value, model):
            value = value.model_dump()
        return model.model_validate(value if value is not None else {})

    @field_validator("summary")
    @classmethod
    def _check_json(cls, value: PhaseSummary) -> PhaseSummary:
        try:
            json.dumps(value.model_dump(mode="json"), allow_nan=False)
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


# --------------------------------------------------------------------------- run record


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


#: Seconds without a heartbeat after which a run on another host counts as died.
HEARTBEAT_STALE_S = 120.0
#: Seconds between a running chain's heartbeats (``run.json``).
HEARTBEAT_EVERY_S = 15.0
