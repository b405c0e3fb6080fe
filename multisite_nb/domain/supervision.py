"""What a supervisor makes of a chain that stopped: retry it, repair first, or ask a person.

:func:`diagnose` reads the typed result of the phase that stopped a chain (and the chain's own
reason when the phase left none) and answers with one :class:`Finding`: its :class:`Remedy` and,
for what needs a person, the alert's kind, site, subject, cause and the one command. It reads the
records only; the supervisor (:mod:`multisite_nb.run.supervise`) acts on the answer.

What needs a person is what no retry mends: a file with no good copy left, a group held after its
retries, a full disk, a refused credential, a collision at placement, a QA verdict that is not
equal to the reference. A phase that raised, a system that did not answer, a database that was
locked are *transient*: the same request may succeed after a wait. A verification that found a
corrupt or missing replica, or a STUCK rule, is *repaired* first.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from multisite_nb.domain.alike import UNLIKE_MARK
from multisite_nb.domain.results import PhaseResult
from multisite_nb.domain.summaries import (
    FlowSummary,
    PlacementSummary,
    RepairSummary,
    StepsSummary,
    VerifySummary,
)

__all__ = [
    "FULL_DISK",
    "REFUSED_CREDENTIAL",
    "SYSTEM_DOWN",
    "UNREACHABLE",
    "Finding",
    "Remedy",
    "Round",
    "SupervisionRecord",
    "diagnose",
    "diagnose_stop",
]

#: An error text that says a disk is full (the errno's name, its number, its words).
FULL_DISK = re.compile(r"No space left on device|ENOSPC|Errno 28\b|Disk quota exceeded|EDQUOT", re.I)
#: An error text that says a credential was refused (Rucio's and HTTP's words for it).
REFUSED_CREDENTIAL = re.compile(
    r"CannotAuthenticate|CannotAuthorize|AccessDenied|\b401\b|Unauthorized|credential[s]? (?:was |were )?refused",
    re.I,
)


#: An error text that says a system did not answer (a collision check that could not be made is not a collision).
_DOWN = r"Cannot connect|ServerConnectionException|Connection refused|cannot be reached|database is locked"
#: A system that did not answer at all (no time-out: a step or a rule that timed out is not an outage).
SYSTEM_DOWN = re.compile(_DOWN, re.I)
#: That, or a call that timed out: what a wait may mend.
UNREACHABLE = re.compile(rf"{_DOWN}|timed out", re.I)


class Remedy(StrEnum):
    """What the supervisor does next."""

    RETRY = "retry"  # transient: bring services back, wait, resume
    REPAIR = "repair"  # run repair, then resume
    PERSON = "person"  # raise an alert; try again only after a while (a person may have mended it)
    VERDICT = "verdict"  # the campaign ended with its verdict: nothing more to do


class Finding(BaseModel):
    """Why a chain stopped, in the terms the supervisor acts on (``kind``: an alert kind for a person)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    remedy: Remedy
    kind: str = Field(description="an alert kind (multisite_nb.domain.alerts.AlertKind) or the transient cause")
    phase: str = ""
    site: str = ""
    subject: str = ""
    cause: str = ""
    blocked: str = ""
    action: str = ""


class Round(BaseModel):
    """One thing the supervisor did."""

    model_config = ConfigDict(extra="forbid")

    at: datetime
    action: str  # ran | resumed | healed | repaired | waits | resolved | verdict | ...
    note: str = ""


#: How many rounds the record keeps (the oldest go first).
MAX_ROUNDS_KEPT = 200


class SupervisionRecord(BaseModel):
    """``supervise.json`` in the run folder: where a supervisor stands, so that a new one goes on from it."""

    model_config = ConfigDict(extra="forbid")

    campaign: str
    started: datetime
    updated: datetime
    pid: int = 0
    attempts: int = 0
    streak: dict[str, int] = Field(default_factory=dict, description="transient cause -> failures in a row")
    down_since: datetime | None = None
    waiting_for: list[str] = Field(default_factory=list, description="the alert keys a person is asked about")
    faults_ridden_out: int = 0
    verdict: str = ""
    rounds: list[Round] = Field(default_factory=list)

    def note(self, at: datetime, action: str, note: str = "") -> None:
        """Append one round (keeping the last :data:`MAX_ROUNDS_KEPT`)."""
        self.rounds.append(Round(at=at, action=action, note=note[:500]))
        del self.rounds[:-MAX_ROUNDS_KEPT]
        self.updated = at


