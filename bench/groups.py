"""Benchmark: a site's step cut into groups, on the scale worlds (``scale_20k``, ``scale_wide``, ``scale_wide4``).

For each world it builds (or reuses, ``--world``) the world, then measures, through the toolkit's
own functions (``multisite_nb.phases.submit.groups``):

* the group plan (``plan_groups``: the step's selection from the registry, the cut, the plan's
  Parquet file) of every remote site and every site-stage step: wall time, and the Python heap's
  peak during it (tracemalloc, a second pass: tracing slows it down);
* the quantum graph of one group built for real (``pipetask qgraph`` of step 1, the first group of
  the biggest site, at the campaign's group size or ``--qg-size`` values): wall time, peak RSS of
  the ``pipetask`` process (``wait4``), quanta;
* beside it the whole site's graph (the same site's step 1 in one graph) where it fits
  (``--site-qg-max-raws``), else "skipped (too large)"; a site that is one group is not built twice;
* a data release (45 M raws): each site's groups per step, fitted on the worlds measured (the
  visits of a visit- or exposure-cut step as a line in raws; the tracts of a tract-cut step as the
  site's share of ~8,000 tracts), and the summed step-1 graph-building hours per site: its groups
  times a default-size group's seconds, at the per-visit cost of the largest world measured (a
  floor: that cost grows with the registry) and with that cost as a line in the world's raws; the
  peak RSS of a default-size group as a line in the group's visits over every graph measured.

Run all three worlds on 2 busy cores: ~90 min (the 378,000-raw world alone takes ~30 min to build);
``--worlds scale_20k`` ~6 min.

A world that has only been brought up holds everything in the central repository (USDF) and
nothing at the remote sites, so every plan is cut from the central registry (each remote site's
own sky units; ``--plan-from site`` reads the site's own registry instead, as ``step_run`` does) and
every graph is built against the central repository with the campaign's input collections. A
step-1 group of the default size is 500 LSSTCam exposures (94,500 raws), more than the biggest site
of ``scale_20k`` (75 visits) or ``scale_wide`` holds: there the group is the whole site (flagged
"partial") and its graph grows with the world; ``--qg-size N`` builds a group of N visits, which
every world fills, to compare like with like. Visits with a detector that no reference-catalog
shard overlaps are left out of the graphs (``pipetask qgraph`` refuses them: the scale worlds' shards
cover their tracts, and ``scale_wide``'s 3.5-deg visits at the grid's edge reach beyond them); how
many is printed. The world's services are stopped at the end, also on an error or an interrupt
(``--leave-up``: not). Asserts nothing.

    .venv/bin/python bench/groups.py [--worlds scale_20k,scale_wide,scale_wide4] [--world DIR ...]
        [--work DIR] [--qg-size N] [--site-qg-max-raws N] [--skip-site-qg] [--json FILE]

JSON (one object per world, a list if several): ``raws``, ``groups`` and ``group_plan_s`` (site ->
step -> groups, seconds), ``group_plan_peak_mb``, ``group_qg_s``, ``group_qg_peak_rss_mb`` (and the
group's site, visits, raws, quanta, ``group_qg_partial``), ``site_qg_s``, ``site_qg_peak_rss_mb``
(None: skipped), ``dr1_groups`` (site -> step -> groups at 45 M raws), ``dr1_qg_hours`` (site ->
hours of step-1 graph building, the floor) and ``dr1_qg_hours_fit``, plus ``build_s`` (``world up``),
``qg_visits_left_out`` and the fits (``qg_fit``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "parameters"
DR1_RAWS = 45_000_000
DR1_TRACTS = 8_000  # FIELD_NOTES section 2
QG_STEP = "step1"  # the step whose inputs (raws) exist once a world is up
#: The scale worlds: spec file and changes made to it.
WORLDS: dict[str, tuple[str, dict[str, Any]]] = {
    "scale_20k": ("scale_20k.yaml", {}),
    "scale_wide": ("scale_wide.yaml", {}),
    "scale_wide4": ("scale_wide.yaml", {"visits_per_band": 4}),
}
#: The column an exposure-level cut counts when its data-ID table lists visits (each visit whole), and back.
_SAME_CUT = {"exposure": "visit", "visit": "exposure"}
_QUANTA = re.compile(r"QuantumGraph contains (\d+) quanta")


@dataclass
class Graph:
    """One ``pipetask qgraph`` measured."""

    seconds: float
    peak_rss_mb: float
    quanta: int | None
    file_mb: float
    values: int
    raws: int


def world_files(name: str, folder: Path, spec: Path | None = None) -> tuple[Path, Path]:
    """The world spec and campaign of world ``name`` in ``folder`` (written unless already there).

    The campaign is ``campaign_scale_20k.yaml`` (three remote sites, each a block of whole tracts)
    with the spec's sky map and paths made absolute.
    """
    spec_file, campaign_file = folder / "scale_spec.yaml", folder / "scale_campaign.yaml"
    if not spec_file.exists():
        base, changes = WORLDS.get(name, ("", {}))
        data = yaml.safe_load((spec or PARAMS / "worlds" / base).read_text())
        spec_file.write_text(yaml.safe_dump({**data, **changes}, sort_keys=False))
    if not campaign_file.exists():
        data = yaml.safe_load((PARAMS / "campaign_scale_20k.yaml").read_text())
        tag = "groups" + re.sub(r"[^A-Za-z0-9]", "", name)
        data.update(campaign=tag, manifest=str(PARAMS / data["manifest"]), pipeline=str(PARAMS / data["pipeline"]))
        data["skymap"] = yaml.safe_load(spec_file.read_text()).get("skymap", data["skymap"])
        data["collections"]["output_prefix"] = tag
        campaign_file.write_text(yaml.safe_dump(data, sort_keys=False))
    return spec_file, campaign_file


def central_view(campaign: Any) -> Any:
    """The campaign with every remote site's repository read at the central one (its plan from the central
    registry, as a world holds it before any transfer)."""
    from multisite_nb.domain.config import Campaign

    central = campaign.manifest.sites[campaign.central]
    sites = {n: s.model_copy(update={"butler": central.butler}) for n, s in campaign.manifest.sites.items()}
    return Campaign(
        campaign.config, campaign.manifest.model_copy(update={"sites": sites}), campaign.path, campaign.manifest_path
    )


def sized(campaign: Any, dimension: str, size: int) -> Any:
    """The campaign with ``dimension`` cut ``size`` values a group."""
    from multisite_nb.domain.config import Campaign

    processing = campaign.config.processing
    group_size = {dimension: size, **{k: v for k, v in processing.group_size.items() if k != dimension}}
    config = campaign.config.model_copy(update={"processing": processing.model_copy(update={"group_size": group_size})})
    return Campaign(config, campaign.manifest, campaign.path, campaign.manifest_path)


def cut_values(campaign: Any, plan: Any) -> int:
    """How many values of its cut dimension a plan holds (visits, exposures, tracts; data IDs if not cut)."""
    from multisite_nb.domain.steps import site_units

    rows = [r for g in plan.groups for r in g.rows]
    if not plan.dimension:
        return len(rows)
    for column in (plan.dimension, _SAME_CUT.get(plan.dimension, "")):
        if column in plan.columns:
            at = plan.columns.index(column)
            return len({r[at] for r in rows})
    if plan.dimension == "tract":  # tract groups selected by their query alone
        return len({u.tract for u in site_units(campaign, plan.site)})
    return len(rows)


def site_steps(campaign: Any) -> list[str]:
    """Every step of the campaign's site stages, in order."""
    return [s for stage in campaign.config.stages if stage.where == "sites" for s in stage.steps]


