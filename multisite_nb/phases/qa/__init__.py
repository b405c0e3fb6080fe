"""Phase 6, QA: are the products complete, and do they agree with a single-site reference?

The *reference* is the same pipeline run at the central site in its own collections
(``P/reference``), over a **sample** of sky units set in the campaign (``qa:`` in the campaign
file, :class:`~multisite_nb.domain.config.QASettings`): by default a few units per site, chosen
deterministically, boundary units (whose visits also reach another site) among them. At
data-release size a reference over every unit would be a second data release.

The sample
    The chosen units, completed to whole tracts (tract-wide tasks read every patch of their
    tract). The reference runs over the sample's *reach*: the sample, every unit its visits
    touch, again completed to whole tracts, so that each quantum behind a sampled product has
    the same inputs as in the full run. When the reach is the whole campaign, the sample is
    the whole campaign and the reference is the full single-site run, every step redone.

What a sample reference can compare
    A task whose quanta have no sky or observation dimension (a global calibration, a
    per-instrument table) consumes every visit: run on a sample it makes another solution,
    and everything downstream differs. A sample reference therefore does **not** redo the
    central steps that hold such tasks; it reads the campaign's own run of them at the central
    site (``P/<central>/<step>``). It checks what the sites did with that solution — every
    product of the sampled units, value by value — and not the solution itself, which only a
    full reference (``sample_units_per_site: all``) recomputes. Global products (no sky or
    observation dimension) cover only a site's own data at a site and are counted, not
    compared. A product is *on the sample* when its tract (and patch) is sampled and its visit
    overlaps the sample; only those are compared, and only their values are in the digests.

Completeness, for every unit of every site
    Each product of the validation set a site owns must be at the site and, after the final
    gather, at the central site. On the sample the expected products are the reference's.
    Off it they come from the central registry by the dataset type's dimensions (the *rule*):
    the data IDs of those dimensions over the site's units (a dataset type with a ``visit`` or
    ``exposure``: over the site's own visits; one without: where the site has visits, which
    gives the bands), that the site owns. They are counted per unit and band and set beside
    the counts present, never listed; on the sample the rule is counted too, beside the
    reference, so a rule that does not fit the pipeline shows (column ``by rule``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.adapters.results import finish_phase, load_result, save_table
from multisite_nb.adapters.tables import load_plan
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.naming import plan_path, reference_logs_dir
from multisite_nb.domain.ownership import Ownership
from multisite_nb.domain.qa import QAReport
from multisite_nb.domain.results import PhaseResult, utcnow
from multisite_nb.domain.summaries import GatherSummary, QASampleFigures, QASummary
from multisite_nb.domain.wiring import campaign_wiring
from multisite_nb.phases.gather_redistribute import run as gather_redistribute
from multisite_nb.phases.qa.compare import evaluate
from multisite_nb.phases.qa.reference import run_reference
from multisite_nb.phases.qa.sample import plan_sample
from multisite_nb.phases.spec import FINAL, phase
from multisite_nb.phases.submit.summary import steps_verdict

__all__ = ["run"]

_TABLES = ("completeness", "units", "mismatches", "metrics", "sample")


@phase("qa", notebook="06_qa", summary=QASummary, follows=("gather_redistribute",), acting=True)
def run(
    campaign: Campaign,
    run_dir: str | Path,
    *,
    validation_set: list[str] | None = None,
    reference: bool = True,
) -> tuple[PhaseResult, QAReport]:
    """Phase 6: completeness of every sky unit, and agreement with a single-site reference over a sample.

    The sample comes from the campaign's ``qa`` settings; it is recorded as the table ``sample`` and
    in the summary.
    """
    started = utcnow()
    final = load_result(run_dir, f"{gather_redistribute.name}_{FINAL}")  # its validation set, if it chose one
    recorded = final.summary.validation_set if final is not None and isinstance(final.summary, GatherSummary) else []
    types = validation_set or recorded or campaign_wiring(campaign).final_products
    plan = load_plan(plan_path(run_dir))
    with open_site_butler(campaign, campaign.central) as central:
        sample = plan_sample(campaign, central, plan.boundary_visits)
    ref_steps = run_reference(campaign, reference_logs_dir(run_dir), sample) if reference else {}
    ref_ok, ref_reason = steps_verdict({"reference": ref_steps}) if ref_steps else (True, "")
    report = evaluate(campaign, types, Ownership.of_plan(campaign, plan), sample, plan.visits)
    artifacts = [
        str(save_table(run_dir, "qa", name, pd.DataFrame([row.model_dump() for row in getattr(report, name)])))
        for name in _TABLES
    ]
    passed = ref_ok and report.passed
    reason = report.verdict() if ref_ok else f"reference run failed: {ref_reason}"
    summary = QASummary(
        validation_set=types,
        missing=report.missing,
        mismatches=len(report.mismatches),
        metrics=report.metrics,
        reference_steps={k: str(v.state) for k, v in ref_steps.items()},
        sample=QASampleFigures(
            full=sample.full,
            units={s: [str(u) for u in us] for s, us in sample.units.items()},
            reference_units=len(sample.reach),
            note=sample.describe(),
        ),
    )
    result = finish_phase(run_dir, "qa", passed, reason, started, summary=summary, artifacts=artifacts)
    return result, report
