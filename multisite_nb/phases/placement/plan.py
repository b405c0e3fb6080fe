"""Phase 1: what each site needs, found by spatial query of the central registry.

For every remote site the planner finds the visits and detectors whose regions overlap
the site's sky units (a spatial join in the Butler registry), the raws of those
exposures, and every other overall input of the site stages (calibrations, reference
catalog shards, the sky map) restricted to the data IDs the site will touch.  Which
dataset types to place comes from the pipeline graph (``wiring``), not from a list.

Raws or visits needed by more than one site are *boundary* data: they are placed at every
site that needs them, and the plan says what that costs.
"""

from __future__ import annotations

import itertools
import shutil
import weakref
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lsst.daf.butler import Butler

from multisite_nb.adapters.butler.datastore import ref_pages
from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.adapters.tables import FileTableWriter
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import PlanError
from multisite_nb.domain.ownership import visit_owners
from multisite_nb.domain.plan import Certification, PlacementPlan
from multisite_nb.domain.wiring import Wiring, derive_wiring, load_pipeline_graph
from multisite_nb.phases.placement.footprints import check_sky_units, footprints
from multisite_nb.phases.placement.pages import plan_page
from multisite_nb.phases.placement.shards import run_shards, shards_for
from multisite_nb.phases.placement.workers import Workers, default_workers

__all__ = ["plan_placement"]


def _isot(bound: object) -> str | None:
    """A validity range's bound as ISOT text (an astropy time), None when it is open."""
    isot = getattr(bound, "isot", None)
    return str(isot) if isot is not None else None


def _chains(butler: Butler, names: Iterable[str]) -> dict[str, list[str]]:
    from lsst.daf.butler import CollectionType

    out: dict[str, list[str]] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        info = butler.collections.get_info(name)
        if info.type == CollectionType.CHAINED and name not in out:
            out[name] = list(info.children)
            todo.extend(info.children)
    return out


