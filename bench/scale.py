"""Benchmark: phases 1-3 at data-release scale, on a scale world built (or reused) for N raws.

For each N it builds a tract-grid world (LSSTCam-like 189-detector visits over 1,500 tracts; the
files are tiny, the registry and the Rucio catalogue are what scale), or reuses the one in
``--world``, then times, through the phases' own functions:

* placement: wall time and peak RSS (in a child process, so the figure is the phase's own);
* transfer: per site, registration (records, sidecars, replicas, metadata, datasets) + rule
  creation + ingest in files/s; the wait for the bytes (the world's conveyor copying files,
  FTS at the facilities) is reported apart;
* verification in files/s (no checksums: Rucio counts, Butler records, disk sizes);
* a dashboard refresh (``views.status.collect``) and the run folder's size.

Beside each it prints the per-file way measured on a sample of the same data (getURI + stat
+ adler32 per file; one Rucio call per file; one ingest call per file; one replica listing,
one registry lookup and one stat per file), as a ratio, and a linear fit extrapolated to the
45 million raws of a data release. Asserts nothing.

    .venv/bin/python bench/scale.py --raws 20000 [--raws 100000 ...] [--db postgresql]
        [--world DIR] [--json FILE] [--sample 300]

JSON (one object per N, a list if several): raws, tracts, placement_s, placement_peak_rss_mb,
register_files_per_s, ingest_files_per_s, verify_files_per_s, dashboard_refresh_s,
run_folder_mb, dr1_placement_s, plus placement_cpu_s and dr1_placement_cpu_s (the same on one core:
the CPU seconds of placement and of its reading processes), build_s, copy_s, the per-file figures
and ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from multisite_nb.adapters.tables import iter_site_files, load_plan

REPO = Path(__file__).resolve().parents[1]
DR1_RAWS = 45_000_000
DETECTORS = (21, 9)  # 189, as LSSTCam's science sensors
GRID = (50, 30)  # 1,500 tracts


def scale_spec(raws: int) -> dict[str, Any]:
    """A world spec of about ``raws`` raws over 1,500 tracts."""
    per_visit = DETECTORS[0] * DETECTORS[1]
    visits = max(1, math.ceil(raws / per_visit))
    tracts = GRID[0] * GRID[1]
    every = max(1, tracts // visits) if visits <= tracts else 1
    per_band = max(1, math.ceil(visits / tracts))
    return {
        "seed": 20261202,
        "instrument": "LSSTCam",
        "instrument_class": "lsst.obs.lsst.LsstCam",
        "skymap": "lsst_scale",
        "tract_grid": {"ra0": 0.0, "dec0": -10.0, "n_ra": GRID[0], "n_dec": GRID[1], "targets_every": every},
        "patches_per_side": 3,
        "patch_size_deg": 0.2,
        "bands": [{"band": "r", "physical_filter": "r_57"}],
        "detector_grid": list(DETECTORS),
        "visits_per_band": per_band,
        "raw_shape": [2, 2],
        "refcat_stars_per_shard": 1,
    }


def scale_campaign(name: str) -> dict[str, Any]:
    """Each remote site a contiguous block of whole tracts (70 / 20 / 10 %)."""
    data = yaml.safe_load((REPO / "parameters" / "campaign_scale_20k.yaml").read_text())
    params = REPO / "parameters"
    data.update(campaign=name, manifest=str(params / data["manifest"]), pipeline=str(params / data["pipeline"]))
    data["collections"]["output_prefix"] = name
    return data


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Run a command; (wall seconds, the largest peak RSS in MB of it and the processes it waited for
    (placement's workers each hold their own), CPU seconds of them all: the time on one core)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed ({status}): {' '.join(cmd)}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, usage.ru_maxrss / 1024, cpu


def _du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def per_file_figures(
    campaign: Any, plan: Any, sample: int, scratch: Path, placement_only: bool = False
) -> dict[str, float]:
    """Seconds per file of the per-file way, on ``sample`` files of the plan's first site."""
    from lsst.daf.butler import Butler, DatasetRef, FileDataset

    from multisite_nb.adapters.butler.datastore import describe_file
    from multisite_nb.adapters.butler.repo import datastore_roots, open_butler, open_site_butler
    from multisite_nb.adapters.files import adler32_of
    from multisite_nb.adapters.rucio.ops import FileDid, RucioOps

    site = plan.sites[0]
    files = next(iter_site_files(plan, site, batch_rows=sample))
    out: dict[str, float] = {}
    with open_site_butler(campaign, campaign.central) as central:
        roots = datastore_roots(central)
        refs = [central.get_dataset(f.id) for f in files]
        t0 = time.monotonic()
        for ref in refs:  # getURI, stat and adler32 per file
            described = describe_file(central, ref, [site], roots)
        out["placement_per_file_s"] = (time.monotonic() - t0) / len(files)
    if placement_only:
        return out
    central_root = Path(campaign.site(campaign.central).rse_root or "")
    for f in files:
        f.adler32 = f.adler32 or adler32_of(central_root / f.lfn)
    del described
    # Rucio: one call per file into a scratch dataset (names of their own: nothing real is touched)
    ops = RucioOps.for_campaign(campaign)
    tag = f"perfile{int(time.time())}"
    ops.ensure_dataset(f"{campaign.name}.{tag}")
    t0 = time.monotonic()
    for f in files:
        did = FileDid(f"{tag}/{f.lfn}", f.size, f.adler32, {"rubin_butler": "raw_file"})
        ops.client.add_replicas(
            rse=campaign.site(campaign.central).rse,
            files=[{"scope": ops.scope, "name": did.name, "bytes": did.bytes, "adler32": did.adler32}],
        )
        ops.client.set_metadata_bulk(ops.scope, did.name, dict(did.meta))
        ops.client.attach_dids(ops.scope, f"{campaign.name}.{tag}", [{"scope": ops.scope, "name": did.name}])
    out["register_per_file_s"] = (time.monotonic() - t0) / len(files)
    # ingest: one call per file into a scratch repository holding the site's dimension records
    dest = campaign.site(site)
    repo = scratch / "ingest-repo"
    Butler.makeRepo(str(repo))
    with open_butler(dest.butler) as site_butler, Butler.from_config(str(repo), writeable=True) as scratch_butler:
        scratch_butler.transfer_dimension_records_from(site_butler, [site_butler.get_dataset(f.id) for f in files])
        site_refs: list[DatasetRef] = [site_butler.get_dataset(f.id) for f in files]
        for ref in site_refs:
            scratch_butler.registry.registerDatasetType(ref.datasetType)
            scratch_butler.collections.register(ref.run)
        t0 = time.monotonic()
        for f, ref in zip(files, site_refs, strict=True):
            scratch_butler.ingest(
                FileDataset(path=str(Path(dest.rse_root or "") / f.lfn), refs=[ref]), transfer="direct"
            )
        out["ingest_per_file_s"] = (time.monotonic() - t0) / len(files)
    # verify: a replica listing, a registry lookup and a stat per file
    with open_butler(dest.butler) as site_butler:
        t0 = time.monotonic()
        for f in files:
            list(ops.client.list_replicas([{"scope": ops.scope, "name": f.lfn}], rse_expression=dest.rse))
            site_butler.get_dataset(f.id)
            (Path(dest.rse_root or "") / f.lfn).stat()
        out["verify_per_file_s"] = (time.monotonic() - t0) / len(files)
    return out


