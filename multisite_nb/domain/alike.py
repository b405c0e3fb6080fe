"""Sites checked alike before a stage runs: what each site will run with, as records, and their differences.

A stage that runs at several sites is one computation cut in pieces only if every site runs it
with the same things: the pipeline's task configs, the software, the calibrations and reference
inputs, the dataset type definitions. :class:`SiteFingerprint` is one site's account of them
(:mod:`multisite_nb.phases.alike` reads it from the site's repository and step environment);
:func:`compare` finds where the sites differ, each :class:`Difference` naming the site, the item and
both values.

The sites compare with each other: for each item the value most sites hold stands (or the
``reference`` site's, when one is named), and every site holding another value is a difference,
named against a site that holds the standing one.

Collection contents are not one value per site: a site holds the part of the sky's reference
shards (and the calibrations of the detectors and filters) its own data need. They are compared
where the sites overlap, data ID by data ID: the same calibration (type and data ID) must be the
same dataset, valid over the same ranges, wherever it is; a dataset type one site's collection
holds and another's does not is a difference too. Pure functions: nothing here reads a system.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_KEYED",
    "UNLIKE_MARK",
    "ContentDigest",
    "ContentDigester",
    "Difference",
    "ItemKind",
    "SiteFingerprint",
    "compare",
    "config_digest",
    "dataset_type_text",
    "refusal",
]

#: Data IDs a type's content keeps one by one (to be compared where sites overlap); above it only
#: its count and digest are kept (and compared whole): a data release's reference shards fit.
MAX_KEYED = 100_000
_MISSING = "missing"


class ItemKind(StrEnum):
    """What a difference is about."""

    TASK_CONFIG = "task config"
    SOFTWARE = "software version"
    COLLECTION = "collection"
    CONTENT = "collection content"
    DATASET_TYPE = "dataset type"


class ContentDigest(BaseModel):
    """One dataset type's datasets in one collection at one site.

    Attributes
    ----------
    count
        How many datasets (certifications, in a CALIBRATION collection).
    digest
        An order-independent digest of every (type, data ID, dataset ID, validity range).
    keys
        Data ID -> its datasets (a dataset ID's first 8 digits, with its validity range if it has
        one; several: their count and a digest); None above :data:`MAX_KEYED` data IDs.
    """

    model_config = ConfigDict(frozen=True)

    count: int = 0
    digest: str = ""
    keys: dict[str, str] | None = None

    def __str__(self) -> str:
        return f"{self.count} datasets (digest {self.digest[:12]})"


class SiteFingerprint(BaseModel):
    """What one site will run a stage with.

    Attributes
    ----------
    site, stage
        Where and which stage.
    task_configs
        Task label -> digest of its task class and config, as the site's pipeline gives them.
    software
        Package -> version, as the site's step environment reports them.
    collections
        Input collection (and each collection it chains) -> its type (``CHAINED: a, b``: its children).
    contents
        Collection -> dataset type -> the datasets of the stage's calibration and reference inputs in it.
    dataset_types
        Dataset type -> ``"dimensions | storage class"`` (`` | calibration`` for one).
    """

    model_config = ConfigDict(frozen=True)

    site: str
    stage: str = ""
    task_configs: dict[str, str] = Field(default_factory=dict)
    software: dict[str, str] = Field(default_factory=dict)
    collections: dict[str, str] = Field(default_factory=dict)
    contents: dict[str, dict[str, ContentDigest]] = Field(default_factory=dict)
    dataset_types: dict[str, str] = Field(default_factory=dict)


class Difference(BaseModel):
    """One item a site has otherwise than the others (or than the reference site).

    ``value`` and ``reference_value`` are ``"missing"`` where a site has no such item.
    """

    model_config = ConfigDict(frozen=True)

    site: str
    kind: ItemKind
    item: str
    reference_site: str
    reference_value: str
    value: str

    @property
    def message(self) -> str:
        """``site RAL: dataset type 'calexp' is '...' here but '...' at IN2P3``."""

        def shown(v: str) -> str:
            return v if v == _MISSING else repr(v)

        return (
            f"site {self.site}: {self.kind.value} {self.item!r} is {shown(self.value)} here "
            f"but {shown(self.reference_value)} at {self.reference_site}"
        )

    def __str__(self) -> str:
        return self.message


#: What every refusal of a stage whose sites differ says (a supervisor asks a person on reading it).
UNLIKE_MARK = "differ, nothing submitted"


def refusal(stage: str, differences: Sequence[Difference], *, shown: int = 5) -> str:
    """One sentence refusing ``stage``: its first ``shown`` differences, and how many more."""
    head = "; ".join(d.message for d in differences[:shown])
    more = f"; and {len(differences) - shown} more" if len(differences) > shown else ""
    return f"the sites of stage {stage!r} {UNLIKE_MARK}: {head}{more}"


# -- what the reading half digests ---------------------------------------------------------------


def config_digest(task_class: str, config_text: str) -> str:
    """A task's class and its config (as ``Config.saveToString`` writes it) as one digest."""
    return hashlib.sha256(f"{task_class}\n{config_text}".encode()).hexdigest()[:16]


