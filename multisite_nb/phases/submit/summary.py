"""A phase's steps as records: kept current while they run, judged, and tabulated.

This module imports no middleware, so a phase module can import it cheaply.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from datetime import datetime

import pandas as pd

from multisite_nb.adapters.results import record_result
from multisite_nb.domain.records import StepRecord, StepState
from multisite_nb.domain.results import PhaseResult, utcnow
from multisite_nb.domain.summaries import SiteSteps, StepsSummary

__all__ = ["InFlight", "failures_table", "groups_table", "steps_table", "steps_verdict"]


class InFlight:
    """Keeps a phase's result file current while its steps run, for the dashboard.

    The result says ``passed: false`` with ``in_progress`` until the phase records its
    verdict, so nothing downstream mistakes a running phase for a finished one.

    Parameters
    ----------
    run_dir, label, started
        The run folder, the phase's label (e.g. ``submit_early``) and when it started.
    base
        The phase's summary so far; its ``steps`` and ``in_progress`` are kept current.
    """

    def __init__(self, run_dir: str | os.PathLike[str], label: str, started: datetime, base: StepsSummary):
        self.run_dir, self.label, self.started, self.base = run_dir, label, started, base
        self.steps: SiteSteps = {}
        self._lock = threading.Lock()  # sites report from their own threads

    def site(self, site: str) -> Callable[[Mapping[str, StepRecord]], None]:
        """The progress callback of one site: it reports the site's steps so far."""

        def update(site_steps: Mapping[str, StepRecord]) -> None:
            with self._lock:
                self.steps[site] = dict(site_steps)
                running = [
                    f"{s} {k}" for s, by in self.steps.items() for k, r in by.items() if r.state is StepState.RUNNING
                ]
                self._record(f"in progress: {', '.join(running) or 'between steps'}", in_progress=True)

        return update

    def end(self, reason: str) -> None:
        """Record the phase as ended without a verdict (failed, no longer in progress)."""
        with self._lock:
            self._record(reason, in_progress=False, finished=utcnow())

    def _record(self, reason: str, *, in_progress: bool, finished: datetime | None = None) -> None:
        summary = self.base.model_copy(update={"steps": dict(self.steps), "in_progress": in_progress})
        result = PhaseResult(
            phase=self.label,
            passed=False,
            reason=reason,
            started=self.started,
            finished=finished or utcnow(),
            summary=summary,
        )
        record_result(self.run_dir, result)


def steps_verdict(
    steps: Mapping[str, Mapping[str, StepRecord]], *, retry: str = "multisite-nb run --resume RUN_DIR"
) -> tuple[bool, str]:
    """Whether every step succeeded, and a sentence saying so or naming what did not.

    Held groups are named first, each with its cause, and the one command that retries them
    (``retry``: a resumed run retries every held group and leaves the succeeded ones as they are).
    """
    records = [(site, step, r) for site, by in steps.items() for step, r in by.items()]
    bad = [(site, step, r) for site, step, r in records if r.state is not StepState.SUCCEEDED]
    groups = sum(r.groups.total if r.groups else 1 for _, _, r in records)
    if not bad:
        n = sum(r.succeeded for _, _, r in records)
        return True, f"{n} quanta succeeded in {len(records)} site-steps ({groups} groups)"
    held = [(site, step, r) for site, step, r in bad if r.groups is not None and r.groups.held]
    if held:
        n = sum(r.groups.held for _, _, r in held if r.groups)
        named = "; ".join(f"{site} {step} {h}" for site, step, r in held if r.groups for h in r.groups.held_groups[:3])
        return False, f"{n} group(s) held after their retries: {named}. Retry them: {retry}"
    site, step, first = bad[0]
    cause = str(first.first_failure) if first.first_failure else ""
    return False, f"{site} {step}: {first.state} ({first.failed} failed); first: {cause}".strip()


def groups_table(steps: Mapping[str, Mapping[str, StepRecord]]) -> pd.DataFrame:
    """One row per site and step: how it was cut and its groups by state (never one row per group)."""
    rows = []
    for site, by in steps.items():
        for step, r in by.items():
            g = r.groups
            rows.append(
                {
                    "site": site,
                    "step": step,
                    "cut by": (g.dimension or "(not cut)") if g else "(whole)",
                    "size": g.size if g and g.size else None,
                    "groups": g.total if g else 1,
                    "done": g.done if g else int(r.state is StepState.SUCCEEDED),
                    "running": g.running if g else 0,
                    "failed": g.failed if g else 0,
                    "held": g.held if g else 0,
                    "held groups": "; ".join(str(h) for h in g.held_groups[:3]) if g else "",
                }
            )
    columns = ["site", "step", "cut by", "size", "groups", "done", "running", "failed", "held", "held groups"]
    return pd.DataFrame(rows, columns=columns)


def steps_table(steps: Mapping[str, Mapping[str, StepRecord]]) -> pd.DataFrame:
    """One row per site and step: state, quanta counts, when it started (UTC) and how long it took."""
    rows = [
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
        for site, by in steps.items()
        for step, r in by.items()
    ]
    return pd.DataFrame(rows, columns=["site", "step", "state", "succeeded", "failed", "pending", "started", "seconds"])


def failures_table(steps: Mapping[str, Mapping[str, StepRecord]]) -> pd.DataFrame:
    """One row per failed quantum (or pre-flight problem) recorded in ``steps``."""
    rows = [
        {"site": site, "step": step, **f.model_dump()}
        for site, by in steps.items()
        for step, r in by.items()
        for f in r.failures
    ]
    return pd.DataFrame(rows, columns=["site", "step", "task", "data_id", "cause"])
