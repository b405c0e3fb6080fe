"""Submission: one pipeline step at one site, as a BPS submit file or a ``pipetask run``.

Collections (the gather/redistribute code relies on this convention): for the campaign's
output prefix ``P``, site ``S`` and step ``T``

* the output RUN is ``P/S/T`` (deterministic, no timestamp; re-running a step extends it);
* the output CHAINED collection is ``P/S``; each step's run is prepended to it, so ``P/S``
  searches the site's newest outputs first, then its inputs;
* the inputs of a step are ``P/S`` (if it exists), the campaign's input collections
  (``collections.inputs``, e.g. ``HSC/defaults``) and any extra collections the caller passes
  (runs redistributed from the central site, or runs gathered at the central site).  Extra
  inputs are appended to the end of ``P/S`` before the step runs, so later steps see them
  too and the middleware's own input/output consistency check holds.

A remote site's data query selects its own sky units; the central site's selects the union
of every remote site's units (a global step sees every site's data).

Execution goes through the real middleware: ``pipetask run`` (mode ``pipetask``) or
``bps submit`` with the manifest's BPS site config (mode ``bps``; the parsl plugin on this
machine, PanDA at the facilities).  The step's status is computed by the middleware's own
`~lsst.pipe.base.quantum_provenance_graph.QuantumProvenanceGraph` from the step's quantum
graph and the datasets present in the output run; the cause of each failed quantum is the
exception line of that quantum's log dataset.  Logs, graphs and summaries go to files under
``<log_dir>/<site>/<step>/attempt-NN/``; nothing large is returned.

No step or dataset type name is written here: steps are pipeline subsets named by the
caller, and the log / metadata / config dataset types come from the pipeline graph.
"""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from .config import Campaign, SkyUnit, repo_root
from .placement import units_where

__all__ = [
    "PreflightError",
    "StepRun",
    "StepStatus",
    "preflight",
    "run_step",
    "step_run",
    "submit_file",
    "write_submit_file",
]

Wms = Literal["panda", "parsl"]
Mode = Literal["pipetask", "bps"]

_MAX_CAUSE = 500
_SECRET_NAME = re.compile(r"(?i)(pass|secret|token|credential|private|_key$|^key$)")


