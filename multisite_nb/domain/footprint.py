"""A site's footprint: the data IDs and sky regions a site's sky units touch, and what it admits."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from lsst.daf.butler import DataCoordinate, DimensionUniverse
from lsst.sphgeom import Region


@dataclass
class Footprint:
    """The data IDs a site touches: observation pairs, dimension values and sky regions."""

    site: str
    visit_detectors: dict[int, frozenset[int]] = field(default_factory=dict)  # every detector of each visit
    values: dict[str, set[Any]] = field(default_factory=lambda: defaultdict(set))
    regions: list[Region] = field(default_factory=list)  # sky units, their tracts, the site's visits
    visit_regions: dict[int, Any] = field(default_factory=dict)
    visit_weight: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # overlaps with the units
    visit_tract: dict[int, int] = field(default_factory=dict)  # the lowest of the site's tracts a visit overlaps
    exposure_visit: dict[int, int] = field(default_factory=dict)
    _skypix: dict[str, set[int]] = field(default_factory=dict)

    def skypix(self, dimension: Any) -> set[int]:
        """Pixel indices of a skypix dimension (e.g. htm7) overlapping the site's sky units."""
        name = dimension.name
        if name not in self._skypix:
            pix = dimension.pixelization
            ids: set[int] = set()
            for region in self.regions:
                for begin, end in pix.envelope(region):
                    ids.update(range(begin, end))
            self._skypix[name] = ids
        return self._skypix[name]

    def admits(self, data_id: DataCoordinate) -> bool:
        """Whether a dataset with this data ID is one the site needs."""
        mapping = dict(data_id.mapping) if data_id.hasFull() else dict(data_id.required)
        return self.admits_mapping(mapping, data_id.universe)

    def admits_mapping(self, mapping: dict[str, Any], universe: DimensionUniverse) -> bool:
        """:meth:`admits` for a data ID already turned into a dict (dimension name -> value)."""
        instrument = mapping.get("instrument")  # IDs of exposures, visits, detectors are per instrument
        if instrument is not None and instrument not in self.values.get("instrument", ()):
            return False
        if "detector" in mapping:
            if "visit" in mapping:
                return mapping["detector"] in self.visit_detectors.get(mapping["visit"], ())
            if "exposure" in mapping:
                visit = self.exposure_visit.get(mapping["exposure"])
                return visit is not None and mapping["detector"] in self.visit_detectors.get(visit, ())
        for key, value in mapping.items():
            dim = universe[key]
            if hasattr(dim, "pixelization"):
                if value not in self.skypix(dim):
                    return False
            elif key in self.values and value not in self.values[key]:
                return False
        return True
