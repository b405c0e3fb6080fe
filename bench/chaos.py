"""Benchmark: the groups campaign under ``multisite-nb supervise`` with a fault injected every ~60 s.

Brings a fresh groups world up (three remote sites), and runs the campaign twice on fresh worlds:
once under ``supervise`` with no fault (``clean_wall_s``), once under ``supervise`` with faults from
a seeded list (multisite_nb/world/chaos.py): SIGKILL of the supervisor (started again after 5 s,
as systemd's ``Restart=always``), of the Rucio server, of the conveyor daemons, of a running step;
a byte flipped and a file deleted at a remote site after transfer; a site's repository unreadable
for two minutes; the stand-in task failing once; a full disk at one site (its RSE on a size-limited
tmpfs, filled for two minutes: real ENOSPC — skipped, and said, where tmpfs cannot be mounted).

Prints the faults injected, those ridden out without a person, the alerts raised (and whether each
was a true one: only a full disk needs a person here), the operator commands needed (the bench
types none: a run that needed one does not reach its verdict), the files lost (an independent check
of Rucio, every Butler and every disk against the plan, after the verdict), the verdict, and both
wall times. Asserts nothing.

    .venv/bin/python bench/chaos.py [--seed N] [--interval S] [--faults a,b,...] [--json FILE] [--keep]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from multisite_nb.adapters.alerts import load_alerts  # noqa: E402
from multisite_nb.world.chaos import FAULTS, NEEDS_A_PERSON, Chaos, files_lost, world_up  # noqa: E402
from multisite_nb.world.manager import World  # noqa: E402

SPEC = ROOT / "parameters" / "worlds" / "groups.yaml"
CAMPAIGN = ROOT / "parameters" / "campaign_groups.yaml"
SMALL_DISK = "LANCS"


def _campaign(tmp: Path, interval: float) -> Path:
    """The groups campaign with its manifest's supervision scaled to the fault interval."""
    manifest = yaml.safe_load((CAMPAIGN.parent / "sites" / "embedded.yaml").read_text())
    manifest["workflow"]["bps_site_config"] = str(ROOT / manifest["workflow"]["bps_site_config"])
    manifest["supervision"].update(
        watch_s=15, backoff_s=5, max_backoff_s=60, person_wait_s=30, site_down_alert_s=max(300.0, 5 * interval)
    )
    (tmp / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    data = yaml.safe_load(CAMPAIGN.read_text())
    data.update(manifest=str(tmp / "manifest.yaml"), pipeline=str(CAMPAIGN.parent / data["pipeline"]))
    params = tmp / "campaign_groups.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    return params


def _small_disk(world: World, site: str, mb: int) -> bool:
    """Put ``site``'s RSE on a tmpfs of ``mb`` MiB (before anything is moved there); False if not allowed."""
    root = Path(world.rse_root(site))
    root.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(root)], capture_output=True, text=True
    )
    return proc.returncode == 0


def _unmount(world: World, site: str) -> None:
    subprocess.run(["umount", "-l", str(world.rse_root(site))], capture_output=True)


