"""QA's comparison: every unit's products at its site and gathered centrally, and the sample's values
beside the reference's (see :mod:`multisite_nb.phases.qa` for what a sample reference can compare)."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from lsst.daf.butler import Butler, DatasetRef

from multisite_nb.adapters.butler.queries import chunked, unit_data_ids
from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.naming import reference_chain
from multisite_nb.domain.ownership import Ownership
from multisite_nb.domain.qa import Completeness, Mismatch, QAReport, SiteMetrics, UnitCompleteness
from multisite_nb.domain.queries import GOVERNORS
from multisite_nb.phases.gather_redistribute.plan import site_chain
from multisite_nb.phases.placement.footprints import site_footprint
from multisite_nb.phases.qa.sample import QASample

__all__ = ["QAReport", "QASample", "evaluate"]

_OBS = ("visit", "exposure")


# -- the sample ----------------------------------------------------------------------------


# -- the reference run ---------------------------------------------------------------------


# -- evaluation ----------------------------------------------------------------------------


def _is_global(data_id: Mapping[str, Any]) -> bool:
    return set(data_id) <= GOVERNORS


def _key(ref: DatasetRef) -> tuple[str, tuple[tuple[str, Any], ...]]:
    return ref.datasetType.name, tuple(sorted(dict(ref.dataId.required).items()))


def _value_digest(obj: Any) -> str:
    if isinstance(obj, dict):
        obj = {k: obj[k] for k in sorted(obj) if k in ("value", "n_inputs", "data_id", "dataset_type")}
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:16]


class _Cells:
    """Where a data ID belongs: its unit and band, and whether it is on the sample."""

    def __init__(self, campaign: Campaign, sample: QASample | None, exposure_visit: Mapping[int, int]):
        self.units = {u.key: u for s in campaign.remote_sites for u in campaign.sky_units(s)}
        self.sample = sample
        self.sampled = sample.keys() if sample is not None else set(self.units)
        self.tracts = {t for t, _ in self.sampled}
        self.exposure_visit = exposure_visit

    def unit(self, data_id: Mapping[str, Any]) -> str | None:
        """The unit a data ID lies in (its label), None for one without a tract."""
        if "tract" not in data_id:
            return None
        t = int(data_id["tract"])
        if "patch" in data_id:
            unit = self.units.get((t, int(data_id["patch"]))) or self.units.get((t, None))
            return str(unit) if unit else f"tract {t} patch {data_id['patch']}"
        unit = self.units.get((t, None))
        return str(unit) if unit else f"tract {t}"

    def on_sample(self, data_id: Mapping[str, Any]) -> bool:
        """Whether a (non-global) data ID's products are covered by the reference, value for value."""
        if self.sample is None or self.sample.full:
            return True
        if "tract" in data_id:
            t = int(data_id["tract"])
            if "patch" in data_id:
                if (t, int(data_id["patch"])) not in self.sampled and (t, None) not in self.sampled:
                    return False
            elif t not in self.tracts:
                return False
        visit = data_id.get("visit")
        if visit is None and "exposure" in data_id:
            visit = self.exposure_visit.get(int(data_id["exposure"]), -1)
        return visit is None or int(visit) in self.sample.visits

    def cell(self, dataset_type: str, data_id: Mapping[str, Any]) -> tuple[str, str, str]:
        """(dataset type, sky unit, band); data IDs with no tract go to the visits on or off the sample
        (one cell for both would let the reference's cell hide the rule's count of the others)."""
        unit = self.unit(data_id) or ("(visits)" if self.on_sample(data_id) else "(visits off the sample)")
        return dataset_type, unit, str(data_id.get("band", ""))


