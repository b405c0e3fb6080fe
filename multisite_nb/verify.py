"""Phase 3: reconcile the plan with Rucio, each site's Butler and the disk.

Per site and per planned file:

* **Rucio**: the site's rule is OK and the replica is AVAILABLE on the site RSE. Dataset
  level counts (``list_dataset_replicas``) come first; file level only where they differ.
* **Butler**: the dataset is in the site's registry with the planned UUID, in the
  planned RUN collection.
* **Disk**: the file exists under the site's RSE root with the planned size and adler32
  (the plan's, else Rucio's catalogue).

A problem is one of ``missing`` (not there), ``corrupt`` (there, wrong size or checksum),
``wrong`` (there, but in another collection) or ``rule`` (the rule is not OK).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Campaign
from .placement import PlannedFile, adler32_many
from .records import RuleState
from .rucio_ops import RucioOps

#: What can be wrong with a planned file at a site (``unreachable``: the layer could not be read).
PROBLEM_KINDS = ("missing", "corrupt", "wrong", "rule", "unreachable")

__all__ = ["PROBLEM_KINDS", "Problem", "SiteReport", "verify_site", "verify_shipments", "problems_table"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong at one site."""

    site: str
    layer: str  # rucio | butler | disk
    kind: str  # missing | corrupt | wrong | rule
    what: str  # the file (LFN) or rule
    detail: str = ""

    def as_row(self) -> dict[str, str]:
        return {"site": self.site, "layer": self.layer, "problem": self.kind, "file": self.what, "detail": self.detail}


@dataclass
class SiteReport:
    """Reconciliation of one site."""

    site: str
    planned: int
    dataset: str = ""
    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, Any]:
        row: dict[str, Any] = {"site": self.site, "shipment": self.dataset, "planned": self.planned}
        for kind in PROBLEM_KINDS:
            row[kind] = sum(1 for p in self.problems if p.kind == kind)
        row["ok"] = self.ok
        return row


def verify_site(
    campaign: Campaign,
    ops: RucioOps,
    site: str,
    files: Sequence[PlannedFile],
    dataset: str,
    *,
    checksums: bool = True,
) -> SiteReport:
    """Reconcile one site's planned files (shipped as Rucio ``dataset``) with Rucio, Butler and disk.

    Each layer stands alone: one that cannot be read (Rucio, the site's Butler) is an
    ``unreachable`` problem naming the reason, and the other layers are still checked.
    """
    spec = campaign.site(site)
    report = SiteReport(site, len(files), dataset=dataset)
    by_lfn = {f.lfn: f for f in files}

    try:
        _check_rucio(report, ops, spec.rse, dataset, by_lfn)
    except Exception as exc:  # this site's part fails with the reason; the other sites go on
        report.problems.append(Problem(site, "rucio", "unreachable", dataset, f"{type(exc).__name__}: {exc}"[:500]))
    try:
        _check_butler(report, spec.butler, files)
    except Exception as exc:
        report.problems.append(
            Problem(site, "butler", "unreachable", spec.butler, f"{type(exc).__name__}: {exc}"[:500])
        )
    catalogue: dict[str, tuple[int, str]] = {}
    if checksums and spec.rse_root and any(not f.adler32 for f in files):
        try:  # the plan reads no file: the checksums to hold the disk to are Rucio's, one listing
            catalogue = ops.contents(dataset)
        except Exception as exc:
            report.problems.append(
                Problem(site, "rucio", "unreachable", dataset, f"checksums: {type(exc).__name__}: {exc}"[:500])
            )
    _check_disk(report, Path(spec.rse_root) if spec.rse_root else None, files, checksums, catalogue)
    return report


def _check_rucio(report: SiteReport, ops: RucioOps, rse: str, dataset: str, by_lfn: dict[str, PlannedFile]) -> None:
    """The rule, then dataset-level counts; file level only if they disagree."""
    site, files = report.site, list(by_lfn.values())
    found = ops.find_rule(dataset, rse)
    rule_id = found.id if found else None
    if found is None:
        report.problems.append(Problem(site, "rucio", "rule", dataset, f"no rule to {rse}"))
    elif found.ending():
        report.problems.append(
            Problem(site, "rucio", "rule", dataset, f"rule {found.id} is deleted: it expires at {found.expires_at}")
        )
    else:
        rule = ops.rule(found.id)
        if rule.state is not RuleState.OK:
            report.problems.append(Problem(site, "rucio", "rule", dataset, f"{rule.state}: {rule.error or ''}".strip()))
    counts = (
        ops.dataset_replica_counts(dataset).get(rse, {"length": 0, "available": 0})
        if rule_id
        else {"length": 0, "available": 0}
    )
    report.checked["rucio_dataset_available"] = counts["available"]
    if counts["available"] != len(files) or counts["length"] != len(files):
        states = ops.file_replica_states(list(by_lfn), rse)
        report.checked["rucio_file_level"] = len(files)
        for lfn in by_lfn:
            st = states.get(lfn)
            if st != "AVAILABLE":
                report.problems.append(Problem(site, "rucio", "missing", lfn, f"replica {st or 'absent'} on {rse}"))


