"""The phases of a campaign, registered by name: one list drives the chain, the CLI and the notebooks.

A :class:`Phase` says which library function does the work, which notebook shows it,
whether it starts a new run folder and whether it serves one stage of the stage plan
(``submit@early``: the same notebook once per stage, each use with its own label,
executed notebook and result). Adding a phase is one :func:`register` call, not a new
branch in the runner or the CLI.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .results import PHASE_NAME

if TYPE_CHECKING:
    from .config import Campaign

__all__ = ["Phase", "PhaseUse", "chain_for", "get", "parse", "phases", "register", "unregister"]

_NOTEBOOK = re.compile(r"^\d+_[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Phase:
    """One phase of the chain.

    Attributes
    ----------
    name
        Its name (``transfer``), also the name of its result ``results/<name>.json``.
    notebook
        Its notebook's stem under ``notebooks/`` (``02_transfer``).
    function
        ``module:function`` doing the work from the library alone (imported on use).
    starts_run
        A notebook opened by hand starts a new run folder (placement) instead of continuing
        the campaign's latest.
    staged
        It serves one stage of the stage plan at a time (``phase@stage``).
    """

    name: str
    notebook: str
    function: str
    starts_run: bool = False
    staged: bool = False

    def __post_init__(self) -> None:
        if not PHASE_NAME.match(self.name):
            raise ValueError(f"phase name {self.name!r} must match {PHASE_NAME.pattern}")
        if not _NOTEBOOK.match(self.notebook):
            raise ValueError(f"phase {self.name}: notebook {self.notebook!r} must look like NN_name")

    def load(self) -> Callable[..., Any]:
        """The phase's library function."""
        module, _, attr = self.function.partition(":")
        function: Callable[..., Any] = getattr(importlib.import_module(module), attr)
        return function


@dataclass(frozen=True)
class PhaseUse:
    """One use of a phase in a chain: ``submit@early`` is phase ``submit``, label ``submit_early``."""

    phase: Phase
    label: str
    stage: str | None = None


_PHASES: dict[str, Phase] = {}


def register(phase: Phase) -> Phase:
    """Add a phase (or replace one of the same name)."""
    _PHASES[phase.name] = phase
    return phase


def unregister(name: str) -> None:
    """Remove a phase (e.g. one a test registered)."""
    _PHASES.pop(name, None)


def phases() -> Iterator[Phase]:
    """Every registered phase, in registration order."""
    return iter(list(_PHASES.values()))


def get(name: str) -> Phase:
    """The phase named ``name`` (its notebook stem ``NN_name`` is accepted too).

    Raises
    ------
    ConfigError
        If no phase has that name; the message lists the known ones.
    """
    key = name.split("_", 1)[1] if re.match(r"^\d+_", name) else name
    try:
        return _PHASES[key]
    except KeyError:
        raise ConfigError(f"unknown phase {name!r} (known: {', '.join(_PHASES)})") from None


def parse(spec: str) -> PhaseUse:
    """``"submit@early"`` → the ``submit`` phase, label ``submit_early``, stage ``early``.

    Raises
    ------
    ConfigError
        For an unknown phase, a stage given to an unstaged phase or missing for a staged one.
    """
    name, _, stage = spec.partition("@")
    phase = get(name)
    if not stage:
        if phase.staged:
            raise ConfigError(f"phase {spec!r}: {phase.name} serves one stage at a time: write {phase.name}@<stage>")
        return PhaseUse(phase, phase.name)
    if not phase.staged:
        raise ConfigError(f"phase {spec!r}: {phase.name} takes no stage")
    label = f"{phase.name}_{stage}"
    if not PHASE_NAME.match(label):
        raise ConfigError(f"phase {spec!r}: stage {stage!r} must be a simple lower-case name")
    return PhaseUse(phase, label, stage)


def chain_for(campaign: Campaign) -> list[str]:
    """The phase chain of a campaign, from its stage plan.

    Placement, transfer and verification; then each stage where it runs (``submit@<stage>``
    at the sites, ``gather_redistribute@<stage>`` centrally); the final gather, QA, and the
    dashboard as it stands at the end (the last page of the run log).
    """
    out = ["placement", "transfer", "verify"]
    for st in campaign.config.stages:
        out.append(f"submit@{st.name}" if st.where == "sites" else f"gather_redistribute@{st.name}")
    return [*out, "gather_redistribute@final", "qa", "dashboard"]


for _phase in (
    Phase("dashboard", "00_dashboard", "multisite_nb.phases:dashboard"),
    Phase("placement", "01_placement", "multisite_nb.phases:placement", starts_run=True),
    Phase("transfer", "02_transfer", "multisite_nb.phases:transfer"),
    Phase("verify", "03_verify", "multisite_nb.phases:verify"),
    Phase("submit", "04_submit", "multisite_nb.phases:submit", staged=True),
    Phase("gather_redistribute", "05_gather_redistribute", "multisite_nb.phases:gather_redistribute", staged=True),
    Phase("qa", "06_qa", "multisite_nb.phases:qa"),
    Phase("cleanup", "07_cleanup", "multisite_nb.cleanup:cleanup"),  # on purpose only: never in a chain
):
    register(_phase)
