"""Benchmark: the same campaign phase by phase and flowing, in one run, and the forecast's error per stage.

Brings a fresh world up for each way (the groups world by default: three remote sites, three
step-1 groups and shipments each), runs ``multisite-nb campaign --phase-by-phase`` and then
``multisite-nb campaign`` (flowing) under one runs root, and prints both wall times (each
campaign's run record, first phase's start to last phase's end) and their ratio (target:
flowing <= 0.7 x phase by phase). The flowing run's notebook 01 forecasts with the figures the
phase-by-phase run measured (its default ``measured_from = "last"``); each stage's forecast
error is measured / forecast (target: within 0.75-1.25 on the embedded world). Prints; asserts
nothing.

    .venv/bin/python bench/stream.py [--spec S --params P] [--json FILE] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from multisite_nb.phases.placement.forecast import forecast_against_measured  # noqa: E402

EXE = ROOT / ".venv" / "bin" / "multisite-nb"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(EXE), *args], cwd=ROOT, capture_output=True, text=True)


def _wall(run_dir: Path) -> float:
    record = json.loads((run_dir / "run.json").read_text())
    t0, t1 = (datetime.fromisoformat(record[k].replace("Z", "+00:00")) for k in ("started", "finished"))
    return (t1 - t0).total_seconds()


def _campaign(spec: str, params: str, world: Path, runs: Path, *extra: str) -> Path:
    """One campaign on a fresh world; the run folder it made."""
    up = _run("world", "up", "--spec", spec, "--params", params, "--dir", str(world))
    if up.returncode != 0:
        raise SystemExit(f"world up failed:\n{up.stdout[-2000:]}\n{up.stderr[-2000:]}")
    before = set(runs.glob("*/*")) if runs.exists() else set()
    try:
        proc = _run("campaign", params, "--world", str(world), "--runs-root", str(runs), *extra)
    finally:
        _run("world", "down", "--dir", str(world))
    (run_dir,) = [p for p in runs.glob("*/*") if p.is_dir() and p not in before]
    if proc.returncode != 0:
        raise SystemExit(
            f"campaign {' '.join(extra) or '(flowing)'} failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return run_dir


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="parameters/worlds/groups.yaml")
    ap.add_argument("--params", default="parameters/campaign_groups.yaml")
    ap.add_argument("--json", dest="json_out", default=None, help="write the figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the worlds and run folders")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="msnb-stream-"))
    runs = tmp / "runs"
    try:
        phased = _campaign(args.spec, args.params, tmp / "world-phased", runs, "--phase-by-phase")
        flowing = _campaign(args.spec, args.params, tmp / "world-flowing", runs)
        pbp_s, flow_s = _wall(phased), _wall(flowing)
        rows = forecast_against_measured(flowing)
        errors = {r["stage"]: r["ratio"] for r in rows if r["site"] == "(stage)"}
        out = {
            "phase_by_phase_s": round(pbp_s, 1),
            "flowing_s": round(flow_s, 1),
            "ratio": round(flow_s / pbp_s, 3) if pbp_s else None,
            "forecast_error": errors,
            "forecast_rows": rows,
            "runs": {"phase_by_phase": str(phased), "flowing": str(flowing)},
        }
        print(f"campaign {args.params} on {args.spec}")
        print(f"  phase by phase: {pbp_s:8.1f} s")
        print(f"  flowing:        {flow_s:8.1f} s   ratio flowing / phase by phase: {out['ratio']} (target <= 0.7)")
        print("  forecast error per stage (measured / forecast, target 0.75-1.25):")
        for stage, ratio in errors.items():
            print(f"    {stage:<14} {ratio}")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(out, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
