"""Deterministic synthetic sky and observations for the embedded world.

`SkySpec` describes the sky (a small skymap, an HSC-like instrument, "targets" = groups of
patches a campaign hands to one site, how many visits per band) and `build_sky` turns it into a
`SkyModel`: tracts and patches with `lsst.sphgeom` regions, observations (one exposure per
visit) with visit and visit-detector regions, plus the deterministic content of every input
file (raw pixels, calibs, reference-catalog shards, the sky map).  Nothing here touches a
Butler; `multisite_nb.world.butler_world` writes the model into a repo.

Geometry
--------
Each tract is a square of ``patches_per_side`` x ``patches_per_side`` patches of
``patch_size_deg`` on a side, drawn in the gnomonic (tangent-plane) projection around the
tract centre, so straight edges in the plane are great circles on the sky and the polygons are
exact.  Patch id = ``y * patches_per_side + x`` (x grows east, y grows north).  By default
the three tracts sit in separate declination rings (Dec -20, 0, +20) so no visit can reach
two tracts.

Unless ``visit_size_deg`` is set (wide visits, centred on their target and reaching whatever
they reach, as LSSTCam's 3.5-deg visits do), a target visit's footprint is the bounding box of
its target's patches, shrunk by
``footprint_inset_deg`` and dithered by at most ``dither_deg`` (< the inset): it covers
about 85 % of the target patches (2 x 1 patches) and overlaps no other patch, so the spatial join
visit <-> patch returns exactly the target patches.

Boundary visits
---------------
``boundary_visits = n`` adds, for every pair of *neighbouring* targets and in every band,
``n`` visits centred between the two targets' closest patches, long side along the line
joining them, so each overlaps both targets (raws two sites need).  Two targets are
neighbours when the centres of their closest patches are at most ``neighbour_max_sep_deg``
apart.  The default 3x3 sky has no neighbours (its tracts are 20 deg apart) and asks for
``boundary_visits = 0``; to get boundary visits, put two targets side by side, either in one
tract::

    SkySpec(targets=[TargetSpec(tract=0, patches=[3]), TargetSpec(tract=0, patches=[4]),
                     TargetSpec(tract=1, patches=[3, 4])], boundary_visits=1)

or in adjacent tracts (tract width = 3 x 0.2 deg; put the second centre one width east)::

    SkySpec(tracts=[TractSpec(id=0, ra=150.0, dec=0.0), TractSpec(id=1, ra=150.6, dec=0.0)],
            targets=[TargetSpec(tract=0, patches=[5]), TargetSpec(tract=1, patches=[3])],
            boundary_visits=1)

(`SkySpec.neighbours_example()` returns the first.)
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from astropy.time import Time, TimeDelta
from lsst.sphgeom import ConvexPolygon, HtmPixelization, LonLat, Region, UnitVector3d

from multisite_nb.domain.errors import ConfigError
from multisite_nb.world.spec import BandSpec, SkySpec, TargetSpec, TractSpec

__all__ = [
    "BandSpec",
    "Detector",
    "Observation",
    "Patch",
    "SkyModel",
    "SkySpec",
    "TargetSpec",
    "Tract",
    "TractSpec",
    "build_sky",
    "regions_overlap",
    "stable_value",
]

REFCAT_LEVEL = 7
"""HTM level of the reference-catalog shards (the universe's common skypix, htm7)."""


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Patch:
    """A patch: ids, grid cell, region and centre (degrees)."""

    tract: int
    id: int
    x: int
    y: int
    region: ConvexPolygon
    ra: float
    dec: float


@dataclass(frozen=True)
class Tract:
    """A tract: id, centre (degrees), region and its patches (index = patch id)."""

    id: int
    ra: float
    dec: float
    region: ConvexPolygon
    patches: tuple[Patch, ...]


@dataclass(frozen=True)
class Detector:
    """A detector of the synthetic focal plane (a tile of the grid)."""

    id: int
    x: int
    y: int

    @property
    def full_name(self) -> str:
        return f"{self.y}_{self.x}"


@dataclass(frozen=True)
class Observation:
    """One science exposure and its one-to-one visit (same id)."""

    visit: int
    band: str
    physical_filter: str
    day_obs: int
    seq_num: int
    ra: float
    dec: float
    sky_angle: float
    region: ConvexPolygon
    detector_regions: dict[int, ConvexPolygon]
    begin: Time
    end: Time
    kind: Literal["target", "boundary"]
    targets: tuple[int, ...]
    """Indices (into ``SkySpec.targets``) of the targets this visit overlaps."""

    @property
    def exposure(self) -> int:
        return self.visit

    @property
    def obs_id(self) -> str:
        return f"HSCA{self.visit:08d}"

    @property
    def group(self) -> str:
        return self.obs_id


@dataclass(frozen=True)
class SkyModel:
    """The generated sky: tracts, detectors, observations, and file contents."""

    spec: SkySpec
    tracts: dict[int, Tract]
    detectors: tuple[Detector, ...]
    observations: tuple[Observation, ...]

    # -- geometry queries -----------------------------------------------------------
    def patch(self, tract: int, patch: int) -> Patch:
        """The patch ``patch`` of tract ``tract``."""
        return self.tracts[tract].patches[patch]

    def target_patches(self, index: int) -> list[Patch]:
        """The patches of target ``index``."""
        target = self.spec.targets[index]
        return [self.patch(target.tract, p) for p in target.patches]

    def observations_for_target(self, index: int) -> list[Observation]:
        """Every observation overlapping target ``index`` (its own and boundary visits)."""
        return [o for o in self.observations if index in o.targets]

    def observations_overlapping(self, tract: int, patches: list[int] | None = None) -> list[Observation]:
        """Observations whose visit region overlaps the given patches (all of the tract if None)."""
        regions = [self.tracts[tract].region] if patches is None else [self.patch(tract, p).region for p in patches]
        return [o for o in self.observations if any(regions_overlap(o.region, r) for r in regions)]

    def boundary_observations(self) -> list[Observation]:
        """Observations that overlap more than one target."""
        return [o for o in self.observations if len(o.targets) > 1]

    @property
    def day_obs_values(self) -> list[int]:
        return sorted({o.day_obs for o in self.observations})

    def day_obs_span(self, day_obs: int) -> tuple[Time, Time]:
        """The (begin, end) of an observing day: 12:00 TAI on the date to 12:00 the next day."""
        s = str(day_obs)
        begin = Time(f"{s[:4]}-{s[4:6]}-{s[6:]}T12:00:00", scale="tai")
        return begin, begin + TimeDelta(1.0, format="jd")

    def validity_range(self) -> tuple[Time, Time]:
        """A calibration validity range covering every exposure (from a day before to a day after)."""
        begin = min(o.begin for o in self.observations) - TimeDelta(1.0, format="jd")
        end = max(o.end for o in self.observations) + TimeDelta(1.0, format="jd")
        return begin, end

    def refcat_shards(self) -> list[int]:
        """The htm7 pixel indices covering every tract (sorted)."""
        pix = HtmPixelization(REFCAT_LEVEL)
        shards: set[int] = set()
        for tract in self.tracts.values():
            for begin, end in pix.envelope(tract.region):
                shards.update(range(begin, end))
        return sorted(shards)

    # -- file contents ----------------------------------------------------------------
    def raw_content(self, obs: Observation, detector: int) -> dict[str, Any]:
        """A small raw 'image': metadata + a deterministic pseudo-random pixel array."""
        rng = np.random.default_rng([self.spec.seed, obs.visit, detector, 1])
        ny, nx = self.spec.raw_shape
        pixels = rng.normal(1000.0, 10.0, size=(ny, nx)).round().astype(np.int64)
        centre = obs.detector_regions[detector].getCentroid()
        lonlat = LonLat(centre)
        return {
            "instrument": self.spec.instrument,
            "exposure": obs.exposure,
            "detector": detector,
            "obs_id": obs.obs_id,
            "physical_filter": obs.physical_filter,
            "band": obs.band,
            "day_obs": obs.day_obs,
            "exposure_time": self.spec.exposure_time,
            "ra": round(lonlat.getLon().asDegrees(), 6),
            "dec": round(lonlat.getLat().asDegrees(), 6),
            "shape": [ny, nx],
            "pixels": [int(v) for v in pixels.ravel()],
            "value": int(pixels.sum()),
        }

    def bias_content(self, detector: int) -> dict[str, Any]:
        """A bias 'frame' for one detector."""
        rng = np.random.default_rng([self.spec.seed, detector, 2])
        level = round(float(rng.normal(990.0, 2.0)), 4)
        return {
            "instrument": self.spec.instrument,
            "detector": detector,
            "level": level,
            "value": stable_value(["bias", detector, level]),
        }

    def flat_content(self, detector: int, physical_filter: str) -> dict[str, Any]:
        """A flat 'frame' for one detector and physical filter."""
        rng = np.random.default_rng([self.spec.seed, detector, 3, *physical_filter.encode()])
        gain = round(float(rng.normal(1.0, 0.01)), 6)
        return {
            "instrument": self.spec.instrument,
            "detector": detector,
            "physical_filter": physical_filter,
            "gain": gain,
            "value": stable_value(["flat", detector, physical_filter, gain]),
        }

    def refcat_content(self, shard: int) -> dict[str, Any]:
        """A reference-catalog shard: a few stars inside htm7 pixel ``shard``."""
        pix = HtmPixelization(REFCAT_LEVEL)
        triangle = pix.pixel(shard)
        circle = triangle.getBoundingCircle()
        centre = LonLat(circle.getCenter())
        radius = circle.getOpeningAngle().asDegrees()
        rng = np.random.default_rng([self.spec.seed, shard, 4])
        stars: list[dict[str, Any]] = []
        tries = 0
        while len(stars) < self.spec.refcat_stars_per_shard and tries < 100 * self.spec.refcat_stars_per_shard:
            tries += 1
            dra, ddec = (float(v) for v in rng.uniform(-radius, radius, size=2))
            dec = centre.getLat().asDegrees() + ddec
            ra = centre.getLon().asDegrees() + dra / max(math.cos(math.radians(dec)), 1e-3)
            if not triangle.contains(UnitVector3d(LonLat.fromDegrees(ra, dec))):
                continue
            mags = rng.uniform(16.0, 21.0, size=len(self.spec.bands))
            star = {"id": shard * 10_000 + len(stars), "ra": round(ra % 360.0, 7), "dec": round(dec, 7)}
            star.update({f"{b.band}_mag": round(float(m), 4) for b, m in zip(self.spec.bands, mags, strict=True)})
            stars.append(star)
        return {
            "name": self.spec.refcat,
            "htm7": shard,
            "stars": stars,
            "value": stable_value([self.spec.refcat, shard, stars]),
        }

    def skymap_content(self) -> dict[str, Any]:
        """The sky map 'object': its geometry as plain data."""
        tracts = [
            {
                "id": t.id,
                "ra": t.ra,
                "dec": t.dec,
                "patches": [
                    {"id": p.id, "x": p.x, "y": p.y, "ra": round(p.ra, 7), "dec": round(p.dec, 7)} for p in t.patches
                ],
            }
            for t in self.tracts.values()
        ]
        return {
            "name": self.spec.skymap,
            "patches_per_side": self.spec.patches_per_side,
            "patch_size_deg": self.spec.patch_size_deg,
            "tracts": tracts,
            "value": stable_value([self.spec.skymap, tracts]),
        }


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
def stable_value(obj: Any) -> int:
    """A deterministic 53-bit integer digest of JSON-able ``obj`` (exact in a float too)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 11


def regions_overlap(a: Region, b: Region) -> bool:
    """Whether two regions overlap, with the Butler query system's semantics (unknown = yes)."""
    return a.overlaps(b) is not False


class _Frame:
    """A gnomonic tangent plane at (ra, dec): plane coordinates in degrees, x east, y north."""

    def __init__(self, ra: float, dec: float) -> None:
        a, d = math.radians(ra), math.radians(dec)
        self.centre = np.array([math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d)])
        self.east = np.array([-math.sin(a), math.cos(a), 0.0])
        self.north = np.cross(self.centre, self.east)

    def vector(self, x: float, y: float) -> UnitVector3d:
        v = self.centre + math.radians(x) * self.east + math.radians(y) * self.north
        return UnitVector3d(float(v[0]), float(v[1]), float(v[2]))

    def radec(self, x: float, y: float) -> tuple[float, float]:
        ll = LonLat(self.vector(x, y))
        return ll.getLon().asDegrees(), ll.getLat().asDegrees()

    def plane(self, ra: float, dec: float) -> tuple[float, float]:
        """Inverse projection of (ra, dec) into this plane (degrees)."""
        a, d = math.radians(ra), math.radians(dec)
        v = np.array([math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d)])
        w = v / float(v @ self.centre)
        return math.degrees(float(w @ self.east)), math.degrees(float(w @ self.north))

    def box(
        self, x0: float, x1: float, y0: float, y1: float, angle: float = 0.0, about: tuple[float, float] = (0.0, 0.0)
    ) -> ConvexPolygon:
        """The polygon of a plane rectangle, rotated by ``angle`` (radians) about ``about``."""
        c, s = math.cos(angle), math.sin(angle)
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]  # counter-clockwise seen from outside
        pts = []
        for x, y in corners:
            dx, dy = x - about[0], y - about[1]
            pts.append(self.vector(about[0] + c * dx - s * dy, about[1] + s * dx + c * dy))
        return ConvexPolygon(pts)


