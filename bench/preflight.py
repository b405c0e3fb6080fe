"""Benchmark: the preflight (``multisite-nb check``), good campaigns and bad inputs, against its budgets.

Each figure runs in a child process of its own, so its wall time and peak RSS are the check's alone
(the child's imports are timed apart: a command line pays them once). Printed beside each budget of
the preflight issue, as a ratio (figure / budget; below 1 is within it):

* the 3x3 campaign offline (its files and pipeline), and online with ``--world`` (Rucio, the Butlers);
* the scale campaign's files (``parameters/campaign_scale_20k.yaml``, 1,500 tracts as ranges);
* a data-release campaign of 8,000 tracts written one by one, and one at the limit of 100,000 units;
* bad inputs, each refused: a tract range of 10^12 units, a file past the size limit, YAML nested
  5,000 deep, 30,000 sky units outside the sky map (online, ``--world``).

Asserts nothing.

    .venv/bin/python bench/preflight.py [--world DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "parameters"

_CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    t0 = time.monotonic()
    from multisite_nb.run.preflight import preflight
    imports = time.monotonic() - t0
    t1 = time.monotonic()
    found = preflight(sys.argv[1], sys.argv[2] or None, online=sys.argv[3] == "online")
    seconds = time.monotonic() - t1
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "imports_s": imports, "rss_mb": rss, "problems": len(found.problems),
                      "first": str(found.problems[0]) if found.problems else ""}))
    """
)


def measure(campaign: Path, world: str = "", online: bool = False) -> dict[str, object]:
    """The preflight of ``campaign`` in a child process: seconds, imports, peak RSS, problems found."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(campaign), world, "online" if online else "offline"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _campaign(folder: Path, name: str, units: dict[str, object], base: str = "campaign_scale_20k.yaml") -> Path:
    data = yaml.safe_load((PARAMS / base).read_text())
    data.update(manifest=str(PARAMS / data["manifest"]), pipeline=str(PARAMS / data["pipeline"]))
    for site, given in units.items():
        data["sites"][site] = {"share": data["sites"][site]["share"], **given}  # type: ignore[dict-item]
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, default_flow_style=None, width=10_000))
    return path


def _row(label: str, m: dict[str, object], budget_s: float, budget_mb: float | None = None) -> None:
    secs, rss = float(m["seconds"]), float(m["rss_mb"])  # type: ignore[arg-type]
    mem = f"{rss:7.0f} MB" + (f" ({rss / budget_mb:4.2f} x {budget_mb:.0f} MB)" if budget_mb else " " * 18)
    found = f"{m['problems']} problem(s)" if m["problems"] else "ready"
    print(f"  {label:46s} {secs:6.2f} s ({secs / budget_s:4.2f} x {budget_s:.0f} s)  {mem}  {found}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="", help="a world that is up, for the online figures")
    args = parser.parse_args()
    world = str(Path(args.world).resolve()) if args.world else ""
    print("preflight: seconds (x budget), peak RSS, what it found; imports timed apart")
    base = measure(PARAMS / "campaign_3x3.yaml", world)
    print(f"  (the child's imports: {float(base['imports_s']):.2f} s, not in the figures below)")  # type: ignore[arg-type]
    _row("3x3 campaign, offline", base, 2.0)
    if world:
        _row("3x3 campaign, online", measure(PARAMS / "campaign_3x3.yaml", world, online=True), 5.0)
    _row("scale campaign (1,500 tracts as ranges), offline", measure(PARAMS / "campaign_scale_20k.yaml"), 10.0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        one_by_one = {
            "IN2P3": {"sky_units": [{"tract": t} for t in range(8_000)]},
            "RAL": {"tracts": ["8000-8099"]},
            "LANCS": {"tracts": ["8100-8199"]},
        }
        _row("8,000 tracts one by one, offline", measure(_campaign(folder, "dr", one_by_one)), 10.0)
        # one past the limit in all: refused, the ranges counted, not expanded
        limit = {"IN2P3": {"tracts": ["0-99998"]}, "RAL": {"tracts": ["99999-99999"]}, "LANCS": {"tracts": ["100000"]}}
        _row("100,001 units as ranges (refused)", measure(_campaign(folder, "limit", limit)), 10.0, 1024)
        huge = {"RAL": {"tracts": ["0-999999999999"]}}
        _row("a range of 10^12 units (refused)", measure(_campaign(folder, "huge", huge)), 10.0, 1024)
        big = folder / "big.yaml"
        big.write_text((PARAMS / "campaign_3x3.yaml").read_text() + "#" + "x" * (2 * 1024 * 1024) + "\n")
        _row("a 2 MiB parameter file (refused)", measure(big), 10.0, 1024)
        deep = folder / "deep.yaml"
        deep.write_text("campaign: " + "[" * 5000 + "]" * 5000 + "\n")
        _row("YAML nested 5,000 deep (refused)", measure(deep), 10.0, 1024)
        if world:
            outside = {"RAL": {"sky_units": [{"tract": 10**6 + t, "patch": 1} for t in range(30_000)]}}
            m = measure(_campaign(folder, "outside", outside, "campaign_3x3.yaml"), world, online=True)
            _row("30,000 units outside the sky map (refused, online)", m, 10.0, 1024)


if __name__ == "__main__":
    main()
