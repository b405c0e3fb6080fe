"""One pipeline step at one site, as a record: where it runs, what it reads and writes, what it selects.

:func:`multisite_nb.phases.submit.selection.step_run` makes one from the campaign (its
collections follow :mod:`multisite_nb.domain.naming`); the workflow adapters run it.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

from astropy.table import Table

from multisite_nb.domain.config import Campaign, SkyUnit
from multisite_nb.domain.wiring import load_pipeline_graph

__all__ = ["DataIdTable", "StepRun", "site_units", "step_dimensions"]


@dataclass(frozen=True)
class DataIdTable:
    """Data IDs a step is restricted to, handed to the graph builder as a table.

    ``pipetask --data-id-table`` joins it into the query that finds the quanta: thousands of
    sky units need no expression (an OR over tracts is refused from about ten).
    """

    columns: tuple[str, ...]
    rows: tuple[tuple[str | int, ...], ...]

    def ecsv(self) -> str:
        """The table as ECSV text (what ``pipetask --data-id-table`` reads)."""
        text = io.StringIO()
        Table(rows=list(self.rows), names=list(self.columns)).write(text, format="ascii.ecsv")
        return text.getvalue()

    def as_dicts(self) -> list[dict[str, str | int]]:
        """The rows as data ID mappings."""
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]

    def __str__(self) -> str:
        return f"{len(self.rows)} data IDs ({', '.join(self.columns)})"


@dataclass(frozen=True)
class StepRun:
    """One step at one site: where it runs, what it reads, what it writes.

    Attributes
    ----------
    site, step
        Site name (from the campaign) and pipeline subset label.
    repo
        The site's Butler repository (from the manifest).
    inputs
        Input collections, in search order.
    output_chain, output_run
        ``P/S`` and ``P/S/T``.
    data_query
        Butler expression selecting the site's data.
    pipeline
        ``<absolute pipeline path>#<step>``.
    data_id_table
        Data IDs the quanta are further restricted to (the site's patches, for a step whose
        quanta are patches), or None.
    group, chain_into
        For one group of a site's step (see :mod:`multisite_nb.domain.groups`): its name
        (``gNNNN``) and the step's CHAINED collection ``P/S/T`` its RUN joins when it succeeds.
        Empty for a step run whole (QA's reference).
    """

    site: str
    step: str
    repo: str
    inputs: list[str]
    output_chain: str
    output_run: str
    data_query: str
    pipeline: str
    data_id_table: DataIdTable | None = None
    db_auth: str | None = None  # daf_butler's credentials file of the repository's registry, if any
    group: str = ""
    chain_into: str = ""

    @property
    def pipeline_path(self) -> str:
        return self.pipeline.partition("#")[0]

    @property
    def subset(self) -> str:
        return self.pipeline.partition("#")[2]

    @property
    def where(self) -> str:
        """``"<site> <step>"`` (``"<site> <step> <group>"``), how messages name it."""
        return f"{self.site} {self.step}" + (f" {self.group}" if self.group else "")


def site_units(campaign: Campaign, site: str) -> list[SkyUnit]:
    """A remote site's units; for the central site, every remote site's units."""
    if site == campaign.central:
        return [u for s in campaign.remote_sites for u in campaign.sky_units(s)]
    return campaign.sky_units(site)


@functools.lru_cache(maxsize=32)
def step_dimensions(pipeline: str, step: str) -> frozenset[str]:
    """Every dimension of the quanta of a step's tasks (as the pipeline declares them).

    Empty for a step the pipeline does not define; pre-flight names that step.
    """
    graph = load_pipeline_graph(pipeline, resolve=False)
    labels = graph.task_subsets[step] if step in graph.task_subsets else ()
    return frozenset(d for label in labels for d in graph.tasks[label].raw_dimensions)
