"""A shipment: Butler datasets to move from one site to another under one Rucio dataset name."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from multisite_nb.adapters.tables import FileTableSource
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.naming import records_dataset
from multisite_nb.domain.plan import PlannedFile


@dataclass
class Shipment:
    """Datasets to move from one site to another under one Rucio dataset name."""

    name: str  # Rucio dataset name of the data files (the records get "<name>.dimensions")
    source: str
    dest: str
    files: Sequence[PlannedFile] | FileTableSource  # a table: read a part at a time
    extra_values: Mapping[str, Iterable[Any]] = field(default_factory=dict)  # shipment-wide, exported once
    raw_inputs: bool = False  # placement of pipeline inputs: observations are Rubin "raw_file"s
    # (from, to, mapping): each part's values of dimension ``to`` are the mapped values of its
    # files' ``from`` values (a placement: exposure -> visit, from the plan)
    value_links: Sequence[tuple[str, str, Mapping[Any, Any]]] = ()

    @property
    def records_dataset(self) -> str:
        return records_dataset(self.name)

    def parts(self, size: int) -> Iterator[Sequence[PlannedFile]]:
        """The files in consecutive parts of ``size``: what registration and ingest hold at a time."""
        if isinstance(self.files, FileTableSource):
            yield from self.files.parts(size)
        else:
            for start in range(0, len(self.files), size):
                yield self.files[start : start + size]


def values_of(
    files: Iterable[PlannedFile],
    extra: Mapping[str, Iterable[Any]],
    links: Sequence[tuple[str, str, Mapping[Any, Any]]] = (),
) -> dict[str, set[Any]]:
    """The data-ID values of ``files`` by dimension, with ``extra`` values and those ``links`` map to."""
    values: dict[str, set[Any]] = defaultdict(set)
    for f in files:
        for k, v in f.data_id.items():
            values[k].add(v)
    for k, vs in extra.items():
        values[k].update(vs)
    for source, target, mapping in links:
        linked = {mapping[v] for v in values.get(source, ()) if v in mapping}
        if linked:
            values[target].update(linked)
    return values


def rse_root(campaign: Campaign, site: str) -> str:
    root = campaign.site(site).rse_root
    if root is None:
        raise ConfigError(f"{campaign.manifest_path}: key 'sites.{site}.rse_root' is needed to ingest in place")
    return root
