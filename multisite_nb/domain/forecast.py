"""A campaign's forecast before a byte moves: wall time per stage and site, the critical path, bytes per link.

The model is deliberately plain, so that an operator can check it by hand:

* a shipment over a link costs ``per_shipment_s + files * per_file_s + bytes / bandwidth``; the
  links of different sites run side by side, a site's shipments one after the other;
* a step at a site is its groups, at most ``groups_in_flight`` at once: ``waves = ceil(groups /
  in_flight)``, each wave a group's fixed cost plus its share of the quanta (``quanta / groups *
  per_quantum_s``);
* phase by phase, a stage starts when the slowest site finished the one before; flowing, a site's
  first stage starts once its common inputs and first batch have landed, and ends when both its
  last shipment and its processing are done (whichever is later), the sites on their own;
* a central stage: the gather (every site's link to the central site, side by side), its steps,
  and the redistribution.

The inputs (:class:`SiteLoad`, :class:`StepLoad`) are counted from the plan and the pipeline by
the placement phase; the capacities come from the site manifest, or a run's measured figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

__all__ = ["Forecast", "SiteLoad", "StageForecast", "StepLoad", "forecast", "link"]


def link(source: str, dest: str) -> str:
    """The capacities' key of a link."""
    return f"{source}->{dest}"


@dataclass(frozen=True)
class StepLoad:
    """One step at one site: its quanta (estimated from the data IDs) and its groups."""

    step: str
    quanta: int
    groups: int


@dataclass(frozen=True)
class SiteLoad:
    """What one site gets and does: its placed files, and its steps by stage."""

    site: str
    files: int
    bytes: int
    batches: int = 1  # a flowing placement's shipments after the common one
    steps: Mapping[str, Sequence[StepLoad]] = field(default_factory=dict)  # stage -> its steps here
    gathered_files: int = 0  # what a central stage gathers from it (estimated)
    gathered_bytes: int = 0


class StageForecast(BaseModel):
    """One stage: its expected wall time, and per site."""

    stage: str
    seconds: float
    sites: dict[str, float] = Field(default_factory=dict)
    critical: str = Field(default="", description="the site (or link) that sets the stage's time")


class Forecast(BaseModel):
    """The whole campaign's forecast, phase by phase and flowing."""

    stages: list[StageForecast] = Field(default_factory=list)
    phase_by_phase_s: float = 0.0
    flowing_s: float = 0.0
    critical_path: str = ""
    bytes_per_link: dict[str, int] = Field(default_factory=dict)
    files_per_link: dict[str, int] = Field(default_factory=dict)
    boundary_extra_bytes: int = 0
    boundary_extra_s: float = Field(
        default=0.0, description="what the boundary visits' extra copies cost on the slowest link"
    )
    capacities_from: str = Field(default="", description="the manifest, or the run whose measured figures were used")

    def stage(self, name: str) -> StageForecast | None:
        return next((s for s in self.stages if s.stage == name), None)

    def table(self) -> list[dict[str, object]]:
        """One row per stage and site: the expected seconds (what notebook 01 shows)."""
        rows: list[dict[str, object]] = []
        for st in self.stages:
            for site, secs in st.sites.items():
                rows.append({"stage": st.stage, "site": site, "forecast_s": round(secs, 1)})
            rows.append({"stage": st.stage, "site": "(stage)", "forecast_s": round(st.seconds, 1)})
        return rows


@dataclass(frozen=True)
class Rates:
    """The capacities in the form the model uses (from a manifest's, or measured)."""

    links: Mapping[str, tuple[float, float]]  # link -> (bytes per second, seconds per file)
    per_quantum_s: Mapping[str, float]
    default_quantum_s: float
    per_group_s: float
    per_shipment_s: float
    in_flight: int


def _ship(rates: Rates, key: str, files: int, size: int, shipments: int = 1) -> float:
    bps, per_file = rates.links[key]
    return shipments * rates.per_shipment_s + files * per_file + size / bps


def _steps(rates: Rates, steps: Sequence[StepLoad]) -> float:
    total = 0.0
    for s in steps:
        groups = max(1, s.groups)
        waves = math.ceil(groups / max(1, rates.in_flight))
        per_group = rates.per_group_s + (s.quanta / groups) * rates.per_quantum_s.get(s.step, rates.default_quantum_s)
        total += waves * per_group
    return total