def _check_butler(report: SiteReport, repo: str, files: Sequence[PlannedFile]) -> None:
    """Same UUID, same RUN: one streamed query per (dataset type, RUN) of the plan; only the
    datasets not found where planned are looked up by id (to tell a wrong RUN from a missing one)."""
    from .butler_ops import open_butler

    site = report.site
    by_group: dict[tuple[str, str], list[PlannedFile]] = defaultdict(list)
    for f in files:
        by_group[(f.dataset_type, f.run)].append(f)
    absent: list[PlannedFile] = []
    with open_butler(repo) as butler:
        known_types = {t.name for t in butler.registry.queryDatasetTypes()}
        known_runs = set(butler.collections.query("*"))
        for (dataset_type, run), group in by_group.items():
            found: set[str] = set()
            if dataset_type in known_types and run in known_runs:
                with butler.query() as query:
                    found = {str(ref.id) for ref in query.datasets(dataset_type, collections=[run], find_first=False)}
            absent += [f for f in group if f.id not in found]
        elsewhere = {str(r.id): r for r in butler.get_many_datasets([f.id for f in absent])} if absent else {}
    for f in absent:
        ref = elsewhere.get(f.id)
        if ref is None:
            report.problems.append(Problem(site, "butler", "missing", f.lfn, f"{f.dataset_type} {f.id} not registered"))
        else:
            report.problems.append(Problem(site, "butler", "wrong", f.lfn, f"in {ref.run}, planned {f.run}"))
    report.checked["butler"] = len(files)


def _scan_sizes(root: Path, lfns: Sequence[str]) -> dict[str, int]:
    """Sizes of the files among ``lfns`` that exist under ``root``: one directory listing per folder
    (not a lookup per file); a folder that is missing or unreadable holds none of them."""
    by_dir: dict[str, set[str]] = defaultdict(set)
    for lfn in lfns:
        folder, _, name = lfn.rpartition("/")
        by_dir[folder].add(name)
    sizes: dict[str, int] = {}
    for folder, names in by_dir.items():
        try:
            with os.scandir(root / folder) as entries:
                for entry in entries:
                    if entry.name in names and entry.is_file(follow_symlinks=False):
                        sizes[f"{folder}/{entry.name}" if folder else entry.name] = entry.stat().st_size
        except OSError:
            continue
    return sizes


def _check_disk(
    report: SiteReport,
    root: Path | None,
    files: Sequence[PlannedFile],
    checksums: bool,
    catalogue: Mapping[str, tuple[int, str]] | None = None,
) -> None:
    """Exists and size (directory scans), adler32 when asked (read in parallel), when the site's
    RSE root is visible from here. The adler32 to match is the plan's, else Rucio's (``catalogue``:
    name -> (bytes, adler32)); a file with neither is reported, never passed unchecked."""
    site = report.site
    if root is None:
        return
    sizes = _scan_sizes(root, [f.lfn for f in files])
    to_sum = []
    for f in files:
        size = sizes.get(f.lfn)
        if size is None:
            report.problems.append(Problem(site, "disk", "missing", f.lfn, "no file"))
        elif size != f.size:
            report.problems.append(Problem(site, "disk", "corrupt", f.lfn, f"size {size}, planned {f.size}"))
        elif checksums:
            want = f.adler32 or (catalogue or {}).get(f.lfn, (0, ""))[1]
            if want:
                to_sum.append((f, want))
            else:
                report.problems.append(
                    Problem(site, "disk", "unreachable", f.lfn, "not checksummed: no adler32 in the plan or in Rucio")
                )
    for (f, want), a in zip(to_sum, adler32_many([root / f.lfn for f, _ in to_sum]), strict=True):
        if a != want:
            report.problems.append(Problem(site, "disk", "corrupt", f.lfn, f"adler32 {a}, catalogue {want}"))
    report.checked["disk"] = len(files)
    report.checked["disk_checksums"] = len(to_sum)


def verify_shipments(
    campaign: Campaign, groups: Sequence[tuple[str, str, Sequence[PlannedFile]]], *, checksums: bool = True
) -> list[SiteReport]:
    """Verify several shipments, each given as (destination site, Rucio dataset, planned files)."""
    ops = RucioOps.for_campaign(campaign)
    return [verify_site(campaign, ops, site, files, ds, checksums=checksums) for site, ds, files in groups]


def verify_placement(
    campaign: Campaign, plan: Any, *, checksums: bool = True, sites: Sequence[str] | None = None
) -> list[SiteReport]:
    """Phase 3 for the placement of phase 1/2 (``sites``: only these remote sites)."""
    from .naming import placement_dataset

    groups = [(s, placement_dataset(campaign, s), plan.site_files(s)) for s in (sites or campaign.remote_sites)]
    return verify_shipments(campaign, groups, checksums=checksums)


def problems_table(reports: Sequence[SiteReport]) -> list[dict[str, str]]:
    return [p.as_row() for r in reports for p in r.problems]
