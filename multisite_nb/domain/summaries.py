"""One typed summary per phase: what a phase records in its result, read as is by the views, the CLI
and the next phase.

Every summary is a :class:`PhaseSummary` (whose fields every phase has: the chain's note when the
phase could not record its own result, and whether it is still in progress); each phase adds its own
figures in its own model, registered here by phase name (:func:`register_summary`) so that a result
file is read back as the model its phase wrote. A result of a phase nobody registered reads as the
base model, and a summary that does not fit its model makes the result unreadable, never guessed at.
Summaries hold small figures and the first few items; tables go to the run folder's artifacts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from multisite_nb.domain.qa import SiteMetrics
from multisite_nb.domain.records import ShipmentOutcome, StepRecord
from multisite_nb.domain.verification import SiteVerification

__all__ = [
    "BoundaryCost",
    "CleanupSummary",
    "DashboardSummary",
    "FlowSummary",
    "SiteFlow",
    "GatherSummary",
    "PhaseSummary",
    "PlacementSummary",
    "QASampleFigures",
    "QASummary",
    "RepairAction",
    "RepairSummary",
    "ShipmentRow",
    "SitePlacement",
    "SiteSteps",
    "StepsSummary",
    "SubmitSummary",
    "TransferSummary",
    "VerifySummary",
    "register_summary",
    "summary_model",
]

#: Steps by site, then by step name.
SiteSteps = dict[str, dict[str, StepRecord]]


class PhaseSummary(BaseModel):
    """What every phase's summary has; the base of each phase's own model."""

    model_config = ConfigDict(extra="forbid")

    in_progress: bool = Field(default=False, description="recorded while the phase runs (not its verdict)")
    recorded_by: str | None = Field(default=None, description="'chain' when the chain recorded the phase's failure")
    error: str | None = Field(default=None, description="the exception that ended the phase, when it raised")
    cell_index: int | None = Field(default=None, description="the notebook cell it raised in")


# -- placement ---------------------------------------------------------------------------------


class SitePlacement(BaseModel):
    """What the plan sends to one site."""

    files: int = 0
    bytes: int = 0
    visits: int = 0


class BoundaryCost(BaseModel):
    """Raws more than one site needs: how many, and the extra copies and bytes they cost."""

    files: int = 0
    extra_copies: int = 0
    extra_bytes: int = 0


class PlacementSummary(PhaseSummary):
    campaign_file: str = ""
    sites: dict[str, SitePlacement] = Field(default_factory=dict)
    boundary_visits: int = 0
    boundary_cost: BoundaryCost = Field(default_factory=BoundaryCost)
    boundary_by_sites: dict[str, int] = Field(default_factory=dict, description='"IN2P3+RAL": visits they share')
    collisions: list[str] = Field(default_factory=list)
    refused: list[str] = Field(default_factory=list)


# -- transfer, gather, redistribution --------------------------------------------------------


class ShipmentRow(BaseModel):
    """One shipment: where to, how many files, its rule, what was ingested, its error, its timings."""

    shipment: str
    dest: str
    files: int = 0
    rule: str = Field(default="none", description="the data rule's state (none: not made)")
    rule_id: str | None = None
    ingested: int = 0
    already_present: int = 0
    error: str = ""
    seconds: dict[str, float] = Field(default_factory=dict, description="by stage: records, register, rule, ...")
    bytes: int = 0
    parts: int = Field(default=1, description="the shipments this row sums (a flowing placement's batches)")
    groups: list[str] = Field(default_factory=list, description="the first step's groups whose raws it carries")
    ok_at: str = Field(default="", description="when its data were ingested at the destination (the last of parts)")
    first_ok_at: str = Field(default="", description="when its first part was (a flowing placement)")
    verified_at: str = Field(default="", description="when verification found its files in place")

    @classmethod
    def of(cls, o: ShipmentOutcome) -> ShipmentRow:
        return cls(
            shipment=o.name,
            dest=o.dest,
            files=o.registered,
            rule=str(o.state) if o.state else "none",
            rule_id=o.rule_id,
            ingested=o.ingested,
            already_present=o.already_present,
            error=o.error or "",
            seconds={k: round(v, 2) for k, v in o.seconds.items()},
            ok_at=o.ok_at.isoformat() if o.ok_at else "",
            first_ok_at=o.ok_at.isoformat() if o.ok_at else "",
            verified_at=o.verified_at.isoformat() if o.verified_at else "",
        )

    @classmethod
    def total(cls, dest: str, name: str, rows: list[ShipmentRow]) -> ShipmentRow:
        """Several shipments to ``dest`` as one row: files summed, the first error, the last time."""
        bad = next((r for r in rows if r.error or r.rule != "OK"), None)
        oks = sorted(r.ok_at for r in rows if r.ok_at)
        seconds: dict[str, float] = {}
        for r in rows:
            for k, v in r.seconds.items():
                seconds[k] = round(seconds.get(k, 0.0) + v, 2)
        return cls(
            shipment=name,
            dest=dest,
            files=sum(r.files for r in rows),
            rule=bad.rule if bad else ("OK" if rows else "none"),
            rule_id=bad.rule_id if bad else None,
            ingested=sum(r.ingested for r in rows),
            already_present=sum(r.already_present for r in rows),
            error=f"{bad.shipment}: {bad.error}" if bad and bad.error else "",
            seconds=seconds,
            bytes=sum(r.bytes for r in rows),
            parts=len(rows),
            ok_at=oks[-1] if oks and len(oks) == len(rows) else "",
            first_ok_at=oks[0] if oks else "",
            verified_at=max((r.verified_at for r in rows), default=""),
        )


class TransferSummary(PhaseSummary):
    shipments: dict[str, ShipmentRow] = Field(default_factory=dict, description="by destination site")


# -- verification and repair ---------------------------------------------------------------


class SiteFlow(BaseModel):
    """One site in a flowing stage: its shipments, when they and its first groups got going."""

    shipments: int = 0
    verified: int = Field(default=0, description="shipments whose files verification found in place")
    groups: int = Field(default=0, description="the first step's groups")
    released: int = Field(default=0, description="groups whose inputs were verified (they could start)")
    first_ok_at: str = ""
    last_ok_at: str = Field(default="", description="when its last shipment was in place (empty: not all were)")
    first_group_at: str = Field(default="", description="when its first group of the first step started")
    error: str = ""


class FlowSummary(PhaseSummary):
    """A flowing stage: per site how its shipments and groups overlapped (the three gates it records are
    ``transfer``, ``verify`` and ``submit_<stage>``)."""

    stage: str = ""
    sites: dict[str, SiteFlow] = Field(default_factory=dict)
    gates: dict[str, bool] = Field(default_factory=dict, description="the gates it recorded, passed or not")


class VerifySummary(PhaseSummary):
    sites: dict[str, SiteVerification] = Field(default_factory=dict)
    problems: int = 0
    first_problems: dict[str, str] = Field(default_factory=dict, description="each site's first problem, in words")


class RepairAction(BaseModel):
    """One thing repair did (or could not do) at one site."""

    site: str
    what: str  # a file (LFN) or a rule
    action: str  # declared bad | rule retried | ingested again | cannot repair
    detail: str = ""


class RepairSummary(PhaseSummary):
    actions: list[RepairAction] = Field(default_factory=list, description="the first 200")
    counts: dict[str, int] = Field(default_factory=dict, description="actions by kind")
    sites: list[str] = Field(default_factory=list)
    remaining: int = 0


# -- processing ------------------------------------------------------------------------------


class StepsSummary(PhaseSummary):
    """A summary holding the steps a phase ran (site stages, central stages)."""

    stage: str = ""
    steps: SiteSteps = Field(default_factory=dict)

    def groups_line(self) -> str:
        """The phase's groups by state, per site (``""`` when it ran none): the run page's line."""
        parts = []
        for site, by in self.steps.items():
            counts = [r.groups for r in by.values() if r.groups is not None]
            if not counts:
                continue
            total, done = sum(g.total for g in counts), sum(g.done for g in counts)
            extra = [f"{n} {k}" for k in ("running", "failed", "held") if (n := sum(getattr(g, k) for g in counts))]
            parts.append(f"{site} {done}/{total}" + (f" ({', '.join(extra)})" if extra else ""))
        return f"groups done: {'; '.join(parts)}" if parts else ""


class SubmitSummary(StepsSummary):
    prepared_tasks: int = Field(default=0, description="prepare only: the PanDA tasks built offline")
    prepare_errors: list[str] = Field(default_factory=list, description="prepare only: the steps that failed, why")


class GatherSummary(StepsSummary):
    gathered: list[str] = Field(default_factory=list, description="dataset types gathered before the stage")
    gather_shipments: list[ShipmentRow] = Field(default_factory=list)
    redistributed: list[str] = Field(default_factory=list, description="dataset types sent back to the sites")
    redistribute_shipments: list[ShipmentRow] = Field(default_factory=list)
    delivered_runs: dict[str, list[str]] = Field(default_factory=dict, description="per site, the RUNs it received")
    validation_set: list[str] = Field(default_factory=list, description="the final gather's dataset types")
    shipments: list[ShipmentRow] = Field(default_factory=list, description="the final gather's shipments")
    runs_at_central: list[str] = Field(default_factory=list)


# -- QA, the dashboard, cleanup ----------------------------------------------------------------


class QASampleFigures(BaseModel):
    full: bool = False
    units: dict[str, list[str]] = Field(default_factory=dict)
    reference_units: int = 0
    note: str = ""


class QASummary(PhaseSummary):
    validation_set: list[str] = Field(default_factory=list)
    missing: int = 0
    mismatches: int = 0
    metrics: list[SiteMetrics] = Field(default_factory=list)
    reference_steps: dict[str, str | None] = Field(default_factory=dict, description="step -> its state")
    sample: QASampleFigures = Field(default_factory=QASampleFigures)


class DashboardSummary(PhaseSummary):
    states: dict[str, str] = Field(default_factory=dict)
    reasons: dict[str, str] = Field(default_factory=dict)
    collected_at: str = ""


class CleanupSummary(PhaseSummary):
    dry_run: bool = True
    items: int = 0
    by_kind: dict[str, int] = Field(default_factory=dict)


# -- the registry of summary models ----------------------------------------------------------

_MODELS: dict[str, type[PhaseSummary]] = {
    "placement": PlacementSummary,
    "transfer": TransferSummary,
    "flow": FlowSummary,
    "verify": VerifySummary,
    "repair": RepairSummary,
    "submit": SubmitSummary,
    "gather_redistribute": GatherSummary,
    "qa": QASummary,
    "dashboard": DashboardSummary,
    "cleanup": CleanupSummary,
}


def register_summary(phase: str, model: type[PhaseSummary]) -> None:
    """Say which model a phase's summary is (a phase added outside this module registers its own)."""
    _MODELS[phase] = model


def summary_model(label: str) -> type[PhaseSummary]:
    """The summary model of a phase's result: its label (``submit_early``) or phase name (``submit``)."""
    if label in _MODELS:
        return _MODELS[label]
    matches = [name for name in _MODELS if label.startswith(f"{name}_")]
    return _MODELS[max(matches, key=len)] if matches else PhaseSummary


def parse_summary(label: str, data: Any) -> PhaseSummary:
    """``data`` (a summary as JSON gives it, or a model) as the summary model of ``label``."""
    model = summary_model(label)
    if isinstance(data, model):
        return data
    if isinstance(data, PhaseSummary):
        data = data.model_dump()
    return model.model_validate(data if data is not None else {})