def _one(tmp: Path, params: Path, faults: list[str], args: argparse.Namespace) -> dict[str, object]:
    world = World(tmp / "world", params, SPEC)
    world_up(world, SPEC)
    small = None
    if "disk_full" in faults:
        if _small_disk(world, SMALL_DISK, args.disk_mb):
            small = SMALL_DISK
        else:
            print("disk_full: tmpfs cannot be mounted here: that fault is left out")
            faults = [f for f in faults if f != "disk_full"]
    try:
        chaos = Chaos(
            world,
            params,
            tmp / "runs",
            faults,
            seed=args.seed,
            interval_s=args.interval,
            hold_s=args.hold,
            small_disk=small,
            log=print,
        )
        t0 = time.monotonic()
        report = chaos.run(timeout_s=args.timeout)
        wall = time.monotonic() - t0
        lost = files_lost(world, report.run_dir) if report.run_dir else ["no run folder"]
    finally:
        world.down(log=lambda _: None)
        if small:
            _unmount(world, small)
    alerts = load_alerts(report.run_dir) + load_alerts(tmp / "runs" / "groups")
    qa = json.loads((report.run_dir / "results" / "qa.json").read_text()) if report.run_dir else {}
    verdict = "PASS" if report.exit_code == 0 and qa.get("passed") else "FAIL"
    kinds = [i.kind for i in report.injected]
    # a true alert: one about the site whose disk was made full (a disk_full, or the group the full disk held)
    person = [a for a in alerts if "disk_full" in kinds and (a.alert.site == small or str(a.alert.kind) == "disk_full")]
    untrue = [a for a in alerts if a not in person]
    need = sum(1 for k in kinds if k in NEEDS_A_PERSON)
    return {
        "faults": len(kinds),
        "fault_kinds": kinds,
        "skipped": report.skipped,
        "ridden_out": (len(kinds) - need - len(untrue)) if verdict == "PASS" else 0,
        "alerts": len(alerts),
        "alerts_needing_a_person": len(person),
        "alerts_not_needed": [a.alert.text for a in untrue],
        "operator_commands": 0 if verdict == "PASS" else None,
        "files_lost": len(lost),
        "lost": lost[:20],
        "verdict": verdict,
        "wall_s": round(wall, 1),
        "supervisor_restarts": report.restarts,
        "run_dir": str(report.run_dir),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--interval", type=float, default=60.0, help="seconds between two faults")
    ap.add_argument("--hold", type=float, default=120.0, help="seconds a repository stays away / a disk full")
    ap.add_argument("--faults", default=",".join(FAULTS), help="the kinds, comma-separated (drawn in a seeded order)")
    ap.add_argument("--disk-mb", type=int, default=64, help="the small disk's size (MiB)")
    ap.add_argument("--timeout", type=float, default=5400.0)
    ap.add_argument("--no-clean", action="store_true", help="skip the run without faults")
    ap.add_argument(
        "--clean-from",
        default=None,
        help="instead of a run without faults, take its wall time from bench/stream.py's --json (flowing_s: the "
        "same campaign, flowing, on a fresh world)",
    )
    ap.add_argument("--json", dest="json_out", default=None, help="write the figures to this file")
    ap.add_argument("--keep", action="store_true", help="keep the worlds and run folders")
    args = ap.parse_args()
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    random.Random(args.seed).shuffle(faults)
    tmp = Path(tempfile.mkdtemp(prefix="msnb-chaos-"))
    try:
        clean_wall = None
        if args.clean_from:
            clean_wall = json.loads(Path(args.clean_from).read_text())["flowing_s"]
        elif not args.no_clean:
            (tmp / "clean").mkdir()
            clean = _one(tmp / "clean", _campaign(tmp / "clean", args.interval), [], args)
            clean_wall = clean["wall_s"]
            print(f"clean: {clean['verdict']} in {clean_wall} s")
        (tmp / "chaos").mkdir()
        out = _one(tmp / "chaos", _campaign(tmp / "chaos", args.interval), faults, args)
        out["clean_wall_s"] = clean_wall
        out["wall_ratio"] = round(float(out["wall_s"]) / clean_wall, 2) if clean_wall else None  # type: ignore[arg-type]
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"faults injected:          {out['faults']} ({', '.join(out['fault_kinds'])})")  # type: ignore[arg-type]
    print(f"ridden out, no person:    {out['ridden_out']}")
    print(f"alerts raised:            {out['alerts']} ({out['alerts_needing_a_person']} needing a person)")
    print(f"operator commands:        {out['operator_commands']}")
    print(f"files lost:               {out['files_lost']}")
    print(f"verdict:                  {out['verdict']}")
    print(f"wall time:                {out['wall_s']} s (clean: {out['clean_wall_s']} s, x{out['wall_ratio']})")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
