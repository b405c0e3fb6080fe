"""Each phase as one library call: act, judge the gate, record the result.

The notebooks call these and show what comes back; the same calls run a phase without a
notebook. Each returns the recorded :class:`~multisite_nb.results.PhaseResult` and the
phase's details (plan, outcomes, reports) for display.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from .config import Campaign, load_campaign
from .errors import ConfigError, GateError
from .naming import logs_dir, plan_path, step_run_collection
from .results import PhaseResult, finish_phase, load_result, save_table, utcnow
from .submission.summary import InFlight, dump_steps, steps_table
from .submission.summary import steps_verdict as _steps_verdict

__all__ = ["gather_redistribute", "placement", "qa", "require_passed", "submit", "transfer", "verify"]


def require_passed(run_dir: str | Path, phase: str) -> PhaseResult:
    """The earlier phase's result; raises if it is missing or its gate failed."""
    res = load_result(run_dir, phase)
    if res is None:
        raise GateError(f"phase {phase!r} has no result in {run_dir}: run it first")
    if not res.passed:
        raise GateError(f"phase {phase!r} failed its gate: {res.reason}")
    return res


def _campaign(c: Campaign | str | Path) -> Campaign:
    return c if isinstance(c, Campaign) else load_campaign(c)


def _acting[F: Callable[..., Any]](func: F) -> F:
    """A phase that changes Rucio or a Butler: it holds the campaign's operator lock while it runs."""

    @functools.wraps(func)
    def wrapper(campaign: Campaign | str | Path, run_dir: str | Path, *args: Any, **kwargs: Any) -> Any:
        from .lock import operator_lock

        campaign = _campaign(campaign)
        with operator_lock(campaign, run_dir):
            return func(campaign, run_dir, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def placement(campaign: Campaign | str | Path, run_dir: str | Path) -> tuple[PhaseResult, Any]:
    """Phase 1: plan what each site needs; save the plan and per-site manifests; find collisions."""
    from .collisions import preflight as preflight_collisions
    from .ownership import refusals
    from .placement import plan_placement
    from .plan_files import site_table_path
    from .runfolder import check_run_folder
    from .wiring import load_pipeline_graph

    started = utcnow()
    campaign = _campaign(campaign)
    check_run_folder(run_dir)
    graph = load_pipeline_graph(campaign.pipeline_path)
    refused = refusals(campaign, graph)  # what no placement can make consistent, before any byte moves
    plan = plan_placement(campaign, folder=plan_path(run_dir).parent)  # the files stream into its tables
    collisions = preflight_collisions(campaign, [n.dataset_type for n in graph.dataset_types.values()])
    artifacts = [str(plan.save(plan_path(run_dir)))]
    artifacts += [str(site_table_path(plan.tables, site)) for site in plan.sites]  # the per-site manifests
    artifacts.append(str(save_table(run_dir, "placement", "tracts", pd.DataFrame(plan.tract_rows()))))
    counts = plan.counts()
    artifacts.append(str(save_table(run_dir, "placement", "counts", pd.DataFrame(counts))))
    empty = [r["site"] for r in counts if r["files"] == 0 or r["visits"] == 0]
    cost = plan.boundary_cost()
    if refused:
        passed, reason = False, f"cannot be made consistent ({len(refused)}): {refused[0]}"
    elif collisions:
        passed, reason = False, f"{len(collisions)} collision(s) before anything moved; first: {collisions[0]}"
    elif empty:
        passed, reason = False, f"no data found for site(s) {', '.join(empty)}: check their sky units"
    else:
        passed = True
        reason = (
            f"{sum(r['files'] for r in counts)} files planned for {len(counts)} sites; "
            f"{len(plan.boundary_visits)} boundary visits "
            f"({cost['extra_copies']} extra copies, {cost['extra_bytes']} bytes)"
        )
    result = finish_phase(
        run_dir,
        "placement",
        passed,
        reason,
        started,
        summary={
            "campaign_file": str(campaign.path),
            "sites": {r["site"]: {"files": r["files"], "bytes": r["bytes"], "visits": r["visits"]} for r in counts},
            "boundary_visits": len(plan.boundary_visits),
            "boundary_cost": cost,
            "collisions": collisions,
            "refused": refused,
            "boundary_by_sites": _boundary_by_sites(plan),
        },
        artifacts=artifacts,
    )
    return result, plan


def _ownership(campaign: Campaign, run_dir: str | Path) -> Any:
    """Each data ID's canonical site, from the run's placement plan."""
    from .ownership import Ownership
    from .placement import PlacementPlan

    plan = PlacementPlan.load(plan_path(run_dir))
    return Ownership(campaign, plan.visit_owner, plan.exposure_visit)


def _boundary_by_sites(plan: Any) -> dict[str, int]:
    """How many boundary visits each group of sites shares ("IN2P3+RAL": 4)."""
    out: dict[str, int] = {}
    for sites in plan.boundary_visits.values():
        key = "+".join(sites)
        out[key] = out.get(key, 0) + 1
    return out


@_acting
def transfer(
    campaign: Campaign | str | Path, run_dir: str | Path, *, progress: bool = True, timeout_s: float = 900
) -> tuple[PhaseResult, list[Any]]:
    """Phase 2: move each site's planned inputs with Rucio and ingest them in place."""
    from .placement import PlacementPlan
    from .transfer import place_data

    started = utcnow()
    campaign = _campaign(campaign)
    require_passed(run_dir, "placement")
    plan = PlacementPlan.load(plan_path(run_dir))
    outcomes = place_data(campaign, plan, progress=progress, timeout_s=timeout_s, log=lambda m: None)
    rows = [o.as_row() for o in outcomes]
    table = save_table(run_dir, "transfer", "shipments", pd.DataFrame(rows))
    failed = [o for o in outcomes if o.error]
    passed = not failed
    reason = (
        "all rules OK; "
        + ", ".join(f"{o.dest}: {o.ingested} ingested, {o.already_present} already there" for o in outcomes)
        if passed
        else "; ".join(f"{o.dest}: {o.state}: {o.error}" for o in failed)
    )
    result = finish_phase(
        run_dir,
        "transfer",
        passed,
        reason,
        started,
        summary={
            "shipments": {
                o.dest: {
                    "rule": o.state,
                    "rule_id": o.rule_id,
                    "files": o.registered,
                    "ingested": o.ingested,
                    "already_present": o.already_present,
                    "seconds": {k: round(v, 2) for k, v in o.seconds.items()},
                }
                for o in outcomes
            }
        },
        artifacts=[str(table)],
    )
    return result, outcomes


def verify(
    campaign: Campaign | str | Path, run_dir: str | Path, *, checksums: bool = True
) -> tuple[PhaseResult, list[Any]]:
    """Phase 3: reconcile the plan with Rucio, each site's Butler and the disk."""
    from .placement import PlacementPlan
    from .verify import problems_table, verify_placement

    started = utcnow()
    campaign = _campaign(campaign)
    require_passed(run_dir, "placement")
    plan = PlacementPlan.load(plan_path(run_dir))
    reports = verify_placement(campaign, plan, checksums=checksums)
    counts = pd.DataFrame([r.counts() for r in reports])
    problems = problems_table(reports)
    artifacts = [
        str(save_table(run_dir, "verify", "counts", counts)),
        str(
            save_table(
                run_dir,
                "verify",
                "problems",
                pd.DataFrame(problems, columns=["site", "layer", "problem", "file", "detail"]),
            )
        ),
    ]
    bad = [r for r in reports if not r.ok]
    passed = not bad
    if passed:
        planned = sum(r.planned for r in reports)
        reason = f"all {planned} planned files in place at {len(reports)} sites (Rucio, Butler, disk)"
    else:
        first = bad[0].problems[0]
        reason = (
            f"{sum(len(r.problems) for r in bad)} problems at {', '.join(r.site for r in bad)}; "
            f"first: {first.site} {first.layer} {first.kind} {first.what} ({first.detail})"
        )
    result = finish_phase(
        run_dir,
        "verify",
        passed,
        reason,
        started,
        summary={"sites": {r.site: r.counts() for r in reports}, "problems": len(problems)},
        artifacts=artifacts,
    )
    return result, reports


# -- phases 4-6 ----------------------------------------------------------------------------


def _wiring(campaign: Campaign):
    from .wiring import derive_wiring, load_pipeline_graph

    return derive_wiring(load_pipeline_graph(campaign.pipeline_path), campaign.config.stages)


def _extra_inputs(run_dir: str | Path) -> dict[str, list[str]]:
    """Runs earlier gates delivered to each site (recorded by gather_redistribute phases)."""
    from .results import load_results

    extra: dict[str, set[str]] = {}
    for res in load_results(run_dir, strict=False).values():
        for site, runs in (res.summary.get("delivered_runs") or {}).items():
            extra.setdefault(site, set()).update(runs)
    return {k: sorted(v) for k, v in extra.items()}


@_acting
def submit(campaign: Campaign | str | Path, run_dir: str | Path, stage: str) -> tuple[PhaseResult, dict[str, Any]]:
    """Phase 4: run a site stage's steps at every remote site, side by side.

    Every site's first step is checked before anything runs there: a site with problems does
    not run (named in the gate), the others go on. Returns the steps as the summary stores
    them: ``{site: {step: StepRecord dump}}``.
    """
    from .submission import run_sites

    started = utcnow()
    campaign = _campaign(campaign)
    st = campaign.stage(stage)
    if st.where != "sites":
        raise ConfigError(f"{campaign.path}: stage {stage!r} runs centrally: use gather_redistribute")
    require_passed(run_dir, "verify")
    live = InFlight(run_dir, f"submit_{stage}", started, {"stage": stage})
    records = run_sites(
        campaign, campaign.remote_sites, st.steps, logs_dir(run_dir), extra=_extra_inputs(run_dir), live=live
    )
    steps = dump_steps(records)
    passed, reason = _steps_verdict(records)
    table = save_table(run_dir, f"submit_{stage}", "steps", steps_table(records))
    result = finish_phase(
        run_dir,
        f"submit_{stage}",
        passed,
        reason,
        started,
        summary={"stage": stage, "steps": steps},
        artifacts=[str(table)],
    )
    return result, steps


def _ship(
    campaign: Campaign, plan: Any, run_dir: str | Path, label: str, progress: bool, collisions_fatal: bool = True
) -> tuple[bool, str, list[dict[str, Any]]]:
    """Ship a gather/redistribution plan and verify it; returns (passed, reason, rows).

    Collisions (one data ID from several sites) are fatal before a central stage, whose
    lookups would see only one of them; brought home at the end they are fine, each in its
    own site's RUN collection.
    """
    from .gather import ship_and_verify

    if plan.collisions and collisions_fatal:
        c = plan.collisions[0]
        return (
            False,
            (
                f"{len(plan.collisions)} collisions: {c.dataset_type} {c.data_id} comes from "
                f"{', '.join(c.sites)}; give those sites distinct sky (or runs)"
            ),
            [],
        )
    outcomes, reports = ship_and_verify(campaign, plan, progress=progress)
    rows = [o.as_row() for o in outcomes]
    bad = [o for o in outcomes if o.error]
    problems = [p for r in reports for p in r.problems]
    if bad:
        return False, f"{bad[0].name}: {bad[0].state}: {bad[0].error}", rows
    if problems:
        p = problems[0]
        return (
            False,
            f"{len(problems)} problems after {label}; first: {p.site} {p.layer} {p.kind} {p.what} ({p.detail})",
            rows,
        )
    return True, f"{label}: {sum(r['files'] for r in rows)} files moved and verified", rows


@_acting
def gather_redistribute(
    campaign: Campaign | str | Path,
    run_dir: str | Path,
    stage: str,
    *,
    progress: bool = True,
    validation_set: list[str] | None = None,
) -> tuple[PhaseResult, dict[str, Any]]:
    """Phase 5: for a central stage: gather, run it centrally, redistribute per site.

    ``stage="final"`` brings the validation set (default: the site stages' final products) home.
    """
    from .gather import plan_gather, plan_redistribution

    started = utcnow()
    campaign = _campaign(campaign)
    wiring = _wiring(campaign)
    label = f"gather_redistribute_{stage}"
    summary: dict[str, Any] = {"stage": stage}
    tables: dict[str, Any] = {}
    shipped = Path(run_dir) / "artifacts" / label  # each shipment's file table under <kind>/files/
    if stage == "final":
        types = validation_set or wiring.final_products
        plan = plan_gather(campaign, types, "final", ownership=_ownership(campaign, run_dir), folder=shipped / "final")
        tables["final"] = pd.DataFrame(plan.counts())
        passed, reason, rows = _ship(campaign, plan, run_dir, "final gather", progress, collisions_fatal=False)
        summary.update(validation_set=types, shipments=rows, runs_at_central=plan.runs.get(campaign.central, []))
    else:
        st = campaign.stage(stage)
        if st.where != "central":
            raise ConfigError(f"{campaign.path}: stage {stage!r} runs at the sites: use submit")
        gathered = wiring.gathered_before(stage)
        gplan = plan_gather(
            campaign, gathered, f"gather_{stage}", ownership=_ownership(campaign, run_dir), folder=shipped / "gather"
        )
        tables["gather"] = pd.DataFrame(gplan.counts())
        passed, reason, rows = _ship(campaign, gplan, run_dir, f"gather for {stage}", progress)
        summary.update(gathered=gathered, gather_shipments=rows)
        if passed:
            from .submission import run_sites

            central = campaign.central
            records = run_sites(
                campaign,
                [central],
                st.steps,
                logs_dir(run_dir),
                check_first=False,
                extra={central: gplan.runs.get(central, [])},
                live=InFlight(run_dir, label, started, dict(summary)),
            )
            summary["steps"] = dump_steps(records)
            passed, reason = _steps_verdict(records)
        if passed:
            produced = [step_run_collection(campaign, campaign.central, step) for step in st.steps]
            redistributed = wiring.redistributed_after(stage)
            rplan = plan_redistribution(
                campaign, redistributed, produced, f"redistribute_{stage}", folder=shipped / "redistribute"
            )
            tables["redistribute"] = pd.DataFrame(rplan.counts())
            passed, reason2, rows2 = _ship(campaign, rplan, run_dir, f"redistribution after {stage}", progress)
            summary.update(redistributed=redistributed, redistribute_shipments=rows2, delivered_runs=rplan.runs)
            reason = reason2 if not passed else f"gathered {len(gathered)} types, ran {', '.join(st.steps)}, {reason2}"
    artifacts = [str(save_table(run_dir, label, name, df)) for name, df in tables.items()]
    result = finish_phase(
        run_dir,
        label,
        passed,
        reason,
        started,
        summary=summary,
        artifacts=artifacts,
    )
    return result, summary


@_acting
def qa(
    campaign: Campaign | str | Path,
    run_dir: str | Path,
    *,
    validation_set: list[str] | None = None,
    reference: bool = True,
) -> tuple[PhaseResult, Any]:
    """Phase 6: completeness of every sky unit, and agreement with a single-site reference over a sample.

    The sample comes from the campaign's ``qa`` settings (see :mod:`multisite_nb.qa`); it is
    recorded as the table ``sample`` and in the summary.
    """
    from .butler_ops import open_butler
    from .ownership import Ownership
    from .placement import PlacementPlan
    from .qa import evaluate, plan_sample, run_reference

    started = utcnow()
    campaign = _campaign(campaign)
    final = load_result(run_dir, "gather_redistribute_final")
    types = (
        validation_set or (final.summary.get("validation_set") if final else None) or _wiring(campaign).final_products
    )
    plan = PlacementPlan.load(plan_path(run_dir))
    with open_butler(campaign.butler_repo(campaign.central)) as central:
        sample = plan_sample(campaign, central, plan.boundary_visits)
    logs = Path(run_dir) / "artifacts" / "logs" / "reference"
    ref_steps = run_reference(campaign, logs, sample) if reference else {}
    ref_ok, ref_reason = _steps_verdict({"reference": ref_steps}) if ref_steps else (True, "")
    ownership = Ownership(campaign, plan.visit_owner, plan.exposure_visit)
    report = evaluate(campaign, types, ownership, sample, plan.visits)
    artifacts = [
        str(save_table(run_dir, "qa", name, pd.DataFrame(rows)))
        for name, rows in (
            ("completeness", report.completeness),
            ("units", report.units),
            ("mismatches", report.mismatches),
            ("metrics", report.metrics),
            ("sample", report.sample),
        )
    ]
    passed = ref_ok and report.passed
    reason = report.verdict() if ref_ok else f"reference run failed: {ref_reason}"
    result = finish_phase(
        run_dir,
        "qa",
        passed,
        reason,
        started,
        summary={
            "validation_set": types,
            "missing": report.missing,
            "mismatches": len(report.mismatches),
            "metrics": report.metrics,
            "reference_steps": {k: v.get("state") for k, v in ref_steps.items()},
            "sample": {
                "full": sample.full,
                "units": {s: [str(u) for u in us] for s, us in sample.units.items()},
                "reference units": len(sample.reach),
                "note": sample.describe(),
            },
        },
        artifacts=artifacts,
    )
    return result, report


def dashboard(campaign: Campaign | str | Path, run_dir: str | Path, view: Any = None) -> PhaseResult:
    """The chain's last page: where every site stands, recorded as ``results/dashboard.json``.

    ``view`` is a :class:`~multisite_nb.views.dashboard.Dashboard` already showing (its last
    reading is recorded); without one, a reading is taken now.
    """
    from .views.dashboard import Dashboard

    view = view or Dashboard(_campaign(campaign), run_dir)
    return view.record_snapshot(run_dir)
