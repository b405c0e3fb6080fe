"""What to run: one pipeline step at one site, its collections and its data query.

Collections follow :mod:`multisite_nb.domain.naming` (the gather/redistribute code relies on it):
the step writes RUN ``P/S/T`` and prepends it to the site's CHAINED ``P/S``; it reads ``P/S``
(if it exists), the campaign's input collections and any extra collections the caller passes
(runs redistributed from the central site, or gathered at it), searched last.

A remote site's data query selects its own sky units; the central site's selects the union
of every remote site's units (a global step sees every site's data).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from multisite_nb.adapters.butler.queries import unit_data_ids, unit_records
from multisite_nb.adapters.butler.repo import collection_exists, open_site_butler
from multisite_nb.domain.config import Campaign, SkyUnit
from multisite_nb.domain.errors import ButlerError
from multisite_nb.domain.naming import reference_chain, reference_run, site_chain, step_run_collection
from multisite_nb.domain.queries import id_ranges, units_where
from multisite_nb.domain.steps import DataIdTable, StepRun, site_units, step_dimensions

__all__ = ["DataIdTable", "StepRun", "reference_step_run", "site_units", "step_run"]


def site_visits(campaign: Campaign, site: str, units: Sequence[SkyUnit] | None = None) -> list[int] | None:
    """The visits overlapping the site's sky units (or ``units``) in its own registry; `None`: unreadable here."""
    cfg = campaign.config
    try:
        with open_site_butler(campaign, site) as butler:
            units_ = [(u.tract, u.patch) for u in (site_units(campaign, site) if units is None else units)]
            ids = unit_data_ids(butler, units_, cfg.skymap, ["visit"], instrument=cfg.instrument)
            return sorted({int(d["visit"]) for d in ids})
    except ButlerError:
        return None


def site_patches(campaign: Campaign, site: str, units: Sequence[SkyUnit] | None = None) -> list[tuple[int, int]] | None:
    """(tract, patch) of each patch of the site's units (or ``units``) in its registry; `None`: unreadable here."""
    cfg = campaign.config
    try:
        with open_site_butler(campaign, site) as butler:
            units_ = [(u.tract, u.patch) for u in (site_units(campaign, site) if units is None else units)]
            records = unit_records(butler, units_, cfg.skymap, "patch")
            return sorted({(int(r.dataId["tract"]), int(r.id)) for r in records})
    except ButlerError:
        return None


def data_selection(
    campaign: Campaign,
    site: str,
    step: str,
    units: Sequence[SkyUnit] | None = None,
    *,
    visits: Sequence[int] | None = None,
) -> tuple[str, DataIdTable | None]:
    """The Butler expression selecting what ``step`` works on at ``site``, from the step's quantum dimensions.

    * a step with patch-level quanta works on the site's sky units (tracts and patches);
    * one whose quanta are whole tracts works on the site's tracts (every visit of them it holds);
    * anything else (per exposure, visit, detector, or global) on the site's visits — every
      detector of each, so that a visit's products are whole wherever they are made.

    The patches and the visits travel as data ID tables (see :class:`DataIdTable`), the tracts as
    an ``IN`` list of ranges: no expression grows with the number of tracts or visits (daf_butler
    makes each literal of an ``IN`` list an equality, OR-ed; SQLite refuses 1,000 of them). Where
    the site's registry cannot be read from here (a remote facility), they come from the central
    registry (the same sky map; the visits overlapping the units at visit level, which may be a
    few more than placement gave the site: those find no raws there). Where neither can be read,
    patch-level units are their own patch table, and otherwise the sky units are spelled as an
    expression (whole tracts are one ``IN`` list of ranges; the patch-level terms of a mixed set,
    or of a visit-level step, grow with the tracts cut by a sky boundary: daf_butler's rewriting of
    ``OR``-ed tract-and-patch terms fails from about ten).

    ``visits`` gives the visits instead (a flowing campaign's plan, before they reach the site).

    Returns
    -------
    tuple
        The data query, and the data ID table or None.
    """
    cfg = campaign.config
    units = site_units(campaign, site) if units is None else list(units)
    by_units = f"instrument = '{cfg.instrument}' AND {units_where(units, cfg.skymap)}"
    dims = step_dimensions(str(campaign.pipeline_path), step)
    if "patch" in dims:
        patches = site_patches(campaign, site, units)
        if patches is None and site != campaign.central:
            patches = site_patches(campaign, campaign.central, units)
        if patches is None and units and all(u.patch is not None for u in units):
            patches = sorted({(u.tract, u.patch) for u in units if u.patch is not None})  # they name themselves
        if not patches:
            return by_units, None
        by_patch = DataIdTable(("skymap", "tract", "patch"), tuple((cfg.skymap, t, p) for t, p in patches))
        return f"instrument = '{cfg.instrument}' AND skymap = '{cfg.skymap}'", by_patch
    parts = [f"instrument = '{cfg.instrument}'"]
    if "tract" in dims:
        parts.append(f"skymap = '{cfg.skymap}' AND tract IN ({id_ranges(u.tract for u in units)})")
    table: DataIdTable | None = None
    if "tract" not in dims or dims & {"visit", "exposure", "detector"}:
        if visits is None:
            visits = site_visits(campaign, site, units)
        if not visits and site != campaign.central:  # unreadable here, or nothing there yet
            visits = site_visits(campaign, campaign.central, units)
        if not visits:
            return by_units, None
        table = DataIdTable(("instrument", "visit"), tuple((cfg.instrument, v) for v in visits))
    return " AND ".join(parts), table