def forecast(
    central: str,
    stages: Sequence[tuple[str, str]],
    loads: Sequence[SiteLoad],
    central_steps: Mapping[str, Sequence[StepLoad]],
    rates: Rates,
    *,
    boundary_extra_bytes: int = 0,
    capacities_from: str = "",
) -> Forecast:
    """The forecast of a campaign (see the module's notes).

    Parameters
    ----------
    central
        The central site.
    stages
        (name, where) of each stage of the stage plan, in order (where: ``sites`` or ``central``).
    loads
        Each remote site's load.
    central_steps
        Stage -> the central site's steps of it.
    rates
        The capacities (every link the loads use must be there).
    """
    out = Forecast(capacities_from=capacities_from, boundary_extra_bytes=boundary_extra_bytes)
    for ld in loads:
        key = link(central, ld.site)
        out.bytes_per_link[key] = out.bytes_per_link.get(key, 0) + ld.bytes
        out.files_per_link[key] = out.files_per_link.get(key, 0) + ld.files
    transfer = {ld.site: _ship(rates, link(central, ld.site), ld.files, ld.bytes) for ld in loads}
    slowest = max(transfer, key=lambda s: transfer[s]) if transfer else ""
    out.stages.append(
        StageForecast(
            stage="transfer",
            seconds=max(transfer.values(), default=0.0),
            sites=transfer,
            critical=link(central, slowest),
        )
    )
    if boundary_extra_bytes and slowest:
        bps, _ = rates.links[link(central, slowest)]
        out.boundary_extra_s = boundary_extra_bytes / bps
    pbp = out.stages[0].seconds
    flowing: dict[str, float] = {}  # each site's clock, flowing
    first_site_stage = True
    for name, where in stages:
        if where == "sites":
            per_site = {ld.site: _steps(rates, ld.steps.get(name, ())) for ld in loads}
            st = StageForecast(stage=name, seconds=max(per_site.values(), default=0.0), sites=per_site)
            st.critical = max(per_site, key=lambda s: per_site[s]) if per_site else ""
            out.stages.append(st)
            pbp += st.seconds
            for ld in loads:
                if first_site_stage:  # the flow: processing starts once the common inputs and a batch are there
                    ship_all = transfer[ld.site] + ld.batches * rates.per_shipment_s
                    first = ship_all / max(1, ld.batches + 1) * 2
                    flowing[ld.site] = max(ship_all, first + per_site[ld.site])
                else:
                    flowing[ld.site] = flowing.get(ld.site, 0.0) + per_site[ld.site]
            first_site_stage = False
        else:
            gather = {
                ld.site: _ship(rates, link(ld.site, central), ld.gathered_files, ld.gathered_bytes) for ld in loads
            }
            steps = _steps(rates, central_steps.get(name, ()))
            back = {ld.site: _ship(rates, link(central, ld.site), ld.gathered_files, 0) for ld in loads}
            g, b = max(gather.values(), default=0.0), max(back.values(), default=0.0)
            st = StageForecast(stage=name, seconds=g + steps + b, sites={central: steps})
            st.critical = f"{central} steps" if steps >= g + b else link(max(gather, key=lambda s: gather[s]), central)
            out.stages.append(st)
            pbp += st.seconds
            start = max(flowing.values(), default=0.0) + g  # a global stage: a barrier for every site
            for site in flowing:
                flowing[site] = start + steps + back[site]
    final = {ld.site: _ship(rates, link(ld.site, central), ld.gathered_files, ld.gathered_bytes) for ld in loads}
    out.stages.append(StageForecast(stage="final", seconds=max(final.values(), default=0.0), sites=final))
    pbp += out.stages[-1].seconds
    out.phase_by_phase_s = round(pbp, 1)
    end = {s: flowing[s] + final.get(s, 0.0) for s in flowing}
    out.flowing_s = round(max(end.values(), default=pbp), 1)
    if end:
        site = max(end, key=lambda s: end[s])
        out.critical_path = f"{site}: its link {link(central, site)} and its stages"
    return out