def plan_placement(
    campaign: Campaign,
    butler: Butler | None = None,
    wiring: Wiring | None = None,
    *,
    folder: Path | None = None,
    workers: int | None = None,
) -> PlacementPlan:
    """Plan phase 1 from the central registry, streaming the files into per-site tables.

    Parameters
    ----------
    campaign
        The campaign (sites, sky units, pipeline, stage plan).
    butler
        The central repository (opened read-only from the manifest if not given).
    wiring
        The derived wiring (derived from the pipeline if not given).
    folder
        Where the file tables are written, in a partial folder until :meth:`PlacementPlan.save` puts
        them beside the plan record (default: a temporary folder, removed with the plan object).
    workers
        Worker processes (default: the CPUs this process may use, at most 4). From
        ``PARALLEL_MIN_UNITS`` sky units they find the footprints' spatial part, and an
        observation type (raws) of at least ``SHARD_MIN_FILES`` visit-detector pairs is read by
        them, an exposure range each. They open the campaign's central repository themselves
        (spawned: a script calling this needs the ``if __name__ == "__main__":`` guard).
    """
    import os
    import tempfile

    from lsst.daf.butler import CollectionType

    if workers is None:
        workers = default_workers()
    scratch = folder is None
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="msnb-plan-"))
    own = butler is None
    if butler is None:
        butler = open_site_butler(campaign, campaign.central)
    pool = Workers(workers)
    try:
        check_sky_units(campaign, butler)
        if wiring is None:
            graph = load_pipeline_graph(campaign.pipeline_path, registry=butler.registry)
            wiring = derive_wiring(graph, campaign.config.stages)
        inputs = list(campaign.config.collections.inputs)
        roots = {name: Path(r.ospath) for name, r in butler.get_datastore_roots().items() if r is not None}
        fps = footprints(butler, campaign, pool)
        placed_types: list[str] = []
        calibs: dict[str, tuple[str, list[str]]] = {}  # planned calibration id -> (type, sites)
        writer = FileTableWriter(folder, campaign.remote_sites)
        shard_dir = folder / f".shards.{os.getpid()}"
        try:
            for dt in wiring.placed:
                try:
                    dstype = butler.get_dataset_type(dt)
                except Exception as exc:  # a placed type missing at the central site is a planning error
                    raise PlanError(f"placement: cannot find {dt!r} in {inputs}: {exc}") from exc
                dims = set(dstype.dimensions.names)
                observation = "exposure" in dims or "visit" in dims
                shards = (
                    shards_for(
                        fps, dims, workers, str(campaign.butler_repo(campaign.central)), dt,
                        inputs=inputs, instrument=campaign.config.instrument, roots=roots, db_auth=campaign.db_auth,
                        calibration=dstype.isCalibration(),
                    )
                    if observation
                    else []
                )  # fmt: skip
                if shards:
                    placed_types.append(dt)
                    run_shards(shards, writer, calibs, shard_dir, pool)
                    continue
                try:  # another instrument's datasets are not even read
                    per_instrument = "instrument" in dims
                    bind = {"inst": campaign.config.instrument} if per_instrument else None
                    pages = ref_pages(butler, dt, inputs, "instrument = inst" if per_instrument else "", bind)
                    first = next(pages, None)
                except Exception as exc:
                    raise PlanError(f"placement: cannot find {dt!r} in {inputs}: {exc}") from exc
                placed_types.append(dt)
                for refs in itertools.chain([first] if first else [], pages):
                    plan_page(butler, refs, fps, roots, writer, observation, calibs, dstype.isCalibration())
            summary = writer.close()
        except BaseException:
            pool.close(stop=True)  # before the shards' folders go: no worker writes there afterwards
            writer.abort()
            raise
        finally:
            shutil.rmtree(shard_dir, ignore_errors=True)
        # calibration collections among the inputs, and validity ranges of the planned calibs
        chains = _chains(butler, inputs)
        calib_colls = [
            i.name
            for i in butler.collections.query_info(inputs, flatten_chains=True)
            if i.type == CollectionType.CALIBRATION
        ]
        certs: list[Certification] = []
        if calib_colls:
            for dt in placed_types:
                if not butler.get_dataset_type(dt).isCalibration():
                    continue
                for assoc in butler.registry.queryDatasetAssociations(
                    dt, collections=calib_colls, collectionTypes={CollectionType.CALIBRATION}
                ):
                    placed = calibs.get(str(assoc.ref.id))
                    if placed is not None and assoc.timespan is not None:
                        ts = assoc.timespan
                        certs.append(
                            Certification(
                                id=str(assoc.ref.id),
                                collection=assoc.collection,
                                begin=_isot(ts.begin),
                                end=_isot(ts.end),
                                dataset_type=placed[0],
                                sites=placed[1],
                            )
                        )
        visit_sites: dict[int, list[str]] = defaultdict(list)
        for s, fp in fps.items():
            for v in fp.values["visit"]:
                visit_sites[v].append(s)
        owners = visit_owners({s: fp.visit_weight for s, fp in fps.items()}, campaign.remote_sites)
        exposure_visit = {e: v for fp in fps.values() for e, v in fp.exposure_visit.items()}
        per_site: dict[str, Any] = {
            "visits": {s: sorted(fp.values["visit"]) for s, fp in fps.items()},
            "detectors": {s: sorted(fp.values["detector"]) for s, fp in fps.items()},
        }
        boundary = {v: ss for v, ss in sorted(visit_sites.items()) if len(ss) > 1}
        collections: dict[str, Any] = {
            "certifications": certs,
            "chains": chains,
            "calibration_collections": calib_colls,
        }
        plan = PlacementPlan(
            campaign=campaign.name,
            central=campaign.central,
            sites=list(campaign.remote_sites),
            summary=summary,
            boundary_visits=boundary,
            visit_owner=owners,
            exposure_visit=exposure_visit,
            dataset_types=placed_types,
            **per_site,
            **collections,
        )
        plan.attach_tables(writer.tables)
        # a plan never saved leaves nothing behind: its partial tables (and scratch folder) go with it
        weakref.finalize(plan, shutil.rmtree, folder if scratch else writer.tables, True)
        return plan
    except BaseException:
        pool.close(stop=True)
        if scratch:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        pool.close()
        if own:
            butler.close()


# -- optional: suggest an assignment of sky units to sites -------------------------------