def _site_in(text: str, sites: Sequence[str]) -> str:
    """The first site ``text`` names (``RAL`` in ``RAL_DISK`` too: a site's RSE and paths carry its name)."""
    return next((s for s in sites if re.search(rf"(?<![A-Za-z0-9]){re.escape(s)}(?![A-Za-z0-9])", text)), "")


def _texts(result: PhaseResult | None, reason: str) -> str:
    parts = [reason]
    if result is not None:
        parts += [result.reason, result.summary.error or ""]
    return " ".join(p for p in parts if p)


def _held(result: PhaseResult) -> Finding | None:
    summary = result.summary
    if not isinstance(summary, StepsSummary):
        return None
    for site, by in summary.steps.items():
        for step, record in by.items():
            if record.groups is not None and record.groups.held:
                first = record.groups.held_groups[0] if record.groups.held_groups else None
                group = first.group if first else "?"
                return Finding(
                    remedy=Remedy.PERSON,
                    kind="group_held",
                    phase=result.phase,
                    site=site,
                    subject=f"{step} {group}",
                    cause=f"{record.groups.held} group(s) of {step} held after their retries"
                    + (f"; first: {first}" if first else ""),
                    blocked=f"{site} {step} and every step after it at {site}",
                    action="fix the cause named, then: multisite-nb run --resume RUN_DIR (reruns the held groups only)",
                )
    return None


def _needs_repair(result: PhaseResult) -> bool:
    summary = result.summary
    if isinstance(summary, VerifySummary):
        return summary.problems > 0
    if isinstance(summary, FlowSummary):
        return summary.gates.get("verify") is False or summary.gates.get("transfer") is False
    return "failed verification" in result.reason or "STUCK" in result.reason


def _no_good_copy(result: PhaseResult) -> Finding | None:
    summary = result.summary
    if not isinstance(summary, RepairSummary):
        return None
    lost = [a for a in summary.actions if a.action == "cannot repair"]
    if not lost:
        return None
    first = lost[0]
    return Finding(
        remedy=Remedy.PERSON,
        kind="no_good_copy",
        phase=result.phase,
        site=first.site,
        subject=first.what,
        cause=f"{len(lost)} file(s) or rule(s) repair cannot mend; first: {first.what}: {first.detail}",
        blocked=f"the groups that read {first.what} at {first.site}",
        action=first.detail or "restore the file at its source, then: multisite-nb repair RUN_DIR",
    )


#: Which finding goes first when a stopped phase's gates say several things (a repair may mend a held group).
_FIRST = (Remedy.REPAIR, Remedy.PERSON, Remedy.VERDICT, Remedy.RETRY)


def diagnose_stop(results: Sequence[PhaseResult], reason: str, *, sites: Sequence[str] = ()) -> Finding:
    """What to do about a chain that stopped: ``results`` are the failed phase's result and those of the
    failed gates it recorded for the phases it stands for (a flow's transfer, verify and submit gates).
    A system that did not answer comes first (a retry once it answers: the rest may be its consequence);
    then the first by :data:`_FIRST`: a repair before a person, a person before a retry."""
    if not results:
        return diagnose(None, reason, sites=sites)
    found = [diagnose(r, reason if i == 0 else "", sites=sites) for i, r in enumerate(results)]
    down = [f for f in found if f.kind == "unreachable"]
    return down[0] if down else min(found, key=lambda f: _FIRST.index(f.remedy))


