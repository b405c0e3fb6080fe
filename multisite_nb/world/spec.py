"""The world spec: what sky, instrument and observations the embedded world generates.

`SkySpec` is a pure description (pydantic, validated); :mod:`.synthetic` turns it into a
sky model and file contents, :mod:`.butler_world` writes that into the central repository.
See :mod:`.synthetic` for the geometry and the boundary visits.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from multisite_nb.domain.params import load_model, parameter_path, repo_root

__all__ = [
    "DEFAULT_SPEC",
    "INSTRUMENT_CLASS",
    "BandSpec",
    "SkySpec",
    "TargetSpec",
    "TractGridSpec",
    "TractSpec",
    "load_spec",
]

#: An instrument class as the instrument packages name theirs: ``lsst.obs.<package>[.<module>].<Class>``.
INSTRUMENT_CLASS = r"^lsst\.obs\.[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*\.[A-Z][A-Za-z0-9_]*$"

#: Two whole numbers, written as a YAML list ``[2, 2]``.
_Pair = Annotated[tuple[Annotated[int, Field(strict=True)], Annotated[int, Field(strict=True)]], Field(strict=False)]

#: The world spec `multisite-nb world up` uses unless told otherwise (relative to the checkout).
DEFAULT_SPEC = "parameters/worlds/rehearsal_3x3.yaml"


# --------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------
class TractSpec(BaseModel):
    """One tract: its id and the (RA, Dec) of its centre in degrees."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    id: int = Field(ge=0)
    ra: float
    dec: float = Field(ge=-80.0, le=80.0)


class TractGridSpec(BaseModel):
    """Tracts side by side in rows of equal declination: a contiguous sky of ``n_ra`` x ``n_dec`` tracts.

    Tract ids run along each row (RA grows east), rows go north from ``dec0``; neighbouring tracts
    are ``gap_deg`` apart at their edges (at the row's declination).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    ra0: float = 0.0
    dec0: float = Field(default=-10.0, ge=-70.0, le=70.0)
    n_ra: int = Field(ge=1, le=1000)
    n_dec: int = Field(ge=1, le=200)
    gap_deg: float = Field(default=0.02, ge=0.0)
    targets_every: int = Field(default=1, ge=1)
    """Observe every k-th tract (its centre patch); the others stay empty, as parts of a real sky do."""


class BandSpec(BaseModel):
    """A band and the instrument's physical filter for it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    band: str
    physical_filter: str


