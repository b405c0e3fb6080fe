"""QA's single-site reference: the pipeline run at the central site over the sample's reach."""

from __future__ import annotations

import os

from multisite_nb.domain.config import Campaign, SkyUnit
from multisite_nb.domain.naming import step_run_collection
from multisite_nb.domain.records import StepRecord
from multisite_nb.domain.wiring import load_pipeline_graph
from multisite_nb.phases.qa.sample import QASample
from multisite_nb.phases.submit.selection import reference_step_run
from multisite_nb.phases.submit.stage import run_steps

#: Dimensions that tie a quantum or a data ID to part of the sky or of the observations.
_LOCAL = {"tract", "patch", "visit", "exposure", "detector"}


def _global_steps(campaign: Campaign) -> list[str]:
    """Central steps holding a task whose quanta have no sky or observation dimension."""
    graph = load_pipeline_graph(campaign.pipeline_path, resolve=False)
    return [
        step
        for stage in campaign.config.stages
        if stage.where == "central"
        for step in stage.steps
        if any(not set(graph.tasks[label].raw_dimensions) & _LOCAL for label in graph.task_subsets[step])
    ]


def run_reference(
    campaign: Campaign, log_dir: str | os.PathLike[str], sample: QASample | None = None
) -> dict[str, StepRecord]:
    """Run the pipeline at the central site over the sample's reach (all the campaign's data without one).

    A sample reference reads the campaign's own run of each central step with a global task
    instead of redoing it (see the module's notes). Idempotent: an existing reference step is
    finished (restarted), not redone. Returns each step's record up to the first step
    that did not succeed; a step taken from the campaign is not in it.
    """
    steps = [s for st in campaign.config.stages for s in st.steps]
    units: list[SkyUnit] | None = None
    reused: list[str] = []
    if sample is not None and not sample.full:
        units = sample.reach
        kept = _global_steps(campaign)
        reused = [step_run_collection(campaign, campaign.central, s) for s in kept]
        steps = [s for s in steps if s not in kept]
    records = run_steps(
        campaign,
        campaign.central,
        steps,
        log_dir,
        mode="pipetask",
        make_run=lambda step: reference_step_run(campaign, step, units, reused),
    )
    return dict(records)
