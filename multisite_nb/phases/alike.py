"""The reading half of the check that a stage's sites are alike (a phase helper, not a phase).

:func:`site_fingerprint` reads what one site will run a stage with, through the adapters only: the
task configs of the stage's tasks as the pipeline graph gives them for the site, the software its
step environment reports, its input collections and the content of the stage's calibration and
reference inputs in them, and the definitions of the stage's dataset types in its repository.
:func:`check_alike` compares the stage's sites (:func:`multisite_nb.domain.alike.compare`).
:class:`AlikeGate` does it for a flowing stage, once every site's common inputs have arrived.

Which inputs are compared is read from the pipeline graph, never from names: the stage's overall
inputs (no task of the pipeline makes them) whose dimensions are not an observation's (no
temporal dimension: calibrations, reference shards, the sky map). The observations themselves
(raws) are each site's own and are checked by the verification. A dataset type the pipeline makes
and the site's repository does not hold yet counts as the pipeline defines it (``pipetask
--register-dataset-types`` registers that); an overall input it does not hold is missing there.

Reading is bounded at data-release size: each type's datasets are streamed from the registry and
folded into a digest (only the data IDs are kept, see :class:`~multisite_nb.domain.alike.ContentDigest`).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from lsst.daf.butler import Butler, CollectionType, DatasetRef, MissingCollectionError, MissingDatasetTypeError
from lsst.pipe.base.pipeline_graph import PipelineGraph

from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.adapters.workflow.probe import software_versions
from multisite_nb.domain.alike import (
    ContentDigest,
    ContentDigester,
    Difference,
    SiteFingerprint,
    compare,
    config_digest,
    dataset_type_text,
    refusal,
)
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import ButlerError
from multisite_nb.domain.wiring import load_pipeline_graph

__all__ = ["MIDDLEWARE", "AlikeGate", "check_alike", "fingerprints", "site_fingerprint", "stage_labels"]

#: The middleware whose versions every site reports (the task packages are added from the pipeline).
MIDDLEWARE = ("lsst-daf-butler", "lsst-pipe-base", "lsst-ctrl-mpexec", "lsst-ctrl-bps")


def stage_labels(graph: PipelineGraph, steps: Iterable[str]) -> list[str]:
    """The task labels of a stage's steps (pipeline subsets), sorted."""
    subsets = graph.task_subsets
    return sorted({label for step in steps for label in subsets[step]})


def _stage_types(graph: PipelineGraph, labels: Sequence[str]) -> tuple[list[str], list[str]]:
    """(every dataset type the tasks read or write, except observations; their reference inputs).

    The reference inputs: overall inputs (made by no task) that are not observations (no temporal
    dimension): calibrations, reference shards, the sky map.
    """
    names: set[str] = set()
    for label in labels:
        for init in (False, True):
            names.update(graph.inputs_of(label, init=init))
            names.update(graph.outputs_of(label, init=init))
    kept, reference = [], []
    for name in sorted(names):
        node = graph.dataset_types[name]
        made = graph.producer_of(name) is not None
        if not made and node.dimensions.temporal:
            continue  # observations: each site's own
        kept.append(name)
        if not made:
            reference.append(name)
    return kept, reference


def _data_id_text(ref: DatasetRef) -> str:
    return ", ".join(f"{k}={v}" for k, v in ref.dataId.required.items())


def _collections(butler: Butler, inputs: Sequence[str]) -> tuple[dict[str, str], list[tuple[str, CollectionType]]]:
    """Each input collection's definition (chains followed) and the leaves, in search order."""
    defs: dict[str, str] = {}
    leaves: list[tuple[str, CollectionType]] = []
    todo = list(inputs)
    while todo:
        name = todo.pop(0)
        if name in defs:
            continue
        try:
            info = butler.collections.get_info(name)
        except MissingCollectionError:
            continue  # missing here: compare() names it against the sites that have it
        if info.type is CollectionType.CHAINED:
            defs[name] = f"CHAINED: {', '.join(info.children)}"
            todo[:0] = list(info.children)
        else:
            defs[name] = info.type.name
            leaves.append((name, info.type))
    return defs, leaves


