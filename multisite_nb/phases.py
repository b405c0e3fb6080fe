"""Each phase as one library call: act, judge the gate, record the result.

The notebooks call these and show what comes back; the same calls run a phase without a
notebook. Each returns the recorded :class:`~multisite_nb.results.PhaseResult` and the
phase's details (plan, outcomes, reports) for display.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from .config import Campaign, load_campaign
from .errors import ConfigError, GateError
from .naming import plan_path
from .results import PhaseResult, load_result, record_result, save_table, utcnow

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


def placement(campaign: Campaign | str | Path, run_dir: str | Path) -> tuple[PhaseResult, Any]:
    """Phase 1: plan what each site needs; save the plan and per-site manifests; find collisions."""
    from .collisions import preflight as preflight_collisions
    from .ownership import refusals
    from .placement import plan_placement
    from .runbook import check_run_folder
    from .wiring import load_pipeline_graph

    started = utcnow()
    campaign = _campaign(campaign)
    check_run_folder(run_dir)
    graph = load_pipeline_graph(campaign.pipeline_path)
    refused = refusals(campaign, graph)  # what no placement can make consistent, before any byte moves
    plan = plan_placement(campaign)
    collisions = preflight_collisions(campaign, [n.dataset_type for n in graph.dataset_types.values()])
    artifacts = [str(plan.save(plan_path(run_dir)))]
    for site in plan.sites:
        artifacts.append(str(save_table(run_dir, "placement", f"manifest_{site}", pd.DataFrame(plan.manifest_rows(site)))))
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
            f"{len(plan.boundary_visits)} boundary visits ({cost['extra_copies']} extra copies, {cost['extra_bytes']} bytes)"
        )
    result = PhaseResult(
        phase="placement", passed=passed, reason=reason, started=started, finished=utcnow(),
        summary={"campaign_file": str(campaign.path),
                 "sites": {r["site"]: {"files": r["files"], "bytes": r["bytes"], "visits": r["visits"]} for r in counts},
                 "boundary_visits": len(plan.boundary_visits), "boundary_cost": cost, "collisions": collisions,
                 "refused": refused,
                 "boundary_by_sites": _boundary_by_sites(plan)},
        artifacts=artifacts,
    )
    record_result(run_dir, result)
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


def transfer(campaign: Campaign | str | Path, run_dir: str | Path, *, progress: bool = True,
             timeout_s: float = 900) -> tuple[PhaseResult, list[Any]]:
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
        "all rules OK; " + ", ".join(f"{o.dest}: {o.ingested} ingested, {o.already_present} already there" for o in outcomes)
        if passed else "; ".join(f"{o.dest}: {o.state}: {o.error}" for o in failed)
    )
    result = PhaseResult(
        phase="transfer", passed=passed, reason=reason, started=started, finished=utcnow(),
        summary={"shipments": {o.dest: {"rule": o.state, "rule_id": o.rule_id, "files": o.registered,
                                        "ingested": o.ingested, "already_present": o.already_present,
                                        "seconds": {k: round(v, 2) for k, v in o.seconds.items()}}
                               for o in outcomes}},
        artifacts=[str(table)],
    )
    record_result(run_dir, result)
    return result, outcomes


def verify(campaign: Campaign | str | Path, run_dir: str | Path, *, checksums: bool = True) -> tuple[PhaseResult, list[Any]]:
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
    artifacts = [str(save_table(run_dir, "verify", "counts", counts)),
                 str(save_table(run_dir, "verify", "problems",
                                pd.DataFrame(problems, columns=["site", "layer", "problem", "file", "detail"])))]
    bad = [r for r in reports if not r.ok]
    passed = not bad
    if passed:
        reason = f"all {sum(r.planned for r in reports)} planned files in place at {len(reports)} sites (Rucio, Butler, disk)"
    else:
        first = bad[0].problems[0]
        reason = (f"{sum(len(r.problems) for r in bad)} problems at {', '.join(r.site for r in bad)}; "
                  f"first: {first.site} {first.layer} {first.kind} {first.what} ({first.detail})")
    result = PhaseResult(
        phase="verify", passed=passed, reason=reason, started=started, finished=utcnow(),
        summary={"sites": {r.site: r.counts() for r in reports}, "problems": len(problems)},
        artifacts=artifacts,
    )
    record_result(run_dir, result)
    return result, reports


# -- phases 4-6 ----------------------------------------------------------------------------


def _stage(campaign: Campaign, name: str):
    for st in campaign.config.stages:
        if st.name == name:
            return st
    raise ConfigError(f"{campaign.path}: no stage {name!r} in 'stages' (have: {', '.join(s.name for s in campaign.config.stages)})")


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


def run_steps(campaign: Campaign, site: str, steps: list[str], run_dir: str | Path,
              extra_inputs: list[str], progress: Callable[[dict[str, Any]], None] | None = None,
              stop: threading.Event | None = None) -> dict[str, Any]:
    """Run steps in order at one site (pre-flight, run, restart when the run exists); stop at a failure.

    ``progress`` is called with the site's steps so far, a step marked ``running`` while it runs.
    Once ``stop`` is set no further step starts.
    """
    from .submit import preflight, run_step, step_run

    out: dict[str, Any] = {}
    log_dir = Path(run_dir) / "artifacts" / "logs"
    for step in steps:
        if stop is not None and stop.is_set():
            break
        if progress:
            progress({**out, step: {"state": "running"}})
        sr = step_run(campaign, site, step, extra_inputs=extra_inputs)
        # restart=True: an existing run of this step is finished, not redone (idempotent phases)
        problems = preflight(campaign, sr, restart=True)
        if problems:
            out[step] = {"state": "failed", "succeeded": 0, "failed": 0, "pending": 0,
                         "failures": [{"task": "(pre-flight)", "data_id": "", "cause": p} for p in problems]}
            break
        status = run_step(campaign, sr, restart=True, log_dir=log_dir)
        out[step] = status.as_dict()
        if status.state != "ok":
            break
    if progress:
        progress(out)
    return out


class _InFlight:
    """Keeps a phase's result file current while its steps run, for the dashboard.

    The result says ``passed: false`` with ``in_progress`` until the phase records its
    verdict, so nothing downstream mistakes a running phase for a finished one.
    """

    def __init__(self, run_dir: str | Path, label: str, started: Any, base: dict[str, Any]):
        self.run_dir, self.label, self.started, self.base = run_dir, label, started, base
        self.steps: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()  # sites report from their own threads

    def site(self, site: str) -> Callable[[dict[str, Any]], None]:
        def update(site_steps: dict[str, Any]) -> None:
            with self._lock:
                self.steps[site] = dict(site_steps)
                running = [f"{s} {k}" for s, by in self.steps.items() for k, v in by.items()
                           if v.get("state") == "running"]
                record_result(self.run_dir, PhaseResult(
                    phase=self.label, passed=False, reason=f"in progress: {', '.join(running) or 'between steps'}",
                    started=self.started, summary={**self.base, "steps": dict(self.steps), "in_progress": True}))
        return update

    def end(self, reason: str) -> None:
        """Record the phase as ended without a verdict (failed, no longer in progress)."""
        with self._lock:
            record_result(self.run_dir, PhaseResult(
                phase=self.label, passed=False, reason=reason, started=self.started, finished=utcnow(),
                summary={**self.base, "steps": dict(self.steps), "in_progress": False}))


def _steps_verdict(steps: dict[str, dict[str, Any]]) -> tuple[bool, str]:
    bad = [(site, step, st) for site, by in steps.items() for step, st in by.items() if st.get("state") != "ok"]
    if not bad:
        n = sum(st.get("succeeded", 0) for by in steps.values() for st in by.values())
        return True, f"{n} quanta succeeded in {sum(len(by) for by in steps.values())} site-steps"
    site, step, st = bad[0]
    cause = (st.get("failures") or [{}])[0]
    return False, (f"{site} {step}: {st.get('state')} ({st.get('failed', 0)} failed); first: "
                   f"{cause.get('task', '')} {cause.get('data_id', '')}: {cause.get('cause', '')}").strip()


def steps_table(steps: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per site and step: state, quanta counts, when it started (UTC) and how long it took."""
    return pd.DataFrame([
        {"site": site, "step": step, **{k: v.get(k) for k in ("state", "succeeded", "failed", "pending")},
         "started": (v.get("started") or "")[11:19], "seconds": v.get("seconds")}
        for site, by in steps.items() for step, v in by.items()
    ])