def dataset_type_text(dimensions: Iterable[str], storage_class: str, *, calibration: bool = False) -> str:
    """A dataset type's definition as compared: ``"instrument, detector | ExposureF"``."""
    return f"{', '.join(dimensions)} | {storage_class}" + (" | calibration" if calibration else "")


class ContentDigester:
    """Builds a :class:`ContentDigest` from datasets streamed one at a time (nothing but the keys kept)."""

    _MOD = 1 << 128

    def __init__(self, dataset_type: str, *, max_keyed: int = MAX_KEYED):
        self.dataset_type, self.max_keyed = dataset_type, max_keyed
        self.count, self._sum = 0, 0
        self._keys: dict[str, tuple[int, int, str]] | None = {}  # data ID -> (n, sum of row hashes, first)

    def add(self, data_id: str, dataset_id: str, validity: str = "") -> None:
        """One dataset (or certification): its data ID as text, its ID, its validity range if any."""
        row = f"{dataset_id[:8]}" + (f" valid {validity}" if validity else "")
        h = int.from_bytes(
            hashlib.blake2b(f"{self.dataset_type}|{data_id}|{dataset_id}|{validity}".encode(), digest_size=16).digest()
        )
        self.count += 1
        self._sum = (self._sum + h) % self._MOD
        if self._keys is not None:
            n, s, first = self._keys.get(data_id, (0, 0, row))
            self._keys[data_id] = (n + 1, (s + h) % self._MOD, first)
            if len(self._keys) > self.max_keyed:
                self._keys = None

    def result(self) -> ContentDigest:
        """The digest of what was added."""
        keys = None
        if self._keys is not None:
            keys = {k: first if n == 1 else f"{n} datasets #{s >> 80:012x}" for k, (n, s, first) in self._keys.items()}
        return ContentDigest(count=self.count, digest=f"{self._sum:032x}", keys=keys)


# -- comparing ------------------------------------------------------------------------------------


def _standing(values: Mapping[str, str], order: Sequence[str], reference: str | None) -> str:
    """The value that stands among the sites': the reference site's, else the most held (first site wins ties)."""
    if reference is not None and reference in values:
        return values[reference]
    counts = Counter(values.values())
    best = max(counts.values())
    return next(values[s] for s in order if s in values and counts[values[s]] == best)


def _holder(values: Mapping[str, str], stand: str, order: Sequence[str], reference: str | None) -> str:
    """The site named for the standing value: the reference site if it holds it, else the first that does."""
    if reference is not None and values.get(reference) == stand:
        return reference
    return next(s for s in order if values.get(s) == stand)


def _scalar(
    kind: ItemKind, item: str, by_site: Mapping[str, str | None], order: Sequence[str], reference: str | None
) -> list[Difference]:
    values = {s: (v if v is not None else _MISSING) for s, v in by_site.items()}
    if len(set(values.values())) < 2:
        return []
    stand = _standing(values, order, reference)
    holder = _holder(values, stand, order, reference)
    return [
        Difference(site=s, kind=kind, item=item, reference_site=holder, reference_value=stand, value=values[s])
        for s in order
        if s in values and values[s] != stand
    ]


