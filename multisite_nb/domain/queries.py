"""Registry query expressions that do not grow with what they select.

daf_butler turns each literal of an ``IN`` list into its own equality, OR-ed together, and rewrites
an OR of conjunctions into conjunctive normal form: SQLite refuses an expression deeper than 1,000,
and an OR of ``(tract = t AND patch IN (...))`` terms doubles with every tract. The builders here
spell a set of ids as ranges and a set of sky units as few terms.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from multisite_nb.domain.config import SkyUnit

#: Governor dimensions: a query constrains them by equality, and a data ID of only these is global
#: (it holds no sky or observation, e.g. a per-instrument table).
GOVERNORS = frozenset({"instrument", "skymap"})


def id_ranges(values: Iterable[int]) -> str:
    """Integers as the inside of a registry ``IN`` list, consecutive runs as inclusive ranges:
    ``0..1049, 1200, 1300..1349``.

    daf_butler turns each literal of an ``IN`` list into its own equality, OR-ed together, and
    SQLite refuses an expression deeper than 1,000; a range is one ``BETWEEN``. A site's tracts,
    contiguous sky, are a few runs however many tracts they are.
    """
    ordered = sorted(set(values))
    runs: list[str] = []
    start = prev = None
    for v in [*ordered, None]:
        if v is not None and prev is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            runs.append(str(start) if start == prev else f"{start}..{prev}")
        start = prev = v
    return ", ".join(runs)


def units_where(units: Iterable[SkyUnit], skymap: str) -> str:
    """A registry expression selecting a set of sky units: the whole tracts as one ``IN`` list of
    ranges (:func:`id_ranges`), and one term per tract of which only some patches are units.

    daf_butler rewrites an OR of ``(tract = t AND patch IN (...))`` terms into conjunctive normal
    form, which grows exponentially (10 terms already fail on SQLite): where the registry can be
    read, use data ID tables (:func:`multisite_nb.adapters.butler.repo.unit_data_ids`) for patch-level units.
    """
    whole: set[int] = set()
    patches: dict[int, set[int]] = defaultdict(set)
    for u in units:
        if u.patch is None:
            whole.add(u.tract)
        else:
            patches[u.tract].add(u.patch)
    terms = [
        f"(tract = {tract} AND patch IN ({', '.join(str(p) for p in sorted(ps))}))"
        for tract, ps in sorted(patches.items())
        if tract not in whole
    ]
    if whole:
        terms.append(f"tract IN ({id_ranges(whole)})")
    return f"skymap = '{skymap}' AND ({' OR '.join(terms)})"
