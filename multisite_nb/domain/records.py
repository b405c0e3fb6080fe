"""One typed record per thing the toolkit watches: a step at a site, a Rucio rule, a shipment.

Each record is written by the code that acts (the step runner, the Rucio adapter, the
transfer) and read as it is by the phases' gates, the dashboard, the run page and the
notebooks. States are enums; a record read back from a result file is validated, and a
record that does not validate is reported as unreadable, never guessed at.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_HELD_SHOWN",
    "GroupCounts",
    "HeldGroup",
    "QuantumFailure",
    "RuleRecord",
    "RuleState",
    "ShipmentOutcome",
    "StepRecord",
    "StepState",
]

_MAX_TEXT = 500
RUCIO_DELETE_GRACE = timedelta(hours=1)  # a deleted rule expires this long after the delete


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- steps -----------------------------------------------------------------------------------


class StepState(StrEnum):
    """Where one pipeline step at one site stands."""

    NOT_STARTED = "not_started"
    PENDING = "pending"  # submitted, waiting for the workflow system
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # every quantum succeeded
    FAILED = "failed"  # a quantum failed, or nothing could run
    STOPPED = "stopped"  # ended with quanta neither run nor failed (killed, timed out, cancelled)
    DIED = "died"  # recorded running, but the process that ran it is gone (its chain was killed)
    HELD = "held"  # a group that failed its retries: it waits for an operator (the rest go on)

    @property
    def in_flight(self) -> bool:
        """The workflow system will still run something of it."""
        return self in (StepState.PENDING, StepState.RUNNING)

    @property
    def needs_operator(self) -> bool:
        """Nothing will finish it without an operator (failed or stopped)."""
        return self in (StepState.FAILED, StepState.STOPPED, StepState.DIED, StepState.HELD)


class QuantumFailure(_Record):
    """One failed quantum (or a step that failed before any quantum ran: task ``(pre-flight)``)."""

    task: str | None = None
    data_id: dict[str, Any] | str = Field(default_factory=dict)
    cause: str = ""

    def __str__(self) -> str:
        did = self.data_id if isinstance(self.data_id, str) else ", ".join(f"{k}={v}" for k, v in self.data_id.items())
        return f"{self.task or '?'} {did}: {self.cause}".strip()


#: Held groups a step's record names with their causes (the rest are counted).
MAX_HELD_SHOWN = 20


class HeldGroup(_Record):
    """A group held after its retries: an operator decides (``multisite-nb run --resume`` retries it)."""

    group: str
    attempts: int = 0
    cause: str = ""

    def __str__(self) -> str:
        return f"{self.group} (after {self.attempts} attempts): {self.cause}"


class GroupCounts(_Record):
    """A step's groups at a site by state: what every view shows instead of one row per group."""

    total: int = 0
    done: int = 0
    running: int = 0
    failed: int = 0  # failed and to be retried, or stopped by an interrupt
    held: int = 0
    waiting: int = 0  # not started yet
    dimension: str = ""
    size: int = 0
    held_groups: list[HeldGroup] = Field(default_factory=list)  # at most MAX_HELD_SHOWN, with causes

    def __str__(self) -> str:
        parts = [f"{self.done}/{self.total} done"]
        parts += [f"{n} {k}" for k, n in (("running", self.running), ("failed", self.failed), ("held", self.held)) if n]
        return ", ".join(parts)


class StepRecord(_Record):
    """One step at one site: its state, its quanta, and where its log is.

    ``total`` counts every quantum of the step's graph; ``pending`` are blocked by a failure
    upstream or not run yet; ``running`` run now (workflow systems that report it).
    """

    site: str
    step: str
    state: StepState = StepState.NOT_STARTED
    run: str = ""
    chain: str = ""
    mode: str = ""
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    pending: int = 0
    running: int = 0
    failures: list[QuantumFailure] = Field(default_factory=list)
    by_task: dict[str, dict[str, int]] = Field(default_factory=dict)
    seconds: float = 0.0
    log: str = ""
    attempt: int = 0
    restart: bool = False
    returncode: int | None = None
    note: str = ""
    started: str = ""  # ISO UTC, when the attempt began
    finished: str = ""  # ISO UTC, when its state was known
    owner_pid: int | None = None  # the process running the attempt (a later look closes it as died if gone)
    owner_start: int | None = None  # that process's start time (``/proc/<pid>/stat``), against PID reuse
    owner_host: str = ""  # the host it runs on: only a look from that host can tell it is gone
    group: str = ""  # the group (``gNNNN``) this attempt ran; "" for a whole step (QA's reference)
    groups: GroupCounts | None = None  # a site's step as a whole: its groups by state

    @classmethod
    def not_started(cls, site: str, step: str, problems: Sequence[str]) -> StepRecord:
        """A step that failed before it started (pre-flight), one failure per problem."""
        return cls(
            site=site,
            step=step,
            state=StepState.FAILED,
            failures=[QuantumFailure(task="(pre-flight)", data_id="", cause=p[:_MAX_TEXT]) for p in problems],
        )

    @classmethod
    def in_progress(cls, site: str, step: str) -> StepRecord:
        """A step whose command is running now (counts follow when it ends)."""
        return cls(site=site, step=step, state=StepState.RUNNING, started=datetime.now(UTC).isoformat())

    @property
    def first_failure(self) -> QuantumFailure | None:
        return self.failures[0] if self.failures else None

    def __str__(self) -> str:
        head = (
            f"{self.site} {self.step} [{self.state}] {self.succeeded}/{self.total} succeeded, "
            f"{self.failed} failed, {self.pending} pending ({self.seconds:.1f} s)"
        )
        lines = [head] + [f"  {f}" for f in self.failures[:5]]
        if len(self.failures) > 5:
            lines.append(f"  ... {len(self.failures) - 5} more")
        return "\n".join(lines)


