"""Which detectors of a visit meet which sky patches, settled on the regions themselves.

The registry's spatial join gives the (visit, patch) pairs whose regions overlap. Placement then
needs the detector level: a pair counts only if one of the visit's detectors overlaps the patch,
and a visit's weight at a site is the number of (detector, patch) overlaps. Testing every detector
against every pair costs detectors x pairs region tests per visit: a few at the embedded worlds,
where a visit sits inside one patch, but an LSSTCam visit (189 detectors, ~3.5 deg) meets a few
hundred 0.2-deg patches, ~60,000 tests a visit.

:class:`PatchBoxes` and :func:`detector_hits` first compare 3-D bounding boxes of the regions
(unit-vector space, so right ascension's wrap-around needs no care) for all pairs of a visit at
once, with numpy, and test exactly only the detectors whose box meets the patch's: a handful per
patch. A pair is kept unless sphgeom says it is certainly disjoint, as the brute force did (and as
the Butler's query system post-filters its own spatial joins).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["PatchBoxes", "boxes_of", "detector_hits"]

_SLACK = 1e-12  # boxes that touch are candidates; the exact test decides
_FEW_PATCHES = 4  # up to this many pairs a visit, every detector is tested against each


def boxes_of(regions: Sequence[Any]) -> np.ndarray:
    """The 3-D bounding boxes of sphgeom regions as an (N, 6) array: x, y, z lower bounds, then upper."""
    out = np.empty((len(regions), 6))
    for i, region in enumerate(regions):
        box = region.getBoundingBox3d()
        x, y, z = box.x(), box.y(), box.z()
        out[i] = (x.getA(), y.getA(), z.getA(), x.getB(), y.getB(), z.getB())
    return out


class PatchBoxes:
    """Patch regions keyed by (tract, patch), with their bounding boxes computed once each.

    A site's patches are met by many visits: their boxes are computed the first time a visit meets
    them and kept (one row of six floats a patch).
    """

    def __init__(self, regions: Mapping[tuple[int, int], Any]) -> None:
        self.regions = regions
        self._row: dict[tuple[int, int], int] = {}
        self._boxes = np.empty((0, 6))

    def rows(self, keys: Sequence[tuple[int, int]]) -> np.ndarray:
        """The boxes of ``keys`` (each key must have a region), one row each."""
        new = [k for k in dict.fromkeys(keys) if k not in self._row]
        if new:
            start = len(self._boxes)
            self._boxes = np.concatenate([self._boxes, boxes_of([self.regions[k] for k in new])])
            self._row.update({k: start + i for i, k in enumerate(new)})
        return self._boxes[[self._row[k] for k in keys]]


def detector_hits(
    detectors: Mapping[int, Any],
    patches: Sequence[tuple[int, int] | None],
    boxes: PatchBoxes,
) -> list[list[int]]:
    """For each of a visit's patches, the visit's detectors whose regions may overlap it.

    Parameters
    ----------
    detectors
        The visit's detector regions by detector id.
    patches
        The (tract, patch) keys the registry joined the visit with; ``None`` (or a key with no
        region in ``boxes``) keeps every detector, as a pair the regions cannot settle.
    boxes
        The site's patch regions and their cached boxes.

    Returns
    -------
    hits
        One sorted list of detector ids per entry of ``patches`` (empty: no detector meets it).
    """
    ids = list(detectors)
    regions = [detectors[d] for d in ids]
    known = [(i, k) for i, k in enumerate(patches) if k is not None and k in boxes.regions]
    out: list[list[int]] = [sorted(ids) for _ in patches]
    for i, _ in known:
        out[i] = []
    if not known or not ids:
        return out
    if len(known) <= _FEW_PATCHES:  # a visit inside a patch or two: boxes would cost more than they save
        for i, key in known:
            patch = boxes.regions[key]
            out[i] = sorted(d for d, r in zip(ids, regions, strict=True) if r.overlaps(patch) is not False)
        return out
    det = boxes_of(regions)
    pat = boxes.rows([k for _, k in known])
    meet = np.ones((len(known), len(ids)), dtype=bool)  # (patches, detectors): boxes meet on every axis
    for axis in range(3):
        meet &= det[:, axis] <= pat[:, axis + 3, None] + _SLACK
        meet &= det[:, axis + 3] >= pat[:, axis, None] - _SLACK
    for row, col in zip(*np.nonzero(meet), strict=True):
        i, key = known[row]
        if regions[col].overlaps(boxes.regions[key]) is not False:
            out[i].append(ids[col])
    for i, _ in known:
        out[i].sort()
    return out