def run(
    raws: int, world: Path | None, db: str, sample: int, spec: Path | None = None, placement_only: bool = False
) -> dict[str, Any]:
    from multisite_nb import phases
    from multisite_nb.domain.naming import plan_path
    from multisite_nb.domain.params import load_campaign
    from multisite_nb.run.folder import new_run
    from multisite_nb.views.status import collect

    work = Path(tempfile.mkdtemp(prefix=f"msnb-scale-{raws}-", dir="/tmp"))
    work.chmod(0o711)  # a PostgreSQL world's server user must reach it
    world = world or work / "world"
    world.mkdir(parents=True, exist_ok=True)
    spec_file, campaign_file = world / "scale_spec.yaml", world / "scale_campaign.yaml"
    if not spec_file.exists():
        spec_file.write_text(spec.read_text() if spec else yaml.safe_dump(scale_spec(raws)))
        campaign = scale_campaign(f"scale{raws}")
        campaign["skymap"] = yaml.safe_load(spec_file.read_text()).get("skymap", campaign["skymap"])
        campaign_file.write_text(yaml.safe_dump(campaign))
    env = {**os.environ, "MSNB_WORLD": str(world)}
    cli = str(REPO / ".venv" / "bin" / "multisite-nb")
    up = [cli, "world", "up", "--dir", str(world), "--spec", str(spec_file), "--params", str(campaign_file)]
    build_s, _, _ = _run([*up, "--db", db], env)
    os.environ.update(MSNB_WORLD=str(world))
    out: dict[str, Any] = {"raws_asked": raws, "db": db, "world": str(world), "build_s": round(build_s, 1)}
    campaign = load_campaign(campaign_file)
    state = json.loads((world / "world.json").read_text())
    out["raws"] = state["central_counts"]["datasets"]["raw"]
    out["tracts"] = len({u.tract for s in campaign.remote_sites for u in campaign.sky_units(s)})
    run_dir = new_run(work / "runs", campaign.name)
    try:
        # placement in a child process: its peak RSS is the phase's own
        code = (
            "import sys; from multisite_nb import phases; "
            "r, _ = phases.placement.run(sys.argv[1], sys.argv[2]); sys.exit(0 if r.passed else 1)"
        )
        py = str(REPO / ".venv" / "bin" / "python")
        placed = _run([py, "-c", code, str(campaign_file), str(run_dir)], env)
        out["placement_s"], out["placement_peak_rss_mb"], out["placement_cpu_s"] = placed
        plan = load_plan(plan_path(run_dir))
        files = sum(c.files for c in plan.summary.sites.values())
        out["planned_files"] = files
        out["dr1_placement_s"] = out["placement_s"] * DR1_RAWS / out["raws"]
        out["dr1_placement_cpu_s"] = out["placement_cpu_s"] * DR1_RAWS / out["raws"]
        if placement_only:  # no bytes move: the figures of phase 1 and what reads its plan
            t0 = time.monotonic()
            collect(campaign, run_dir)
            out["dashboard_refresh_s"] = time.monotonic() - t0
            out["run_folder_mb"] = _du_mb(run_dir)
            per = per_file_figures(campaign, plan, sample, work, placement_only=True)
            out["placement_per_file_ms"] = round(per["placement_per_file_s"] * 1000, 3)
            out["placement_ratio"] = per["placement_per_file_s"] * files / out["placement_s"]
            for key in ("register_files_per_s", "ingest_files_per_s", "verify_files_per_s"):
                out[key] = None
            return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}
        t0 = time.monotonic()
        result, outcomes = phases.transfer.run(campaign, run_dir, progress=False, timeout_s=7200)
        out["transfer_wall_s"] = time.monotonic() - t0
        if not result.passed:
            raise SystemExit(f"transfer failed: {result.reason}")
        sites = {}
        for o in outcomes:
            s = o.seconds
            work_s = s.get("records", 0) + s.get("register", 0) + s.get("rule", 0) + s.get("ingest", 0)
            sites[o.dest] = {
                "files": o.registered,
                "register_files_per_s": o.registered
                / max(1e-9, s.get("records", 0) + s.get("register", 0) + s.get("rule", 0)),
                "ingest_files_per_s": o.registered / max(1e-9, s.get("ingest", 0)),
                "register_rule_ingest_files_per_s": o.registered / max(1e-9, work_s),
                "seconds": {k: round(v, 2) for k, v in s.items()},
            }
        out["sites"] = sites
        total_work = sum(
            sum(v for k, v in o.seconds.items() if k in ("records", "register", "rule", "ingest")) for o in outcomes
        )
        out["copy_s"] = round(out["transfer_wall_s"] - total_work, 1)  # the conveyor's copying and our waiting
        out["register_files_per_s"] = min(v["register_files_per_s"] for v in sites.values())
        out["ingest_files_per_s"] = min(v["ingest_files_per_s"] for v in sites.values())
        out["register_rule_ingest_files_per_s"] = min(v["register_rule_ingest_files_per_s"] for v in sites.values())
        t0 = time.monotonic()
        vres, _ = phases.verify.run(campaign, run_dir, checksums=False)
        out["verify_s"] = time.monotonic() - t0
        out["verify_files_per_s"] = files / out["verify_s"]
        if not vres.passed:
            raise SystemExit(f"verify failed: {vres.reason}")
        t0 = time.monotonic()
        collect(campaign, run_dir)
        out["dashboard_refresh_s"] = time.monotonic() - t0
        out["run_folder_mb"] = _du_mb(run_dir)
        per = per_file_figures(campaign, plan, sample, work)
        out.update({k: round(v * 1000, 3) for k, v in ((k.replace("_s", "_ms"), v) for k, v in per.items())})
        out["placement_ratio"] = per["placement_per_file_s"] * files / out["placement_s"]
        out["register_ratio"] = out["register_files_per_s"] * per["register_per_file_s"]
        out["ingest_ratio"] = out["ingest_files_per_s"] * per["ingest_per_file_s"]
        out["verify_ratio"] = out["verify_files_per_s"] * per["verify_per_file_s"]
        out["dr1_placement_s"] = out["placement_s"] * DR1_RAWS / out["raws"]
    finally:
        subprocess.run(
            [cli, "world", "down", "--dir", str(world), "--params", str(campaign_file)], env=env, check=False
        )
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in out.items()}


