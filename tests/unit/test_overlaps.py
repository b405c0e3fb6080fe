"""Detector-patch overlaps sifted by bounding boxes give what testing every pair gives."""

from __future__ import annotations

import math

import pytest

from multisite_nb.domain.overlaps import PatchBoxes, detector_hits
from multisite_nb.world.synthetic import _footprint, _Frame


def _patch_grid(frame: _Frame, half: float, size: float) -> dict[tuple[int, int], object]:
    n = round(2 * half / size)
    return {
        (7, y * n + x): frame.box(-half + x * size, -half + (x + 1) * size, -half + y * size, -half + (y + 1) * size)
        for y in range(n)
        for x in range(n)
    }


def _brute(detectors: dict[int, object], patches: dict[tuple[int, int], object]) -> dict[tuple[int, int], list[int]]:
    return {
        k: sorted(d for d, r in detectors.items() if r.overlaps(p) is not False)  # type: ignore[attr-defined]
        for k, p in patches.items()
    }


@pytest.mark.parametrize(
    ("ra", "dec", "angle"),
    [(150.0, -10.0, 0.0), (359.9, 0.0, 0.7), (0.05, 62.0, 2.1), (200.0, -85.0, 0.3), (0.0, -90.0, 1.1)],
    ids=["plain", "ra-wrap", "north-rotated", "near-pole", "on-the-pole"],
)
def test_lsstcam_like_visit_matches_every_pair_tested(ra: float, dec: float, angle: float) -> None:
    frame = _Frame(ra, dec)
    patches = _patch_grid(frame, 2.4, 0.2)  # 576 patches of 0.2 deg around a 3.5-deg visit
    visit, detectors = _footprint(frame, 0.13, -0.07, 3.5, 3.5, angle, (14, 14))
    keys = list(patches)
    want = _brute(detectors, patches)
    boxes = PatchBoxes(patches)
    got = dict(zip(keys, detector_hits(detectors, keys, boxes), strict=True))
    assert got == want
    # the visit's outline first sets aside the patches its box misses: the same hits
    assert dict(zip(keys, detector_hits(detectors, keys, boxes, visit), strict=True)) == want
    met = [k for k, ds in want.items() if ds]
    assert 250 < len(met) < len(keys)  # a wide visit: hundreds of patches met, the grid's corners not
    assert sum(len(ds) for ds in got.values()) == sum(len(ds) for ds in want.values())


def test_pairs_the_regions_cannot_settle_keep_every_detector() -> None:
    frame = _Frame(10.0, 5.0)
    patches = _patch_grid(frame, 0.4, 0.2)
    _, detectors = _footprint(frame, 0.0, 0.0, 0.3, 0.3, 0.0, (3, 3))
    boxes = PatchBoxes(patches)
    keys: list[tuple[int, int] | None] = [None, (8, 0), (7, 0), (7, 15)]
    hits = detector_hits(detectors, keys, boxes)
    assert hits[0] == hits[1] == sorted(detectors)  # no key, a key without a region: kept whole
    assert hits[2] == [] and hits[3] == []  # corner patches of a 0.8-deg grid: the 0.3-deg visit misses them
    inner = detector_hits(detectors, [(7, 5)], boxes)[0]
    assert inner == _brute(detectors, {(7, 5): patches[(7, 5)]})[(7, 5)] and inner
    # with the outline, a visit inside few of many candidates: the few tested one by one, the rest empty
    visit, _ = _footprint(frame, 0.0, 0.0, 0.3, 0.3, 0.0, (3, 3))
    every = detector_hits(detectors, list(patches), boxes, visit)
    assert every == [_brute(detectors, {k: p})[k] for k, p in patches.items()]
    assert sum(bool(h) for h in every) == 4  # the 0.3-deg visit at the grid's centre meets four patches


def test_patch_boxes_are_computed_once_and_reused() -> None:
    frame = _Frame(45.0, -30.0)
    patches = _patch_grid(frame, 0.6, 0.2)
    boxes = PatchBoxes(patches)
    first = boxes.rows([(7, 4), (7, 5), (7, 4)])
    assert first.shape == (3, 6) and (first[0] == first[2]).all()
    table = boxes._boxes
    again = boxes.rows([(7, 5)])
    assert (again[0] == first[1]).all() and boxes._boxes is table and len(table) == len(patches)  # not again
    # a patch without a region cannot be settled: every detector kept, as for an unknown key
    _, detectors = _footprint(frame, 0.0, 0.0, 0.3, 0.3, 0.0, (2, 2))
    holed = PatchBoxes({**patches, (7, 4): None})
    assert detector_hits(detectors, [(7, 4)], holed) == [sorted(detectors)]
    x = patches[(7, 4)].getBoundingBox3d().x()  # type: ignore[attr-defined]
    assert math.isclose(first[0][0], x.getA()) and math.isclose(first[0][3], x.getB())