def _rule_ids(
    butler: Butler,
    campaign: Campaign,
    site: str,
    dimensions: Sequence[str],
    own_visits: Sequence[int],
    site_visits: Sequence[int],
    exposures: Mapping[int, Sequence[int]],
) -> Iterable[Any]:
    """The rule's data IDs of ``dimensions`` at ``site`` (streamed; the caller keeps counts)."""
    cfg = campaign.config
    dims = set(dimensions)
    if "visit" in dims:
        where, ids = "visit IN (ids)", list(own_visits)
    elif "exposure" in dims:
        where, ids = "exposure IN (ids)", sorted(e for v in own_visits for e in exposures.get(v, ()))
    else:  # a sky product where the site has data: the visits give its bands
        where, ids = "visit IN (ids)", list(site_visits)
    if not ids:
        return []
    parts = list(chunked(ids))  # bound a chunk at a time (the databases' limits on parameters)

    def query(part: list[int]) -> Iterable[Any]:
        if "tract" in dims:
            units = campaign.sky_units(site)
            keys = [u.key for u in units] if "patch" in dims else sorted({(u.tract, None) for u in units})
            return unit_data_ids(
                butler, keys, cfg.skymap, list(dimensions), instrument=cfg.instrument, where=where, bind={"ids": part}
            )
        return butler.query_data_ids(
            list(dimensions), where=where, bind={"ids": part}, instrument=cfg.instrument, limit=None, explain=False
        )

    bound = where.partition(" ")[0]
    if bound in dims or len(parts) == 1:  # each data ID holds the bound id, or one chunk: streamed as it is
        return (data_id for part in parts for data_id in query(part))

    def deduplicated() -> Iterator[Any]:
        # a sky product's data ID (tract, patch, band) may match visits of two chunks: kept once, in a
        # set as large as the site's sky units times bands (never one entry per visit or file)
        seen: set[Any] = set()
        for part in parts:
            for data_id in query(part):
                if data_id not in seen:
                    seen.add(data_id)
                    yield data_id

    return deduplicated()


