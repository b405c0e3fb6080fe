"""Phase 6: are the products complete, and do they agree with a single-site reference?

The *reference* is the same pipeline run at the central site in its own collections
(``P/reference``), over a **sample** of sky units set in the campaign (``qa:`` in the campaign
file, :class:`~multisite_nb.config.QASettings`): by default a few units per site, chosen
deterministically, boundary units (whose visits also reach another site) among them. At
data-release size a reference over every unit would be a second data release.

The sample
    The chosen units, completed to whole tracts (tract-wide tasks read every patch of their
    tract). The reference runs over the sample's *reach*: the sample, every unit its visits
    touch, again completed to whole tracts, so that each quantum behind a sampled product has
    the same inputs as in the full run. When the reach is the whole campaign, the sample is
    the whole campaign and the reference is the full single-site run, every step redone.

What a sample reference can compare
    A task whose quanta have no sky or observation dimension (a global calibration, a
    per-instrument table) consumes every visit: run on a sample it makes another solution,
    and everything downstream differs. A sample reference therefore does **not** redo the
    central steps that hold such tasks; it reads the campaign's own run of them at the central
    site (``P/<central>/<step>``). It checks what the sites did with that solution — every
    product of the sampled units, value by value — and not the solution itself, which only a
    full reference (``sample_units_per_site: all``) recomputes. Global products (no sky or
    observation dimension) cover only a site's own data at a site and are counted, not
    compared. A product is *on the sample* when its tract (and patch) is sampled and its visit
    overlaps the sample; only those are compared, and only their values are in the digests.

Completeness, for every unit of every site
    Each product of the validation set a site owns must be at the site and, after the final
    gather, at the central site. On the sample the expected products are the reference's.
    Off it they come from the central registry by the dataset type's dimensions (the *rule*):
    the data IDs of those dimensions over the site's units (a dataset type with a ``visit`` or
    ``exposure``: over the site's own visits; one without: where the site has visits, which
    gives the bands), that the site owns. They are counted per unit and band and set beside
    the counts present, never listed; on the sample the rule is counted too, beside the
    reference, so a rule that does not fit the pipeline shows (column ``by rule``).
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import Campaign, SkyUnit
from .ownership import Ownership

__all__ = [
    "REFERENCE",
    "QAReport",
    "QASample",
    "boundary_units",
    "choose_sample",
    "evaluate",
    "plan_sample",
    "reference_collection",
    "run_reference",
]

REFERENCE = "reference"
_GLOBAL_OK = {"instrument", "skymap"}
#: Dimensions that tie a quantum or a data ID to part of the sky or of the observations.
_LOCAL = {"tract", "patch", "visit", "exposure", "detector"}
_OBS = ("visit", "exposure")

UnitKey = tuple[int, int | None]


def reference_collection(campaign: Campaign) -> str:
    return f"{campaign.output_prefix}/{REFERENCE}"


# -- the sample ----------------------------------------------------------------------------


def _spread[T](items: Sequence[T], n: int) -> list[T]:
    """``n`` items spread evenly over ``items`` (all of them if there are no more)."""
    if n >= len(items):
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


def choose_sample(
    campaign: Campaign, boundary: Mapping[str, Iterable[UnitKey]] | None = None
) -> dict[str, list[SkyUnit]]:
    """The units QA's reference is asked to cover, per site, before completion to whole tracts.

    Deterministic: per site, ``qa.sample_units_per_site`` of its units spread evenly over them
    in (tract, patch) order, half of them (rounded up) boundary units when it has any; then
    the units of ``qa.sample``.

    Parameters
    ----------
    campaign
        The campaign (its sites' units and its ``qa`` settings).
    boundary
        Per site, the keys of its units whose visits also reach another site.
    """
    qa = campaign.config.qa
    explicit = {u.key for u in qa.sample}
    out: dict[str, list[SkyUnit]] = {}
    for site in campaign.remote_sites:
        units = sorted(campaign.sky_units(site), key=lambda u: (u.tract, -1 if u.patch is None else u.patch))
        if qa.sample_units_per_site == "all":
            chosen = units
        else:
            n = qa.sample_units_per_site
            edge = set((boundary or {}).get(site, ()))
            inner = [u for u in units if u.key not in edge]
            outer = [u for u in units if u.key in edge]
            k = min(len(outer), max(n - len(inner), (n + 1) // 2))
            picked = _spread(outer, k) + _spread(inner, n - k)
            chosen = [u for u in units if u in picked]
        out[site] = [u for u in units if u in chosen or u.key in explicit]
    return out


def boundary_units(
    butler: Any, campaign: Campaign, boundary_visits: Mapping[int, Sequence[str]]
) -> dict[str, set[UnitKey]]:
    """Per site, its units overlapped by a boundary visit (a visit placed at more than one site).

    One registry query per site that has boundary visits, the visits bound as a list.
    """
    from .butler_ops import unit_data_ids

    cfg = campaign.config
    out: dict[str, set[UnitKey]] = {s: set() for s in campaign.remote_sites}
    for site in campaign.remote_sites:
        visits = sorted(int(v) for v, sites in boundary_visits.items() if site in sites)
        units = {u.key for u in campaign.sky_units(site)}
        if not visits or not units:
            continue
        for did in unit_data_ids(
            butler, units, cfg.skymap, ["tract", "patch"], instrument=cfg.instrument,
            where="visit IN (v)", bind={"v": visits},
        ):  # fmt: skip
            t, p = int(did["tract"]), int(did["patch"])
            out[site].add((t, p) if (t, p) in units else (t, None))
    return out


@dataclass
class QASample:
    """Which units QA's reference covers.

    Attributes
    ----------
    units
        Per site, its sampled units: the chosen ones completed to whole tracts.
    chosen
        Per site, the units chosen (``qa`` settings) before that completion.
    reach
        Every unit the reference runs over: the sample and what its visits touch, whole tracts.
    visits
        The visits overlapping the sampled units.
    boundary
        Per site, its boundary units.
    full
        Whether the sample is the whole campaign (the reference redoes every step).
    """

    units: dict[str, list[SkyUnit]]
    chosen: dict[str, list[SkyUnit]]
    reach: list[SkyUnit]
    visits: set[int] = field(default_factory=set)
    boundary: dict[str, set[UnitKey]] = field(default_factory=dict)
    full: bool = False

    @property
    def tracts(self) -> set[int]:
        return {u.tract for units in self.units.values() for u in units}

    def keys(self) -> set[UnitKey]:
        return {u.key for units in self.units.values() for u in units}

    def rows(self, campaign: Campaign) -> list[dict[str, Any]]:
        """One row per unit of the campaign: site, unit, boundary, chosen, sampled, in the reference's reach."""
        chosen, sampled, reach = (
            {u.key for us in self.chosen.values() for u in us},
            self.keys(),
            {u.key for u in self.reach},
        )
        return [
            {
                "site": site,
                "sky unit": str(u),
                "boundary": u.key in self.boundary.get(site, set()),
                "chosen": u.key in chosen,
                "sampled": u.key in sampled,
                "in reference": u.key in reach,
            }
            for site in campaign.remote_sites
            for u in campaign.sky_units(site)
        ]

    def describe(self) -> str:
        n = sum(len(v) for v in self.units.values())
        if self.full:
            return f"the reference covers all {n} sky units (the full single-site run)"
        return (
            f"the reference covers {n} sampled sky units ({len(self.reach)} with their reach); "
            "central steps with global tasks are the campaign's own"
        )


def _whole_tracts(campaign: Campaign, keys: Iterable[UnitKey]) -> list[SkyUnit]:
    tracts = {t for t, _ in keys}
    return [u for s in campaign.remote_sites for u in campaign.sky_units(s) if u.tract in tracts]


def plan_sample(
    campaign: Campaign, butler: Any, boundary_visits: Mapping[int, Sequence[str]] | None = None
) -> QASample:
    """Choose the sample and find its reach in the central registry (queries bound by the sample's size).

    Parameters
    ----------
    campaign
        The campaign.
    butler
        The central repository.
    boundary_visits
        Visit -> the sites it is placed at, for the visits placed at more than one (placement plan).
    """
    from .butler_ops import unit_data_ids

    cfg = campaign.config
    boundary = boundary_units(butler, campaign, boundary_visits or {})
    chosen = choose_sample(campaign, boundary)
    every = [u for s in campaign.remote_sites for u in campaign.sky_units(s)]
    sampled = _whole_tracts(campaign, (u.key for us in chosen.values() for u in us))
    visits = {
        int(d["visit"])
        for d in unit_data_ids(butler, [u.key for u in sampled], cfg.skymap, ["visit"], instrument=cfg.instrument)
    }
    index = {u.key for u in every}
    touched: set[UnitKey] = {u.key for u in sampled}
    if visits:
        for d in butler.query_data_ids(
            ["tract", "patch"], where=f"skymap = '{cfg.skymap}' AND visit IN (v)", bind={"v": sorted(visits)},
            instrument=cfg.instrument, limit=None, explain=False,
        ):  # fmt: skip
            t, p = int(d["tract"]), int(d["patch"])
            if (t, p) in index or (t, None) in index:
                touched.add((t, p))
    reach = _whole_tracts(campaign, touched)
    full = len(reach) == len(every)
    if full:
        sampled = every
    units = {s: [u for u in campaign.sky_units(s) if u in sampled] for s in campaign.remote_sites}
    return QASample(units=units, chosen=chosen, reach=reach, visits=visits, boundary=boundary, full=full)


# -- the reference run ---------------------------------------------------------------------


def _global_steps(campaign: Campaign) -> list[str]:
    """Central steps holding a task whose quanta have no sky or observation dimension."""
    from .submission.steprun import load_pipeline_graph

    graph = load_pipeline_graph(str(campaign.pipeline_path))
    return [
        step
        for stage in campaign.config.stages
        if stage.where == "central"
        for step in stage.steps
        if any(not set(graph.tasks[label].raw_dimensions) & _LOCAL for label in graph.task_subsets[step])
    ]


def run_reference(
    campaign: Campaign, log_dir: str | os.PathLike[str], sample: QASample | None = None
) -> dict[str, dict[str, Any]]:
    """Run the pipeline at the central site over the sample's reach (all the campaign's data without one).

    A sample reference reads the campaign's own run of each central step with a global task
    instead of redoing it (see the module's notes). Idempotent: an existing reference step is
    finished (restarted), not redone. Returns ``{step: StepRecord dump}`` up to the first step
    that did not succeed; a step taken from the campaign is not in it.
    """
    from .naming import step_run_collection
    from .submission import reference_step_run, run_steps

    steps = [s for st in campaign.config.stages for s in st.steps]
    units: list[SkyUnit] | None = None
    reused: list[str] = []
    if sample is not None and not sample.full:
        units = sample.reach
        kept = _global_steps(campaign)
        reused = [step_run_collection(campaign, campaign.central, s) for s in kept]
        steps = [s for s in steps if s not in kept]
    records = run_steps(
        campaign,
        campaign.central,
        steps,
        log_dir,
        mode="pipetask",
        make_run=lambda step: reference_step_run(campaign, step, units, reused),
    )
    return {step: record.model_dump(mode="json") for step, record in records.items()}


# -- evaluation ----------------------------------------------------------------------------


def _is_global(data_id: Mapping[str, Any]) -> bool:
    return set(data_id) <= _GLOBAL_OK


def _key(ref: Any) -> tuple[str, tuple[tuple[str, Any], ...]]:
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
    butler: Any,
    campaign: Campaign,
    site: str,
    dimensions: Sequence[str],
    own_visits: Sequence[int],
    site_visits: Sequence[int],
    exposures: Mapping[int, Sequence[int]],
) -> Iterable[Any]:
    """The rule's data IDs of ``dimensions`` at ``site`` (streamed; the caller keeps counts)."""
    from .butler_ops import unit_data_ids

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
    if "tract" in dims:
        units = campaign.sky_units(site)
        keys = [u.key for u in units] if "patch" in dims else sorted({(u.tract, None) for u in units})
        return unit_data_ids(
            butler, keys, cfg.skymap, list(dimensions), instrument=cfg.instrument, where=where, bind={"ids": ids}
        )
    return butler.query_data_ids(
        list(dimensions), where=where, bind={"ids": ids}, instrument=cfg.instrument, limit=None, explain=False
    )