def diagnose(result: PhaseResult | None, reason: str, *, sites: Sequence[str] = ()) -> Finding:
    """What to do about a chain that stopped at ``result`` (``None``: it left no result) for ``reason``.

    Parameters
    ----------
    result : PhaseResult or None
        The failed phase's recorded result (its typed summary), if it recorded one.
    reason : str
        The chain's one line on why it stopped.
    sites : sequence of str
        The campaign's site names, to say which site a text names.
    """
    text = _texts(result, reason)
    phase = result.phase if result is not None else ""
    site = _site_in(text, sites)
    if FULL_DISK.search(text):
        return Finding(
            remedy=Remedy.PERSON,
            kind="disk_full",
            phase=phase,
            site=site,
            subject=site or "disk",
            cause=FULL_DISK.search(text).group(0) + f" ({text[:300]})",  # type: ignore[union-attr]
            blocked=f"everything that writes at {site or 'that site'}",
            action=f"free space (or give more) at {site or 'the site named'}; the supervisor goes on by itself",
        )
    if REFUSED_CREDENTIAL.search(text):
        return Finding(
            remedy=Remedy.PERSON,
            kind="credential_refused",
            phase=phase,
            site=site,
            subject="credential",
            cause=text[:300],
            blocked="every call to the system that refused it",
            action="renew the credential the manifest names (a proxy, a token, a password file)",
        )
    if UNLIKE_MARK in text:
        odd = re.search(rf"{UNLIKE_MARK}: site ([A-Za-z0-9_.-]+):", text)  # the first difference names its site
        return Finding(
            remedy=Remedy.PERSON,
            kind="phase_failed",
            phase=phase,
            site=odd.group(1) if odd else site,
            subject="sites differ",
            cause=text[:300],
            blocked="the stage at every site (nothing was submitted)",
            action="make the site named run with what the others run (its config, software, calibrations, "
            "dataset types), then: multisite-nb run --resume RUN_DIR",
        )
    if "possible credential leak" in text:
        return Finding(
            remedy=Remedy.PERSON,
            kind="phase_failed",
            phase=phase,
            subject="secret scan",
            cause=reason[:300],
            blocked="the run's pages (their HTML is withheld)",
            action="clean the files named and rotate the credential, then: multisite-nb run --resume RUN_DIR",
        )
    if result is None:
        return Finding(remedy=Remedy.RETRY, kind="chain stopped", phase=phase, site=site, cause=reason[:300])
    summary = result.summary
    if (
        isinstance(summary, PlacementSummary)
        and summary.collisions
        and not all(UNREACHABLE.search(c) for c in summary.collisions)
    ):
        return Finding(
            remedy=Remedy.PERSON,
            kind="placement_collision",
            phase=phase,
            subject=summary.collisions[0][:120],
            cause=f"{len(summary.collisions)} collision(s) at placement; first: {summary.collisions[0]}",
            blocked="the whole campaign (nothing moved)",
            action="give the campaign its own collections.output_prefix, or fix the definition named",
        )
    if isinstance(summary, PlacementSummary) and summary.refused:
        return Finding(
            remedy=Remedy.PERSON,
            kind="phase_failed",
            phase=phase,
            subject="placement",
            cause=f"placement refused: {summary.refused[0]}"[:300],
            blocked="the whole campaign (nothing moved)",
            action="change the sky split as the gate suggests (or run that step centrally), then start again",
        )
    found = _no_good_copy(result) or _held(result)
    if found is not None:
        return found
    if phase == "qa" and summary.error is None:
        return Finding(
            remedy=Remedy.VERDICT,
            kind="phase_failed",
            phase=phase,
            subject="qa",
            cause=result.reason[:300],
            blocked="the campaign's verdict",
            action="read the QA notebook of the run: what differs from the reference decides",
        )
    if SYSTEM_DOWN.search(text):  # what it did not find in place may be there once the system answers
        return Finding(remedy=Remedy.RETRY, kind="unreachable", phase=phase, site=site, cause=text[:300])
    if _needs_repair(result):
        return Finding(remedy=Remedy.REPAIR, kind="verification", phase=phase, site=site, cause=result.reason[:300])
    return Finding(remedy=Remedy.RETRY, kind=f"{phase} failed", phase=phase, site=site, cause=result.reason[:300])