def fit(results: list[dict[str, Any]], key: str = "placement_s") -> dict[str, float]:
    """Least-squares line ``key`` = a + b * raws (placement's wall or CPU seconds), extrapolated to a
    data release."""
    xs = [r["raws"] for r in results]
    ys = [r[key] for r in results]
    if len(xs) < 2:
        return {"a": 0.0, "b": ys[0] / xs[0], "dr1_placement_s": ys[0] / xs[0] * DR1_RAWS}
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    a = my - b * mx
    return {"a": a, "b": b, "dr1_placement_s": a + b * DR1_RAWS}


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raws", type=int, action="append", help="raws in the world (repeatable)")
    parser.add_argument("--world", type=Path, help="reuse (or build) the world in this folder (one --raws only)")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--sample", type=int, default=300, help="files of the per-file way's sample")
    parser.add_argument("--spec", type=Path, help="world spec to build from (e.g. parameters/worlds/scale_1m.yaml)")
    parser.add_argument(
        "--placement-only",
        action="store_true",
        help="time placement, a dashboard refresh and the run folder only (no transfer: for worlds whose "
        "bytes the world's conveyor would copy for hours)",
    )
    args = parser.parse_args(argv)
    sizes = args.raws or [20_000]
    if args.world and len(sizes) > 1:
        parser.error("--world takes one --raws")
    results = [run(n, args.world, args.db, args.sample, args.spec, args.placement_only) for n in sizes]
    line, cpu = fit(results), fit(results, "placement_cpu_s")
    for r in results:
        r["dr1_placement_s"] = round(line["dr1_placement_s"], 1)
        r["dr1_placement_cpu_s"] = round(cpu["dr1_placement_s"], 1)
    print(f"\nscale bench ({args.db}), beside the per-file way on {args.sample} files of the same data:")
    for r in results:
        print(f"  {r['raws']:,} raws, {r['tracts']} tracts, {r['planned_files']:,} files planned")
        print(f"    world built     {r['build_s']:8.1f} s")
        rows = [
            ("placement", f"{r['placement_s']:8.1f} s, peak RSS {r['placement_peak_rss_mb']:.0f} MB/proc", "placement"),
            ("  on one core", f"{r['placement_cpu_s']:8.1f} CPU s (with its reading processes)", ""),
        ]
        if r["register_files_per_s"] is not None:
            rows += [
                ("register+rule", f"{r['register_files_per_s']:8.0f} files/s (slowest site)", "register"),
                ("ingest", f"{r['ingest_files_per_s']:8.0f} files/s (slowest site)", "ingest"),
                (
                    "all three",
                    f"{r['register_rule_ingest_files_per_s']:8.0f} files/s register+rule+ingest (slowest site)",
                    "",
                ),
                ("verify", f"{r['verify_files_per_s']:8.0f} files/s (no checksums)", "verify"),
            ]
        for label, figure, key in rows:
            ratio = f"x{r[key + '_ratio']:.1f} the per-file way" if key else ""
            print(f"    {label:15s} {figure:44s} {ratio}")
        if "copy_s" in r:
            print(f"    copy            {r['copy_s']:8.1f} s by the world's conveyor (FTS copies at the facilities)")
        else:
            print("    (placement only: no transfer, registration, ingest or verification timed)")
        print(
            f"    dashboard       {r['dashboard_refresh_s']:8.2f} s a refresh; run folder {r['run_folder_mb']:.1f} MB"
        )
    per_m = line["b"] * 1e6
    dr1_min = line["dr1_placement_s"] / 60
    print(f"  placement = {line['a']:.1f} s + {per_m:.1f} s per million raws: {dr1_min:.0f} min at 45 M")
    cpu_m, cpu_min = cpu["b"] * 1e6, cpu["dr1_placement_s"] / 60
    print(f"  on one core = {cpu['a']:.1f} s + {cpu_m:.1f} CPU s per million raws: {cpu_min:.0f} min at 45 M")
    if args.json:
        args.json.write_text(json.dumps(results[0] if len(results) == 1 else results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1:])