def _footprint(
    frame: _Frame, cx: float, cy: float, width: float, height: float, angle: float, grid: tuple[int, int]
) -> tuple[ConvexPolygon, dict[int, ConvexPolygon]]:
    """A visit polygon and its detector tiles: a width x height rectangle centred at (cx, cy)."""
    nx, ny = grid
    x0, y0 = cx - width / 2, cy - height / 2
    visit = frame.box(x0, x0 + width, y0, y0 + height, angle, (cx, cy))
    detectors: dict[int, ConvexPolygon] = {}
    for j in range(ny):
        for i in range(nx):
            detectors[j * nx + i] = frame.box(
                x0 + i * width / nx,
                x0 + (i + 1) * width / nx,
                y0 + j * height / ny,
                y0 + (j + 1) * height / ny,
                angle,
                (cx, cy),
            )
    return visit, detectors


# --------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------
def build_sky(spec: SkySpec | None = None) -> SkyModel:
    """Generate the sky and observations of ``spec`` (deterministic in the spec).

    Raises
    ------
    ValueError
        If the spec cannot be honoured: a target visit would reach another target or
        another tract, or ``boundary_visits > 0`` without neighbouring targets.
    """
    spec = spec or SkySpec()
    n, size = spec.patches_per_side, spec.patch_size_deg
    half = n * size / 2
    frames: dict[int, _Frame] = {}
    tracts: dict[int, Tract] = {}
    for t in spec.tracts:
        frame = frames[t.id] = _Frame(t.ra, t.dec)
        patches = []
        for y in range(n):
            for x in range(n):
                x0, y0 = -half + x * size, -half + y * size
                ra, dec = frame.radec(x0 + size / 2, y0 + size / 2)
                patches.append(Patch(t.id, y * n + x, x, y, frame.box(x0, x0 + size, y0, y0 + size), ra, dec))
        tracts[t.id] = Tract(t.id, t.ra, t.dec, frame.box(-half, half, -half, half), tuple(patches))
    detectors = tuple(
        Detector(j * spec.detector_grid[0] + i, i, j)
        for j in range(spec.detector_grid[1])
        for i in range(spec.detector_grid[0])
    )
    rng = np.random.default_rng([spec.seed, 0])
    target_regions = [[tracts[tg.tract].patches[p].region for p in tg.patches] for tg in spec.targets]
    # Near-neighbour prefilter (a world may have thousands of tracts): only tracts whose centres are
    # within a few tract widths of a visit's centre can overlap it.
    tract_ids = list(tracts)
    centres = np.array([_unit(t.ra, t.dec) for t in tracts.values()])
    reach = math.cos(math.radians(min(90.0, 3 * n * size + (spec.visit_size_deg or 0.0))))
    target_of_tract: dict[int, list[int]] = {}
    for i, tg in enumerate(spec.targets):
        target_of_tract.setdefault(tg.tract, []).append(i)

    def near_tracts(region: ConvexPolygon) -> list[int]:
        c = region.getBoundingCircle().getCenter()
        dots = centres @ np.array([c.x(), c.y(), c.z()])
        return [tract_ids[k] for k in np.nonzero(dots >= reach)[0]]

    def overlapping_targets(region: ConvexPolygon) -> tuple[int, ...]:
        near = sorted(i for t in near_tracts(region) for i in target_of_tract.get(t, []))
        return tuple(i for i in near if any(regions_overlap(region, r) for r in target_regions[i]))

    observations: list[Observation] = []

    def add(
        night: int,
        seq: int,
        frame: _Frame,
        cx: float,
        cy: float,
        w: float,
        h: float,
        angle: float,
        band: BandSpec,
        kind: Literal["target", "boundary"],
    ) -> Observation:
        day = _day_obs_plus(spec.first_day_obs, night)
        visit_region, det_regions = _footprint(frame, cx, cy, w, h, angle, spec.detector_grid)
        ra, dec = frame.radec(cx, cy)
        s = str(day)
        begin = Time(f"{s[:4]}-{s[4:6]}-{s[6:]}T20:00:00", scale="tai") + TimeDelta(120.0 * seq, format="sec")
        obs = Observation(
            visit=(night + 1) * 1000 + seq,
            band=band.band,
            physical_filter=band.physical_filter,
            day_obs=day,
            seq_num=seq,
            ra=ra % 360.0,
            dec=dec,
            sky_angle=math.degrees(angle) % 360.0,
            region=visit_region,
            detector_regions=det_regions,
            begin=begin,
            end=begin + TimeDelta(spec.exposure_time, format="sec"),
            kind=kind,
            targets=overlapping_targets(visit_region),
        )
        observations.append(obs)
        return obs

    # Target visits: one night per target.
    for ti, target in enumerate(spec.targets):
        frame = frames[target.tract]
        cells = [tracts[target.tract].patches[p] for p in target.patches]
        xs = [-half + c.x * size for c in cells]
        ys = [-half + c.y * size for c in cells]
        bx0, bx1 = min(xs) + spec.footprint_inset_deg, max(xs) + size - spec.footprint_inset_deg
        by0, by1 = min(ys) + spec.footprint_inset_deg, max(ys) + size - spec.footprint_inset_deg
        seq = 0
        for band in spec.bands:
            for _ in range(spec.visits_per_band):
                seq += 1
                dx, dy = rng.uniform(-spec.dither_deg, spec.dither_deg, size=2)
                w, h = (bx1 - bx0, by1 - by0) if spec.visit_size_deg is None else (spec.visit_size_deg,) * 2
                obs = add(ti, seq, frame, (bx0 + bx1) / 2 + dx, (by0 + by1) / 2 + dy, w, h, 0.0, band, "target")
                if spec.visit_size_deg is not None:
                    continue  # a wide visit: meant to reach other targets and tracts
                if obs.targets != (ti,):
                    raise ConfigError(
                        f"visit {obs.visit} of target {ti} overlaps targets {obs.targets}; "
                        "targets must not share patches and need footprint_inset_deg > dither_deg"
                    )
                others = [
                    t
                    for t in near_tracts(obs.region)
                    if t != target.tract and regions_overlap(obs.region, tracts[t].region)
                ]
                if others:
                    raise ConfigError(f"visit {obs.visit} of target {ti} reaches tract(s) {others}")

    # Boundary visits: one extra night.
    if spec.boundary_visits:
        pairs = _neighbour_pairs(spec, tracts)
        if not pairs:
            raise ConfigError(
                "boundary_visits > 0 needs two neighbouring targets (closest patch centres within "
                f"{spec.neighbour_max_sep_deg} deg): put two targets in one tract or tracts side by side "
                "(see SkySpec.neighbours_example())"
            )
        night = len(spec.targets)
        if len(pairs) * len(spec.bands) * spec.boundary_visits >= 1000:
            raise ConfigError("too many boundary visits for one night (at most 999)")
        seq = 0
        for a, b, pa, pb in pairs:
            mid = _Frame(*_midpoint(pa, pb))
            xa, ya = mid.plane(pa.ra, pa.dec)
            xb, yb = mid.plane(pb.ra, pb.dec)
            angle = math.atan2(yb - ya, xb - xa)
            length = 2 * size - 2 * spec.footprint_inset_deg
            width = size - 2 * spec.footprint_inset_deg
            for band in spec.bands:
                for _ in range(spec.boundary_visits):
                    seq += 1
                    dx, dy = rng.uniform(-spec.dither_deg, spec.dither_deg, size=2)
                    obs = add(night, seq, mid, dx, dy, length, width, angle, band, "boundary")
                    if not {a, b} <= set(obs.targets):
                        raise ConfigError(f"boundary visit {obs.visit} misses targets {a} and {b}: {obs.targets}")
    return SkyModel(spec, tracts, detectors, tuple(observations))


