"""Phase 6: are the products complete, and do they agree with a single-site reference?

The *expected* products come from a single-site reference: the same pipeline run over
all the campaign's data at the central site in its own collections. For each site:

* **completeness**: every reference dataset of the validation set whose data ID falls in
  the site's footprint must exist at the site and, after the final gather, at the central
  site (in the site's RUN collections), per sky unit and band;
* **agreement**: datasets present in both must carry the same values where the pipeline
  is deterministic. Global products (data IDs with no spatial or observational
  dimension, e.g. per-instrument tables) cover only a site's own data at a site, so they
  are compared by count, not by value.

Metrics per site (dataset counts, inputs consumed, a digest of the values) are computed
from what the sites produced and set beside the reference's.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import Campaign
from .ownership import Ownership

__all__ = ["REFERENCE", "QAReport", "reference_collection", "run_reference", "evaluate"]

REFERENCE = "reference"
_GLOBAL_OK = {"instrument", "skymap"}


def reference_collection(campaign: Campaign) -> str:
    return f"{campaign.output_prefix}/{REFERENCE}"


def run_reference(campaign: Campaign, log_dir: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Run every step of the pipeline at the central site over all the campaign's data.

    Idempotent: an existing reference step is finished (restarted), not redone. Returns
    ``{step: StepRecord dump}`` up to the first step that did not succeed.
    """
    from .submission import reference_step_run, run_steps

    steps = [s for st in campaign.config.stages for s in st.steps]
    records = run_steps(
        campaign,
        campaign.central,
        steps,
        log_dir,
        mode="pipetask",
        make_run=lambda step: reference_step_run(campaign, step),
    )
    return {step: record.model_dump(mode="json") for step, record in records.items()}


def _is_global(data_id: dict[str, Any]) -> bool:
    return set(data_id) <= _GLOBAL_OK


def _key(ref: Any) -> tuple[str, tuple[tuple[str, Any], ...]]:
    return ref.datasetType.name, tuple(sorted(dict(ref.dataId.required).items()))


def _value_digest(obj: Any) -> str:
    if isinstance(obj, dict):
        obj = {k: obj[k] for k in sorted(obj) if k in ("value", "n_inputs", "data_id", "dataset_type")}
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:16]


@dataclass
class QAReport:
    """The verdict and its tables."""

    completeness: list[dict[str, Any]] = field(default_factory=list)
    units: list[dict[str, Any]] = field(default_factory=list)
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def missing(self) -> int:
        return sum(r["missing at site"] + r["missing at central"] for r in self.completeness)

    @property
    def passed(self) -> bool:
        return self.missing == 0 and not self.mismatches

    def verdict(self) -> str:
        if self.passed:
            n = sum(r["expected"] for r in self.completeness)
            return (
                f"complete and consistent: {n} expected products present at the sites and at the central site, "
                "values equal to the reference"
            )
        parts = []
        if self.missing:
            first = next(r for r in self.completeness if r["missing at site"] or r["missing at central"])
            parts.append(f"{self.missing} products missing (first: {first['site']} {first['dataset type']})")
        if self.mismatches:
            m = self.mismatches[0]
            parts.append(
                f"{len(self.mismatches)} values differ from the reference "
                f"(first: {m['site']} {m['dataset type']} {m['data id']})"
            )
        return "; ".join(parts)


def evaluate(campaign: Campaign, validation_set: Sequence[str], ownership: Ownership | None = None) -> QAReport:
    """Compare each site's products (at the site and gathered centrally) with the reference.

    With ``ownership`` a site is held to the data IDs it owns (a boundary visit's products count
    at its owner); without, to every data ID its footprint admits.
    """
    from .butler_ops import open_butler
    from .gather import site_chain
    from .placement import site_footprint

    report = QAReport()
    ref_chain = reference_collection(campaign)
    with open_butler(campaign.butler_repo(campaign.central)) as central:
        reference = {}
        for dt in validation_set:
            for r in central.query_datasets(dt, collections=[ref_chain], find_first=True, explain=False, limit=None):
                reference[_key(r)] = r
        footprints = {s: site_footprint(central, campaign, s) for s in campaign.remote_sites}
        ref_values = {k: _value_digest(central.get(r)) for k, r in reference.items()}
        gathered: dict[str, dict[Any, Any]] = {}
        for site in campaign.remote_sites:
            prefix = site_chain(campaign, site) + "/"
            runs = [c for c in central.collections.query(prefix + "*")]
            found = {}
            for dt in validation_set:
                if runs:
                    for r in central.query_datasets(dt, collections=runs, find_first=True, explain=False, limit=None):
                        found[_key(r)] = r
            gathered[site] = found
        for site, fp in footprints.items():
            expected = {
                k: r
                for k, r in reference.items()
                if not _is_global(dict(k[1]))
                and (ownership.owner(dict(k[1])) == site if ownership is not None else fp.admits(r.dataId))
            }
            with open_butler(campaign.butler_repo(site)) as sb:
                at_site = {}
                for dt in validation_set:
                    for r in sb.query_datasets(
                        dt, collections=[site_chain(campaign, site)], find_first=True, explain=False, limit=None
                    ):
                        at_site[_key(r)] = r
                site_values = {k: _value_digest(sb.get(r)) for k, r in at_site.items() if k in expected}
            at_central = gathered[site]
            by_type: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
            for k in expected:
                row = by_type[k[0]]
                row["expected"] += 1
                row["missing at site"] += k not in at_site
                row["missing at central"] += k not in at_central
                if k in site_values and site_values[k] != ref_values[k]:
                    report.mismatches.append({"site": site, "dataset type": k[0], "data id": dict(k[1])})
            globals_site = sum(1 for k in at_site if _is_global(dict(k[1])))
            for dt in validation_set:
                tally = by_type.get(dt)
                if tally is None:
                    glob = sum(1 for k in at_site if k[0] == dt and _is_global(dict(k[1])))
                    report.completeness.append(
                        {
                            "site": site,
                            "dataset type": dt,
                            "expected": 0,
                            "missing at site": 0,
                            "missing at central": 0,
                            "note": f"global: {glob} at site (covers its own data only)" if glob else "none expected",
                        }
                    )
                else:
                    report.completeness.append(
                        {
                            "site": site,
                            "dataset type": dt,
                            "expected": tally["expected"],
                            "missing at site": tally["missing at site"],
                            "missing at central": tally["missing at central"],
                            "note": "",
                        }
                    )
            # per sky unit and band
            for unit in campaign.sky_units(site):
                for band in sorted(fp.values.get("band", set())):
                    keyset = [
                        k
                        for k in expected
                        if dict(k[1]).get("tract") == unit.tract
                        and (unit.patch is None or dict(k[1]).get("patch") == unit.patch)
                        and dict(k[1]).get("band") == band
                    ]
                    if keyset:
                        report.units.append(
                            {
                                "site": site,
                                "sky unit": str(unit),
                                "band": band,
                                "expected": len(keyset),
                                "at site": sum(k in at_site for k in keyset),
                                "at central": sum(k in at_central for k in keyset),
                            }
                        )
            digest = hashlib.sha256("".join(sorted(site_values.values())).encode()).hexdigest()[:12]
            ref_digest = hashlib.sha256("".join(sorted(ref_values[k] for k in expected)).encode()).hexdigest()[:12]
            report.metrics.append(
                {
                    "site": site,
                    "products at site": len(at_site),
                    "products gathered": len(at_central),
                    "reference products": len(expected),
                    "global products at site": globals_site,
                    "value digest": digest,
                    "reference digest": ref_digest,
                    "agree": digest == ref_digest,
                }
            )
    return report
