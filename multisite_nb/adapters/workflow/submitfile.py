"""BPS submit files: one per step and site, including the manifest's BPS site config.

The document is the same for every workflow plugin except what the plugin adds (its
executor says: e.g. parsl's small final job and the ``environment`` its local jobs need,
PanDA's three retries).
"""

from __future__ import annotations

import getpass
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from multisite_nb.adapters.files import atomic_write_text
from multisite_nb.adapters.workflow import BpsPlugin, bps_executor_for, get_executor, site_config_path
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import ConfigError, MsnbError
from multisite_nb.domain.naming import safe_name
from multisite_nb.domain.steps import StepRun

__all__ = ["submit_file", "write_submit_file"]


def _plugin(campaign: Campaign, wms: str | BpsPlugin | None) -> BpsPlugin:
    if isinstance(wms, BpsPlugin):
        return wms
    executor = bps_executor_for(campaign) if wms is None else get_executor(wms if "-" in wms else f"bps-{wms}")
    if not isinstance(executor, BpsPlugin):
        raise ConfigError(f"executor {executor.name!r} is not a BPS plugin: it has no submit file")
    return executor


def submit_file(
    campaign: Campaign,
    step_run: StepRun,
    wms: str | BpsPlugin | None = None,
    *,
    submit_path: str | os.PathLike[str] | None = None,
    operator: str | None = None,
    project: str = "multisite_nb",
    request_memory: int = 2048,
    retries: int | None = None,
    config_overrides: Sequence[str] = (),
    data_id_table: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """A BPS submit file for ``step_run`` (as a dict, ready to dump as YAML).

    Parameters
    ----------
    campaign, step_run
        What to submit.
    wms
        The BPS plugin: its executor, or its name (``"panda"`` / ``"bps-panda"``,
        ``"parsl"`` / ``"bps-parsl"``); default: the one the manifest's BPS site config names.
    submit_path
        BPS ``submitPath`` (default: BPS's own, ``${PWD}/submit/{outputRun}``).
    operator, project
        BPS bookkeeping (operator defaults to the login name).
    request_memory
        ``requestMemory`` of each quantum job (MB).
    retries
        ``numberOfRetries`` (default: the plugin's, 3 for PanDA, 1 for parsl).
    config_overrides
        Task config overrides ``label:name=value`` (as ``pipetask -c``), given to the
        quantum-graph builder.
    data_id_table
        The written :class:`~.steprun.DataIdTable` of ``step_run`` (given to the quantum-graph
        builder as ``--data-id-table``); required when the step has one.

    Returns
    -------
    dict
        ``includeConfigs`` (the manifest's site config), ``pipelineYaml``, ``payload``,
        ``computeSite``, ``computeCloud``, ``queue``, ``finalJob.queue`` (the merge queue),
        ``requestMemory``, ``numberOfRetries``, ``project``, ``campaign``, ``operator``, and
        what the plugin adds.
    """
    plugin = _plugin(campaign, wms)
    spec = campaign.site(step_run.site)
    doc: dict[str, Any] = {
        "includeConfigs": [str(site_config_path(campaign))],
        "pipelineYaml": step_run.pipeline,
        "project": project,
        "campaign": campaign.name,
        "operator": operator or getpass.getuser(),
        "computeSite": spec.compute_site,
        "computeCloud": spec.compute_cloud,
        "requestMemory": int(request_memory),
        "numberOfRetries": int(retries if retries is not None else plugin.default_retries),
        "payload": {
            "payloadName": safe_name(
                "_".join(p for p in (campaign.name, step_run.site, step_run.step, step_run.group) if p)
            ),
            "butlerConfig": step_run.repo,
            "inCollection": ",".join(step_run.inputs),
            "dataQuery": step_run.data_query,
            "output": step_run.output_chain,
            "outputRun": step_run.output_run,
        },
    }
    if spec.queue:
        doc["queue"] = spec.queue
    doc.update(plugin.submit_additions())
    doc["finalJob"] = {"queue": spec.merge_queue or f"{spec.compute_site}_Rubin_Merge", **plugin.final_job}
    if step_run.data_id_table is not None and data_id_table is None:
        raise MsnbError(f"{step_run.where}: its data ID table must be written first (data_id_table=PATH)")
    extra = [f"--data-id-table {shlex.quote(str(data_id_table))}"] if step_run.data_id_table is not None else []
    extra += [f"-c {shlex.quote(c)}" for c in config_overrides]
    if extra:
        doc["extraQgraphOptions"] = " ".join(extra)
    if submit_path is not None:
        doc["submitPath"] = str(submit_path)
    return doc


def write_submit_file(
    campaign: Campaign,
    step_run: StepRun,
    path: str | os.PathLike[str],
    wms: str | BpsPlugin | None = None,
    **kwargs: Any,
) -> Path:
    """Write `submit_file` as YAML to ``path``, atomically (keyword arguments are passed on).

    A step's data ID table is written beside it (``<name>.data_ids.ecsv``).
    """
    if step_run.data_id_table is not None:
        out = Path(path)
        table = out.with_name(f"{out.stem}.data_ids.ecsv")
        kwargs["data_id_table"] = atomic_write_text(table, step_run.data_id_table.ecsv())
    doc = submit_file(campaign, step_run, wms, **kwargs)
    header = (
        f"# BPS submit file: {step_run.step} at {step_run.site} "
        f"(campaign {campaign.name}), written by multisite_nb.phases.submit\n"
    )
    return atomic_write_text(path, header + yaml.safe_dump(doc, sort_keys=False, width=120))
