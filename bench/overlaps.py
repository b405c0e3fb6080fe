"""Benchmark: a visit's detector-patch overlaps, every pair tested against sifted by bounding boxes.

Placement settles, per visit the registry joined with a site's patches, which of the visit's
detectors overlap each patch (:func:`multisite_nb.overlaps.detector_hits`). Two geometries:

* **scale world**: the bench worlds' visit (189 detectors, 21 x 9) inside one 0.2-deg patch;
* **LSSTCam-like**: a 3.5-deg visit of 189 detectors (a 14 x 14 grid less its 7 last tiles) over a
  grid of 0.2-deg patches, the registry's pairs being the patches whose region meets the visit's.

The visits are dithered and rotated over one grid of patches, whose boxes are kept across visits
as placement keeps a site's.

For each, prints microseconds a visit both ways, their ratio, and what 240,000 visits (a data
release) cost on one core. Checks that both ways find the same overlaps; asserts no timing.

    .venv/bin/python bench/overlaps.py [VISITS]      (default: 100 visits a geometry)
"""

from __future__ import annotations

import sys
import time
from typing import Any

from multisite_nb.overlaps import PatchBoxes, detector_hits
from multisite_nb.world.synthetic import _footprint, _Frame

DR_VISITS = 240_000


def _geometry(kind: str, visits: int) -> tuple[list[tuple[dict[int, Any], list[tuple[int, int]]]], PatchBoxes]:
    """Visits (detectors, the patch keys the registry would join each with) and the site's patches."""
    frame = _Frame(150.0, -20.0)
    n, size = 40, 0.2
    half = n * size / 2
    grid = {
        (0, y * n + x): frame.box(-half + x * size, -half + (x + 1) * size, -half + y * size, -half + (y + 1) * size)
        for y in range(n)
        for x in range(n)
    }
    cases = []
    for i in range(visits):  # dithered over the grid's middle, rotated: a site's visits share its patches
        cx, cy = -1.5 + 3.0 * ((i * 0.618) % 1.0), -1.5 + 3.0 * ((i * 0.382) % 1.0)
        if kind == "scale world":  # inside one patch
            x, y = int((cx + half) / size), int((cy + half) / size)
            px, py = -half + (x + 0.5) * size, -half + (y + 0.5) * size
            _, dets = _footprint(frame, px + 0.001, py - 0.002, 0.18, 0.18, 0.0, (21, 9))
            cases.append((dets, [(0, y * n + x)]))
            continue
        visit, dets = _footprint(frame, cx, cy, 3.5, 3.5, 0.37 * i, (14, 14))
        dets = {d: r for d, r in dets.items() if d < 189}
        cases.append((dets, [k for k, p in grid.items() if visit.overlaps(p) is not False]))
    return cases, PatchBoxes(grid)


def main(argv: list[str]) -> None:
    visits = int(argv[0]) if argv else 100
    print(f"detector-patch overlaps, {visits} visits a geometry, one core:")
    print(f"{'geometry':14} {'pairs/visit':>11} {'every pair':>13} {'boxes':>13} {'ratio':>7} {'240k visits':>22}")
    for kind in ("scale world", "LSSTCam-like"):
        cases, boxes = _geometry(kind, visits)
        t0 = time.process_time()
        brute = [
            [[d for d, r in dets.items() if r.overlaps(boxes.regions[k]) is not False] for k in keys]
            for dets, keys in cases
        ]
        t_brute = time.process_time() - t0
        t0 = time.process_time()
        boxed = [detector_hits(dets, keys, boxes) for dets, keys in cases]  # one PatchBoxes a site, as placement
        t_box = time.process_time() - t0
        for b, x in zip(brute, boxed, strict=True):
            if [sorted(h) for h in b] != x:
                raise SystemExit(f"{kind}: the two ways disagree")
        pairs = sum(len(k) for _, k in cases) / visits
        per_b, per_x = t_brute / visits, t_box / visits
        print(
            f"{kind:14} {pairs:11.0f} {per_b * 1e3:10.2f} ms {per_x * 1e3:10.2f} ms {per_b / per_x:6.1f}x"
            f"   {per_b * DR_VISITS / 60:6.1f} -> {per_x * DR_VISITS / 60:5.1f} min"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