def _unit(ra: float, dec: float) -> tuple[float, float, float]:
    a, d = math.radians(ra), math.radians(dec)
    return (math.cos(d) * math.cos(a), math.cos(d) * math.sin(a), math.sin(d))


def _day_obs_plus(day_obs: int, days: int) -> int:
    s = str(day_obs)
    t = Time(f"{s[:4]}-{s[4:6]}-{s[6:]}T12:00:00", scale="tai") + TimeDelta(float(days), format="jd")
    return int(t.strftime("%Y%m%d"))


def _midpoint(a: Patch, b: Patch) -> tuple[float, float]:
    va = UnitVector3d(LonLat.fromDegrees(a.ra, a.dec))
    vb = UnitVector3d(LonLat.fromDegrees(b.ra, b.dec))
    ll = LonLat(UnitVector3d(va.x() + vb.x(), va.y() + vb.y(), va.z() + vb.z()))
    return ll.getLon().asDegrees(), ll.getLat().asDegrees()


def _separation_deg(a: Patch, b: Patch) -> float:
    va = UnitVector3d(LonLat.fromDegrees(a.ra, a.dec))
    vb = UnitVector3d(LonLat.fromDegrees(b.ra, b.dec))
    return math.degrees(math.acos(max(-1.0, min(1.0, va.dot(vb)))))


def _neighbour_pairs(spec: SkySpec, tracts: dict[int, Tract]) -> list[tuple[int, int, Patch, Patch]]:
    """Pairs of targets (i < j) whose closest patch centres are within the neighbour distance."""
    pairs = []
    for i, ti in enumerate(spec.targets):
        for j in range(i + 1, len(spec.targets)):
            tj = spec.targets[j]
            best = min(
                (
                    (_separation_deg(pa, pb), pa, pb)
                    for pa in (tracts[ti.tract].patches[p] for p in ti.patches)
                    for pb in (tracts[tj.tract].patches[p] for p in tj.patches)
                ),
                key=lambda item: (item[0], item[1].id, item[2].id),
            )
            if best[0] <= spec.neighbour_max_sep_deg:
                pairs.append((i, j, best[1], best[2]))
    return pairs
