"""The phases, registered by name: one registry drives the chain, the CLI and the notebooks.

Every module or package of :mod:`multisite_nb.phases` that exports a :class:`~.spec.Phase` as
``run`` is a phase, and so is every entry point of the group ``multisite_nb.phases`` (the
dashboard, a view, is one; another package can add its own). Adding a phase is a module and its
notebook pair, or :func:`register` from code (a test's phase). The chain of a campaign
(:func:`chain_for`) follows from the phases' declared needs and the campaign's stage plan.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points

from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.results import PHASE_NAME
from multisite_nb.phases.spec import FINAL, Phase, StageKind

__all__ = ["ENTRY_POINTS", "Phase", "PhaseUse", "chain_for", "get", "parse", "phases", "register", "unregister"]

#: The entry-point group of phases defined outside this package.
ENTRY_POINTS = "multisite_nb.phases"

_PHASES: dict[str, Phase] = {}
_LOADED = threading.Event()
_LOADING = threading.RLock()


@dataclass(frozen=True)
class PhaseUse:
    """One use of a phase in a chain: ``submit@early`` is phase ``submit``, label ``submit_early``."""

    phase: Phase
    label: str
    stage: str | None = None

    @property
    def spec(self) -> str:
        """How the chain names it: ``submit@early``, ``transfer``."""
        return f"{self.phase.name}@{self.stage}" if self.stage else self.phase.name


def _load() -> None:
    """Find the phases: this package's modules, then the entry points (once)."""
    if _LOADED.is_set():
        return
    with _LOADING:
        if _LOADED.is_set():
            return
        import multisite_nb.phases as package

        found: list[Phase] = []
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            declared = getattr(module, "run", None)
            if isinstance(declared, Phase):
                found.append(declared)
        for ep in entry_points(group=ENTRY_POINTS):
            declared = ep.load()
            if not isinstance(declared, Phase):
                raise ConfigError(f"entry point {ep.name} = {ep.value} ({ENTRY_POINTS}) is not a Phase")
            found.append(declared)
        for p in found:
            _PHASES.setdefault(p.name, p)  # one registered from code before the first look stands
        _LOADED.set()


def register(phase: Phase) -> Phase:
    """Add a phase (or replace one of the same name)."""
    _load()
    _PHASES[phase.name] = phase
    return phase


def unregister(name: str) -> None:
    """Remove a phase (e.g. one a test registered)."""
    _load()
    _PHASES.pop(name, None)


def phases() -> Iterator[Phase]:
    """Every registered phase."""
    _load()
    return iter(list(_PHASES.values()))


def get(name: str) -> Phase:
    """The phase named ``name`` (its notebook stem ``NN_name`` is accepted too).

    Raises
    ------
    ConfigError
        If no phase has that name; the message lists the known ones.
    """
    _load()
    key = name.split("_", 1)[1] if re.match(r"^\d+_", name) else name
    try:
        return _PHASES[key]
    except KeyError:
        raise ConfigError(f"unknown phase {name!r} (known: {', '.join(sorted(_PHASES))})") from None


def parse(spec: str, campaign: Campaign | None = None) -> PhaseUse:
    """``"submit@early"`` → the ``submit`` phase, label ``submit_early``, stage ``early``.

    With ``campaign``, the stage must be one of its stage plan's (or ``final``) that the phase serves.

    Raises
    ------
    ConfigError
        For an unknown phase, a stage given to an unstaged phase or missing for a staged one, or a
        stage the campaign does not have.
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
    if campaign is not None:
        kinds = _stage_kinds(campaign)
        served = [s for s, kind in kinds.items() if kind in phase.stages]
        if stage not in served:
            raise ConfigError(
                f"phase {spec!r}: campaign {campaign.name} ({campaign.path}) has no stage {stage!r} that "
                f"{phase.name} serves (it serves: {', '.join(served) or 'none'})"
            )
    return PhaseUse(phase, label, stage)


def _stage_kinds(campaign: Campaign) -> dict[str, StageKind]:
    """The stage plan's stages in order, each with its kind, then the final stage."""
    kinds: dict[str, StageKind] = {st.name: st.where for st in campaign.config.stages}
    kinds[FINAL] = "final"
    return kinds


def chain_for(campaign: Campaign, *, flowing: bool = True) -> list[str]:
    """The phase chain of a campaign, derived from the phases' declarations and its stage plan.

    ``flowing`` (the default): a phase that stands for others (``flow``: the transfer, the
    verification and the first site stage, each site's groups starting as their inputs are
    verified) takes the place of their first uses; otherwise (phase by phase) it is left out.

    Each phase in the chain comes after what it needs and follows; a staged phase is used once
    per stage of a kind it serves, the stages in the plan's order (each after the stage before,
    the first after what its phase needs); a phase needing a staged one comes after its last use;
    a phase that closes the chain comes last. Ties keep the order the phases were registered in.
    """
    _load()
    order = [p for p in _PHASES.values() if p.in_chain and not p.stands_for]
    chain = _phase_by_phase(campaign, order)
    if not flowing:
        return chain
    for p in _PHASES.values():
        if not (p.in_chain and p.stands_for):
            continue
        firsts = [next((u for u in chain if u.partition("@")[0] == name), None) for name in p.stands_for]
        replaced = [u for u in firsts if u is not None]
        if not replaced:
            continue
        at = min(chain.index(u) for u in replaced)
        chain = [u for u in chain if u not in replaced]
        chain.insert(at, p.name)
    return chain


def _phase_by_phase(campaign: Campaign, order: list[Phase]) -> list[str]:
    """The chain of ``order``'s phases, each after what it needs (see :func:`chain_for`)."""
    index = {p.name: i for i, p in enumerate(order)}
    of_phase: dict[str, list[str]] = {p.name: [] for p in order}
    staged_sequence: list[str] = []
    for stage, kind in _stage_kinds(campaign).items():
        for p in order:
            if kind in p.stages:
                spec = f"{p.name}@{stage}"
                staged_sequence.append(spec)
                of_phase[p.name].append(spec)
    for p in order:
        if not p.staged:
            of_phase[p.name].append(p.name)
    uses = [u for p in order for u in of_phase[p.name]]
    before: dict[str, set[str]] = {u: set() for u in uses}
    for p in order:
        wanted = [n for n in (*p.needs, *p.follows) if n in of_phase]
        own = of_phase[p.name]
        for u in own:
            for n in wanted:
                before[u].update(of_phase[n])
        if p.closes_chain:
            for u in own:
                before[u].update(x for x in uses if x not in own)
    for prev, nxt in zip(staged_sequence, staged_sequence[1:], strict=False):
        before[nxt].add(prev)  # each stage after the one before, whichever phase serves it
    chain: list[str] = []
    done: set[str] = set()
    while len(chain) < len(uses):
        ready = [u for u in uses if u not in done and before[u] <= done]
        if not ready:
            stuck = sorted(u for u in uses if u not in done)
            raise ConfigError(f"the phases' needs form a loop (left: {', '.join(stuck)})")
        nxt = min(ready, key=lambda u: index[u.partition("@")[0]])
        chain.append(nxt)
        done.add(nxt)
    return chain