def evaluate(
    campaign: Campaign,
    validation_set: Sequence[str],
    ownership: Ownership | None = None,
    sample: QASample | None = None,
    visits: Mapping[str, Sequence[int]] | None = None,
) -> QAReport:
    """Check every unit's products at each site and gathered centrally; compare the sample's with the reference.

    Parameters
    ----------
    campaign
        The campaign.
    validation_set
        The dataset types checked.
    ownership
        Each data ID's canonical site (a boundary visit's products count at its owner); without,
        a site is held to every data ID its footprint admits, and the rule is not used.
    sample
        What the reference covers (see :func:`plan_sample`); None: everything.
    visits
        Per site, the visits placed there (placement plan); needed by the rule off the sample.
    """
    report = QAReport()
    cells = _Cells(campaign, sample, ownership.exposures if ownership is not None else {})
    if sample is not None:
        report.sample = sample.rows(campaign)
    partial = sample is not None and not sample.full
    ref_chain = reference_chain(campaign)
    with open_site_butler(campaign, campaign.central) as central:
        dims = {dt: list(central.get_dataset_type(dt).dimensions.required) for dt in validation_set}
        reference = {}
        for dt in validation_set:
            for r in central.query_datasets(dt, collections=[ref_chain], find_first=True, explain=False, limit=None):
                k = _key(r)
                if not _is_global(dict(k[1])) and cells.on_sample(dict(k[1])):
                    reference[k] = r
        ref_values = {k: _value_digest(central.get(r)) for k, r in reference.items()}
        footprints = (
            {} if ownership is not None else {s: site_footprint(central, campaign, s) for s in campaign.remote_sites}
        )

        def owned(site: str, data_id: dict[str, Any], ref: DatasetRef | None = None) -> bool:
            if ownership is not None:
                return ownership.owner(data_id) == site
            return footprints[site].admits(ref.dataId) if ref is not None else False

        # the rule, off the sample (and on it, beside the reference), as counts per cell
        rule: dict[str, Counter[tuple[str, str, str]]] = {s: Counter() for s in campaign.remote_sites}
        if ownership is not None:
            exposures: dict[int, list[int]] = defaultdict(list)
            for e, v in ownership.exposures.items():
                exposures[v].append(e)
            for site in campaign.remote_sites:
                own = sorted(v for v, s in ownership.visits.items() if s == site)
                placed = sorted((visits or {}).get(site, own))
                for dt in validation_set:
                    if not set(dims[dt]) - GOVERNORS:
                        continue
                    for did in _rule_ids(central, campaign, site, dims[dt], own, placed, exposures):
                        data_id = dict(did.required)
                        if ownership.owner(data_id) == site:
                            rule[site][cells.cell(dt, data_id)] += 1

        def tally(
            butler: Butler, collections: list[str], site: str
        ) -> tuple[Counter[tuple[str, str, str]], dict[Any, Any], int]:
            """Products owned by ``site`` in ``collections``: counts off the sample, refs on it, globals."""
            counts: Counter[tuple[str, str, str]] = Counter()
            on: dict[Any, Any] = {}
            n_global = 0
            if not collections:
                return counts, on, 0
            for dt in validation_set:
                for r in butler.query_datasets(dt, collections=collections, find_first=True, explain=False, limit=None):
                    k = _key(r)
                    data_id = dict(k[1])
                    if _is_global(data_id):
                        n_global += 1
                    elif owned(site, data_id, r):
                        if cells.on_sample(data_id):
                            on[k] = r
                        else:
                            counts[cells.cell(dt, data_id)] += 1
            return counts, on, n_global

        gathered = {}
        for site in campaign.remote_sites:
            runs = list(central.collections.query(site_chain(campaign, site) + "/*"))
            gathered[site] = tally(central, runs, site)
        for site in campaign.remote_sites:
            expected = {k for k, r in reference.items() if owned(site, dict(k[1]), r)}
            with open_site_butler(campaign, site) as sb:
                site_counts, at_site, globals_site = tally(sb, [site_chain(campaign, site)], site)
                site_values = {k: _value_digest(sb.get(r)) for k, r in at_site.items() if k in expected}
            central_counts, at_central, _ = gathered[site]
            # per cell: expected (reference on the sample, rule off it), at site, at central, by rule
            table: dict[tuple[str, str, str], dict[str, Any]] = {}

            def row(
                c: tuple[str, str, str],
                sampled: bool,
                table: dict[Any, dict[str, Any]] = table,
                by_rule: Any = rule[site],
            ) -> dict[str, Any]:
                return table.setdefault(
                    c, {"sampled": sampled, "expected": 0, "at site": 0, "at central": 0, "by rule": by_rule[c]}
                )

            for k in expected:
                cur = row(cells.cell(k[0], dict(k[1])), True)
                cur["expected"] += 1
                cur["at site"] += k in at_site
                cur["at central"] += k in at_central
                if k in site_values and site_values[k] != ref_values[k]:
                    report.mismatches.append(Mismatch(site=site, dataset_type=k[0], data_id=dict(k[1])))
            if partial:
                for c, n in rule[site].items():
                    if c in table:
                        continue  # a cell the reference covers (the rule is its cross-check)
                    cur = row(c, False)
                    cur["expected"] = n
                    cur["at site"] = min(n, site_counts[c])
                    cur["at central"] = min(n, central_counts[c])
            by_type: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for (dt, _, _), cur in table.items():
                t = by_type[dt]
                t["expected"] += cur["expected"]
                t["missing at site"] += cur["expected"] - cur["at site"]
                t["missing at central"] += cur["expected"] - cur["at central"]
                t["on sample"] += cur["expected"] if cur["sampled"] else 0
            for dt in validation_set:
                tally_dt = by_type.get(dt)
                if tally_dt is None:
                    glob = globals_site if not set(dims[dt]) - GOVERNORS else 0
                    note = f"global: {glob} at site (covers its own data only)" if glob else "none expected"
                    report.completeness.append(Completeness(site=site, dataset_type=dt, note=note))
                    continue
                off = tally_dt["expected"] - tally_dt["on sample"]
                note = (
                    f"{tally_dt['on sample']} on the sample (reference), {off} off it (registry rule)"
                    if partial
                    else ""
                )
                report.completeness.append(
                    Completeness(
                        site=site,
                        dataset_type=dt,
                        expected=tally_dt["expected"],
                        missing_at_site=tally_dt["missing at site"],
                        missing_at_central=tally_dt["missing at central"],
                        on_sample=tally_dt["on sample"],
                        note=note,
                    )
                )
            # per sky unit and band, all dataset types together
            per_unit: dict[tuple[str, str], UnitCompleteness] = {}
            for (_, unit, band), cur in table.items():
                if unit == "(visits)":
                    continue
                u = per_unit.setdefault(
                    (unit, band), UnitCompleteness(site=site, sky_unit=unit, band=band, sampled=cur["sampled"])
                )
                u.expected += cur["expected"]
                u.at_site += cur["at site"]
                u.at_central += cur["at central"]
                u.by_rule += cur["by rule"]
            report.units.extend(per_unit[k] for k in sorted(per_unit))
            digest = hashlib.sha256("".join(sorted(site_values.values())).encode()).hexdigest()[:12]
            ref_digest = hashlib.sha256("".join(sorted(ref_values[k] for k in expected)).encode()).hexdigest()[:12]
            report.metrics.append(
                SiteMetrics(
                    site=site,
                    sampled_units=len(sample.units.get(site, [])) if sample else len(campaign.sky_units(site)),
                    sky_units=len(campaign.sky_units(site)),
                    products_at_site=sum(site_counts.values()) + len(at_site),
                    products_gathered=sum(central_counts.values()) + len(at_central),
                    expected_products=sum(v["expected"] for v in table.values()),
                    reference_products=len(expected),
                    compared=len(site_values),
                    global_products_at_site=globals_site,
                    value_digest=digest,
                    reference_digest=ref_digest,
                    agree=digest == ref_digest,
                )
            )
    return report