def _planned_before(campaign: Campaign, site: str, step: str) -> bool:
    """Whether the stage plan runs an earlier step at this site (so ``P/S`` should exist)."""
    role = "central" if site == campaign.central else "sites"
    for stage in campaign.config.stages:
        for st in stage.steps:
            if st == step:
                return False
            if stage.where == role:
                return True
    return False


def _dedupe(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def step_run(
    campaign: Campaign,
    site: str,
    step: str,
    extra_inputs: Sequence[str] = (),
    *,
    chain_exists: bool | None = None,
    visits: Sequence[int] | None = None,
) -> StepRun:
    """Describe ``step`` at ``site`` following the campaign's collection convention.

    Parameters
    ----------
    campaign
        The loaded campaign (its manifest gives the repo).
    site
        A remote site or the central site.
    step
        Pipeline subset label.
    extra_inputs
        More input collections (e.g. redistributed or gathered runs), searched last.
    chain_exists
        Whether ``P/S`` exists; `None` = look in the site's repo, or, when the repo cannot
        be opened from here (a remote facility), predict it from the stage plan.
    visits
        The visits to select (default: looked up, see `data_selection`).

    Raises
    ------
    KeyError
        If ``site`` is not a site of the campaign.
    """
    if site not in campaign.all_sites:
        raise KeyError(f"site {site!r} is not in campaign {campaign.name} (sites: {', '.join(campaign.all_sites)})")
    chain, run = site_chain(campaign, site), step_run_collection(campaign, site, step)
    repo = campaign.butler_repo(site)
    if chain_exists is None:
        chain_exists = collection_exists(repo, chain, db_auth=campaign.db_auth)
        if chain_exists is None:
            chain_exists = _planned_before(campaign, site, step)
    inputs = _dedupe([*([chain] if chain_exists else []), *campaign.config.collections.inputs, *extra_inputs])
    # site, step, repo, inputs, output chain and run, data query, pipeline subset
    (query, table), pipeline = data_selection(campaign, site, step, visits=visits), f"{campaign.pipeline_path}#{step}"
    return StepRun(site, step, repo, inputs, chain, run, query, pipeline, table, campaign.db_auth)


def reference_step_run(
    campaign: Campaign, step: str, units: Sequence[SkyUnit] | None = None, campaign_runs: Sequence[str] = ()
) -> StepRun:
    """``step`` of QA's single-site reference: at the central site over all the campaign's data (or ``units``).

    It reads the campaign's inputs and nothing the sites made, except ``campaign_runs``
    (searched last: the campaign's own runs of steps a sample reference does not redo), and
    writes its own collections (``P/reference/T`` in ``P/reference``).
    """
    base = step_run(campaign, campaign.central, step, chain_exists=False)
    own = f"{campaign.output_prefix}/"  # nothing the campaign wrote
    query, table = (
        (base.data_query, base.data_id_table)
        if units is None
        else data_selection(campaign, campaign.central, step, units)
    )
    return StepRun(
        site=base.site,
        step=step,
        repo=base.repo,
        inputs=_dedupe([*(c for c in base.inputs if not c.startswith(own)), *campaign_runs]),
        output_chain=reference_chain(campaign),
        output_run=reference_run(campaign, step),
        data_query=query,
        pipeline=base.pipeline,
        data_id_table=table,
        db_auth=base.db_auth,
    )