class TargetSpec(BaseModel):
    """A group of patches of one tract that one site will be given (observed together)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    tract: int
    patches: list[int] = Field(min_length=1)


def _default_tracts() -> list[TractSpec]:
    return [
        TractSpec(id=0, ra=150.0, dec=-20.0),
        TractSpec(id=1, ra=150.0, dec=0.0),
        TractSpec(id=2, ra=150.0, dec=20.0),
    ]


def _default_bands() -> list[BandSpec]:
    return [
        BandSpec(band="g", physical_filter="HSC-G"),
        BandSpec(band="r", physical_filter="HSC-R"),
        BandSpec(band="i", physical_filter="HSC-I"),
    ]


class SkySpec(BaseModel):
    """What to generate; the defaults are the 3x3 rehearsal world.

    Every output is a pure function of this spec (``seed`` included): building twice gives
    identical regions, ids, pixel values and hashes.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    seed: int = 20250301
    instrument: str = "HSC"
    instrument_class: str = Field(default="lsst.obs.subaru.HyperSuprimeCam", pattern=INSTRUMENT_CLASS)
    """The Butler's tools import this name: only a class in an instrument package's form (``lsst.obs.…``)."""
    skymap: str = "hsc_rings_3x3"
    tracts: list[TractSpec] = Field(default_factory=_default_tracts, min_length=1)
    tract_grid: TractGridSpec | None = None
    """A contiguous sky of many tracts instead of ``tracts`` (the scale worlds)."""
    patches_per_side: int = Field(default=3, ge=1, le=10)
    patch_size_deg: float = Field(default=0.2, gt=0.0, le=2.0)
    bands: list[BandSpec] = Field(default_factory=_default_bands, min_length=1)
    detector_grid: _Pair = (2, 2)
    """Detectors per visit as (nx, ny); detector id = y * nx + x, each a tile of the focal plane."""
    targets: list[TargetSpec] = Field(default_factory=list)
    """Empty means: one target per tract, patches 3 and 4 (the middle row's west and centre)."""
    visits_per_band: int = Field(default=2, ge=1, le=40)
    boundary_visits: int = Field(default=0, ge=0, le=20)
    neighbour_max_sep_deg: float = Field(default=0.3, gt=0.0)
    footprint_inset_deg: float = Field(default=0.01, ge=0.0)
    dither_deg: float = Field(default=0.004, ge=0.0)
    visit_size_deg: float | None = Field(default=None, gt=0.0, le=10.0)
    """A target visit's side instead of its target's patches less the inset: an LSSTCam visit is
    ~3.5 deg and meets a few hundred 0.2-deg patches of several tracts (and sites). Such visits
    may reach other targets and tracts; unset, each stays inside its target (the default)."""
    first_day_obs: int = 20250301
    exposure_time: float = Field(default=30.0, gt=0.0)
    raw_shape: _Pair = (24, 24)
    refcat: str = "ps1_pv3_3pi_20170110"
    refcat_stars_per_shard: int = Field(default=12, ge=1, le=1000)

    @model_validator(mode="after")
    def _check(self) -> SkySpec:
        if self.tract_grid is not None:
            if "tracts" in self.model_fields_set:
                raise ValueError("give either tracts or tract_grid, not both")
            self.tracts = self._grid_tracts(self.tract_grid)
            if not self.targets:  # the centre patch of each tract: its visits reach no neighbour
                centre = self.patches_per_side**2 // 2
                every = self.tract_grid.targets_every
                self.targets = [TargetSpec(tract=t.id, patches=[centre]) for t in self.tracts[::every]]
        ids = [t.id for t in self.tracts]
        if len(set(ids)) != len(ids):
            raise ValueError(f"tract ids must be unique, got {ids}")
        if not self.targets:
            self.targets = [TargetSpec(tract=t.id, patches=[3, 4]) for t in self.tracts]
        n_patch = self.patches_per_side**2
        for i, target in enumerate(self.targets):
            if target.tract not in ids:
                raise ValueError(f"targets[{i}]: tract {target.tract} is not one of {ids}")
            bad = [p for p in target.patches if not 0 <= p < n_patch]
            if bad:
                raise ValueError(f"targets[{i}]: patches {bad} outside 0..{n_patch - 1}")
        seen: dict[tuple[int, int], int] = {}
        for i, target in enumerate(self.targets):
            for p in target.patches:
                if (target.tract, p) in seen:
                    raise ValueError(f"patch {target.tract}/{p} is in targets {seen[(target.tract, p)]} and {i}")
                seen[(target.tract, p)] = i
        if self.visit_size_deg is not None and self.boundary_visits:
            raise ValueError("visit_size_deg: wide visits already cross targets; give boundary_visits: 0")
        if self.dither_deg >= self.footprint_inset_deg and self.footprint_inset_deg > 0:
            raise ValueError("dither_deg must be smaller than footprint_inset_deg (else visits reach other patches)")
        if min(self.detector_grid) < 1:
            raise ValueError("detector_grid must be at least (1, 1)")
        if len({b.band for b in self.bands}) != len(self.bands):
            raise ValueError("bands must be unique")
        if len(self.bands) * max(self.visits_per_band, self.boundary_visits) >= 1000:
            raise ValueError("at most 999 visits a night (visit id = (night + 1) * 1000 + seq_num)")
        return self

    def _grid_tracts(self, grid: TractGridSpec) -> list[TractSpec]:
        import math

        width = self.patches_per_side * self.patch_size_deg + grid.gap_deg
        if grid.dec0 + (grid.n_dec - 1) * width > 80.0:
            raise ValueError(f"tract_grid: {grid.n_dec} rows from dec {grid.dec0} reach beyond dec 80")
        tracts = []
        for j in range(grid.n_dec):
            dec = grid.dec0 + j * width
            step = width / math.cos(math.radians(dec))
            if grid.n_ra * step > 360.0:
                raise ValueError(f"tract_grid: row {j} (dec {dec:.2f}) of {grid.n_ra} tracts wraps around the sky")
            tracts += [
                TractSpec(id=j * grid.n_ra + i, ra=round((grid.ra0 + i * step) % 360.0, 9), dec=round(dec, 9))
                for i in range(grid.n_ra)
            ]
        return tracts

    @classmethod
    def neighbours_example(cls, boundary_visits: int = 1) -> SkySpec:
        """A spec whose first two targets share a patch edge (tract 0, patches 3 | 4)."""
        return cls(
            targets=[
                TargetSpec(tract=0, patches=[3]),
                TargetSpec(tract=0, patches=[4]),
                TargetSpec(tract=1, patches=[3, 4]),
                TargetSpec(tract=2, patches=[3, 4]),
            ],
            boundary_visits=boundary_visits,
        )

    def digest(self) -> str:
        """SHA-1 of the spec's canonical JSON (the skymap record's hash).

        Fields added since the first worlds are left out while unset, so that a world built
        before them keeps its digest.
        """
        unset = {"visit_size_deg"} if self.visit_size_deg is None else set()
        return hashlib.sha1(self.model_dump_json(exclude=unset).encode()).hexdigest()


def load_spec(path: str | os.PathLike[str] | None = None) -> tuple[Path, SkySpec]:
    """Read a world spec file (default: :data:`DEFAULT_SPEC`); returns its absolute path and the spec.

    Raises
    ------
    ConfigError
        Naming the file and the key at fault.
    """
    p = parameter_path(path) if path else repo_root() / DEFAULT_SPEC
    return p, load_model(p, SkySpec)
