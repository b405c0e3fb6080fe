"""Tables for people: what the notebooks show, shaped here from the library's records.

A notebook shows a summary and the first rows; the whole table is an artifact of the run folder.
Column titles are the records' field names in words (``missing_at_site`` → ``missing at site``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd
from pydantic import BaseModel

from multisite_nb.adapters.tables import manifest_rows
from multisite_nb.domain.forecast import Forecast
from multisite_nb.domain.plan import PlacementPlan
from multisite_nb.domain.qa import QAReport
from multisite_nb.domain.records import ShipmentOutcome
from multisite_nb.domain.summaries import GatherSummary, ShipmentRow
from multisite_nb.domain.verification import SiteReport, problems_table
from multisite_nb.phases.placement.suggest import Suggestion

__all__ = [
    "boundary_frame",
    "frame",
    "gather_frames",
    "manifest_frame",
    "placement_frame",
    "problems_frame",
    "qa_units_frame",
    "shipments_frame",
    "suggestion_frame",
    "summarize",
    "tract_spread",
    "verification_frame",
]


def summarize(df: pd.DataFrame, max_rows: int = 20) -> pd.DataFrame:
    """At most ``max_rows`` rows of ``df`` for display in a notebook.

    Longer tables are cut to their head and tail with a ``…`` row between, so an executed
    notebook stays small; the full table is saved by the phase (``save_table``).
    """
    if len(df) <= max_rows:
        return df
    if max_rows < 3:
        return df.head(max(max_rows, 0))
    head = max_rows // 2
    tail = max_rows - head - 1
    gap = pd.DataFrame(
        [["…"] * df.shape[1]],
        columns=df.columns,
        index=pd.Index([f"… {len(df) - head - tail} more rows"]),
    )
    return pd.concat([df.head(head).astype(object), gap, df.tail(tail).astype(object)])


def frame(rows: Iterable[BaseModel], index: str | None = None) -> pd.DataFrame:
    """Records as a table, their field names in words as the column titles."""
    df = pd.DataFrame([r.model_dump() for r in rows])
    df.columns = [str(c).replace("_", " ") for c in df.columns]
    return df.set_index(index.replace("_", " ")) if index and len(df) else df


# -- placement ------------------------------------------------------------------------------


def forecast_frame(fc: Forecast) -> pd.DataFrame:
    """The forecast in seconds, a row per stage and a column per site, with what sets each stage's time."""
    table = pd.DataFrame(fc.table()).pivot(index="stage", columns="site", values="forecast_s")
    table = table.reindex([st.stage for st in fc.stages])
    table["critical"] = [st.critical for st in fc.stages]
    return table


def links_frame(fc: Forecast) -> pd.DataFrame:
    """What each link carries in the forecast's plan: files and bytes."""
    return pd.DataFrame({"files": fc.files_per_link, "bytes": fc.bytes_per_link}).rename_axis("link")


def placement_frame(plan: PlacementPlan) -> pd.DataFrame:
    """Per site: files, bytes, visits, shared files and files per dataset type."""
    return pd.DataFrame(plan.counts()).set_index("site")


def boundary_frame(plan: PlacementPlan, max_rows: int = 20) -> pd.DataFrame:
    """The boundary visits and the sites they are placed at (the first and last rows)."""
    rows = [{"visit": v, "sites": ", ".join(s)} for v, s in plan.boundary_visits.items()]
    return summarize(pd.DataFrame(rows, columns=["visit", "sites"]), max_rows)


def tract_spread(plan: PlacementPlan) -> pd.DataFrame:
    """Per site: how the files spread over its tracts (count, min, median, max files a tract)."""
    tracts = pd.DataFrame(plan.tract_rows())
    if tracts.empty:
        return tracts
    return tracts.groupby("site")["files"].describe()[["count", "min", "50%", "max"]]


def manifest_frame(plan: PlacementPlan, site: str, rows: int = 6) -> pd.DataFrame:
    """The first rows of a site's planned files (its whole table is the plan's Parquet file)."""
    return pd.DataFrame(manifest_rows(plan, site, limit=rows))


def suggestion_frame(suggestion: Suggestion, max_rows: int = 20) -> pd.DataFrame:
    """The groups the suggestion would move (all its groups when it moves none)."""
    shown = suggestion.moved or suggestion.groups
    rows = [
        {
            "units": ", ".join(g.units) if len(g.units) <= 6 else f"{', '.join(g.units[:6])}, … ({len(g.units)})",
            "visits": len(g.visits),
            "raws": g.raws,
            "suggested site": g.site,
            "campaign site": ", ".join(sorted({suggestion.current.get(u, "?") for u in g.units})),
        }
        for g in shown
    ]
    return summarize(pd.DataFrame(rows), max_rows)


# -- transfer, verification, gather --------------------------------------------------------


def shipments_frame(outcomes: Sequence[ShipmentOutcome] | Sequence[ShipmentRow]) -> pd.DataFrame:
    """One row per shipment: where to, files, its rule, what was ingested, its error."""
    rows = [o if isinstance(o, ShipmentRow) else ShipmentRow.of(o) for o in outcomes]
    return frame(rows, index="shipment")


def verification_frame(reports: Sequence[SiteReport]) -> pd.DataFrame:
    """Per site: planned files and problems by kind."""
    return frame([r.counts() for r in reports], index="site")


def problems_frame(reports: Sequence[SiteReport], max_rows: int = 20) -> pd.DataFrame:
    """Every problem found, the first and last rows (the whole list is ``artifacts/verify/problems.csv``)."""
    return summarize(pd.DataFrame(problems_table(reports)), max_rows)


def gather_frames(summary: GatherSummary) -> list[tuple[str, pd.DataFrame]]:
    """The shipments of a gather/redistribute phase, titled: gathered, redistributed, brought home."""
    parts = (
        ("gather shipments", summary.gather_shipments),
        ("redistribute shipments", summary.redistribute_shipments),
        ("shipments", summary.shipments),
    )
    return [(title, shipments_frame(rows)) for title, rows in parts if rows]


# -- QA ------------------------------------------------------------------------------------


def qa_units_frame(report: QAReport, max_rows: int = 24) -> pd.DataFrame:
    """Completeness per sky unit and band, the units with a product missing first."""
    units = frame(report.units)
    if not units.empty:
        short = (units["expected"] - units["at site"]) + (units["expected"] - units["at central"])
        units = units.assign(short=short).sort_values("short", ascending=False, kind="stable").drop(columns="short")
    return summarize(units, max_rows)