# -- Rucio rules -----------------------------------------------------------------------------


class RuleState(StrEnum):
    """A replication rule's state, as Rucio names it."""

    OK = "OK"
    REPLICATING = "REPLICATING"
    STUCK = "STUCK"
    SUSPENDED = "SUSPENDED"
    WAITING_APPROVAL = "WAITING_APPROVAL"
    INJECT = "INJECT"

    @property
    def in_flight(self) -> bool:
        return self in (RuleState.REPLICATING, RuleState.WAITING_APPROVAL, RuleState.INJECT)

    @property
    def bad(self) -> bool:
        return self in (RuleState.STUCK, RuleState.SUSPENDED)

    @property
    def settled(self) -> bool:
        """Nothing more will happen to it without an operator (or it is done)."""
        return self in (RuleState.OK, RuleState.STUCK, RuleState.SUSPENDED)


def _naive_utc(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" UTC", ""))
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)  # Rucio's times are naive UTC


class RuleRecord(_Record):
    """One replication rule as Rucio reports it now."""

    id: str
    scope: str
    name: str
    rse_expression: str
    account: str = ""
    state: RuleState
    locks_ok: int = 0
    locks_replicating: int = 0
    locks_stuck: int = 0
    error: str | None = None
    comment: str | None = None
    expires_at: datetime | None = None
    updated_at: datetime | None = None

    @classmethod
    def from_rucio(cls, rule: Mapping[str, Any]) -> RuleRecord:
        """From the dict ``get_replication_rule`` / ``list_replication_rules`` return."""
        state = str(rule.get("state", "")).split(".")[-1].upper()
        error = rule.get("error")
        return cls(
            id=str(rule["id"]),
            scope=str(rule.get("scope", "")),
            name=str(rule.get("name", "")),
            rse_expression=str(rule.get("rse_expression", "")),
            account=str(rule.get("account") or ""),
            state=RuleState(state),
            locks_ok=int(rule.get("locks_ok_cnt") or 0),
            locks_replicating=int(rule.get("locks_replicating_cnt") or 0),
            locks_stuck=int(rule.get("locks_stuck_cnt") or 0),
            error=str(error)[:_MAX_TEXT] if error else None,
            comment=rule.get("comments"),
            expires_at=_naive_utc(rule.get("expires_at")),
            updated_at=_naive_utc(rule.get("updated_at")),
        )

    @property
    def did(self) -> str:
        return f"{self.scope}:{self.name}"

    @property
    def total(self) -> int:
        return self.locks_ok + self.locks_replicating + self.locks_stuck

    def ending(self, now: datetime | None = None) -> bool:
        """Deleted, or past its lifetime: Rucio's cleaner removes it (and may delete its replicas) soon.

        Rucio deletes a rule softly: it sets the rule to expire within the hour
        (:data:`RUCIO_DELETE_GRACE`), so a rule that ends that soon counts as deleted.
        """
        if self.expires_at is None:
            return False
        return self.expires_at <= (now or datetime.now(UTC)) + RUCIO_DELETE_GRACE + timedelta(minutes=1)


# -- shipments ---------------------------------------------------------------------------------


class ShipmentOutcome(_Record):
    """What happened to one shipment (register → rule → watch → ingest)."""

    name: str
    dest: str
    rule_id: str | None = None
    records_rule_id: str | None = None
    source_rule_id: str | None = None  # pins the source copies, which the source Butler holds in place
    rule_created: bool = False
    registered: int = 0
    newly_registered: int = 0
    state: RuleState | None = None  # the data rule's state; None before it exists
    error: str | None = None
    ingested: int = 0
    already_present: int = 0
    records_files: list[str] = Field(default_factory=list)  # LFNs: shipment-wide values, then per part
    seconds: dict[str, float] = Field(default_factory=dict)
    ok_at: datetime | None = None  # when its data were in place and ingested at the destination
    verified_at: datetime | None = None  # when verification found them all (a flowing campaign checks each)
