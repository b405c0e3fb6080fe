"""Benchmark: a visit's detector-patch overlaps, the old way against the boxes' way.

Placement settles which of a visit's detectors overlap which of a site's patches
(:func:`multisite_nb.domain.overlaps.detector_hits`). The old way took the (visit, patch) pairs from the
registry's spatial join and tested every detector against each pair's patch; the boxes' way takes
every patch of the tracts (here blocks of 10 x 10 patches) the visit meets, sets aside those whose
box misses the visit outline's, and tests exactly only the (patch, detector) pairs whose boxes
meet. Two geometries:

* **scale world**: the bench worlds' visit (189 detectors, 21 x 9) inside one 0.2-deg patch;
* **LSSTCam-like**: a 3.5-deg visit of 189 detectors (a 14 x 14 grid less its 7 last tiles) over a
  grid of 0.2-deg patches.

The visits are dithered and rotated over one grid of patches, whose boxes are kept across visits
as placement keeps a site's. The registry's own cost of the pairs (~140 µs a pair on SQLite) is
not in these figures.

For each, prints milliseconds a visit both ways, their ratio, and what 240,000 visits (a data
release) cost on one core. Checks that both ways find the same overlaps; asserts no timing.

    .venv/bin/python bench/overlaps.py [VISITS]      (default: 100 visits a geometry)
"""

from __future__ import annotations

import sys
import time
from typing import Any

from multisite_nb.domain.overlaps import PatchBoxes, detector_hits
from multisite_nb.world.synthetic import _footprint, _Frame

DR_VISITS = 240_000


def _geometry(
    kind: str, visits: int
) -> tuple[list[tuple[dict[int, Any], list[tuple[int, int]], list[tuple[int, int]], Any]], PatchBoxes]:
    """Visits (detectors, the patches the registry's visit-patch join gives, the patches of the
    tracts the visit meets) over a site's grid of patches, tracts being blocks of 10 x 10."""
    frame = _Frame(150.0, -20.0)
    n, size, block = 40, 0.2, 10
    half = n * size / 2
    grid = {}
    for y in range(n):
        for x in range(n):
            tract = (y // block) * (n // block) + x // block
            box = frame.box(-half + x * size, -half + (x + 1) * size, -half + y * size, -half + (y + 1) * size)
            grid[(tract, y * n + x)] = box
    tracts = {
        t: frame.box(
            -half + (t % 4) * block * size,
            -half + (t % 4 + 1) * block * size,
            -half + (t // 4) * block * size,
            -half + (t // 4 + 1) * block * size,
        )
        for t in range(16)
    }
    cases = []
    for i in range(visits):  # dithered over the grid's middle, rotated: a site's visits share its patches
        cx, cy = -1.5 + 3.0 * ((i * 0.618) % 1.0), -1.5 + 3.0 * ((i * 0.382) % 1.0)
        if kind == "scale world":  # inside one patch of one tract
            x, y = int((cx + half) / size), int((cy + half) / size)
            px, py = -half + (x + 0.5) * size, -half + (y + 0.5) * size
            visit, dets = _footprint(frame, px + 0.001, py - 0.002, 0.18, 0.18, 0.0, (21, 9))
        else:
            visit, dets = _footprint(frame, cx, cy, 3.5, 3.5, 0.37 * i, (14, 14))
            dets = {d: r for d, r in dets.items() if d < 189}
        met = {t for t, r in tracts.items() if visit.overlaps(r) is not False}
        pairs = [k for k, p in grid.items() if visit.overlaps(p) is not False]
        cases.append((dets, pairs, [k for k in grid if k[0] in met], visit))
    return cases, PatchBoxes(grid)


def main(argv: list[str]) -> None:
    visits = int(argv[0]) if argv else 100
    print(f"detector-patch overlaps, {visits} visits a geometry, one core:")
    head = f"{'geometry':14} {'pairs':>6} {'every pair':>13} {'candidates':>10} {'boxes':>10} {'ratio':>7}"
    print(f"{head} {'240k visits':>20}")
    for kind in ("scale world", "LSSTCam-like"):
        cases, boxes = _geometry(kind, visits)
        t0 = time.process_time()
        brute = [
            {k: [d for d, r in dets.items() if r.overlaps(boxes.regions[k]) is not False] for k in pairs}
            for dets, pairs, _, _ in cases
        ]
        t_brute = time.process_time() - t0
        t0 = time.process_time()
        boxed = [dict(zip(keys, detector_hits(dets, keys, boxes, v), strict=True)) for dets, _, keys, v in cases]
        t_box = time.process_time() - t0
        for b, x in zip(brute, boxed, strict=True):
            if {k: sorted(v) for k, v in b.items() if v} != {k: v for k, v in x.items() if v}:
                raise SystemExit(f"{kind}: the two ways disagree")
        pairs = sum(len(p) for _, p, _, _ in cases) / visits
        candidates = sum(len(k) for _, _, k, _ in cases) / visits
        per_b, per_x = t_brute / visits, t_box / visits
        row = f"{kind:14} {pairs:6.0f} {per_b * 1e3:10.2f} ms {candidates:10.0f} {per_x * 1e3:7.2f} ms"
        print(f"{row} {per_b / per_x:6.1f}x   {per_b * DR_VISITS / 60:6.1f} -> {per_x * DR_VISITS / 60:5.1f} min")


if __name__ == "__main__":
    main(sys.argv[1:])
