"""The forecast's inputs, counted from a placement plan, the pipeline and the site manifest's capacities.

Quanta are estimated from the data IDs each task works on (a per-detector task of a visit-level
step: visits x detectors; per visit: visits; per patch or tract: the site's units; a global task:
one), groups from the campaign's group sizes, exactly as the groups are cut. The capacities are
the manifest's, or those measured in an earlier run folder (:func:`measured_rates`): its steps'
seconds per quantum and its shipments' seconds per file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

from multisite_nb.adapters.files import atomic_write_json
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.forecast import Forecast, Rates, SiteLoad, StepLoad, forecast, link
from multisite_nb.domain.groups import group_dimension
from multisite_nb.domain.naming import artifacts_dir
from multisite_nb.domain.plan import PlacementPlan
from multisite_nb.domain.wiring import campaign_wiring, load_pipeline_graph

__all__ = [
    "campaign_forecast",
    "forecast_against_measured",
    "last_passed_run",
    "load_forecast",
    "manifest_rates",
    "measured_rates",
    "measured_stages",
    "save_forecast",
]

#: The per-quantum cost of a step the capacities do not name.
DEFAULT_KEY = "default"


def _units(campaign: Campaign, site: str) -> tuple[int, int]:
    """(tracts, patch-level units) of a site."""
    units = campaign.sky_units(site)
    return len({u.tract for u in units}), sum(1 for u in units if u.patch is not None) or len(units)


def _count(dims: Iterable[str], visits: int, detectors: int, tracts: int, patches: int) -> int:
    d = set(dims)
    if d & {"visit", "exposure"}:
        return visits * (detectors if "detector" in d else 1)
    if "patch" in d:
        return patches
    if "tract" in d:
        return tracts
    return 1


def _step_loads(
    campaign: Campaign, steps: Iterable[str], visits: int, detectors: int, tracts: int, patches: int
) -> list[StepLoad]:
    graph = load_pipeline_graph(campaign.pipeline_path)
    sizes = campaign.config.processing.sizes
    out = []
    for step in steps:
        labels = graph.task_subsets[step] if step in graph.task_subsets else ()
        quanta = sum(_count(graph.tasks[t].dimensions.names, visits, detectors, tracts, patches) for t in labels)
        dim = group_dimension(str(campaign.pipeline_path), step, sizes)
        values = {"visit": visits, "exposure": visits, "tract": tracts, "patch": patches}.get(dim or "", 1)
        out.append(StepLoad(step, quanta, math.ceil(values / sizes[dim]) if dim else 1))
    return out


def manifest_rates(campaign: Campaign) -> Rates:
    """The capacities of the campaign's site manifest, every link and step the forecast needs checked.

    Raises
    ------
    ConfigError
        Naming the manifest and the missing key (non-positive values are refused when it is read).
    """
    where = campaign.manifest_path
    caps = campaign.manifest.capacities
    if caps is None:
        raise ConfigError(
            f"{where}: key 'capacities' is missing: the forecast needs each link's mb_per_s and per_file_s "
            "and each step's per_quantum_s"
        )
    for site in campaign.remote_sites:
        for key in (link(campaign.central, site), link(site, campaign.central)):
            if key not in caps.links:
                raise ConfigError(f"{where}: key 'capacities.links.{key}' is missing (mb_per_s, per_file_s)")
    steps = [s for st in campaign.config.stages for s in st.steps]
    if DEFAULT_KEY not in caps.per_quantum_s:
        for step in steps:
            if step not in caps.per_quantum_s:
                raise ConfigError(
                    f"{where}: key 'capacities.per_quantum_s.{step}' is missing (or give "
                    f"'capacities.per_quantum_s.{DEFAULT_KEY}')"
                )
    return Rates(
        links={k: (v.mb_per_s * 1e6, v.per_file_s) for k, v in caps.links.items()},
        per_quantum_s=dict(caps.per_quantum_s),
        default_quantum_s=caps.per_quantum_s.get(DEFAULT_KEY, 0.0),
        per_group_s=caps.per_group_s,
        per_shipment_s=caps.per_shipment_s,
        in_flight=campaign.manifest.workflow.groups_in_flight,
    )


def _seconds(start: str, end: str) -> float:
    try:
        return (
            datetime.fromisoformat(end.replace("Z", "+00:00")) - datetime.fromisoformat(start.replace("Z", "+00:00"))
        ).total_seconds()
    except ValueError:
        return 0.0


def measured_rates(rates: Rates, run_dir: str | Path) -> Rates:
    """``rates`` with what ``run_dir`` measured instead, where it measured it.

    A step's seconds per quantum: over every site, the step's wall time per wave of groups, less a
    group's fixed cost, over a group's quanta (so the contention of the machine it ran on is in
    it). A shipment's fixed cost: the transfer's seconds per shipment. The links' bandwidths and
    per-file costs stay the manifest's (the embedded world's files are too small to measure them).
    """
    results = Path(run_dir) / "results"
    per_step: dict[str, list[float]] = {}
    per_shipment: list[float] = []
    for path in sorted(results.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        summary = data.get("summary") or {}
        staged = path.stem.startswith(("submit_", "gather_redistribute_"))  # the campaign's steps, not QA's
        for by_step in (summary.get("steps") or {}).values() if staged else ():
            for step, rec in by_step.items():
                wall = _seconds(rec.get("started") or "", rec.get("finished") or "")
                if rec.get("total") and wall > 0:
                    groups = max(1, (rec.get("groups") or {}).get("total", 1))
                    waves = math.ceil(groups / max(1, rates.in_flight))
                    per_group = max(0.0, wall / waves - rates.per_group_s)
                    per_step.setdefault(step, []).append(per_group / (float(rec["total"]) / groups))
        if path.stem == "transfer":
            for row in (summary.get("shipments") or {}).values():
                secs = sum((row.get("seconds") or {}).values())
                if secs:
                    per_shipment.append(secs / max(1, int(row.get("parts", 1))))
    quantum = dict(rates.per_quantum_s)
    for step, values in per_step.items():
        quantum[step] = sorted(values)[len(values) // 2]
    shipment = sum(per_shipment) / len(per_shipment) if per_shipment else rates.per_shipment_s
    return Rates(rates.links, quantum, rates.default_quantum_s, rates.per_group_s, shipment, rates.in_flight)


def campaign_forecast(
    campaign: Campaign,
    plan: PlacementPlan,
    *,
    measured_from: str | Path | None = None,
    run_dir: str | Path | None = None,
) -> Forecast:
    """The campaign's forecast from its placement plan (see :mod:`multisite_nb.domain.forecast`).

    ``measured_from``: an earlier run folder whose measured figures replace the manifest's;
    ``"last"``: the campaign's last passed run beside ``run_dir`` (none: the manifest's).
    """
    if measured_from == "last":
        measured_from = last_passed_run(run_dir) if run_dir is not None else None
    rates = manifest_rates(campaign)
    source = str(campaign.manifest_path)
    if measured_from:
        rates, source = measured_rates(rates, measured_from), f"measured in {measured_from}"
    wiring = campaign_wiring(campaign)
    graph = load_pipeline_graph(campaign.pipeline_path)
    gathered = {st.name: wiring.gathered_before(st.name) for st in campaign.config.stages if st.where == "central"}
    gps = campaign.config.processing.groups_per_shipment
    loads = []
    totals = [0, 0, 0, 0]
    for site in campaign.remote_sites:
        counts = plan.summary.sites.get(site)
        visits, detectors = len(plan.visits.get(site, [])), len(plan.detectors.get(site, [])) or 1
        tracts, patches = _units(campaign, site)
        for i, v in enumerate((visits, detectors, tracts, patches)):
            totals[i] = totals[i] + v if i != 1 else max(totals[i], v)
        steps = {
            st.name: _step_loads(campaign, st.steps, visits, detectors, tracts, patches)
            for st in campaign.config.stages
            if st.where == "sites"
        }
        first = next(iter(steps.values()), [])
        groups = first[0].groups if first else 1
        gathered_files = sum(
            _count(graph.dataset_types[t].dimensions.names, visits, detectors, tracts, patches)
            for types in gathered.values()
            for t in types
            if t in graph.dataset_types
        )
        loads.append(
            SiteLoad(
                site,
                counts.files if counts else 0,
                counts.bytes if counts else 0,
                batches=math.ceil(groups / gps),
                steps=steps,
                gathered_files=gathered_files,
            )
        )
    central_steps = {
        st.name: _step_loads(campaign, st.steps, *totals) for st in campaign.config.stages if st.where == "central"
    }
    return forecast(
        campaign.central,
        [(st.name, st.where) for st in campaign.config.stages],
        loads,
        central_steps,
        rates,
        boundary_extra_bytes=plan.summary.boundary_extra_bytes,
        capacities_from=source,
    )


def forecast_path(run_dir: str | Path) -> Path:
    """Where notebook 01 keeps the run's forecast (the run page reads it back)."""
    return artifacts_dir(run_dir, "placement") / "forecast.json"