class PreflightError(RuntimeError):
    """A step was not started because preflight found problems (listed in ``problems``)."""

    def __init__(self, step_run: StepRun, problems: Sequence[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{step_run.site} {step_run.step}: not started, preflight found problems:\n{lines}")


# ------------------------------------------------------------------------------------------
# What to run
# ------------------------------------------------------------------------------------------
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
    """

    site: str
    step: str
    repo: str
    inputs: list[str]
    output_chain: str
    output_run: str
    data_query: str
    pipeline: str

    @property
    def pipeline_path(self) -> str:
        return self.pipeline.partition("#")[0]

    @property
    def subset(self) -> str:
        return self.pipeline.partition("#")[2]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able copy."""
        return dataclasses.asdict(self)


def _site_units(campaign: Campaign, site: str) -> list[SkyUnit]:
    """A remote site's units; for the central site, every remote site's units."""
    if site == campaign.central:
        return [u for s in campaign.remote_sites for u in campaign.sky_units(s)]
    return campaign.sky_units(site)


def _data_query(campaign: Campaign, site: str) -> str:
    units = _site_units(campaign, site)
    return f"instrument = '{campaign.config.instrument}' AND {units_where(units, campaign.config.skymap)}"


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
    out: list[str] = []
    for n in names:
        if n not in out:
            out.append(n)
    return out


def step_run(
    campaign: Campaign,
    site: str,
    step: str,
    extra_inputs: Sequence[str] = (),
    *,
    chain_exists: bool | None = None,
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

    Raises
    ------
    KeyError
        If ``site`` is not a site of the campaign.
    """
    if site not in campaign.all_sites:
        raise KeyError(f"site {site!r} is not in campaign {campaign.name} (sites: {', '.join(campaign.all_sites)})")
    prefix = campaign.output_prefix
    chain, run = f"{prefix}/{site}", f"{prefix}/{site}/{step}"
    repo = campaign.butler_repo(site)
    if chain_exists is None:
        chain_exists = _collection_exists(repo, chain)
        if chain_exists is None:
            chain_exists = _planned_before(campaign, site, step)
    inputs = _dedupe([*([chain] if chain_exists else []), *campaign.config.collections.inputs, *extra_inputs])
    return StepRun(
        site=site, step=step, repo=repo, inputs=inputs, output_chain=chain, output_run=run,
        data_query=_data_query(campaign, site), pipeline=f"{campaign.pipeline_path}#{step}",
    )


def _collection_exists(repo: str, name: str) -> bool | None:
    """True/False, or `None` if the repo cannot be opened from here."""
    try:
        from lsst.daf.butler import Butler
        from lsst.daf.butler.registry import MissingCollectionError

        butler = Butler.from_config(repo)
    except Exception:
        return None
    try:
        butler.collections.get_info(name)
        return True
    except MissingCollectionError:
        return False
    finally:
        butler.close()


# ------------------------------------------------------------------------------------------
# BPS submit files
# ------------------------------------------------------------------------------------------
def _site_config_path(campaign: Campaign) -> Path:
    name = campaign.manifest.workflow.bps_site_config
    if not name:
        raise ValueError(f"{campaign.manifest_path}: key 'workflow.bps_site_config' is not set")
    path = Path(name)
    return path if path.is_absolute() else (repo_root() / path).resolve()


def _wms_of(site_config: Path) -> Wms:
    with site_config.open() as fh:
        data = yaml.safe_load(fh) or {}
    cls = str(data.get("wmsServiceClass", "")).lower()
    if "panda" in cls:
        return "panda"
    if "parsl" in cls:
        return "parsl"
    raise ValueError(f"{site_config}: wmsServiceClass {cls!r} is neither the PanDA nor the parsl plugin")


def _toolkit_env() -> dict[str, str]:
    """Environment a job on this machine needs: the toolkit venv and the checkout."""
    venv = Path(sys.executable).parent.parent
    return {
        "PATH": f"{venv / 'bin'}:${{PATH}}",
        "CTRL_MPEXEC_DIR": str(venv),
        "DAF_BUTLER_DIR": str(venv),
        "PYTHONPATH": f"{repo_root()}:${{PYTHONPATH}}",
    }


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def submit_file(
    campaign: Campaign,
    step_run: StepRun,
    wms: Wms | None = None,
    *,
    submit_path: str | os.PathLike[str] | None = None,
    operator: str | None = None,
    project: str = "multisite_nb",
    request_memory: int = 2048,
    retries: int | None = None,
    config_overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """A BPS submit file for ``step_run`` (as a dict, ready to dump as YAML).

    Parameters
    ----------
    campaign, step_run
        What to submit.
    wms
        ``"panda"`` or ``"parsl"``; default: from the manifest's BPS site config.
    submit_path
        BPS ``submitPath`` (default: BPS's own, ``${PWD}/submit/{outputRun}``).
    operator, project
        BPS bookkeeping (operator defaults to the login name).
    request_memory
        ``requestMemory`` of each quantum job (MB).
    retries
        ``numberOfRetries`` (default: 3 for PanDA, 1 for parsl).
    config_overrides
        Task config overrides ``label:name=value`` (as ``pipetask -c``), given to the
        quantum-graph builder.

    Returns
    -------
    dict
        ``includeConfigs`` (the manifest's site config), ``pipelineYaml``, ``payload``,
        ``computeSite``, ``computeCloud``, ``queue``, ``finalJob.queue`` (the merge queue),
        ``requestMemory``, ``numberOfRetries``, ``project``, ``campaign``, ``operator``; for
        parsl also a small final job and the ``environment`` the local jobs need.
    """
    site_config = _site_config_path(campaign)
    wms = wms or _wms_of(site_config)
    spec = campaign.site(step_run.site)
    final_job: dict[str, Any] = {"queue": spec.merge_queue or f"{spec.compute_site}_Rubin_Merge"}
    doc: dict[str, Any] = {
        "includeConfigs": [str(site_config)],
        "pipelineYaml": step_run.pipeline,
        "project": project,
        "campaign": campaign.name,
        "operator": operator or getpass.getuser(),
        "computeSite": spec.compute_site,
        "computeCloud": spec.compute_cloud,
        "requestMemory": int(request_memory),
        "numberOfRetries": int(retries if retries is not None else (3 if wms == "panda" else 1)),
        "payload": {
            "payloadName": _safe(f"{campaign.name}_{step_run.site}_{step_run.step}"),
            "butlerConfig": step_run.repo,
            "inCollection": ",".join(step_run.inputs),
            "dataQuery": step_run.data_query,
            "output": step_run.output_chain,
            "outputRun": step_run.output_run,
        },
    }
    if spec.queue:
        doc["queue"] = spec.queue
    if wms == "parsl":
        final_job.update({"requestCpus": 1, "requestMemory": 2048})
        doc["environment"] = _toolkit_env()
    doc["finalJob"] = final_job
    if config_overrides:
        doc["extraQgraphOptions"] = " ".join(f"-c {shlex.quote(c)}" for c in config_overrides)
    if submit_path is not None:
        doc["submitPath"] = str(submit_path)
    return doc


def write_submit_file(
    campaign: Campaign,
    step_run: StepRun,
    path: str | os.PathLike[str],
    wms: Wms | None = None,
    **kwargs: Any,
) -> Path:
    """Write `submit_file` as YAML to ``path`` (keyword arguments are passed on)."""
    doc = submit_file(campaign, step_run, wms, **kwargs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# BPS submit file: {step_run.step} at {step_run.site} "
        f"(campaign {campaign.name}), written by multisite_nb.submit\n"
    )
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False, width=120))
    return path


# ------------------------------------------------------------------------------------------
# Preflight
# ------------------------------------------------------------------------------------------
def _load_pipeline_graph(path: str) -> Any:
    from lsst.pipe.base import Pipeline

    return Pipeline.from_uri(path).to_graph()


def preflight(campaign: Campaign, step_run: StepRun, *, restart: bool = False) -> list[str]:
    """Problems that would make the step fail, found before anything is submitted.

    Checks: the pipeline has the step's subset; the repo opens; the output run does not
    exist yet (unless ``restart``); every input collection exists (``P/S`` only if it is
    listed); the instrument, sky map and sky unit dimension records exist; and each of the
    step's tasks has at least one quantum data ID matching the data query (e.g. visits
    overlapping the site's sky units).

    Returns
    -------
    list of str
        One sentence per problem; empty if the step can be submitted.
    """
    from lsst.daf.butler import Butler, CollectionType
    from lsst.daf.butler.registry import MissingCollectionError

    problems: list[str] = []
    where = f"{step_run.site} {step_run.step}"
    labels: list[str] = []
    graph = None
    try:
        graph = _load_pipeline_graph(step_run.pipeline_path)
    except Exception as exc:
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
        butler = Butler.from_config(step_run.repo)
    except Exception as exc:
        problems.append(f"{where}: the Butler repo {step_run.repo} cannot be opened: {exc}")
        return problems
    try:
        try:
            info = butler.collections.get_info(step_run.output_run)
        except MissingCollectionError:
            info = None
        if info is not None:
            if info.type is not CollectionType.RUN:
                problems.append(
                    f"{where}: the output run {step_run.output_run} exists in {step_run.repo} as a "
                    f"{info.type.name} collection, not a RUN"
                )
            elif not restart:
                n = _count_datasets(butler, step_run.output_run)
                held = f"holds {n} datasets" if n else "is empty"
                problems.append(
                    f"{where}: the output run {step_run.output_run} already exists in {step_run.repo} and "
                    f"{held}; restart the step to finish it, or use another output prefix"
                )
        try:
            chain = butler.collections.get_info(step_run.output_chain)
            if chain.type is not CollectionType.CHAINED:
                problems.append(
                    f"{where}: {step_run.output_chain} exists in {step_run.repo} as a {chain.type.name} "
                    "collection, not the site's CHAINED output collection"
                )
        except MissingCollectionError:
            pass
        for name in step_run.inputs:
            try:
                butler.collections.get_info(name)
            except MissingCollectionError:
                problems.append(f"{where}: the input collection {name} does not exist in {step_run.repo}")
        if graph is not None and labels:
            try:
                graph.resolve(registry=butler.registry)
            except Exception as exc:
                problems.append(f"{where}: the pipeline does not agree with the dataset types of {step_run.repo}: {exc}")
        problems.extend(_dimension_problems(campaign, step_run, butler, graph, labels))
    finally:
        butler.close()
    return problems


def _count_datasets(butler: Any, run: str) -> int:
    n = 0
    for dt in butler.registry.queryDatasetTypes(...):
        n += len(butler.query_datasets(dt, collections=run, find_first=False, explain=False, limit=None))
    return n


def _dimension_problems(campaign: Campaign, step_run: StepRun, butler: Any, graph: Any,
                        labels: Sequence[str]) -> list[str]:
    where = f"{step_run.site} {step_run.step}"
    repo = step_run.repo
    cfg = campaign.config
    problems: list[str] = []
    if cfg.instrument not in {r.name for r in butler.query_dimension_records("instrument", explain=False)}:
        problems.append(f"{where}: {repo} has no dimension record for instrument {cfg.instrument}")
    if cfg.skymap not in {r.name for r in butler.query_dimension_records("skymap", explain=False)}:
        problems.append(f"{where}: {repo} has no dimension record for sky map {cfg.skymap}")
    if problems:
        return problems
    units = _site_units(campaign, step_run.site)
    tracts = {r.id for r in butler.query_dimension_records(
        "tract", where=f"skymap = '{cfg.skymap}'", explain=False, limit=None)}
    patches = {(r.tract, r.id) for r in butler.query_dimension_records(
        "patch", where=f"skymap = '{cfg.skymap}'", explain=False, limit=None)}
    missing = [str(u) for u in units
               if (u.patch is None and u.tract not in tracts) or (u.patch is not None and u.key not in patches)]
    if missing:
        problems.append(f"{where}: {repo} has no dimension records for {', '.join(missing)} of sky map {cfg.skymap}")
        return problems
    seen: set[frozenset[str]] = set()
    for label in labels:
        node = graph.tasks[label]
        dims = frozenset(node.dimensions.required if node.has_resolved_dimensions else node.raw_dimensions)
        if not dims or dims in seen:
            continue
        seen.add(dims)
        try:
            n = len(butler.query_data_ids(sorted(dims), where=step_run.data_query, explain=False, limit=1))
        except Exception as exc:
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


# ------------------------------------------------------------------------------------------
# Status
# ------------------------------------------------------------------------------------------
@dataclass
class StepStatus:
    """Outcome of a step at a site (JSON-able with `as_dict`).

    ``total`` counts every quantum of the step; ``pending`` = blocked by a failure upstream
    or not run yet.  ``state`` is ``ok`` (every quantum succeeded), ``failed`` (a quantum
    failed, or nothing could run) or ``partial`` (no failure, but quanta still pending).
    """

    site: str
    step: str
    run: str
    chain: str
    mode: str
    state: Literal["ok", "failed", "partial"]
    total: int = 0
    succeeded: int = 0
    failed: int = 0
    pending: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    log: str = ""
    attempt: int = 1
    restart: bool = False
    returncode: int | None = None
    by_task: dict[str, dict[str, int]] = field(default_factory=dict)
    note: str = ""
    started: str = ""  # ISO UTC, when the attempt began
    finished: str = ""  # ISO UTC, when its status was known

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able copy."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        head = (f"{self.site} {self.step} [{self.state}] {self.succeeded}/{self.total} succeeded, "
                f"{self.failed} failed, {self.pending} pending ({self.seconds:.1f} s)")
        lines = [head] + [f"  {f['task']} {f['data_id']}: {f['cause']}" for f in self.failures[:5]]
        if len(self.failures) > 5:
            lines.append(f"  ... {len(self.failures) - 5} more")
        return "\n".join(lines)


def _exception_line(messages: Sequence[str]) -> str:
    """The exception line of a failed quantum's ERROR log messages."""
    for msg in messages:
        m = re.search(r"failed\. Exception (.+)", msg, re.S)
        if m:
            return m.group(1).strip().splitlines()[0][:_MAX_CAUSE]
    if messages:
        return " | ".join(m.strip().splitlines()[0] for m in messages[:3])[:_MAX_CAUSE]
    return ""


def _failure_cause(butler: Any, graph: Any, label: str, data_id: Mapping[str, Any], run: str) -> str:
    """First error lines of the quantum's log dataset, or ``""`` if it has none."""
    node = graph.tasks[label]
    if node.log_output is None:
        return ""
    try:
        ref = butler.find_dataset(node.log_output.dataset_type_name, dict(data_id), collections=run)
        if ref is None:
            return ""
        records = butler.get(ref)
    except Exception:
        return ""
    errors = [r.message for r in records if r.levelno >= 40]
    return _exception_line(errors)


def _summary_causes(summary: Path | None) -> dict[tuple[str, tuple], str]:
    """(task, data ID) -> 'Class: message' from a ``pipetask run --summary`` file."""
    out: dict[tuple[str, tuple], str] = {}
    if summary is None or not summary.is_file():
        return out
    try:
        report = json.loads(summary.read_text())
    except ValueError:
        return out
    for q in report.get("quantaReports", []):
        info = q.get("exceptionInfo")
        if q.get("status") == "failure" and info:
            key = (q.get("taskLabel"), tuple(sorted(q.get("dataId", {}).items())))
            out[key] = f"{info['className'].rsplit('.', 1)[-1]}: {info['message']}"[:_MAX_CAUSE]
    return out


def _status_from_graph(step_run: StepRun, qgraph: Path, *, summary: Path | None = None,
                       max_failures: int = 100) -> dict[str, Any]:
    """Counts and failures of a step from its quantum graph and the datasets in its run."""
    from lsst.daf.butler import Butler
    from lsst.pipe.base.quantum_provenance_graph import QuantumProvenanceGraph

    graph = _load_pipeline_graph(step_run.pipeline_path)
    causes = _summary_causes(summary)
    butler = Butler.from_config(step_run.repo)
    try:
        qpg = QuantumProvenanceGraph(butler, [str(qgraph)], read_caveats=None, use_qbb=False)
        report = qpg.to_summary(do_store_logs=False)
        counts = {"total": 0, "succeeded": 0, "failed": 0, "pending": 0}
        by_task: dict[str, dict[str, int]] = {}
        failures: list[dict[str, Any]] = []
        for label, ts in sorted(report.tasks.items()):
            row = {"total": ts.n_expected, "succeeded": ts.n_successful, "failed": ts.n_failed + ts.n_wonky,
                   "pending": ts.n_blocked + ts.n_unknown}
            by_task[label] = row
            for k in counts:
                counts[k] += row[k]
            for q in [*ts.failed_quanta, *ts.wonky_quanta]:
                if len(failures) >= max_failures:
                    break
                data_id = {k: q.data_id[k] for k in sorted(q.data_id)}
                cause = _failure_cause(butler, graph, label, data_id, step_run.output_run)
                cause = cause or causes.get((label, tuple(sorted(data_id.items()))), "")
                cause = cause or "; ".join(q.messages)[:_MAX_CAUSE] or "no error message recorded"
                failures.append({"task": label, "data_id": data_id, "cause": cause})
    finally:
        butler.close()
    return {**counts, "by_task": by_task, "failures": failures}


# ------------------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------------------
def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _attempt_dir(log_dir: Path, step_run: StepRun) -> tuple[int, Path]:
    base = Path(log_dir) / _safe(step_run.site) / _safe(step_run.step)
    base.mkdir(parents=True, exist_ok=True)
    numbers = [int(m.group(1)) for p in base.iterdir() if (m := re.fullmatch(r"attempt-(\d+)", p.name))]
    n = max(numbers, default=0) + 1
    path = base / f"attempt-{n:02d}"
    path.mkdir()
    return n, path


def _attempts(log_dir: Path, step_run: StepRun) -> list[dict[str, Any]]:
    """Recorded attempts of this step (oldest first) for the same output run."""
    base = Path(log_dir) / _safe(step_run.site) / _safe(step_run.step)
    out = []
    for p in sorted(base.glob("attempt-*/attempt.json")):
        try:
            rec = json.loads(p.read_text())
        except ValueError:
            continue
        if rec.get("run") == step_run.output_run and rec.get("repo") == step_run.repo:
            out.append(rec)
    return out


def _prepare_chain(step_run: StepRun) -> None:
    """Make ``P/S`` flat and append the step's inputs it lacks (so later steps see them).

    ``pipetask`` reads an existing output chain instead of ``-i`` and insists that the
    (flattened) inputs are a contiguous part of it; appending the missing inputs at the end
    keeps both true.
    """
    from lsst.daf.butler import Butler
    from lsst.daf.butler.registry import MissingCollectionError

    butler = Butler.from_config(step_run.repo, writeable=True)
    try:
        try:
            children = list(butler.collections.get_info(step_run.output_chain).children)
        except MissingCollectionError:
            return
        flat = list(butler.collections.query(step_run.output_chain, flatten_chains=True))
        others = [c for c in step_run.inputs if c != step_run.output_chain]
        wanted = list(butler.collections.query(others, flatten_chains=True)) if others else []
        new = flat + [c for c in wanted if c not in flat]
        if new != children:
            butler.collections.redefine_chain(step_run.output_chain, new)
    finally:
        butler.close()


def _has_init_outputs(step_run: StepRun) -> bool:
    """Whether the output run already holds the step's task configs (written once per run)."""
    from lsst.daf.butler import Butler

    graph = _load_pipeline_graph(step_run.pipeline_path)
    names = [graph.tasks[label].init.config_output.dataset_type_name
             for label in graph.task_subsets[step_run.subset]]
    butler = Butler.from_config(step_run.repo)
    try:
        for name in names:
            try:
                if butler.query_datasets(name, collections=step_run.output_run, explain=False, limit=1):
                    return True
            except Exception:  # dataset type or run not registered yet
                continue
        return False
    finally:
        butler.close()


def _run_exists(step_run: StepRun) -> bool:
    return bool(_collection_exists(step_run.repo, step_run.output_run))


def _child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    venv_bin = str(Path(sys.executable).parent)
    if venv_bin not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    for key, value in (extra or {}).items():
        env[key] = os.path.expandvars(value.replace("${" + key + "}", env.get(key, ""))).rstrip(":")
    return env


_RUNNING: set[subprocess.Popen[bytes]] = set()
_RUNNING_LOCK = threading.Lock()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a step's whole process group: SIGTERM, then SIGKILL after 30 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    except ProcessLookupError:  # already gone
        proc.wait()


def running_steps() -> int:
    """How many step processes (``pipetask`` / ``bps``) this process has running now."""
    with _RUNNING_LOCK:
        return sum(1 for p in _RUNNING if p.poll() is None)


def stop_running_steps() -> int:
    """Stop every step process this process started and is still waiting for.

    Used when the operator interrupts a phase (e.g. the kernel's stop button while the sites
    run side by side): the interrupted steps end as failed or partial, and a later run of
    the phase restarts them where they stopped. Returns how many were stopped.
    """
    with _RUNNING_LOCK:
        procs = [p for p in _RUNNING if p.poll() is None]
    for proc in procs:
        _stop(proc)
    return len(procs)


def _run_logged(cmd: Sequence[str], log: Path, *, env: Mapping[str, str], cwd: Path,
                timeout: float | None) -> tuple[int | None, bool]:
    """Run ``cmd`` with stdout+stderr appended to ``log``; kill its process group on timeout.

    The process runs in its own session, so an interrupt of the caller does not reach it:
    the caller's interrupt stops it here instead of leaving it orphaned.
    """
    with log.open("a") as fh:
        fh.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        fh.flush()
        proc = subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
                                start_new_session=True)
        with _RUNNING_LOCK:
            _RUNNING.add(proc)
        try:
            rc = proc.wait(timeout=timeout)
            if rc < 0:
                fh.write(f"\n[multisite_nb.submit] stopped by signal {-rc}\n")
            return rc, False
        except subprocess.TimeoutExpired:
            _stop(proc)
            fh.write(f"\n[multisite_nb.submit] killed after {timeout} s\n")
            return proc.returncode, True
        except BaseException:
            _stop(proc)
            fh.write("\n[multisite_nb.submit] stopped: the caller was interrupted\n")
            raise
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(proc)


def _pipetask_cmd(step_run: StepRun, attempt: Path, *, extend: bool, skip_init: bool,
                  jobs: int, config_overrides: Sequence[str]) -> tuple[list[str], Path, Path]:
    graph_file, summary = attempt / "quantum_graph.qg", attempt / "summary.json"
    cmd = [
        _bin("pipetask"), "--long-log", "run",
        "-b", step_run.repo,
        "-i", ",".join(step_run.inputs),
        "-o", step_run.output_chain,
        "--output-run", step_run.output_run,
        "-p", step_run.pipeline,
        "-d", step_run.data_query,
        "--register-dataset-types",
        "-j", str(jobs),
        "--save-qgraph", str(graph_file),
        "--summary", str(summary),
    ]
    for c in config_overrides:
        cmd += ["-c", c]
    if extend:
        cmd += ["--extend-run", "--skip-existing", "--clobber-outputs"]
        if skip_init:
            cmd.append("--skip-init-writes")
    return cmd, graph_file, summary


def run_step(
    campaign: Campaign,
    step_run: StepRun,
    mode: Mode | None = None,
    restart: bool = False,
    *,
    log_dir: str | os.PathLike[str],
    config_overrides: Sequence[str] = (),
    jobs: int | None = None,
    timeout: float | None = None,
    check: bool = True,
    max_failures: int = 100,
) -> StepStatus:
    """Run one step at one site through the real middleware and report what happened.

    Parameters
    ----------
    campaign, step_run
        What to run (see `step_run`).
    mode
        ``"pipetask"`` (``pipetask run`` here) or ``"bps"`` (``bps submit`` with the
        manifest's BPS site config, waiting for the workflow to end); default: the manifest's
        ``workflow.mode``.
    restart
        Finish an earlier attempt of the same run: pipetask mode re-runs only the quanta
        without outputs (``--extend-run --skip-existing --clobber-outputs``, and
        ``--skip-init-writes`` once the run holds its configs); bps mode runs
        ``bps restart`` on the last BPS attempt's submit directory.  Without an existing run
        it is an ordinary first attempt.
    log_dir
        Logs, quantum graphs, summaries and ``status.json`` go to
        ``<log_dir>/<site>/<step>/attempt-NN/``.
    config_overrides
        Task config overrides ``label:name=value`` (``pipetask -c``), e.g. to inject a failure.
    jobs
        ``pipetask -j`` (default: the manifest's ``workflow.jobs``).
    timeout
        Seconds before the command's process group is killed (state ``partial``).
    check
        Run `preflight` first and raise `PreflightError` if it finds problems.
    max_failures
        How many failed quanta to describe in ``failures``.

    Returns
    -------
    StepStatus
        Also written to ``status.json`` beside the log.
    """
    mode = mode or campaign.manifest.workflow.mode
    if mode not in ("pipetask", "bps"):
        raise ValueError(f"mode must be 'pipetask' or 'bps', not {mode!r}")
    extend = bool(restart) and _run_exists(step_run)
    if check:
        problems = preflight(campaign, step_run, restart=extend)
        if problems:
            raise PreflightError(step_run, problems)
    number, attempt = _attempt_dir(Path(log_dir), step_run)
    previous = _attempts(Path(log_dir), step_run)
    record: dict[str, Any] = {"run": step_run.output_run, "repo": step_run.repo, "mode": mode,
                              "restart": extend, "step_run": step_run.as_dict()}
    start, began = time.monotonic(), datetime.now(UTC)
    _prepare_chain(step_run)
    note = ""
    if mode == "pipetask":
        log = attempt / "pipetask.log"
        cmd, graph_file, summary = _pipetask_cmd(
            step_run, attempt, extend=extend, skip_init=extend and _has_init_outputs(step_run),
            jobs=jobs or campaign.manifest.workflow.jobs, config_overrides=config_overrides)
        record.update({"graph": str(graph_file), "command": cmd})
        (attempt / "attempt.json").write_text(json.dumps(record, indent=2))
        rc, killed = _run_logged(cmd, log, env=_child_env(), cwd=attempt, timeout=timeout)
    else:
        summary = None
        log = attempt / "bps.log"
        rc, killed, graph_file, note = _run_bps(campaign, step_run, attempt, log, record, previous,
                                                extend=extend, config_overrides=config_overrides,
                                                timeout=timeout)
    seconds = time.monotonic() - start
    # The step's full graph: that of the first attempt of this run, if it was recorded here.
    reference = graph_file
    if extend:
        firsts = [a for a in previous if not a.get("restart") and a.get("graph") and Path(a["graph"]).is_file()]
        if firsts:
            reference = Path(firsts[-1]["graph"])
        else:
            note = (note + " " if note else "") + (
                "the first attempt's quantum graph is not under this log dir: counts cover this attempt only")
    status = StepStatus(site=step_run.site, step=step_run.step, run=step_run.output_run,
                        chain=step_run.output_chain, mode=mode, state="failed", seconds=round(seconds, 2),
                        log=str(log), attempt=number, restart=extend, returncode=rc, note=note,
                        started=began.isoformat())
    done = _already_complete(log) if (mode == "pipetask" and extend and rc != 0 and not killed) else None
    if done:
        # a restart of a finished run: pipetask skips every quantum and refuses the empty graph
        status.state, status.total, status.succeeded = "ok", done, done
        status.note = f"nothing to do: all {done} quanta had already succeeded"
    elif reference is not None and Path(reference).is_file():
        counts = _status_from_graph(step_run, Path(reference), summary=summary, max_failures=max_failures)
        status.total, status.succeeded = counts["total"], counts["succeeded"]
        status.failed, status.pending = counts["failed"], counts["pending"]
        status.failures, status.by_task = counts["failures"], counts["by_task"]
        if status.failed or status.total == 0:
            status.state = "failed"
        elif status.pending or killed:
            status.state = "partial"
        else:
            status.state = "ok"
        if killed:
            status.note = (status.note + " " if status.note else "") + f"killed after {timeout} s"
    else:
        status.failures = [{"task": None, "data_id": {}, "cause": _log_tail_cause(log, killed, timeout)}]
    status.finished = datetime.now(UTC).isoformat()
    (attempt / "status.json").write_text(json.dumps(status.as_dict(), indent=2, default=str))
    return status


_SKIPPED = re.compile(r"Dropping task \S+ because no quanta remain \((\d+) previously succeeded and skipped\)")


def _already_complete(log: Path) -> int | None:
    """Quanta skipped as done, if pipetask stopped only because nothing was left to run."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    if "QuantumGraph was empty" not in text and "contains no quanta" not in text:
        return None
    skipped = [int(n) for n in _SKIPPED.findall(text)]
    return sum(skipped) if skipped and all(n > 0 for n in skipped) else None


def _log_tail_cause(log: Path, killed: bool, timeout: float | None) -> str:
    """Why no quantum graph was made: the last exception-looking line of the log."""
    if killed:
        return f"killed after {timeout} s before a quantum graph was made"
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Failure)\b.*:", line.strip()):
            return line.strip()[:_MAX_CAUSE]
    for line in reversed(lines):
        if "ERROR" in line:
            return line.strip()[:_MAX_CAUSE]
    return "no quantum graph was made; see the log"


def _run_bps(campaign: Campaign, step_run: StepRun, attempt: Path, log: Path, record: dict[str, Any],
             previous: Sequence[Mapping[str, Any]], *, extend: bool, config_overrides: Sequence[str],
             timeout: float | None) -> tuple[int | None, bool, Path | None, str]:
    """``bps submit`` (or ``bps restart``) and wait; return (rc, killed, quantum graph, note)."""
    bps = _bin("bps")
    note = ""
    if extend:
        last = next((a for a in reversed(previous) if a.get("mode") == "bps" and a.get("submit_path")), None)
        if last is None:
            raise RuntimeError(
                f"{step_run.site} {step_run.step}: restart in bps mode needs an earlier BPS attempt of "
                f"{step_run.output_run} under this log dir")
        submit_path = Path(last["submit_path"])
        cwd = Path(last.get("cwd") or submit_path.parent)  # parsl finds its checkpoints under ./runinfo
        env = _child_env(last.get("environment"))
        cmd = [bps, "--long-log", "restart", "--id", str(submit_path)]
        if wms_class := _bps_wms_class(submit_path):
            cmd[3:3] = ["--wms-service-class", wms_class]
        record.update({"submit_path": str(submit_path), "command": cmd, "environment": last.get("environment"), "cwd": str(cwd),
                       "graph": last.get("graph")})
        note = "bps restart re-runs the saved workflow (same quantum graph and task configs)"
    else:
        submit_path, cwd = attempt / "submit", attempt
        sub = write_submit_file(campaign, step_run, attempt / "submit.yaml", submit_path=submit_path,
                                config_overrides=config_overrides)
        doc = yaml.safe_load(sub.read_text())
        environment = doc.get("environment") or {}
        env = _child_env(environment)
        if _wms_of(_site_config_path(campaign)) == "parsl":
            # BPS writes its whole environment to <submit>/<name>.env.info.yaml; a local parsl run
            # needs no credentials, so none go there.  (PanDA needs its OIDC token variables.)
            env = {k: v for k, v in env.items() if not _SECRET_NAME.search(k)}
        cmd = [bps, "--long-log", "submit", str(sub)]
        record.update({"submit_file": str(sub), "submit_path": str(submit_path), "command": cmd,
                       "environment": environment, "cwd": str(cwd)})
    (attempt / "attempt.json").write_text(json.dumps(record, indent=2))
    rc, killed = _run_logged(cmd, log, env=env, cwd=cwd, timeout=timeout)
    run_id = _bps_run_id(log)
    wms_class = _bps_wms_class(submit_path)
    if not killed and run_id and run_id != "None" and wms_class:
        waited, killed = _wait_bps(run_id, wms_class, log, env=env, cwd=cwd, timeout=timeout)
        rc = rc if waited is None else waited
    graphs = sorted(submit_path.glob("*.qg")) if submit_path.is_dir() else []
    graph = graphs[0] if graphs else None
    record["graph"] = str(graph) if graph else record.get("graph")
    (attempt / "attempt.json").write_text(json.dumps(record, indent=2))
    return rc, killed, graph, note


def _bps_run_id(log: Path) -> str | None:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    ids = re.findall(r"^Run Id: (\S+)", text, re.M)
    return ids[-1] if ids else None


def _bps_wms_class(submit_path: Path) -> str | None:
    for p in submit_path.glob("*_config.yaml"):
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError:
            continue
        if data.get("wmsServiceClass"):
            return str(data["wmsServiceClass"])
    return None


def _wait_bps(run_id: str, wms_class: str, log: Path, *, env: Mapping[str, str], cwd: Path,
              timeout: float | None, poll: float = 60.0) -> tuple[int | None, bool]:
    """Poll ``bps status`` (its exit code is a `WmsStates` value) until the workflow ends.

    A WMS that runs the workflow inside ``bps submit`` (parsl) has no status service: its
    first answer is not a state, and the submit's own exit code stands.
    """
    from lsst.ctrl.bps import WmsStates

    states = {s.value for s in WmsStates}
    ended = {WmsStates.SUCCEEDED.value, WmsStates.FAILED.value, WmsStates.DELETED.value,
             WmsStates.PRUNED.value}
    t0 = time.monotonic()
    while True:
        rc, _ = _run_logged([_bin("bps"), "status", "--wms-service-class", wms_class, "--id", run_id],
                            log, env=env, cwd=cwd, timeout=600)
        if rc not in states:
            return None, False
        if rc in ended:
            return (0 if rc == WmsStates.SUCCEEDED.value else rc), False
        if timeout is not None and time.monotonic() - t0 > timeout:
            return rc, True
        time.sleep(poll)