def submit(campaign: Campaign | str | Path, run_dir: str | Path, stage: str) -> tuple[PhaseResult, dict[str, Any]]:
    """Phase 4: run a site stage's steps at every remote site."""
    started = utcnow()
    campaign = _campaign(campaign)
    st = _stage(campaign, stage)
    if st.where != "sites":
        raise ValueError(f"stage {stage!r} runs centrally: use gather_redistribute")
    require_passed(run_dir, "verify")
    extra = _extra_inputs(run_dir)
    # pre-flight every site's first step before submitting anything anywhere
    # (later steps read what earlier ones write, so they are checked just before they run)
    from .submit import preflight, step_run, stop_running_steps

    blocked = {site: preflight(campaign, step_run(campaign, site, st.steps[0], extra_inputs=extra.get(site, [])),
                               restart=True)
               for site in campaign.remote_sites}
    if any(blocked.values()):
        steps = {site: {st.steps[0]: {"state": "failed", "succeeded": 0, "failed": 0, "pending": 0,
                                      "failures": [{"task": "(pre-flight)", "data_id": "", "cause": p} for p in probs]}}
                 for site, probs in blocked.items() if probs}
    else:
        live = _InFlight(run_dir, f"submit_{stage}", started, {"stage": stage})
        sites = campaign.remote_sites
        # the sites work side by side, as the facilities do; each runs its own steps in order
        at_once = min(len(sites), campaign.manifest.workflow.sites_at_once or len(sites))
        stop = threading.Event()
        interrupted: BaseException | None = None
        stopped = 0
        with ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="site") as pool:
            futures = {site: pool.submit(run_steps, campaign, site, st.steps, run_dir, extra.get(site, []),
                                         live.site(site), stop)
                       for site in sites}
            try:
                steps = {site: futures[site].result() for site in sites}
            except BaseException as exc:  # interrupted, or a site raised: start nothing more, stop what runs
                stop.set()
                stopped = stop_running_steps()
                interrupted = exc
        if interrupted is not None:  # the sites' threads have ended: record where things stand, not 'running'
            what = "interrupted" if isinstance(interrupted, KeyboardInterrupt) else f"stopped by {interrupted!r}"
            live.end(f"{what}; {stopped} running step(s) stopped, a new run of the phase restarts them")
            raise interrupted
    passed, reason = _steps_verdict(steps)
    table = save_table(run_dir, f"submit_{stage}", "steps", steps_table(steps))
    result = PhaseResult(phase=f"submit_{stage}", passed=passed, reason=reason, started=started, finished=utcnow(),
                         summary={"stage": stage, "steps": steps}, artifacts=[str(table)])
    record_result(run_dir, result)
    return result, steps