def _content(butler: Butler, dataset_type: str, collection: str, kind: CollectionType) -> ContentDigest | None:
    """One type's datasets in one collection, streamed into a digest; None: none there."""
    digester = ContentDigester(dataset_type)
    try:
        if kind is CollectionType.CALIBRATION:
            for assoc in butler.registry.queryDatasetAssociations(
                dataset_type,
                collections=[collection],
                collectionTypes={CollectionType.CALIBRATION},
                flattenChains=False,
            ):
                validity = str(assoc.timespan) if assoc.timespan is not None else ""
                digester.add(_data_id_text(assoc.ref), str(assoc.ref.id), validity)
        else:
            with butler.query() as query:
                for ref in query.datasets(dataset_type, collections=[collection], find_first=False):
                    digester.add(_data_id_text(ref), str(ref.id))
    except (MissingDatasetTypeError, MissingCollectionError):
        return None
    return digester.result() if digester.count else None


def site_fingerprint(
    campaign: Campaign,
    site: str,
    stage: str,
    *,
    graph: PipelineGraph | None = None,
    folder: str | os.PathLike[str] | None = None,
    software: dict[str, str] | None = None,
) -> SiteFingerprint:
    """What ``site`` will run ``stage`` with, read from its repository and its step environment.

    Parameters
    ----------
    campaign, site, stage
        Which site and stage of which campaign.
    graph
        The site's pipeline graph, resolved (default: the campaign's pipeline, loaded here).
    folder
        Where the software probe's log goes (default: a temporary folder).
    software
        Package -> version, if already known (default: asked of the site's step environment).

    Raises
    ------
    ButlerError
        If the site's repository cannot be opened from here.
    WorkflowError
        If the step environment did not answer.
    """
    graph = graph if graph is not None else load_pipeline_graph(campaign.pipeline_path)
    labels = stage_labels(graph, campaign.stage(stage).steps)
    configs = {
        label: config_digest(
            graph.tasks[label].task_class_name, graph.tasks[label].config.saveToString(skipImports=True)
        )
        for label in labels
    }
    names, reference = _stage_types(graph, labels)
    with open_site_butler(campaign, site) as butler:
        registered = {dt.name: dt for dt in butler.registry.queryDatasetTypes()}
        types: dict[str, str] = {}
        for name in names:
            if name in registered:
                dt = registered[name]
                types[name] = dataset_type_text(
                    dt.dimensions.required, dt.storageClass_name, calibration=dt.isCalibration()
                )
            elif graph.producer_of(name) is not None:  # pipetask registers the pipeline's definition
                node = graph.dataset_types[name]
                types[name] = dataset_type_text(
                    node.dimensions.required, node.storage_class_name, calibration=node.is_calibration
                )
        defs, leaves = _collections(butler, campaign.config.collections.inputs)
        contents: dict[str, dict[str, ContentDigest]] = {}
        for collection, kind in leaves:
            for name in reference:
                if name not in registered:
                    continue
                if kind is CollectionType.CALIBRATION and not registered[name].isCalibration():
                    continue
                found = _content(butler, name, collection, kind)
                if found is not None:
                    contents.setdefault(collection, {})[name] = found
    if software is None:
        modules = sorted({graph.tasks[label].task_class_name.rpartition(".")[0] for label in labels})
        where = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="msnb-alike-"))
        software = software_versions(campaign, site, MIDDLEWARE, where / site, modules=modules)
    return SiteFingerprint(
        site=site,
        stage=stage,
        task_configs=configs,
        software=software,
        collections=defs,
        contents=contents,
        dataset_types=types,
    )


def fingerprints(
    campaign: Campaign, stage: str, sites: Sequence[str], *, folder: str | os.PathLike[str] | None = None
) -> tuple[list[SiteFingerprint], list[str]]:
    """The fingerprints of ``sites`` (read side by side), and the sites whose repository cannot be read here.

    A site unreadable from here (a facility's repository) is left out: its step's pre-flight says so.
    """
    graph = load_pipeline_graph(campaign.pipeline_path)
    where = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="msnb-alike-"))

    def one(site: str) -> SiteFingerprint | None:
        try:
            return site_fingerprint(campaign, site, stage, graph=graph, folder=where)
        except ButlerError:
            return None

    with ThreadPoolExecutor(max_workers=max(1, len(sites)), thread_name_prefix="alike") as pool:
        found = list(pool.map(one, sites))
    return [f for f in found if f is not None], [s for s, f in zip(sites, found, strict=True) if f is None]


