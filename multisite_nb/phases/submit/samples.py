"""Submit files and PanDA workflows made for the reader of a run log, without running anything.

The same phase code writes the submit file of the facilities (PanDA) and of this deployment;
only the site manifest differs. :func:`prepare_stage` builds each site's PanDA workflow offline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multisite_nb.adapters.workflow.panda import prepare_panda
from multisite_nb.adapters.workflow.submitfile import write_submit_file
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import WorkflowError
from multisite_nb.domain.params import with_manifest
from multisite_nb.domain.steps import StepRun
from multisite_nb.phases.submit.groups import first_group

__all__ = ["SampleSubmitFile", "prepare_stage", "sample_submit_files"]


@dataclass(frozen=True)
class SampleSubmitFile:
    """A submit file written for the reader of a run log: where it would run, and its path."""

    title: str
    path: Path
    step_run: StepRun


def sample_submit_files(
    campaign: Campaign, stage: str, folder: str | os.PathLike[str], facilities: str | os.PathLike[str]
) -> list[SampleSubmitFile]:
    """The first step of ``stage`` at the first remote site as two submit files in ``folder``: at the
    facilities (PanDA, the ``facilities`` site manifest; no credential is read) and here (the
    campaign's own manifest). The same phase code writes both; only the manifest differs."""
    st = campaign.stage(stage)
    site = campaign.remote_sites[0]
    here = campaign.manifest.workflow
    out = []
    for title, where, wms in (
        ("at the facility (PanDA)", with_manifest(campaign, facilities, env={}), "panda"),
        (f"here ({here.mode}, site config {here.bps_site_config})", campaign, None),
    ):
        sr = first_group(where, site, st.steps[0])
        name = "facility" if wms else "here"
        out.append(
            SampleSubmitFile(
                title, write_submit_file(where, sr, Path(folder) / f"{name}_{site}_{sr.step}.yaml", wms), sr
            )
        )
    return out


def prepare_stage(campaign: Campaign, steps: list[str], out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Prepare every step at every remote site offline (its first group's workflow, one BPS submission
    per group as at the facilities); one row per iDDS task (or per step that failed).

    A step whose inputs are made by an earlier step of the same stage can only be prepared once
    that step has run (its quantum graph would be empty): its row says why.
    """
    rows: list[dict[str, Any]] = []
    for site in campaign.remote_sites:
        for step in steps:
            try:
                sr = first_group(campaign, site, step)
                tasks = prepare_panda(campaign, sr, Path(out_dir) / site / step / sr.group)
            except WorkflowError as exc:
                rows.append({"site": site, "step": step, "task": "-", "error": str(exc).splitlines()[0]})
                continue
            rows += [
                {
                    "site": site,
                    "step": step,
                    "group": sr.group,
                    "task": t.label,
                    "queue": t.queue,
                    "cloud": t.cloud,
                    "memory_mb": t.memory_mb,
                    "cores": t.cores,
                    "attempts": t.max_attempts,
                    "command": t.command[:160],
                }
                for t in tasks
            ]
    return rows