def measure_plans(campaign: Any, scratch: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Every remote site's group plan of every site-stage step: seconds, heap peak, groups, values."""
    from multisite_nb.phases.submit.groups import plan_groups

    steps = site_steps(campaign)
    plan_groups(campaign, campaign.remote_sites[0], steps[0], scratch / "warm")  # imports, pipeline graph cached
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for i, site in enumerate(campaign.remote_sites):
        out[site] = {}
        for j, step in enumerate(steps):
            t0 = time.perf_counter()
            _, plan = plan_groups(campaign, site, step, scratch / f"time-{i}-{j}")
            seconds = time.perf_counter() - t0
            tracemalloc.start()
            plan_groups(campaign, site, step, scratch / f"mem-{i}-{j}")
            peak = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
            out[site][step] = {
                "seconds": seconds,
                "peak_mb": peak,
                "groups": plan.cut.groups,
                "dimension": plan.dimension,
                "size": plan.size,
                "values": cut_values(campaign, plan),
                "data_ids": plan.cut.data_ids,
                "plan_file_kb": round(_tree_kb(scratch / f"time-{i}-{j}"), 1),
            }
    return out


def _tree_kb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e3


def build_graph(sr: Any, central_repo: str, folder: Path, values: int, raws_per_value: float) -> Graph:
    """``pipetask qgraph`` of ``sr`` against the central repository: wall, peak RSS (``wait4``), quanta."""
    from multisite_nb.adapters.workflow.base import child_env, tool_path

    folder.mkdir(parents=True, exist_ok=True)
    graph, log = folder / "graph.qg", folder / "pipetask.log"
    cmd = [tool_path("pipetask"), "qgraph", "-b", central_repo, "-i", ",".join(sr.inputs), "-p", sr.pipeline]
    cmd += ["-d", sr.data_query, "--output-run", sr.output_run, "--save-qgraph", str(graph)]
    if sr.data_id_table is not None:
        ids = folder / "data_ids.ecsv"
        ids.write_text(sr.data_id_table.ecsv())
        cmd += ["--data-id-table", str(ids)]
    with log.open("w") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(db_auth=sr.db_auth), cwd=REPO)
        reaped = False
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            reaped = True
        finally:
            if not reaped:  # interrupted: the child goes too
                proc.kill()
                proc.wait()
        seconds = time.monotonic() - t0
    text = log.read_text(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"pipetask qgraph failed ({status}), see {log}:\n{text[-2000:]}")
    found = _QUANTA.findall(text)
    size = graph.stat().st_size / 1e6 if graph.exists() else 0.0
    graph.unlink(missing_ok=True)
    return Graph(
        seconds, usage.ru_maxrss / 1024, int(found[-1]) if found else None, size, values, round(values * raws_per_value)
    )


