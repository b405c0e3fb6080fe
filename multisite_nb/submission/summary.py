"""A phase's steps as records: kept current while they run, judged, and tabulated.

Phase summaries store ``{site: {step: StepRecord.model_dump(mode="json")}}``; everything
here accepts those dumps as well as the records themselves (and validates the dumps).
This module imports no middleware, so a phase module can import it cheaply.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import pandas as pd

from ..records import StepRecord, StepState
from ..results import PhaseResult, record_result, utcnow

__all__ = ["InFlight", "SiteSteps", "dump_steps", "steps_table", "steps_verdict"]

#: Steps by site, then by step name: records, or their JSON dumps as a phase summary holds them.
SiteSteps = Mapping[str, Mapping[str, StepRecord | Mapping[str, Any]]]


def as_record(value: StepRecord | Mapping[str, Any]) -> StepRecord:
    """``value`` as a record (a dump is validated)."""
    return value if isinstance(value, StepRecord) else StepRecord.model_validate(value)


def dump_steps(steps: SiteSteps) -> dict[str, Any]:
    """``{site: {step: record.model_dump(mode="json")}}``, as a phase summary stores them."""
    return {site: {step: as_record(r).model_dump(mode="json") for step, r in by.items()} for site, by in steps.items()}


class InFlight:
    """Keeps a phase's result file current while its steps run, for the dashboard.

    The result says ``passed: false`` with ``in_progress`` until the phase records its
    verdict, so nothing downstream mistakes a running phase for a finished one.

    Parameters
    ----------
    run_dir, label, started
        The run folder, the phase's label (e.g. ``submit_early``) and when it started.
    base
        The summary so far; ``steps`` and ``in_progress`` are added to it.
    """

    def __init__(self, run_dir: str | os.PathLike[str], label: str, started: datetime, base: dict[str, Any]):
        self.run_dir, self.label, self.started, self.base = run_dir, label, started, base
        self.steps: dict[str, Any] = {}  # site -> step -> record dump
        self._lock = threading.Lock()  # sites report from their own threads

    def site(self, site: str) -> Callable[[Mapping[str, StepRecord]], None]:
        """The progress callback of one site: it reports the site's steps so far."""

        def update(site_steps: Mapping[str, StepRecord]) -> None:
            with self._lock:
                self.steps[site] = dump_steps({site: site_steps})[site]
                running = [
                    f"{s} {k}"
                    for s, by in self.steps.items()
                    for k, v in by.items()
                    if v.get("state") == StepState.RUNNING.value
                ]
                record_result(
                    self.run_dir,
                    PhaseResult(
                        phase=self.label,
                        passed=False,
                        reason=f"in progress: {', '.join(running) or 'between steps'}",
                        started=self.started,
                        summary={**self.base, "steps": dict(self.steps), "in_progress": True},
                    ),
                )

        return update

    def end(self, reason: str) -> None:
        """Record the phase as ended without a verdict (failed, no longer in progress)."""
        with self._lock:
            record_result(
                self.run_dir,
                PhaseResult(
                    phase=self.label,
                    passed=False,
                    reason=reason,
                    started=self.started,
                    finished=utcnow(),
                    summary={**self.base, "steps": dict(self.steps), "in_progress": False},
                ),
            )


def steps_verdict(steps: SiteSteps) -> tuple[bool, str]:
    """Whether every step succeeded, and a sentence saying so or naming the first that did not."""
    records = {site: {step: as_record(r) for step, r in by.items()} for site, by in steps.items()}
    bad = [
        (site, step, r) for site, by in records.items() for step, r in by.items() if r.state is not StepState.SUCCEEDED
    ]
    if not bad:
        n = sum(r.succeeded for by in records.values() for r in by.values())
        return True, f"{n} quanta succeeded in {sum(len(by) for by in records.values())} site-steps"
    site, step, first = bad[0]
    cause = str(first.first_failure) if first.first_failure else ""
    return False, f"{site} {step}: {first.state} ({first.failed} failed); first: {cause}".strip()


def steps_table(steps: SiteSteps) -> pd.DataFrame:
    """One row per site and step: state, quanta counts, when it started (UTC) and how long it took."""
    rows = []
    for site, by in steps.items():
        for step, value in by.items():
            r = as_record(value)
            rows.append(
                {
                    "site": site,
                    "step": step,
                    "state": r.state.value,
                    "succeeded": r.succeeded,
                    "failed": r.failed,
                    "pending": r.pending,
                    "started": r.started[11:19],
                    "seconds": r.seconds,
                }
            )
    return pd.DataFrame(rows)
