"""Pre-flight: what would make a step fail, found before anything is submitted."""

from __future__ import annotations

from collections.abc import Sequence

from lsst.daf.butler import Butler, CollectionType, MissingCollectionError
from lsst.pipe.base.pipeline_graph import PipelineGraph

from multisite_nb.adapters.butler.queries import has_data_ids
from multisite_nb.adapters.butler.repo import count_datasets, open_butler
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import ButlerError
from multisite_nb.domain.steps import StepRun, site_units
from multisite_nb.domain.wiring import load_pipeline_graph

__all__ = ["preflight"]


def preflight(campaign: Campaign, step_run: StepRun, *, restart: bool = False) -> list[str]:
    """Problems that would make the step fail, found before anything is submitted.

    Checks: the pipeline has the step's subset; the repo opens; the output run does not
    exist yet (unless ``restart``); every input collection exists (``P/S`` only if it is
    listed); the pipeline's dataset types agree with the repo's; the instrument, sky map and
    sky unit dimension records exist; and each of the step's tasks has at least one quantum
    data ID matching the data query (e.g. visits overlapping the site's sky units).

    Returns
    -------
    list of str
        One sentence per problem; empty if the step can be submitted.
    """
    where, repo = step_run.where, step_run.repo
    problems: list[str] = []
    labels: list[str] = []
    graph: PipelineGraph | None = None
    try:
        graph = load_pipeline_graph(step_run.pipeline_path, resolve=False)
    except Exception as exc:  # noqa: BLE001 - any reason the pipeline cannot load is a problem to report
        problems.append(f"{where}: the pipeline {step_run.pipeline_path} cannot be loaded: {exc}")
    if graph is not None:
        if step_run.subset not in graph.task_subsets:
            problems.append(
                f"{where}: the pipeline {step_run.pipeline_path} has no subset {step_run.subset!r} "
                f"(it has: {', '.join(sorted(graph.task_subsets))})"
            )
        else:
            labels = sorted(graph.task_subsets[step_run.subset])
    try:
        butler = open_butler(repo, db_auth=step_run.db_auth)
    except ButlerError as exc:
        problems.append(f"{where}: {exc}")
        return problems
    with butler:
        problems.extend(_collection_problems(step_run, butler, restart=restart))
        if graph is not None and labels:
            try:
                graph.resolve(registry=butler.registry)
            except Exception as exc:  # noqa: BLE001 - reported as a problem
                problems.append(f"{where}: the pipeline does not agree with the dataset types of {repo}: {exc}")
        problems.extend(_dimension_problems(campaign, step_run, butler, graph, labels))
    return problems


def _collection_problems(step_run: StepRun, butler: Butler, *, restart: bool) -> list[str]:
    where, repo = step_run.where, step_run.repo
    problems: list[str] = []
    try:
        info = butler.collections.get_info(step_run.output_run)
    except MissingCollectionError:
        info = None
    if info is not None:
        if info.type is not CollectionType.RUN:
            problems.append(
                f"{where}: the output run {step_run.output_run} exists in {repo} as a "
                f"{info.type.name} collection, not a RUN"
            )
        elif not restart:
            n = count_datasets(butler, step_run.output_run)
            held = f"holds {n} datasets" if n else "is empty"
            problems.append(
                f"{where}: the output run {step_run.output_run} already exists in {repo} and "
                f"{held}; restart the step to finish it, or use another output prefix"
            )
    try:
        chain = butler.collections.get_info(step_run.output_chain)
        if chain.type is not CollectionType.CHAINED:
            problems.append(
                f"{where}: {step_run.output_chain} exists in {repo} as a {chain.type.name} "
                "collection, not the site's CHAINED output collection"
            )
    except MissingCollectionError:
        pass
    for name in step_run.inputs:
        try:
            butler.collections.get_info(name)
        except MissingCollectionError:
            problems.append(f"{where}: the input collection {name} does not exist in {repo}")
    return problems


def _dimension_problems(
    campaign: Campaign, step_run: StepRun, butler: Butler, graph: PipelineGraph | None, labels: Sequence[str]
) -> list[str]:
    where, repo = step_run.where, step_run.repo
    cfg = campaign.config
    problems: list[str] = []
    if cfg.instrument not in {r.name for r in butler.query_dimension_records("instrument", explain=False)}:
        problems.append(f"{where}: {repo} has no dimension record for instrument {cfg.instrument}")
    if cfg.skymap not in {r.name for r in butler.query_dimension_records("skymap", explain=False)}:
        problems.append(f"{where}: {repo} has no dimension record for sky map {cfg.skymap}")
    if problems:
        return problems
    units = site_units(campaign, step_run.site)
    tracts = {
        r.id
        for r in butler.query_dimension_records("tract", where=f"skymap = '{cfg.skymap}'", explain=False, limit=None)
    }
    patches = {
        (r.tract, r.id)
        for r in butler.query_dimension_records("patch", where=f"skymap = '{cfg.skymap}'", explain=False, limit=None)
    }
    missing = [
        str(u)
        for u in units
        if (u.patch is None and u.tract not in tracts) or (u.patch is not None and u.key not in patches)
    ]
    if missing:
        problems.append(f"{where}: {repo} has no dimension records for {', '.join(missing)} of sky map {cfg.skymap}")
        return problems
    if graph is None:
        return problems
    seen: set[frozenset[str]] = set()
    rows = step_run.data_id_table.as_dicts() if step_run.data_id_table else []
    for label in labels:
        node = graph.tasks[label]
        dims = frozenset(node.dimensions.required if node.has_resolved_dimensions else node.raw_dimensions)
        if not dims or dims in seen:
            continue
        seen.add(dims)
        try:
            n = int(has_data_ids(butler, sorted(dims), step_run.data_query, rows))
        except Exception as exc:  # noqa: BLE001 - reported as a problem
            problems.append(f"{where}: the data query cannot be evaluated for {sorted(dims)} in {repo}: {exc}")
            continue
        if n == 0:
            kinds = ", ".join(sorted(dims - {"instrument", "skymap"})) or "data"
            problems.append(
                f"{where}: no quantum data ID of task {label} ({', '.join(sorted(dims))}) in {repo} matches "
                f"the data query: dimension records are missing (no {kinds} records overlapping the site's "
                "sky units)"
            )
    return problems