def uncovered_visits(
    repo: str, sr: Any, instrument: str, visits: list[int], enough: int, chunk: int = 200
) -> tuple[set[int], int]:
    """The visits (of ``visits``, in order) with a detector that no shard of the step's sky-pixel prerequisites
    (the reference catalog) overlaps: ``pipetask qgraph`` refuses a graph holding one of their quanta.

    Visits are examined in chunks until ``enough`` good ones are found; returns the bad ones and how
    many visits were examined.
    """
    from lsst.daf.butler import Butler

    from multisite_nb.domain.queries import id_ranges
    from multisite_nb.domain.wiring import load_pipeline_graph

    graph = load_pipeline_graph(sr.pipeline_path)
    names = {
        edge.parent_dataset_type_name
        for label in graph.task_subsets[sr.subset]
        for edge in graph.tasks[label].prerequisite_inputs.values()
        if (dims := graph.dataset_types[edge.parent_dataset_type_name].dimensions).skypix
        and set(dims.required) <= set(dims.skypix)
    }
    bad: set[int] = set()
    examined = 0
    if not names:
        return bad, examined
    with Butler.from_config(repo) as butler:
        shards: dict[str, set[int]] = {}
        for name in names:
            refs = butler.query_datasets(name, collections=sr.inputs, limit=None, explain=False)
            for ref in refs:
                for dim in ref.dataId.dimensions.skypix:
                    shards.setdefault(dim, set()).add(int(ref.dataId[dim]))
        pixels = {dim: butler.dimensions.skypix_dimensions[dim].pixelization for dim in shards}
        for i in range(0, len(visits), chunk):
            if examined - len(bad) >= enough:
                break
            part = visits[i : i + chunk]
            where = f"instrument = '{instrument}' AND visit IN ({id_ranges(part)})"
            records = butler.query_dimension_records("visit_detector_region", where=where, limit=None, explain=False)
            for r in records:
                if not all(
                    any(p in shards[d] for a, b in pixels[d].envelope(r.region) for p in range(a, b)) for d in shards
                ):
                    bad.add(int(r.dataId["visit"]))
            examined += len(part)
    return bad, examined


