"""What a phase declares: its name, notebook, typed summary, what it needs and where it sits in a chain.

A phase is a library function turned into a :class:`Phase` by :func:`phase`::

    @phase("transfer", notebook="02_transfer", summary=TransferSummary, needs=("placement",), acting=True)
    def run(campaign: Campaign, run_dir: Path, *, progress: bool = True) -> tuple[PhaseResult, list[...]]:
        ...

Calling the :class:`Phase` checks that what it needs has passed, takes the campaign's operator lock
when it acts on Rucio or a Butler, and runs the function. The module that defines it exports it as
``run``; :mod:`multisite_nb.phases.registry` finds it there and derives the chain from the
declarations.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from multisite_nb.adapters.butler.lock import operator_lock
from multisite_nb.adapters.results import load_result
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import GateError
from multisite_nb.domain.params import load_campaign
from multisite_nb.domain.results import PHASE_NAME, PhaseResult
from multisite_nb.domain.summaries import PhaseSummary, register_summary
from multisite_nb.phases.readiness import check_ready

__all__ = ["FINAL", "Phase", "StageKind", "as_campaign", "phase", "require_passed"]

#: The stage after the stage plan's last one: products brought home for validation.
FINAL = "final"
#: The kinds of stage a staged phase serves: the plan's stages at the sites or centrally, and the final one.
StageKind = Literal["sites", "central", "final"]

_NOTEBOOK = re.compile(r"^\d+_[a-z][a-z0-9_]*$")


def as_campaign(campaign: Campaign | str | Path) -> Campaign:
    """A loaded campaign (a path is loaded)."""
    return campaign if isinstance(campaign, Campaign) else load_campaign(campaign)


def require_passed(run_dir: str | Path, phase: str) -> PhaseResult:
    """The earlier phase's result; raises :class:`GateError` if it is missing or its gate failed."""
    res = load_result(run_dir, phase)
    if res is None:
        raise GateError(f"phase {phase!r} has no result in {run_dir}: run it first")
    if not res.passed:
        raise GateError(f"phase {phase!r} failed its gate: {res.reason}")
    return res


@dataclass(frozen=True)
class Phase:
    """One phase: the library call and its declarations.

    Attributes
    ----------
    name
        Its name (``transfer``), also its result's (``results/<name>.json``, ``<name>_<stage>`` staged).
    notebook
        Its notebook's stem under ``notebooks/`` (``02_transfer``).
    function
        The library call ``(campaign, run_dir, *args, **kwargs) -> (PhaseResult, details)``.
    summary
        The model of its result's summary.
    needs
        Phases whose gate must have passed before it runs (checked on every call), and which come
        before it in a chain.
    follows
        Phases that come before it in a chain without gating it.
    stages
        For a phase that serves one stage at a time (``submit@early``): the kinds of stage it serves.
    starts_run
        A notebook opened by hand starts a new run folder (placement) instead of the latest.
    acting
        It changes Rucio or a Butler: it holds the campaign's operator lock while it runs.
    in_chain
        It belongs in a campaign's chain (repair and cleanup run on purpose only).
    closes_chain
        It comes after every other phase of a chain (the dashboard's last page).
    stands_for
        Phases whose first use in the chain it does in one go (the flowing campaign's ``flow`` does
        ``transfer``, ``verify`` and the first ``submit``): it takes their place in a flowing chain,
        and is left out of a phase-by-phase one.
    progress
        ``(campaign, run_dir) -> str``: what it had done, read from the systems it acts on, for a
        run whose chain died while it ran (``multisite-nb status``); None: its in-progress result says.
    """

    name: str
    notebook: str
    function: Callable[..., Any]
    summary: type[PhaseSummary] = PhaseSummary
    needs: tuple[str, ...] = ()
    follows: tuple[str, ...] = ()
    stages: tuple[StageKind, ...] = ()
    starts_run: bool = False
    acting: bool = False
    in_chain: bool = True
    closes_chain: bool = False
    stands_for: tuple[str, ...] = ()
    doc: str = field(default="", compare=False)
    progress: Callable[[Campaign, Path], str] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not PHASE_NAME.match(self.name):
            raise ValueError(f"phase name {self.name!r} must match {PHASE_NAME.pattern}")
        if not _NOTEBOOK.match(self.notebook):
            raise ValueError(f"phase {self.name}: notebook {self.notebook!r} must look like NN_name")

    @property
    def staged(self) -> bool:
        """It serves one stage at a time (``phase@stage``)."""
        return bool(self.stages)

    def __call__(self, campaign: Campaign | str | Path, run_dir: str | Path, *args: Any, **kwargs: Any) -> Any:
        """Check what it needs (earlier gates; for a phase that starts a run, that the campaign's systems
        can serve it: later phases meet a site that is down site by site), take the lock if it acts, run it."""
        loaded = as_campaign(campaign)
        for need in self.needs:
            require_passed(run_dir, need)
        if self.starts_run:
            check_ready(loaded)
        if not self.acting:
            return self.function(loaded, run_dir, *args, **kwargs)
        with operator_lock(loaded, run_dir):
            return self.function(loaded, run_dir, *args, **kwargs)


def phase(
    name: str,
    *,
    notebook: str,
    summary: type[PhaseSummary] = PhaseSummary,
    needs: tuple[str, ...] = (),
    follows: tuple[str, ...] = (),
    stages: tuple[StageKind, ...] = (),
    starts_run: bool = False,
    acting: bool = False,
    in_chain: bool = True,
    closes_chain: bool = False,
    stands_for: tuple[str, ...] = (),
    progress: Callable[[Campaign, Path], str] | None = None,
) -> Callable[[Callable[..., Any]], Phase]:
    """Declare a library function as a phase (see the module's docstring); its summary model is
    registered for its results."""

    def make(function: Callable[..., Any]) -> Phase:
        register_summary(name, summary)
        declared = Phase(
            name, notebook, function, summary, needs, follows, stages, starts_run, acting, in_chain, closes_chain,
            stands_for, doc=function.__doc__ or "", progress=progress,
        )  # fmt: skip
        return declared

    return make
