"""A step at a site cut into groups: the unit of work that is submitted, tracked and retried alone.

A data release's step is far too large for one quantum graph (tens of millions of quanta at one
site), so each site's step runs as groups, as Rubin's campaign manager runs them: each group one
submission with its own RUN collection (:func:`~multisite_nb.domain.naming.group_run`), retried on
its own and held for an operator when its retries are spent.

How a step is cut comes from the pipeline, never from the step's name: the pipeline's step
definitions declare each step's *sharding dimensions* (the data-ID dimensions along which its
quanta are independent); the step is cut along the first of the campaign's group sizes
(``processing.group_size``) whose dimension the step declares, ``size`` values per group. A step
that declares none of them (a global step, whose quanta span all the data) is one group. A
pipeline without step definitions is cut along the first sized dimension every task of the step
has.

The cut is deterministic: the step's data IDs are sorted by the group dimension and cut into
consecutive runs of at most ``size`` values (an exposure-level step whose data-ID table lists
visits is cut by visits, so that its visit-level tasks see whole visits).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from multisite_nb.domain.naming import group_name
from multisite_nb.domain.records import MAX_HELD_SHOWN, GroupCounts, HeldGroup, QuantumFailure, StepRecord, StepState
from multisite_nb.domain.steps import DataIdTable, StepRun
from multisite_nb.domain.wiring import load_pipeline_graph

#: What an exposure-level step is cut by when its data-ID table lists visits (each visit whole), and back.
_SAME_CUT = {"exposure": ("visit",), "visit": ("exposure",)}

__all__ = [
    "Group",
    "GroupCut",
    "GroupPlan",
    "cut_selection",
    "cut_values",
    "group_dimension",
    "step_of_groups",
]


@functools.lru_cache(maxsize=64)
def _declared(pipeline: str, step: str) -> tuple[frozenset[str], tuple[frozenset[str], ...]]:
    graph = load_pipeline_graph(pipeline)
    sharding = frozenset(graph.steps.get_dimensions(step).names) if step in graph.steps else frozenset()
    labels = graph.task_subsets[step] if step in graph.task_subsets else ()
    tasks = tuple(frozenset(graph.tasks[label].dimensions.names) for label in labels)
    return sharding, tasks


def group_dimension(pipeline: str, step: str, sizes: Mapping[str, int]) -> str | None:
    """The dimension ``step`` is cut along, or `None`: one group (a global step).

    Parameters
    ----------
    pipeline
        The pipeline YAML's path.
    step
        The step's subset label.
    sizes
        Dimension -> values per group, in order of preference (``Campaign``'s
        ``config.processing.sizes``).
    """
    sharding, tasks = _declared(str(pipeline), step)
    if sharding:
        return next((d for d in sizes if d in sharding), None)
    if not tasks:
        return None
    return next((d for d in sizes if all(d in t for t in tasks)), None)


def cut_values(values: Iterable[int | str], size: int) -> list[list[int | str]]:
    """The distinct ``values`` sorted and cut into consecutive runs of at most ``size``."""
    ordered = sorted(set(values))
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


@dataclass(frozen=True)
class GroupCut:
    """How one site's step is cut: along which dimension (``""``: not cut), how many values each group holds."""

    dimension: str
    size: int
    groups: int
    data_ids: int

    def __str__(self) -> str:
        if not self.dimension:
            return f"1 group ({self.data_ids} data IDs)"
        return f"{self.groups} groups of at most {self.size} {self.dimension}s ({self.data_ids} data IDs)"