def measure_graphs(
    campaign: Any,
    original: Any,
    plans: dict[str, dict[str, dict[str, Any]]],
    args: argparse.Namespace,
    raws: float,
    visits: int,
    scratch: Path,
) -> dict[str, Any]:
    """Step 1's graph of the biggest site's first group, and of the whole site where it fits."""
    from multisite_nb.phases.submit.groups import cut_step, group_runs
    from multisite_nb.phases.submit.selection import step_run

    site = max(plans, key=lambda s: plans[s][QG_STEP]["values"])
    base = step_run(campaign, site, QG_STEP)
    default = cut_step(campaign, base)
    size = args.qg_size or default.size
    central_repo = original.butler_repo(original.central)
    per_value = raws / max(1, visits)
    left_out: list[int] = []
    table = base.data_id_table
    if table is not None and "visit" in table.columns:  # leave out visits whose graph pipetask refuses
        at = table.columns.index("visit")
        ordered = sorted({int(r[at]) for r in table.rows})
        whole_site = not args.skip_site_qg and len(ordered) * per_value <= args.site_qg_max_raws
        bad, examined = uncovered_visits(
            central_repo, base, campaign.config.instrument, ordered, len(ordered) if whole_site else size
        )
        if bad:
            left_out = sorted(bad)
            kept = tuple(r for r in table.rows if int(r[at]) not in bad)
            base = replace(base, data_id_table=replace(table, rows=kept))
            print(
                f"    {len(bad)} of the first {examined} visits of {site} left out: a detector with no "
                "reference-catalog shard (pipetask qgraph refuses them)",
                flush=True,
            )
    plan = cut_step(sized(campaign, default.dimension, size), base) if default.dimension else default
    group_sr = group_runs(campaign, base, plan)[0]
    group_values = cut_values(campaign, replace(plan, groups=plan.groups[:1]))
    site_values = cut_values(campaign, plan)
    out: dict[str, Any] = {"site": site, "dimension": plan.dimension, "size": size, "site_values": site_values}
    out["left_out"] = left_out
    print(f"    step 1 graph of {site}'s group 1 ({group_values} of {size} {plan.dimension}s) ...", flush=True)
    group = build_graph(group_sr, central_repo, scratch / "group", group_values, per_value)
    out["group"] = group
    out["partial"] = group_values < size
    whole = len(plan.groups) == 1
    site_raws = round(site_values * per_value)
    if whole:
        out["site_graph"], out["site_note"] = group, "the site is one group"
    elif args.skip_site_qg:
        out["site_graph"], out["site_note"] = None, "skipped (--skip-site-qg)"
    elif site_raws > args.site_qg_max_raws:
        out["site_graph"], out["site_note"] = None, f"skipped (too large: ~{site_raws:,} raws)"
    else:
        print(f"    step 1 graph of {site}'s whole site ({site_values} {plan.dimension}s) ...", flush=True)
        out["site_graph"], out["site_note"] = (
            build_graph(base, central_repo, scratch / "site", site_values, per_value),
            "",
        )
    return out