def _content(
    item: str, by_site: Mapping[str, ContentDigest | None], order: Sequence[str], reference: str | None
) -> list[Difference]:
    """A type's content in a collection: present or not (as a scalar), then data ID by data ID where held."""
    presence = {s: (str(c) if c is not None else None) for s, c in by_site.items()}
    held = {s: "present" if c is not None else _MISSING for s, c in by_site.items()}
    out: list[Difference] = []
    if len(set(held.values())) > 1:
        stand = _standing(held, order, reference)
        holder = _holder(held, stand, order, reference)
        for s in order:
            if s in held and held[s] != stand:
                out.append(
                    Difference(
                        site=s,
                        kind=ItemKind.CONTENT,
                        item=item,
                        reference_site=holder,
                        reference_value=presence[holder] or _MISSING,
                        value=presence[s] or _MISSING,
                    )
                )
    present = {s: c for s, c in by_site.items() if c is not None}
    if len(present) < 2:
        return out
    if any(c.keys is None for c in present.values()):  # too many to key: compared whole
        return out + _scalar(ItemKind.CONTENT, item, {s: str(c) for s, c in present.items()}, order, reference)
    keyed = {s: c.keys or {} for s, c in present.items()}
    conflicts: dict[str, list[tuple[str, str, str, str]]] = {}  # site -> (data ID, its value, holder, standing)
    shared: Counter[str] = Counter()
    for key in sorted(set().union(*keyed.values())):
        values = {s: k[key] for s, k in keyed.items() if key in k}
        if len(values) < 2:
            continue
        for s in values:
            shared[s] += 1
        if len(set(values.values())) < 2:
            continue
        stand = _standing(values, order, reference)
        holder = _holder(values, stand, order, reference)
        for s, v in values.items():
            if v != stand:
                conflicts.setdefault(s, []).append((key, v, holder, stand))
    for s in order:
        if s not in conflicts:
            continue
        key, v, holder, stand = conflicts[s][0]
        n = len(conflicts[s])
        note = f" ({n} of {shared[s]} data IDs held elsewhere too differ)" if n > 1 else ""
        out.append(
            Difference(
                site=s,
                kind=ItemKind.CONTENT,
                item=f"{item} {key}",
                reference_site=holder,
                reference_value=f"dataset {stand}",
                value=f"dataset {v}{note}",
            )
        )
    return out


def compare(fingerprints: Sequence[SiteFingerprint], reference: str | None = None) -> list[Difference]:
    """Where the sites' fingerprints differ.

    Parameters
    ----------
    fingerprints
        One per site of the stage (in the order differences are listed).
    reference
        A site whose values stand wherever it has the item; default: for each item, the value most
        sites hold (the first site's among equally many).

    Returns
    -------
    list of Difference
        Empty when the sites are alike: by kind, then item, then site.

    Raises
    ------
    ValueError
        If ``reference`` is not one of the sites, or a site comes twice.
    """
    order = [f.site for f in fingerprints]
    if len(set(order)) != len(order):
        raise ValueError(f"a site comes twice among {order}")
    if reference is not None and reference not in order:
        raise ValueError(f"reference site {reference!r} is not among {order}")
    if len(fingerprints) < 2:
        return []
    out: list[Difference] = []
    scalars: list[tuple[ItemKind, str]] = [
        (ItemKind.TASK_CONFIG, "task_configs"),
        (ItemKind.SOFTWARE, "software"),
        (ItemKind.COLLECTION, "collections"),
        (ItemKind.DATASET_TYPE, "dataset_types"),
    ]
    for kind, field in scalars:
        maps: dict[str, dict[str, str]] = {f.site: getattr(f, field) for f in fingerprints}
        for item in sorted(set().union(*maps.values())):
            out += _scalar(kind, item, {s: m.get(item) for s, m in maps.items()}, order, reference)
    contents = {f.site: f.contents for f in fingerprints}
    items = sorted({(c, t) for by in contents.values() for c, types in by.items() for t in types})
    for collection, dataset_type in items:
        by_site = {s: by.get(collection, {}).get(dataset_type) for s, by in contents.items()}
        out += _content(f"{collection}: {dataset_type}", by_site, order, reference)
    return out