def save_forecast(run_dir: str | Path, fc: Forecast) -> Path:
    """Write the forecast into the run folder (atomically)."""
    path = forecast_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, fc.model_dump(mode="json"))
    return path


def load_forecast(run_dir: str | Path) -> Forecast | None:
    """The run's forecast, if notebook 01 made one."""
    path = forecast_path(run_dir)
    try:
        return Forecast.model_validate_json(path.read_bytes())
    except (OSError, ValueError):
        return None


def last_passed_run(run_dir: str | Path) -> Path | None:
    """The newest other run folder of the same campaign (beside ``run_dir``) that passed: whose figures
    the forecast takes by default."""
    here = Path(run_dir).resolve()
    for other in sorted(here.parent.iterdir(), reverse=True) if here.parent.is_dir() else ():
        if other == here or not (other / "run.json").is_file():
            continue
        try:
            if json.loads((other / "run.json").read_text()).get("outcome") == "passed":
                return other
        except (OSError, ValueError):
            continue
    return None


def _load(results: Path, label: str) -> dict[str, Any]:
    try:
        data = json.loads((results / f"{label}.json").read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _span(records: Iterable[dict[str, Any]]) -> float:
    """Wall seconds from the first record's start to the last one's end."""
    starts = [r["started"] for r in records if r.get("started")]
    ends = [r["finished"] for r in records if r.get("finished")]
    return _seconds(min(starts), max(ends)) if starts and ends else 0.0


def measured_stages(run_dir: str | Path, stages: Iterable[str]) -> dict[str, dict[str, float]]:
    """What a run took, in the forecast's terms: stage -> site (and ``(stage)``) -> wall seconds.

    ``transfer``: per site, from the start of the shipping to its last shipment in place (a flowing
    run: its shipments overlap its first stage); a stage at the sites (``submit_<stage>``): per
    site, its steps' first start to their last end; a central stage and the final gather
    (``gather_redistribute_<stage>``): the phase's duration.
    """
    results = Path(run_dir) / "results"
    out: dict[str, dict[str, float]] = {}
    for stage in stages:
        if stage == "transfer":
            data = _load(results, "transfer")
            rows = (data.get("summary") or {}).get("shipments") or {}
            start = data.get("started", "")
            per_site = {s: _seconds(start, r["ok_at"]) for s, r in rows.items() if r.get("ok_at") and start}
            if per_site:
                out[stage] = {**per_site, "(stage)": max(per_site.values())}
            continue
        site_stage = _load(results, f"submit_{stage}")
        if site_stage:
            steps = (site_stage.get("summary") or {}).get("steps") or {}
            per_site = {s: _span(by.values()) for s, by in steps.items()}
            out[stage] = {**per_site, "(stage)": max(per_site.values(), default=0.0)}
            continue
        central = _load(results, f"gather_redistribute_{stage}")
        if central:
            out[stage] = {"(stage)": _seconds(central.get("started", ""), central.get("finished", ""))}
    return out


def forecast_against_measured(run_dir: str | Path) -> list[dict[str, Any]]:
    """Per stage and site: the forecast notebook 01 made, what the run took, and measured / forecast."""
    fc = load_forecast(run_dir)
    if fc is None:
        return []
    measured = measured_stages(run_dir, [st.stage for st in fc.stages])
    rows = []
    for st in fc.stages:
        got = measured.get(st.stage, {})
        for site, expected in [*st.sites.items(), ("(stage)", st.seconds)]:
            if site in got:
                m = got[site]
                ratio = round(m / expected, 2) if expected > 0 else None
                rows.append(
                    {
                        "stage": st.stage,
                        "site": site,
                        "forecast_s": round(expected, 1),
                        "measured_s": round(m, 1),
                        "ratio": ratio,
                    }
                )
    return rows
