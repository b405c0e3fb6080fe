"""Benchmark: the whole 3x3 campaign on the embedded world, and each phase's share.

Runs ``multisite-nb campaign`` in a fresh world folder (venvs in place), reads the run
record, and prints wall time per phase side by side with the baseline (``baseline.json``
beside this file: the issue's target for the whole campaign, and the figures of the
previous accepted measurement per phase) as ratios. Prints; asserts nothing.

    .venv/bin/python bench/campaign.py [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASELINE = Path(__file__).with_name("baseline.json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the world and run folders")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="msnb-bench-"))
    world, runs = tmp / "world", tmp / "runs"
    env = {**os.environ, "MSNB_WORLD": str(world)}
    exe = ROOT / ".venv" / "bin" / "multisite-nb"
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(exe), "campaign", "--world", str(world), "--runs-root", str(runs)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.monotonic() - t0
    subprocess.run([str(exe), "world", "down", "--dir", str(world)], env=env, cwd=ROOT, capture_output=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        print(f"campaign FAILED after {wall:.0f} s")
        return 1
    run_dir = next(p for p in (runs / "3x3").iterdir() if p.is_dir())
    record = json.loads((run_dir / "run.json").read_text())
    base = json.loads(BASELINE.read_text()) if BASELINE.exists() else {}
    rows = [("whole campaign (incl. world up)", wall, base.get("campaign_s"))]
    total_phases = 0.0
    for ph in record["phases"]:
        from datetime import datetime

        d = (datetime.fromisoformat(ph["finished"]) - datetime.fromisoformat(ph["started"])).total_seconds()
        total_phases += d
        rows.append((ph["phase"], d, base.get("phases", {}).get(ph["phase"])))
    print(f"{'what':36s} {'seconds':>9s} {'share':>7s} {'baseline':>9s} {'ratio':>7s}")
    for name, secs, ref in rows:
        share = f"{100 * secs / total_phases:5.1f}%" if name != rows[0][0] else "   -  "
        ratio = f"{secs / ref:6.2f}x" if ref else "    - "
        print(f"{name:36s} {secs:9.1f} {share:>7s} {ref if ref else '-':>9} {ratio:>7s}")
    print(
        f"target for the whole campaign: {base.get('campaign_s', 600)} s "
        f"(ratio {wall / base.get('campaign_s', 600):.2f})"
    )
    print(f"run folder: {run_dir}" + ("" if args.keep else " (removed)"))
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