def step_of_groups(
    site: str,
    step: str,
    records: Sequence[StepRecord],
    cut: GroupCut | None = None,
    *,
    run: str = "",
    chain: str = "",
) -> StepRecord:
    """One site's step as one record, from the latest record of each of its groups.

    Quanta are summed; the state is ``succeeded`` when every group succeeded, ``running``
    while any runs, else ``failed`` (a held group or one not finished); the failures are the
    held and failed groups' first few, each naming its group; ``groups`` counts them by state.
    """
    counts = GroupCounts(
        total=cut.groups if cut else len(records), dimension=cut.dimension if cut else "", size=cut.size if cut else 0
    )
    failures: list[QuantumFailure] = []
    for r in sorted(records, key=lambda r: r.group):
        if r.state is StepState.SUCCEEDED:
            counts.done += 1
        elif r.state in (StepState.RUNNING, StepState.PENDING):
            counts.running += 1
        elif r.state is StepState.HELD:
            counts.held += 1
            if len(counts.held_groups) < MAX_HELD_SHOWN:
                cause = str(r.first_failure) if r.first_failure else r.note
                counts.held_groups.append(HeldGroup(group=r.group, attempts=r.attempt, cause=cause[:300]))
        else:
            counts.failed += 1
        if r.state is not StepState.SUCCEEDED and len(failures) < 5:
            failures += [f.model_copy(update={"cause": f"{r.group}: {f.cause}"}) for f in r.failures[:2]]
    counts.waiting = max(0, counts.total - len(records))
    if counts.total and counts.done == counts.total:
        state = StepState.SUCCEEDED
    elif counts.running:
        state = StepState.RUNNING
    elif counts.held:
        state = StepState.HELD
    elif not records:
        state = StepState.NOT_STARTED
    else:
        state = StepState.FAILED
    started = min((r.started for r in records if r.started), default="")
    finished = max((r.finished for r in records if r.finished), default="")
    first = records[0] if records else None
    return StepRecord(
        site=site,
        step=step,
        state=state,
        run=run,
        chain=chain,
        mode=first.mode if first else "",
        total=sum(r.total for r in records),
        succeeded=sum(r.succeeded for r in records),
        failed=sum(r.failed for r in records),
        pending=sum(r.pending for r in records),
        running=sum(r.running for r in records),
        failures=failures,
        seconds=round(sum(r.seconds for r in records), 2),
        attempt=max((r.attempt for r in records), default=0),
        started=started,
        finished=finished,
        groups=counts,
        note="; ".join(dict.fromkeys(r.note for r in records if r.note))[:500],
    )


@dataclass(frozen=True)
class Group:
    """One group of a site's step: its name, its data query and the data IDs it is restricted to."""

    name: str
    query: str
    rows: tuple[tuple[str | int, ...], ...]


@dataclass(frozen=True)
class GroupPlan:
    """A site's step cut into groups (see the module's notes); what ``groups.parquet`` holds.

    Attributes
    ----------
    site, step
        Where and what.
    dimension, size
        The dimension it is cut along and the values per group (``""``, 0: not cut).
    columns
        The data-ID table's columns (empty: the groups are selected by their query alone).
    groups
        The groups in order.
    """

    site: str
    step: str
    dimension: str
    size: int
    columns: tuple[str, ...]
    groups: tuple[Group, ...]

    @property
    def cut(self) -> GroupCut:
        return GroupCut(self.dimension, self.size, len(self.groups), sum(len(g.rows) for g in self.groups))

    def table(self, group: Group) -> DataIdTable | None:
        """The group's data-ID table (None when the groups have none)."""
        return DataIdTable(self.columns, group.rows) if self.columns else None

    def restrict(self, base: StepRun, group: Group, *, run: str, chain: str) -> StepRun:
        """``base`` (the whole site's step) narrowed to ``group``: its data, its RUN, its chain."""
        return dataclasses.replace(
            base,
            data_query=group.query,
            data_id_table=self.table(group),
            output_run=run,
            output_chain=chain,
            group=group.name,
            chain_into=base.output_run,
        )


def cut_selection(
    site: str,
    step: str,
    query: str,
    table: DataIdTable | None,
    dimension: str | None,
    size: int,
) -> GroupPlan | None:
    """Cut a step's selection (its query and data-ID table) along ``dimension``, ``size`` values a group.

    Returns `None` when the table does not carry the dimension (the caller cuts it another way);
    a step not cut (``dimension`` None) is one group holding the whole selection.
    """
    if dimension is None or table is None:
        if dimension is None:
            whole = Group(group_name(1), query, table.rows if table else ())
            return GroupPlan(site, step, "", 0, table.columns if table else (), (whole,))
        return None
    column = next((c for c in (dimension, *_SAME_CUT.get(dimension, ())) if c in table.columns), None)
    if column is None:
        return None
    at = table.columns.index(column)
    by_value: dict[int | str, list[tuple[str | int, ...]]] = {}
    for row in table.rows:
        by_value.setdefault(row[at], []).append(row)
    groups = []
    for i, values in enumerate(cut_values(by_value, size)):
        rows = tuple(r for v in values for r in by_value[v])
        groups.append(Group(group_name(i + 1), query, rows))
    return GroupPlan(site, step, dimension, size, table.columns, tuple(groups))