def _ship(campaign: Campaign, plan: Any, run_dir: str | Path, label: str, progress: bool,
          collisions_fatal: bool = True) -> tuple[bool, str, list[dict[str, Any]]]:
    """Ship a gather/redistribution plan and verify it; returns (passed, reason, rows).

    Collisions (one data ID from several sites) are fatal before a central stage, whose
    lookups would see only one of them; brought home at the end they are fine, each in its
    own site's RUN collection.
    """
    from .gather import ship_and_verify

    if plan.collisions and collisions_fatal:
        c = plan.collisions[0]
        return False, (f"{len(plan.collisions)} collisions: {c.dataset_type} {c.data_id} comes from "
                       f"{', '.join(c.sites)}; give those sites distinct sky (or runs)"), []
    outcomes, reports = ship_and_verify(campaign, plan, progress=progress, log=lambda m: None)
    rows = [o.as_row() for o in outcomes]
    bad = [o for o in outcomes if o.error]
    problems = [p for r in reports for p in r.problems]
    if bad:
        return False, f"{bad[0].name}: {bad[0].state}: {bad[0].error}", rows
    if problems:
        p = problems[0]
        return False, f"{len(problems)} problems after {label}; first: {p.site} {p.layer} {p.kind} {p.what} ({p.detail})", rows
    return True, f"{label}: {sum(r['files'] for r in rows)} files moved and verified", rows