def check_alike(
    campaign: Campaign,
    stage: str,
    sites: Sequence[str],
    *,
    folder: str | os.PathLike[str] | None = None,
    reference: str | None = None,
) -> list[Difference]:
    """Where the sites of ``stage`` differ in what they will run it with (empty: alike).

    Parameters
    ----------
    campaign, stage, sites
        The stage and the sites it is about to run at.
    folder
        Where the software probes' logs go (default: a temporary folder).
    reference
        A site whose values stand (default: what most sites have; see
        :func:`~multisite_nb.domain.alike.compare`).
    """
    if len(sites) < 2:
        return []
    found, _ = fingerprints(campaign, stage, sites, folder=folder)
    return compare(found, reference=reference if any(f.site == reference for f in found) else None)


class AlikeGate:
    """A flowing stage's sites checked alike once each has its common inputs (calibrations, shards).

    In a flowing stage a site's inputs arrive while it runs, so the check waits for them: each site
    calls :meth:`ready` once its common shipment is verified, before any of its groups is released,
    and the last to arrive compares them all; a site that cannot get there calls :meth:`leave` (it is
    compared with nobody). With ``wait=False`` (fewer sites run at once than there are), a site is
    compared on arrival with those already there, the first to arrive standing.

    Parameters
    ----------
    campaign, stage, sites
        The stage and its sites.
    folder
        Where the software probes' logs go.
    wait
        Wait for every site (they must all run at the same time).
    """

    def __init__(
        self,
        campaign: Campaign,
        stage: str,
        sites: Sequence[str],
        folder: str | os.PathLike[str],
        *,
        wait: bool = True,
    ):
        self.campaign, self.stage, self.sites, self.folder, self.wait = campaign, stage, list(sites), folder, wait
        self._cond = threading.Condition()
        self._ready: list[str] = []
        self._gone: set[str] = set()
        self._result: dict[str, list[str]] | None = None
        self._seen: list[SiteFingerprint] = []
        self.differences: list[Difference] = []

    def leave(self, site: str) -> None:
        """``site`` will not come (its common inputs failed, or its flow ended); idempotent."""
        with self._cond:
            if site not in self._ready:
                self._gone.add(site)
            self._cond.notify_all()

    def ready(self, site: str, stop: threading.Event | None = None) -> list[str]:
        """``site`` has its common inputs: the problems that hold its groups back (empty: alike)."""
        if not self.wait:
            return self._arrive(site)
        with self._cond:
            self._ready.append(site)
            self._cond.notify_all()
            while self._result is None:
                if stop is not None and stop.is_set():
                    return ["the flow was stopped before the sites were compared"]
                if set(self._ready) | self._gone >= set(self.sites) and self._ready[-1] == site:
                    break  # the last to arrive compares
                self._cond.wait(timeout=1.0)
            if self._result is not None:
                return self._result.get(site, [])
        result = self._judge([s for s in self.sites if s in self._ready])
        with self._cond:
            self._result = result
            self._cond.notify_all()
        return result.get(site, [])

    def _judge(self, sites: list[str]) -> dict[str, list[str]]:
        try:
            self.differences = check_alike(self.campaign, self.stage, sites, folder=self.folder)
        except Exception as exc:  # noqa: BLE001 - a stage whose sites cannot be compared does not start
            why = f"the sites of stage {self.stage!r} could not be compared: {type(exc).__name__}: {exc}"
            return {s: [why[:500]] for s in sites}
        if not self.differences:
            return {}
        why = refusal(self.stage, self.differences, shown=1)[:500]
        return {s: [why] for s in sites}

    def _arrive(self, site: str) -> list[str]:
        try:
            mine, _ = fingerprints(self.campaign, self.stage, [site], folder=self.folder)
        except Exception as exc:  # noqa: BLE001 - as in _judge
            return [f"{site}: could not be compared with the other sites: {type(exc).__name__}: {exc}"[:500]]
        with self._cond:
            seen = list(self._seen)
            self._seen += mine
        if not seen or not mine:
            return []
        diffs = [d for d in compare([*seen, *mine], reference=seen[0].site) if d.site == site]
        self.differences += diffs
        return [refusal(self.stage, diffs, shown=1)[:500]] if diffs else []
