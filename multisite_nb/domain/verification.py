"""What verification finds: problems per site and layer, and each site's report in figures.

A problem is one of ``missing`` (not there), ``corrupt`` (there, wrong size or checksum),
``wrong`` (there, but in another collection), ``rule`` (the rule is not OK) or ``unreachable``
(the layer could not be read).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pydantic import BaseModel

__all__ = ["PROBLEM_KINDS", "Problem", "SiteReport", "SiteVerification", "problems_table"]


class SiteVerification(BaseModel):
    """One site's verification in figures (what the phase's summary and the views hold)."""

    site: str
    shipment: str = ""
    planned: int = 0
    ok: bool = True
    missing: int = 0
    corrupt: int = 0
    wrong: int = 0
    rule: int = 0
    unreachable: int = 0

    @property
    def problems(self) -> int:
        return self.missing + self.corrupt + self.wrong + self.rule + self.unreachable


#: What can be wrong with a planned file at a site (``unreachable``: the layer could not be read).
PROBLEM_KINDS = ("missing", "corrupt", "wrong", "rule", "unreachable")


@dataclass(frozen=True)
class Problem:
    """One thing wrong at one site."""

    site: str
    layer: str  # rucio | butler | disk
    kind: str  # missing | corrupt | wrong | rule
    what: str  # the file (LFN) or rule
    detail: str = ""

    def as_row(self) -> dict[str, str]:
        return {"site": self.site, "layer": self.layer, "problem": self.kind, "file": self.what, "detail": self.detail}


@dataclass
class SiteReport:
    """Reconciliation of one site."""

    site: str
    planned: int
    dataset: str = ""
    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> SiteVerification:
        """The report in figures: problems counted by kind."""
        by_kind = {kind: sum(1 for p in self.problems if p.kind == kind) for kind in PROBLEM_KINDS}
        return SiteVerification(site=self.site, shipment=self.dataset, planned=self.planned, ok=self.ok, **by_kind)


def merge_reports(site: str, dataset: str, reports: Sequence[SiteReport]) -> SiteReport:
    """Several shipments' reports of one site as one (a flowing placement's batches)."""
    merged = SiteReport(site=site, planned=0, dataset=dataset)
    for r in reports:
        merged.planned += r.planned
        merged.problems += r.problems
        for k, v in r.checked.items():
            merged.checked[k] = merged.checked.get(k, 0) + v
    return merged


def problems_table(reports: Sequence[SiteReport]) -> list[dict[str, str]]:
    """Every problem of ``reports`` as a table row."""
    return [p.as_row() for r in reports for p in r.problems]
