"""Which detectors of a visit meet which sky patches, settled on the regions themselves.

Placement needs, for each visit the registry finds meeting a site's tracts, which of the visit's
detectors overlap which of the site's patches there: a visit is the site's only if one of its
detectors overlaps one of the site's patches, and its weight at a site (which site owns a shared
visit) is the number of such (detector, patch) overlaps. Testing every detector against every
candidate patch costs detectors x patches region tests a visit: a few at the embedded worlds, where
a visit sits inside one patch, but an LSSTCam visit (189 detectors, ~3.5 deg) meets a few hundred
0.2-deg patches, and its tracts hold several hundred more: ~150,000 tests a visit.

:class:`PatchBoxes` and :func:`detector_hits` first set aside the patches whose 3-D bounding box
(unit-vector space, so right ascension's wrap-around needs no care) misses the visit outline's,
then compare the boxes of all remaining (patch, detector) pairs at once with numpy, and test
exactly only the pairs whose boxes meet: a handful of detectors a patch. A pair is kept if its
boxes meet and sphgeom's ``overlaps`` is not False (the convex polygons here are settled exactly),
as the Butler's query system post-filters its own spatial joins. The outline is assumed to hold its
detectors, as a visit's region does in the registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from lsst.sphgeom import Region

__all__ = ["PatchBoxes", "boxes_of", "detector_hits"]

_SLACK = 1e-12  # boxes that touch are candidates; the exact test decides
_FEW_PATCHES = 4  # up to this many pairs a visit, every detector is tested against each


def boxes_of(regions: Sequence[Region]) -> np.ndarray:
    """The 3-D bounding boxes of sphgeom regions as an (N, 6) array: x, y, z lower bounds, then upper."""
    out = np.empty((len(regions), 6))
    for i, region in enumerate(regions):
        box = region.getBoundingBox3d()
        x, y, z = box.x(), box.y(), box.z()
        out[i] = (x.getA(), y.getA(), z.getA(), x.getB(), y.getB(), z.getB())
    return out


class PatchBoxes:
    """Patch regions keyed by (tract, patch), with their bounding boxes.

    A site's patches are met by many visits: the boxes of all of them are computed once, at the
    first visit (one row of six floats a patch; ~2 µs a patch), and looked up from then on.
    """

    def __init__(self, regions: Mapping[tuple[int, int], Any]) -> None:
        self.regions = {k: r for k, r in regions.items() if r is not None}  # a snapshot: the boxes follow it
        self._row: dict[tuple[int, int], int] = {}
        self._boxes = np.empty((0, 6))

    def rows(self, keys: Sequence[tuple[int, int]]) -> np.ndarray:
        """The boxes of ``keys`` (each key must have a region), one row each."""
        if not self._row and self.regions:
            order = list(self.regions)
            self._boxes = boxes_of([self.regions[k] for k in order])
            self._row = {k: i for i, k in enumerate(order)}
        return self._boxes[[self._row[k] for k in keys]]


def _meets(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Whether boxes ``a`` (N, 6) meet box ``b`` (6,), one bool each."""
    return np.all((a[:, :3] <= b[3:] + _SLACK) & (a[:, 3:] >= b[:3] - _SLACK), axis=1)


def detector_hits(
    detectors: Mapping[int, Any],
    patches: Sequence[tuple[int, int] | None],
    boxes: PatchBoxes,
    within: Any = None,
) -> list[list[int]]:
    """For each candidate patch of a visit, the visit's detectors whose regions may overlap it.

    Parameters
    ----------
    detectors
        The visit's detector regions by detector id.
    patches
        The candidate (tract, patch) keys; ``None`` (or a key with no region in ``boxes``) keeps
        every detector, as a pair the regions cannot settle.
    boxes
        The site's patch regions and their cached boxes.
    within
        The visit's region (holding its detectors'), if known: patches whose box misses its box
        are settled without a look at the detectors.

    Returns
    -------
    hits
        One sorted list of detector ids per entry of ``patches`` (empty: no detector meets it).
    """
    ids = list(detectors)
    regions = [detectors[d] for d in ids]
    every = sorted(ids)
    out: list[list[int]] = [[] if k is not None and k in boxes.regions else list(every) for k in patches]
    known = [(i, k) for i, k in enumerate(patches) if k is not None and k in boxes.regions]
    if not known or not ids:
        return out
    pat = boxes.rows([k for _, k in known])
    if within is not None:
        keep = np.nonzero(_meets(pat, boxes_of([within])[0]))[0]
        known, pat = [known[j] for j in keep], pat[keep]
    if len(known) <= _FEW_PATCHES:  # a visit inside a patch or two: boxes would cost more than they save
        for i, key in known:
            patch = boxes.regions[key]
            out[i] = sorted(d for d, r in zip(ids, regions, strict=True) if r.overlaps(patch) is not False)
        return out
    det = boxes_of(regions)
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