def run_world(name: str, world: Path, spec: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    """Build or reuse the world, measure it, stop its services."""
    from multisite_nb.run.context import load_for_world

    world.mkdir(parents=True, exist_ok=True)
    spec_file, campaign_file = world_files(name, world, spec)
    env = {**os.environ, "MSNB_WORLD": str(world)}
    cli = str(REPO / ".venv" / "bin" / "multisite-nb")
    out: dict[str, Any] = {"world_name": name, "world": str(world)}
    try:
        print(f"\n{name}: world up in {world} ...", flush=True)
        t0 = time.monotonic()
        up = [cli, "world", "up", "--dir", str(world), "--spec", str(spec_file), "--params", str(campaign_file)]
        subprocess.run([*up, "--db", args.db], env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
        out["build_s"] = round(time.monotonic() - t0, 1)
        state = json.loads((world / "world.json").read_text())
        out["raws"] = state["central_counts"]["datasets"]["raw"]
        visits = state["central_counts"]["records"].get("visit", 0)
        out["visits"] = visits
        original = load_for_world(campaign_file, world)
        campaign = central_view(original) if args.plan_from == "central" else original
        out["tracts"] = {s: len({u.tract for u in campaign.sky_units(s)}) for s in campaign.remote_sites}
        with tempfile.TemporaryDirectory(prefix="msnb-groups-", dir=args.work) as tmp:
            print(
                f"    group plans of {len(campaign.remote_sites)} sites x {len(site_steps(campaign))} steps ...",
                flush=True,
            )
            t0 = time.monotonic()
            plans = measure_plans(campaign, Path(tmp) / "plans")
            out["plans_wall_s"] = round(time.monotonic() - t0, 1)
            out["plans"] = plans
            try:
                graphs = measure_graphs(campaign, original, plans, args, out["raws"], visits, Path(tmp) / "graphs")
            except RuntimeError as exc:  # a graph pipetask refused: the other figures still stand
                print(f"    {exc}", flush=True)
                graphs, out["qg_error"] = None, str(exc)[-2000:]
        out.update(_figures(plans, graphs))
    finally:
        down = [cli, "world", "down", "--dir", str(world), "--params", str(campaign_file)]
        if not args.leave_up:
            subprocess.run(down, env=env, cwd=REPO, check=False, stdout=subprocess.DEVNULL)
    return out


def _figures(plans: dict[str, dict[str, dict[str, Any]]], graphs: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON figures of one world (``graphs`` None: no graph could be built)."""
    out = {
        "groups": {s: {t: p["groups"] for t, p in steps.items()} for s, steps in plans.items()},
        "group_plan_s": {s: {t: round(p["seconds"], 3) for t, p in steps.items()} for s, steps in plans.items()},
        "group_plan_peak_mb": {s: {t: round(p["peak_mb"], 2) for t, p in steps.items()} for s, steps in plans.items()},
    }
    if graphs is None:
        return out
    group, site = graphs["group"], graphs["site_graph"]
    return {
        **out,
        "qg_visits_left_out": graphs["left_out"],
        "group_qg_site": graphs["site"],
        "group_qg_dimension": graphs["dimension"],
        "group_qg_size": graphs["size"],
        "group_qg_values": group.values,
        "group_qg_raws": group.raws,
        "group_qg_quanta": group.quanta,
        "group_qg_partial": graphs["partial"],
        "group_qg_s": round(group.seconds, 1),
        "group_qg_peak_rss_mb": round(group.peak_rss_mb, 1),
        "group_qg_file_mb": round(group.file_mb, 1),
        "site_qg_values": graphs["site_values"],
        "site_qg_quanta": site.quanta if site else None,
        "site_qg_s": round(site.seconds, 1) if site else None,
        "site_qg_peak_rss_mb": round(site.peak_rss_mb, 1) if site else None,
        "site_qg_note": graphs["site_note"],
    }


def line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x`` (through the origin with one point, or one distinct x)."""
    if len(set(xs)) < 2:
        return 0.0, (sum(ys) / sum(xs) if sum(xs) else 0.0)
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def dr1(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Groups per site and step at 45 M raws, and the summed step-1 graph-building hours per site (fits)."""
    first = results[0]["plans"]
    groups: dict[str, dict[str, int]] = {}
    values: dict[str, dict[str, int]] = {}
    for site, steps in first.items():
        groups[site], values[site] = {}, {}
        for step, p in steps.items():
            if not p["dimension"]:
                n = 1  # a global step: one group at any scale
            elif p["dimension"] == "tract":  # the footprint, not the depth: the site's share of a release's tracts
                share = p["values"] / max(1, sum(results[0]["tracts"].values()))
                n = round(share * DR1_TRACTS)
            else:
                xs = [float(r["raws"]) for r in results]
                ys = [float(r["plans"][site][step]["values"]) for r in results]
                a, b = line(xs, ys)
                n = max(0, round(a + b * DR1_RAWS))
            values[site][step] = n
            groups[site][step] = max(1, math.ceil(n / p["size"])) if p["size"] else 1
    # a step-1 graph's peak RSS: a line in its group's visits (every graph measured); its seconds per visit at
    # the largest world measured (a floor: they grow with the registry), and as a line in the world's raws
    built = [r for r in results if "group_qg_s" in r]
    points = []
    for r in built:
        points.append((r["group_qg_values"], r["group_qg_peak_rss_mb"]))
        if r["site_qg_s"] is not None and r["site_qg_values"] != r["group_qg_values"]:
            points.append((r["site_qg_values"], r["site_qg_peak_rss_mb"]))
    ma, mb = line([float(x) for x, _ in points], [float(y) for _, y in points])
    size = first[next(iter(first))][QG_STEP]["size"] or 1
    per_visit = [(float(r["raws"]), r["group_qg_s"] / max(1, r["group_qg_values"])) for r in built]
    largest = max(per_visit, default=(0.0, 0.0))
    per_group_s = largest[1] * size
    trend: tuple[float, float] | None = None
    if len({x for x, _ in per_visit}) > 1:
        trend = line([x for x, _ in per_visit], [y for _, y in per_visit])
    per_group_fit_s = (trend[0] + trend[1] * DR1_RAWS) * size if trend else None
    return {
        "dr1_values": values,
        "dr1_groups": groups,
        "dr1_qg_hours": {s: round(groups[s][QG_STEP] * per_group_s / 3600, 1) for s in groups},
        "dr1_qg_hours_fit": {s: round(groups[s][QG_STEP] * per_group_fit_s / 3600, 1) for s in groups}
        if per_group_fit_s is not None
        else None,
        "qg_fit": {
            "mb_a": round(ma, 1),
            "mb_per_visit": round(mb, 3),
            "rss_points": len(points),
            "s_per_visit": {r["world_name"]: round(y, 3) for r, (_, y) in zip(built, per_visit, strict=True)},
            "s_per_visit_per_m_raws": round(trend[1] * 1e6, 3) if trend else None,
            "s_per_visit_a": round(trend[0], 3) if trend else None,
        },
        "dr1_group_qg_s": round(per_group_s, 1),
        "dr1_group_qg_s_fit": round(per_group_fit_s, 1) if per_group_fit_s is not None else None,
        "dr1_group_qg_peak_rss_mb": round(ma + mb * size, 0),
    }


def report(results: list[dict[str, Any]], fit: dict[str, Any]) -> None:
    """Print a table per world, the group-vs-site ratios, the flatness and the data-release fit."""
    for r in results:
        print(f"\n{r['world_name']}: {r['raws']:,} raws, {r['visits']:,} visits (world up in {r['build_s']} s)")
        print(f"  group plans ({r['plans_wall_s']} s for all, with the tracemalloc pass):")
        steps = list(next(iter(r["plans"].values())))
        sites = list(r["plans"])
        print("    " + f"{'step':6s} {'cut':>12s} " + " ".join(f"{s:>24s}" for s in sites))
        for step in steps:
            first = r["plans"][sites[0]][step]
            cut = f"{first['size']} {first['dimension']}" if first["dimension"] else "not cut"
            cells = []
            for site in sites:
                p = r["plans"][site][step]
                cells.append(f"{p['groups']:>5,} {p['seconds']:6.2f} s {p['peak_mb']:5.1f} MB")
            print("    " + f"{step:6s} {cut:>12s} " + " ".join(f"{c:>24s}" for c in cells))
        print("    (each: groups, plan seconds, Python heap peak during the plan)")
        if "group_qg_s" not in r:
            print(f"  step 1 graph: not built ({r.get('qg_error', '').strip().splitlines()[-1]})")
            continue
        if r["qg_visits_left_out"]:
            print(
                f"  {len(r['qg_visits_left_out'])} visits left out of the graphs: a detector with no "
                "reference-catalog shard (the world's shards cover its tracts, not its visits)"
            )
        full = "partial: the whole site" if r["group_qg_partial"] else "full"
        print(
            f"  step 1 graph, {r['group_qg_site']}'s group 1: {r['group_qg_values']} {r['group_qg_dimension']}s "
            f"of {r['group_qg_size']} ({full}), ~{r['group_qg_raws']:,} raws, {r['group_qg_quanta']} quanta: "
            f"{r['group_qg_s']:.1f} s, peak RSS {r['group_qg_peak_rss_mb']:.0f} MB, file {r['group_qg_file_mb']} MB"
        )
        if r["site_qg_s"] is None:
            print(
                f"  step 1 graph, {r['group_qg_site']}'s whole site ({r['site_qg_values']} visits): {r['site_qg_note']}"
            )
        else:
            note = f" ({r['site_qg_note']})" if r["site_qg_note"] else ""
            print(
                f"  step 1 graph, {r['group_qg_site']}'s whole site ({r['site_qg_values']} visits, "
                f"{r['site_qg_quanta']} quanta): {r['site_qg_s']:.1f} s, "
                f"peak RSS {r['site_qg_peak_rss_mb']:.0f} MB{note}"
            )
            print(
                f"  group / whole site: time x{r['group_qg_s'] / r['site_qg_s']:.2f}, "
                f"peak RSS x{r['group_qg_peak_rss_mb'] / r['site_qg_peak_rss_mb']:.2f}"
            )
    print("\ngroup graph across the worlds (step 1, first group of the biggest site):")
    built = [r for r in results if "group_qg_s" in r]
    for r in built:
        full = " partial" if r["group_qg_partial"] else ""
        print(
            f"  {r['world_name']:12s} {r['raws']:>9,} raws: group of {r['group_qg_values']:>4d}{full:8s} "
            f"{r['group_qg_s']:7.1f} s  peak RSS {r['group_qg_peak_rss_mb']:6.0f} MB"
        )
    full = [r for r in built if not r["group_qg_partial"]]
    if len(full) > 1:
        rss = [r["group_qg_peak_rss_mb"] for r in full]
        secs = [r["group_qg_s"] for r in full]
        print(
            f"  full groups, {full[0]['raws']:,} to {full[-1]['raws']:,} raws: "
            f"peak RSS {min(rss):.0f}-{max(rss):.0f} MB "
            f"(max/min x{max(rss) / min(rss):.2f}), {min(secs):.0f}-{max(secs):.0f} s (x{max(secs) / min(secs):.2f})"
        )
    q = fit["qg_fit"]
    size = results[0]["plans"][next(iter(results[0]["plans"]))][QG_STEP]["size"]
    print(f"\ndata release ({DR1_RAWS / 1e6:.0f} M raws, ~{DR1_TRACTS:,} tracts), fitted on {len(results)} world(s):")
    per = ", ".join(f"{w} {v:.2f}" for w, v in q["s_per_visit"].items())
    print(f"  step 1 graph seconds per visit of a group: {per}")
    print(
        f"  a {size}-visit group's graph: {fit['dr1_group_qg_s']:.0f} s at the largest world's cost (a floor), "
        f"peak RSS {fit['dr1_group_qg_peak_rss_mb']:.0f} MB ({q['mb_a']:.0f} MB + {q['mb_per_visit']:.2f} MB a visit, "
        f"{q['rss_points']} graphs)"
    )
    if fit["dr1_group_qg_s_fit"] is not None:
        print(
            f"  its seconds per visit as a line in the registry's raws: {q['s_per_visit_a']:.2f} s + "
            f"{q['s_per_visit_per_m_raws']:.2f} s per million raws: {fit['dr1_group_qg_s_fit'] / 3600:.1f} h a group "
            "at 45 M (if the growth stayed linear)"
        )
    steps = list(next(iter(fit["dr1_groups"].values())))
    print("    " + f"{'site':6s} " + " ".join(f"{s:>7s}" for s in steps) + "  step-1 graph hours (floor; fit)")
    for site, by_step in fit["dr1_groups"].items():
        cells = " ".join(f"{n:>7,}" for n in by_step.values())
        fitted = f"; {fit['dr1_qg_hours_fit'][site]:,.0f} h" if fit["dr1_qg_hours_fit"] else ""
        print(f"    {site:6s} {cells}  {fit['dr1_qg_hours'][site]:8,.1f} h{fitted}")
    print("    (groups per step: visits and exposures a line in raws, tracts the site's share of the release's)")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--worlds",
        default="scale_20k,scale_wide,scale_wide4",
        help=f"worlds to measure, in order ({', '.join(WORLDS)}, or NAME=SPEC.yaml)",
    )
    parser.add_argument(
        "--world",
        type=Path,
        action="append",
        default=[],
        help="reuse (or build) the world in this folder (repeatable, one per --worlds entry)",
    )
    parser.add_argument("--work", type=Path, help="where the worlds are built (default: a new folder in /tmp)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--qg-size",
        type=int,
        help="values (visits) of the group whose graph is built (default: the campaign's group size)",
    )
    parser.add_argument(
        "--site-qg-max-raws",
        type=int,
        default=30_000,
        help="build the whole site's graph only up to this many raws (default 30,000)",
    )
    parser.add_argument("--skip-site-qg", action="store_true", help="never build the whole site's graph")
    parser.add_argument(
        "--plan-from",
        choices=("central", "site"),
        default="central",
        help="the registry the remote sites' plans are cut from (default: the central one)",
    )
    parser.add_argument("--leave-up", action="store_true", help="do not stop the worlds' services at the end")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.worlds.split(",") if n.strip()]
    if args.world and len(args.world) != len(names):
        parser.error("give one --world per --worlds entry")
    specs: dict[str, Path | None] = {}
    for i, entry in enumerate(names):
        name, _, spec = entry.partition("=")
        if not spec and name not in WORLDS:
            parser.error(f"unknown world {name!r}: one of {', '.join(WORLDS)}, or NAME=SPEC.yaml")
        names[i], specs[name] = name, Path(spec).resolve() if spec else None
    work = args.work or Path(tempfile.mkdtemp(prefix="msnb-groups-bench-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o711)  # a PostgreSQL world's server user must reach it
    args.work = work
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the worlds' services are stopped on the way out
    t0 = time.monotonic()
    results = []
    for i, name in enumerate(names):
        world = (args.world[i] if args.world else work / name).resolve()
        results.append(run_world(name, world, specs[name], args))
        if args.json:  # what is measured so far, should a later world fail
            args.json.write_text(json.dumps(results, indent=1))
    fit = dr1(results)
    for r in results:
        r.update(fit)
    report(results, fit)
    print(f"\nbench wall time {time.monotonic() - t0:.0f} s; worlds kept in {work} (reuse: --world)")
    if args.json:
        args.json.write_text(json.dumps(results[0] if len(results) == 1 else results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