@dataclass
class QAReport:
    """The verdict and its tables."""

    completeness: list[dict[str, Any]] = field(default_factory=list)
    units: list[dict[str, Any]] = field(default_factory=list)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    sample: list[dict[str, Any]] = field(default_factory=list)

    @property
    def missing(self) -> int:
        return sum(r["missing at site"] + r["missing at central"] for r in self.completeness)

    @property
    def passed(self) -> bool:
        return self.missing == 0 and not self.mismatches

    def first_missing(self) -> dict[str, Any] | None:
        """The first unit row with a product missing (at the site or at the central site)."""
        return next((r for r in self.units if r["at site"] < r["expected"] or r["at central"] < r["expected"]), None)

    def verdict(self) -> str:
        if self.passed:
            n = sum(r["expected"] for r in self.completeness)
            compared = sum(r.get("compared", 0) for r in self.metrics)
            return (
                f"complete and consistent: {n} expected products present at the sites and at the central site, "
                f"values equal to the reference ({compared} compared)"
            )
        parts = []
        if self.missing:
            first = next(r for r in self.completeness if r["missing at site"] or r["missing at central"])
            unit = self.first_missing()
            where = f", {unit['sky unit']}" if unit and unit["site"] == first["site"] else ""
            parts.append(f"{self.missing} products missing (first: {first['site']} {first['dataset type']}{where})")
        if self.mismatches:
            m = self.mismatches[0]
            parts.append(
                f"{len(self.mismatches)} values differ from the reference "
                f"(first: {m['site']} {m['dataset type']} {m['data id']})"
            )
        return "; ".join(parts)


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
    from .butler_ops import open_butler
    from .gather import site_chain
    from .placement import site_footprint

    report = QAReport()
    cells = _Cells(campaign, sample, ownership.exposures if ownership is not None else {})
    if sample is not None:
        report.sample = sample.rows(campaign)
    partial = sample is not None and not sample.full
    ref_chain = reference_collection(campaign)
    with open_butler(campaign.butler_repo(campaign.central)) as central:
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

        def owned(site: str, data_id: dict[str, Any], ref: Any = None) -> bool:
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
                    if not set(dims[dt]) - _GLOBAL_OK:
                        continue
                    for did in _rule_ids(central, campaign, site, dims[dt], own, placed, exposures):
                        data_id = dict(did.required)
                        if ownership.owner(data_id) == site:
                            rule[site][cells.cell(dt, data_id)] += 1

        def tally(
            butler: Any, collections: list[str], site: str
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
            with open_butler(campaign.butler_repo(site)) as sb:
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
                    report.mismatches.append({"site": site, "dataset type": k[0], "data id": dict(k[1])})
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
                    glob = globals_site if not set(dims[dt]) - _GLOBAL_OK else 0
                    note = f"global: {glob} at site (covers its own data only)" if glob else "none expected"
                    report.completeness.append(
                        {"site": site, "dataset type": dt, "expected": 0, "missing at site": 0,
                         "missing at central": 0, "on sample": 0, "note": note}
                    )  # fmt: skip
                    continue
                off = tally_dt["expected"] - tally_dt["on sample"]
                note = (
                    f"{tally_dt['on sample']} on the sample (reference), {off} off it (registry rule)"
                    if partial
                    else ""
                )
                report.completeness.append(
                    {"site": site, "dataset type": dt, "expected": tally_dt["expected"],
                     "missing at site": tally_dt["missing at site"],
                     "missing at central": tally_dt["missing at central"],
                     "on sample": tally_dt["on sample"], "note": note}
                )  # fmt: skip
            # per sky unit and band, all dataset types together
            per_unit: dict[tuple[str, str], dict[str, Any]] = {}
            for (_, unit, band), cur in table.items():
                if unit == "(visits)":
                    continue
                u = per_unit.setdefault(
                    (unit, band),
                    {"site": site, "sky unit": unit, "band": band, "sampled": cur["sampled"], "expected": 0,
                     "at site": 0, "at central": 0, "by rule": 0},
                )  # fmt: skip
                for col in ("expected", "at site", "at central", "by rule"):
                    u[col] += cur[col]
            report.units.extend(per_unit[k] for k in sorted(per_unit))
            digest = hashlib.sha256("".join(sorted(site_values.values())).encode()).hexdigest()[:12]
            ref_digest = hashlib.sha256("".join(sorted(ref_values[k] for k in expected)).encode()).hexdigest()[:12]
            report.metrics.append(
                {
                    "site": site,
                    "sampled units": len(sample.units.get(site, [])) if sample else len(campaign.sky_units(site)),
                    "sky units": len(campaign.sky_units(site)),
                    "products at site": sum(site_counts.values()) + len(at_site),
                    "products gathered": sum(central_counts.values()) + len(at_central),
                    "expected products": sum(v["expected"] for v in table.values()),
                    "reference products": len(expected),
                    "compared": len(site_values),
                    "global products at site": globals_site,
                    "value digest": digest,
                    "reference digest": ref_digest,
                    "agree": digest == ref_digest,
                }
            )
    return report
