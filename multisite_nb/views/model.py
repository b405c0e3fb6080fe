"""What the dashboard knows about each site: the read model :func:`~.status.collect` fills.

Plain dataclasses (JSON-able with ``to_dict``) over the typed records of the systems
(:class:`~multisite_nb.domain.records.RuleRecord`, :class:`~multisite_nb.domain.records.StepRecord`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

from multisite_nb.domain.alerts import AlertEntry
from multisite_nb.domain.records import RuleRecord, StepRecord
from multisite_nb.domain.results import PhaseResult

SiteState = Literal["ok", "busy", "trouble", "idle"]
#: Site states, most to least urgent.
STATES: tuple[SiteState, ...] = ("trouble", "busy", "ok", "idle")


# -- the model ----------------------------------------------------------------------------


@dataclass
class Issue:
    """Something wrong at a site: where it was seen (rucio, butler, verify, steps, results), what, why."""

    source: str
    message: str
    cause: str | None = None


@dataclass
class Placement:
    """What the placement plan sends to the site."""

    files: int
    bytes: int
    visits: int | None = None


@dataclass
class Transfers:
    """Rules of the campaign scope that target the site's RSE (read live from Rucio)."""

    rse: str
    read: bool = False
    ok: int = 0
    replicating: int = 0
    stuck: int = 0
    other: int = 0
    ending: int = 0  # rules deleted or past their lifetime, waiting for Rucio's cleaner: not counted above
    locks_ok: int = 0
    locks_replicating: int = 0
    locks_stuck: int = 0
    placed_ok: int = 0  # files of the site's placement shipment that are there (its rule's OK locks)
    stuck_reason: str | None = None
    error: str | None = None
    rules: list[RuleRecord] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + self.replicating + self.stuck + self.other

    @property
    def files(self) -> int:
        return self.locks_ok + self.locks_replicating + self.locks_stuck


@dataclass
class Verification:
    """The site's line of ``results/verify.json``."""

    ran: bool = False
    ok: bool | None = None
    planned: int | None = None
    problems: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    first_problem: str | None = None
    finished: str | None = None

    @property
    def kinds(self) -> str:
        """``"2 missing, 1 corrupt"`` (or ``"problems"``)."""
        return ", ".join(f"{n} {k}" for k, n in self.counts.items() if n) or "problems"


@dataclass
class ButlerHealth:
    """Whether the site's Butler answers, and how much it holds."""

    ok: bool | None = None
    datasets: int | None = None
    collections: int | None = None
    error: str | None = None
    seconds: float | None = None


@dataclass
class SiteStatus:
    """Everything the dashboard shows for one site."""

    site: str
    role: Literal["central", "remote"]
    rse: str
    compute_site: str
    state: SiteState = "idle"
    reason: str = ""
    placement: Placement | None = None
    transfers: Transfers | None = None
    verification: Verification = field(default_factory=Verification)
    steps: dict[str, StepRecord] = field(default_factory=dict)
    site_steps: list[str] = field(default_factory=list)  # the steps that run at this site
    butler: ButlerHealth = field(default_factory=ButlerHealth)
    issues: list[Issue] = field(default_factory=list)
    groups_in_flight: int = 1

    @property
    def eta_s(self) -> float | None:
        """Seconds until the site's steps are done, from its groups' measured durations (None: nothing measured).

        Each step's groups not done yet, at its own mean group duration (a step not started: the
        mean over every measured group), ``groups_in_flight`` at a time, the steps one after the other.
        """
        measured = [(r.seconds, r.groups.done) for r in self.steps.values() if r.groups and r.groups.done]
        if not measured:
            return None
        overall = sum(s for s, _ in measured) / sum(n for _, n in measured)
        left = 0.0
        for label in self.site_steps:
            rec = self.steps.get(label)
            if rec is None:
                left += overall  # a step to come: one group's worth until it is cut
                continue
            if rec.groups is None or rec.state == "succeeded":
                continue
            mean = rec.seconds / rec.groups.done if rec.groups.done else overall
            todo = rec.groups.total - rec.groups.done - rec.groups.held
            left += math.ceil(max(0, todo) / max(1, self.groups_in_flight)) * mean
        return round(left, 1)

    @property
    def last_error(self) -> str | None:
        """The most pressing error now (Rucio/Butler unreachable, STUCK, failed quanta, verification)."""
        return self.issues[0].message if self.issues else None

    @property
    def last_error_cause(self) -> str | None:
        return self.issues[0].cause if self.issues else None

    @property
    def step_labels(self) -> list[str]:
        """The site's own steps, then any other step a result reported for it."""
        return list(self.site_steps) + [st for st in self.steps if st not in self.site_steps]

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["steps"] = {k: rec.model_dump(mode="json") for k, rec in self.steps.items()}
        if self.transfers is not None:
            d["transfers"]["rules"] = [r.model_dump(mode="json") for r in self.transfers.rules]
        d["last_error"] = self.last_error
        d["eta_s"] = self.eta_s
        d["last_error_cause"] = self.last_error_cause
        return d


@dataclass
class CampaignStatus:
    """One reading of every site of a campaign (JSON-able via :meth:`to_dict`)."""

    campaign: str
    central: str
    run_dir: str | None
    collected_at: str
    run_state: str | None = None  # the chain's run.json: running, passed, failed, interrupted, died
    seconds: float = 0.0
    sites: dict[str, SiteStatus] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)  # every step label, in stage order
    phases: dict[str, PhaseResult] = field(default_factory=dict)  # every readable result, by phase
    rucio_ok: bool | None = None
    rucio_error: str | None = None
    problems: list[str] = field(default_factory=list)  # campaign-level read problems
    alerts: list[AlertEntry] = field(default_factory=list)  # the run folder's open alerts, oldest first

    def states(self) -> dict[str, SiteState]:
        """Site → state."""
        return {s: st.state for s, st in self.sites.items()}

    @property
    def remote_sites(self) -> list[str]:
        return [s for s in self.sites if s != self.central]

    def to_dict(self) -> dict[str, object]:
        return {
            "campaign": self.campaign,
            "central": self.central,
            "run_dir": self.run_dir,
            "collected_at": self.collected_at,
            "seconds": self.seconds,
            "steps": list(self.steps),
            "phases": {k: r.model_dump(mode="json") for k, r in self.phases.items()},
            "sites": {s: st.to_dict() for s, st in self.sites.items()},
            "rucio_ok": self.rucio_ok,
            "rucio_error": self.rucio_error,
            "problems": list(self.problems),
            "alerts": [a.model_dump(mode="json") for a in self.alerts],
        }

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), default=str, indent=indent)