def gather_redistribute(campaign: Campaign | str | Path, run_dir: str | Path, stage: str, *,
                        progress: bool = True, validation_set: list[str] | None = None) -> tuple[PhaseResult, dict[str, Any]]:
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
    if stage == "final":
        types = validation_set or wiring.final_products
        plan = plan_gather(campaign, types, "final", ownership=_ownership(campaign, run_dir))
        tables["final"] = pd.DataFrame(plan.counts())
        passed, reason, rows = _ship(campaign, plan, run_dir, "final gather", progress, collisions_fatal=False)
        summary.update(validation_set=types, shipments=rows, runs_at_central=plan.runs.get(campaign.central, []))
    else:
        st = _stage(campaign, stage)
        if st.where != "central":
            raise ValueError(f"stage {stage!r} runs at the sites: use submit")
        gathered = wiring.gathered_before(stage)
        gplan = plan_gather(campaign, gathered, f"gather_{stage}", ownership=_ownership(campaign, run_dir))
        tables["gather"] = pd.DataFrame(gplan.counts())
        passed, reason, rows = _ship(campaign, gplan, run_dir, f"gather for {stage}", progress)
        summary.update(gathered=gathered, gather_shipments=rows)
        if passed:
            central_inputs = gplan.runs.get(campaign.central, [])
            live = _InFlight(run_dir, label, started, dict(summary))
            steps = {campaign.central: run_steps(campaign, campaign.central, st.steps, run_dir, central_inputs,
                                                 live.site(campaign.central))}
            summary["steps"] = steps
            passed, reason = _steps_verdict(steps)
        if passed:
            produced = [f"{campaign.output_prefix}/{campaign.central}/{step}" for step in st.steps]
            redistributed = wiring.redistributed_after(stage)
            rplan = plan_redistribution(campaign, redistributed, produced, f"redistribute_{stage}")
            tables["redistribute"] = pd.DataFrame(rplan.counts())
            passed, reason2, rows2 = _ship(campaign, rplan, run_dir, f"redistribution after {stage}", progress)
            summary.update(redistributed=redistributed, redistribute_shipments=rows2,
                           delivered_runs=rplan.runs)
            reason = reason2 if not passed else f"gathered {len(gathered)} types, ran {', '.join(st.steps)}, {reason2}"
    artifacts = [str(save_table(run_dir, label, name, df)) for name, df in tables.items()]
    result = PhaseResult(phase=label, passed=passed, reason=reason, started=started, finished=utcnow(),
                         summary=summary, artifacts=artifacts)
    record_result(run_dir, result)
    return result, summary


def qa(campaign: Campaign | str | Path, run_dir: str | Path, *, validation_set: list[str] | None = None,
       reference: bool = True) -> tuple[PhaseResult, Any]:
    """Phase 6: completeness per sky unit and agreement with a single-site reference run."""
    from .qa import evaluate, run_reference

    started = utcnow()
    campaign = _campaign(campaign)
    final = load_result(run_dir, "gather_redistribute_final")
    types = validation_set or (final.summary.get("validation_set") if final else None) or _wiring(campaign).final_products
    ref_steps = run_reference(campaign, Path(run_dir) / "artifacts" / "logs" / "reference") if reference else {}
    ref_ok, ref_reason = _steps_verdict({"reference": ref_steps}) if ref_steps else (True, "")
    report = evaluate(campaign, types, _ownership(campaign, run_dir))
    artifacts = [str(save_table(run_dir, "qa", name, pd.DataFrame(rows)))
                 for name, rows in (("completeness", report.completeness), ("units", report.units),
                                    ("mismatches", report.mismatches), ("metrics", report.metrics))]
    passed = ref_ok and report.passed
    reason = report.verdict() if ref_ok else f"reference run failed: {ref_reason}"
    result = PhaseResult(phase="qa", passed=passed, reason=reason, started=started, finished=utcnow(),
                         summary={"validation_set": types, "missing": report.missing,
                                  "mismatches": len(report.mismatches), "metrics": report.metrics,
                                  "reference_steps": {k: v.get("state") for k, v in ref_steps.items()}},
                         artifacts=artifacts)
    record_result(run_dir, result)
    return result, report


def dashboard(campaign: Campaign | str | Path, run_dir: str | Path, view: Any = None) -> PhaseResult:
    """The chain's last page: where every site stands, recorded as ``results/dashboard.json``.

    ``view`` is a :class:`~multisite_nb.views.dashboard.Dashboard` already showing (its last
    reading is recorded); without one, a reading is taken now.
    """
    from .views.dashboard import Dashboard

    view = view or Dashboard(_campaign(campaign), run_dir)
    return view.record_snapshot(run_dir)
