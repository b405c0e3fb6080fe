"""The placement plan as records: what each site needs, counted, with its files in tables beside it.

A data release places tens of millions of files, so the files themselves are rows of Parquet
tables (:mod:`multisite_nb.adapters.tables` writes, reads and stores them); the records here are
what is small: one :class:`PlannedFile` (for a sample, a part of a shipment, an error report),
the plan's summaries counted while its tables were written, and the per-site visits, owners,
certifications and chains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from multisite_nb.domain.errors import PlanError

__all__ = [
    "Certification",
    "PlacementPlan",
    "PlanSummary",
    "PlannedFile",
    "SiteCounts",
    "TractCounts",
    "json_value",
]


def json_value(v: Any) -> Any:
    """A data-ID value as JSON keeps it (ints and strings as they are, anything else as text)."""
    return v if isinstance(v, (int, str, float)) or v is None else str(v)


class PlannedFile(BaseModel):
    """One file to place: which dataset it is, where it lives at the central site, who needs it."""

    id: str
    dataset_type: str
    run: str
    data_id: dict[str, Any]
    lfn: str = Field(description="path relative to the central datastore root (= Rucio LFN)")
    size: int
    adler32: str | None = Field(default=None, description="None until Rucio or a reader of the file knows it")
    sites: list[str]


class Certification(BaseModel):
    """A calibration's validity range in a CALIBRATION collection (re-made at each site)."""

    id: str
    collection: str
    begin: str | None
    end: str | None
    dataset_type: str = ""
    sites: list[str] = Field(default_factory=list, description="the sites the calibration is placed at")


class _Counts(BaseModel):
    """Files, bytes and files shared with other sites, counted while the plan's tables were written."""

    model_config = ConfigDict(extra="forbid")

    files: int = 0
    bytes: int = 0
    shared_files: int = 0


class SiteCounts(_Counts):
    """A site's share of the plan."""

    by_type: dict[str, int] = Field(default_factory=dict)
    runs: list[str] = Field(default_factory=list, description="the RUN collections its files are in")


class TractCounts(_Counts):
    """A site's files serving one tract (all dataset types), for the per-tract views."""

    site: str
    tract: int


class PlanSummary(BaseModel):
    """What the plan's table holds, counted once while writing it."""

    model_config = ConfigDict(extra="forbid")

    sites: dict[str, SiteCounts] = Field(default_factory=dict)
    tracts: list[TractCounts] = Field(default_factory=list)
    boundary_files: int = 0
    boundary_extra_copies: int = 0
    boundary_extra_bytes: int = 0


class PlacementPlan(BaseModel):
    """The phase-1 plan: what the sites' data look like, with the files in a table beside it.

    The files (one row per file and site) are in Parquet tables in :attr:`tables`; this record
    holds the summaries and the per-site visits, detectors and collections, small beside the
    files. :mod:`multisite_nb.adapters.tables` saves, loads and reads it.
    """

    campaign: str
    central: str
    sites: list[str] = Field(description="the remote sites, each with a table of the files it needs")
    summary: PlanSummary = Field(default_factory=PlanSummary)
    visits: dict[str, list[int]]
    detectors: dict[str, list[int]]
    boundary_visits: dict[int, list[str]] = Field(default_factory=dict)
    visit_owner: dict[int, str] = Field(default_factory=dict, description="each visit's canonical site")
    exposure_visit: dict[int, int] = Field(default_factory=dict, description="exposure -> its visit")
    certifications: list[Certification] = Field(default_factory=list)
    chains: dict[str, list[str]] = Field(default_factory=dict)
    calibration_collections: list[str] = Field(default_factory=list)
    dataset_types: list[str] = Field(default_factory=list)
    _tables: Path | None = PrivateAttr(default=None)

    @property
    def tables(self) -> Path:
        """The folder of the plan's file tables (``files/`` beside a saved plan)."""
        if self._tables is None:
            raise PlanError(f"plan of {self.campaign}: its file tables are not on disk (plan neither made nor loaded)")
        return self._tables

    def attach_tables(self, folder: Path) -> None:
        """Say where the plan's file tables are (the planner's partial folder, or ``files/`` once saved)."""
        self._tables = Path(folder)

    def check_site(self, site: str) -> None:
        """Raise :class:`PlanError` unless ``site`` has a table in the plan."""
        if site not in self.sites:
            raise PlanError(f"plan of {self.campaign}: no site {site!r} (sites: {', '.join(self.sites)})")

    # -- figures ----------------------------------------------------------------------
    def counts(self) -> list[dict[str, Any]]:
        """Per site: files, bytes, visits, shared files and files per dataset type."""
        rows = []
        for site in self.sites:
            c = self.summary.sites.get(site, SiteCounts())
            row: dict[str, Any] = {
                "site": site,
                "files": c.files,
                "bytes": c.bytes,
                "visits": len(self.visits.get(site, [])),
                "shared files": c.shared_files,
            }
            for dt in self.dataset_types:
                row[dt] = c.by_type.get(dt, 0)
            rows.append(row)
        return rows

    def boundary_cost(self) -> dict[str, int]:
        """Extra copies and bytes caused by raws more than one site needs (counted while planning)."""
        return {
            "files": self.summary.boundary_files,
            "extra_copies": self.summary.boundary_extra_copies,
            "extra_bytes": self.summary.boundary_extra_bytes,
        }

    def boundary_by_sites(self) -> dict[str, int]:
        """How many boundary visits each group of sites shares (``"IN2P3+RAL": 4``)."""
        out: dict[str, int] = {}
        for sites in self.boundary_visits.values():
            key = "+".join(sites)
            out[key] = out.get(key, 0) + 1
        return out

    def tract_rows(self) -> list[dict[str, Any]]:
        """Per site and tract: files, bytes, shared files (the per-tract summary the views read)."""
        keys = {"site", "tract"}
        return [{"site": t.site, "tract": t.tract, **t.model_dump(exclude=keys)} for t in self.summary.tracts]
