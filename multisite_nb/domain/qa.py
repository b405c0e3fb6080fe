"""QA's report as records: completeness per site and dataset type, per sky unit and band, the values
that differ from the reference, each site's figures, and the sample. One typed row per table.

Tables for people are made from these by :func:`multisite_nb.views.tables.frame` (column titles in
words); the records keep plain field names.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["Completeness", "Mismatch", "QAReport", "SampleRow", "SiteMetrics", "UnitCompleteness"]


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Completeness(_Row):
    """One dataset type at one site: expected products and how many are missing where."""

    site: str
    dataset_type: str
    expected: int = 0
    missing_at_site: int = 0
    missing_at_central: int = 0
    on_sample: int = 0
    note: str = ""


class UnitCompleteness(_Row):
    """One sky unit and band at one site, all dataset types together."""

    site: str
    sky_unit: str
    band: str
    sampled: bool
    expected: int = 0
    at_site: int = 0
    at_central: int = 0
    by_rule: int = Field(default=0, description="what the registry rule expects (a cross-check on the sample)")


class Mismatch(_Row):
    """A product whose value differs from the reference's."""

    site: str
    dataset_type: str
    data_id: dict[str, Any]


class SiteMetrics(_Row):
    """One site's figures: products counted, compared, and the digests of their values."""

    site: str
    sampled_units: int
    sky_units: int
    products_at_site: int
    products_gathered: int
    expected_products: int
    reference_products: int
    compared: int
    global_products_at_site: int
    value_digest: str
    reference_digest: str
    agree: bool


class SampleRow(_Row):
    """One sky unit of the campaign and its part in the sample."""

    site: str
    sky_unit: str
    boundary: bool
    chosen: bool
    sampled: bool
    in_reference: bool


class QAReport(BaseModel):
    """The verdict and its tables."""

    completeness: list[Completeness] = Field(default_factory=list)
    units: list[UnitCompleteness] = Field(default_factory=list)
    mismatches: list[Mismatch] = Field(default_factory=list)
    metrics: list[SiteMetrics] = Field(default_factory=list)
    sample: list[SampleRow] = Field(default_factory=list)

    @property
    def missing(self) -> int:
        return sum(r.missing_at_site + r.missing_at_central for r in self.completeness)

    @property
    def passed(self) -> bool:
        return self.missing == 0 and not self.mismatches

    def first_missing(self) -> UnitCompleteness | None:
        """The first unit row with a product missing (at the site or at the central site)."""
        return next((r for r in self.units if r.at_site < r.expected or r.at_central < r.expected), None)

    def verdict(self) -> str:
        """One sentence: complete and consistent, or what is missing and what differs (the first of each)."""
        if self.passed:
            n = sum(r.expected for r in self.completeness)
            compared = sum(r.compared for r in self.metrics)
            return (
                f"complete and consistent: {n} expected products present at the sites and at the central site, "
                f"values equal to the reference ({compared} compared)"
            )
        parts = []
        if self.missing:
            first = next(r for r in self.completeness if r.missing_at_site or r.missing_at_central)
            unit = self.first_missing()
            where = f", {unit.sky_unit}" if unit and unit.site == first.site else ""
            parts.append(f"{self.missing} products missing (first: {first.site} {first.dataset_type}{where})")
        if self.mismatches:
            m = self.mismatches[0]
            parts.append(
                f"{len(self.mismatches)} values differ from the reference "
                f"(first: {m.site} {m.dataset_type} {m.data_id})"
            )
        return "; ".join(parts)
