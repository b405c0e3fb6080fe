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
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lsst.daf.butler import Butler

from multisite_nb.adapters.butler.repo import open_butler
from multisite_nb.adapters.files import adler32_many
from multisite_nb.adapters.results import finish_phase, save_table
from multisite_nb.adapters.rucio.ops import RucioOps
from multisite_nb.adapters.tables import FileColumns, FileTableSource, load_plan, site_source
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.naming import placement_dataset, plan_path
from multisite_nb.domain.plan import PlacementPlan, PlannedFile
from multisite_nb.domain.records import RuleState
from multisite_nb.domain.results import PhaseResult, utcnow
from multisite_nb.domain.summaries import VerifySummary
from multisite_nb.domain.verification import Problem, SiteReport, merge_reports, problems_table
from multisite_nb.phases.spec import phase
from multisite_nb.phases.transfer.batches import shipped_batches

__all__ = ["record_verification", "run", "verify_placement", "verify_shipments", "verify_site"]


def verify_site(
    campaign: Campaign,
    ops: RucioOps,
    site: str,
    files: FileTableSource | Sequence[PlannedFile],
    dataset: str,
    *,
    checksums: bool = True,
) -> SiteReport:
    """Reconcile one site's planned files (shipped as Rucio ``dataset``) with Rucio, Butler and disk.

    The files are read batch by batch, each batch checked on every layer: memory holds a batch,
    the problems found, and 16 bytes per dataset the site's Butler has of the planned types.
    Each layer stands alone: one that cannot be read (Rucio, the site's Butler) is an
    ``unreachable`` problem naming the reason, and the other layers are still checked.
    """
    batches = files.columns() if isinstance(files, FileTableSource) else [FileColumns.from_planned(files)]
    spec = campaign.site(site)
    report = SiteReport(site, len(files), dataset=dataset)
    rucio = _RucioLayer(report, ops, spec.rse, dataset)
    root = Path(spec.rse_root) if spec.rse_root else None
    with ExitStack() as stack:
        butler = _ButlerLayer(report, spec.butler, stack, campaign.db_auth)
        for batch in batches:
            rucio.check(batch)
            butler.check(batch)
            if root is not None:
                _check_disk(report, root, batch, checksums, ops)
        butler.finish()
    for layer in ("rucio_file_level", "butler", "disk"):
        report.checked.setdefault(layer, 0)
    return report


class _RucioLayer:
    """The rule, then dataset-level counts; file level (batch by batch) only if they disagree."""

    def __init__(self, report: SiteReport, ops: RucioOps, rse: str, dataset: str) -> None:
        self.report, self.ops, self.rse, self.dataset = report, ops, rse, dataset
        self.file_level = False
        try:
            self._rule_and_counts()
        except Exception as exc:  # this site's part fails with the reason; the other layers go on
            self.file_level = False
            self._unreachable(exc)

    def _unreachable(self, exc: Exception) -> None:
        self.report.problems.append(
            Problem(self.report.site, "rucio", "unreachable", self.dataset, f"{type(exc).__name__}: {exc}"[:500])
        )

    def _rule_and_counts(self) -> None:
        report, ops, rse, dataset, site = self.report, self.ops, self.rse, self.dataset, self.report.site
        found = ops.find_rule(dataset, rse)
        if found is None:
            report.problems.append(Problem(site, "rucio", "rule", dataset, f"no rule to {rse}"))
        elif found.ending():
            report.problems.append(
                Problem(site, "rucio", "rule", dataset, f"rule {found.id} is deleted: it expires at {found.expires_at}")
            )
        else:
            rule = ops.rule(found.id)
            if rule.state is not RuleState.OK:
                report.problems.append(
                    Problem(site, "rucio", "rule", dataset, f"{rule.state}: {rule.error or ''}".strip())
                )
        counts = (
            ops.dataset_replica_counts(dataset).get(rse, {"length": 0, "available": 0})
            if found
            else {"length": 0, "available": 0}
        )
        report.checked["rucio_dataset_available"] = counts["available"]
        self.file_level = counts["available"] != report.planned or counts["length"] != report.planned

    def check(self, batch: FileColumns) -> None:
        if not self.file_level:
            return
        try:
            states = self.ops.file_replica_states(batch.lfn, self.rse)
        except Exception as exc:
            self.file_level = False
            self._unreachable(exc)
            return
        site = self.report.site
        self.report.checked["rucio_file_level"] = self.report.checked.get("rucio_file_level", 0) + len(batch)
        for lfn in batch.lfn:
            st = states.get(lfn)
            if st != "AVAILABLE":
                self.report.problems.append(
                    Problem(site, "rucio", "missing", lfn, f"replica {st or 'absent'} on {self.rse}")
                )


class _ButlerLayer:
    """Same UUID, same RUN. The ids the site's registry has are read once per (dataset type, RUN)
    of the plan, with one streamed query, into a sorted array of 16-byte UUIDs; each batch's ids
    are looked up in it. Only the datasets not found where planned are looked up by id (to tell a
    wrong RUN from a missing one), at the end."""

    def __init__(self, report: SiteReport, repo: str, stack: ExitStack, db_auth: str | None = None) -> None:
        self.report, self.repo = report, repo
        self.butler: Butler | None = None
        self.found: dict[tuple[str, str], np.ndarray] = {}
        self.absent: list[tuple[str, str, str, str]] = []  # id, lfn, dataset type, run
        try:
            self.butler = stack.enter_context(open_butler(repo, db_auth=db_auth))
            self.known_types = {t.name for t in self.butler.registry.queryDatasetTypes()}
            self.known_runs = set(self.butler.collections.query("*"))
        except Exception as exc:
            self._unreachable(exc)

    def _unreachable(self, exc: Exception) -> None:
        self.butler = None
        self.report.problems.append(
            Problem(self.report.site, "butler", "unreachable", self.repo, f"{type(exc).__name__}: {exc}"[:500])
        )

    def _ids(self, dataset_type: str, run: str) -> np.ndarray:
        key = (dataset_type, run)
        ids = self.found.get(key)
        if ids is None:
            raw = b""
            if self.butler is not None and dataset_type in self.known_types and run in self.known_runs:
                with self.butler.query() as query:
                    raw = b"".join(
                        ref.id.bytes for ref in query.datasets(dataset_type, collections=[run], find_first=False)
                    )
            ids = self.found[key] = np.sort(np.frombuffer(raw, dtype="S16"))
        return ids

    def check(self, batch: FileColumns) -> None:
        if self.butler is None:
            return
        rows: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, key in enumerate(zip(batch.dataset_type, batch.run, strict=True)):
            rows[key].append(i)
        try:
            for (dataset_type, run), idx in rows.items():
                found = self._ids(dataset_type, run)
                planned = np.frombuffer(bytes.fromhex("".join(batch.id[i] for i in idx).replace("-", "")), dtype="S16")
                for i, there in zip(idx, np.isin(planned, found), strict=True):
                    if not there:
                        self.absent.append((batch.id[i], batch.lfn[i], dataset_type, run))
        except Exception as exc:
            self._unreachable(exc)
            return
        self.report.checked["butler"] = self.report.checked.get("butler", 0) + len(batch)

    def finish(self) -> None:
        if self.butler is None:
            return
        site, elsewhere = self.report.site, dict[str, Any]()
        try:
            for start in range(0, len(self.absent), 10_000):
                part = [a[0] for a in self.absent[start : start + 10_000]]
                elsewhere.update((str(r.id), r) for r in self.butler.get_many_datasets(part))
        except Exception as exc:
            self._unreachable(exc)
            return
        for dataset_id, lfn, dataset_type, run in self.absent:
            ref = elsewhere.get(dataset_id)
            if ref is None:
                self.report.problems.append(
                    Problem(site, "butler", "missing", lfn, f"{dataset_type} {dataset_id} not registered")
                )
            else:
                self.report.problems.append(Problem(site, "butler", "wrong", lfn, f"in {ref.run}, planned {run}"))


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


def _check_disk(report: SiteReport, root: Path, batch: FileColumns, checksums: bool, ops: RucioOps) -> None:
    """Exists and size (directory scans), adler32 when asked (read in parallel). The adler32 to
    match is the plan's, else Rucio's catalogue (asked for the batch's files that lack one); a file
    with neither is reported, never passed unchecked."""
    site = report.site
    sizes = _scan_sizes(root, batch.lfn)
    catalogue: dict[str, str] = {}
    if checksums:
        lacking = [lfn for lfn, a in zip(batch.lfn, batch.adler32, strict=True) if not a and lfn in sizes]
        if lacking:
            try:  # the plan reads no file: the checksums to hold the disk to are Rucio's
                catalogue = ops.checksums(lacking)
            except Exception as exc:
                report.problems.append(
                    Problem(
                        site, "rucio", "unreachable", report.dataset, f"checksums: {type(exc).__name__}: {exc}"[:500]
                    )
                )
    to_sum: list[tuple[str, str]] = []
    for lfn, planned_size, planned_sum in zip(batch.lfn, batch.size, batch.adler32, strict=True):
        size = sizes.get(lfn)
        if size is None:
            report.problems.append(Problem(site, "disk", "missing", lfn, "no file"))
        elif size != planned_size:
            report.problems.append(Problem(site, "disk", "corrupt", lfn, f"size {size}, planned {planned_size}"))
        elif checksums:
            want = planned_sum or catalogue.get(lfn, "")
            if want:
                to_sum.append((lfn, want))
            else:
                report.problems.append(
                    Problem(site, "disk", "unreachable", lfn, "not checksummed: no adler32 in the plan or in Rucio")
                )
    for (lfn, want), a in zip(to_sum, adler32_many([root / lfn for lfn, _ in to_sum]), strict=True):
        if a != want:
            report.problems.append(Problem(site, "disk", "corrupt", lfn, f"adler32 {a}, catalogue {want}"))
    report.checked["disk"] = report.checked.get("disk", 0) + len(batch)
    report.checked["disk_checksums"] = report.checked.get("disk_checksums", 0) + len(to_sum)


def verify_shipments(
    campaign: Campaign,
    groups: Sequence[tuple[str, str, FileTableSource | Sequence[PlannedFile]]],
    *,
    checksums: bool = True,
) -> list[SiteReport]:
    """Verify several shipments, each given as (destination site, Rucio dataset, planned files)."""
    ops = RucioOps.for_campaign(campaign)
    return [verify_site(campaign, ops, site, files, ds, checksums=checksums) for site, ds, files in groups]


def verify_placement(
    campaign: Campaign,
    plan: PlacementPlan,
    *,
    checksums: bool = True,
    sites: Sequence[str] | None = None,
    run_dir: str | Path | None = None,
) -> list[SiteReport]:
    """Phase 3 for the placement of phase 1/2 (``sites``: only these remote sites).

    With ``run_dir``, a site whose placement flowed (batch by batch, see
    :mod:`~multisite_nb.phases.transfer.batches`) is verified shipment by shipment, as one report.
    """
    ops = RucioOps.for_campaign(campaign)
    reports = []
    for s in sites or campaign.remote_sites:
        batches = shipped_batches(campaign, plan, s, run_dir) if run_dir is not None else None
        if batches is None:
            reports.append(
                verify_site(campaign, ops, s, site_source(plan, s), placement_dataset(campaign, s), checksums=checksums)
            )
            continue
        parts = [verify_site(campaign, ops, s, b.files, b.name, checksums=checksums) for b in batches]
        reports.append(merge_reports(s, placement_dataset(campaign, s), parts))
    return reports


def _first_problem(report: SiteReport) -> str:
    p = report.problems[0]
    return f"{p.layer} {p.kind} {p.what}" + (f" ({p.detail})" if p.detail else "")


def record_verification(
    run_dir: str | Path,
    reports: Sequence[SiteReport],
    started: datetime,
    *,
    unverified: Mapping[str, Sequence[str]] | None = None,
    checked: str = "",
) -> PhaseResult:
    """The ``verify`` gate over the sites' reports: its tables, reason and summary.

    ``unverified``: per site, what could not be verified (a flowing placement's shipments that never
    landed); the gate fails naming them. ``checked`` is added to a passing reason.
    """
    unverified = unverified or {}
    problems = problems_table(reports)
    artifacts = [
        str(save_table(run_dir, "verify", "counts", pd.DataFrame([r.counts().model_dump() for r in reports]))),
        str(
            save_table(
                run_dir,
                "verify",
                "problems",
                pd.DataFrame(problems, columns=["site", "layer", "problem", "file", "detail"]),
            )
        ),
    ]
    bad = [r for r in reports if not r.ok]
    passed = not bad and not unverified
    parts = []
    if bad:
        first = bad[0].problems[0]
        parts.append(
            f"{sum(len(r.problems) for r in bad)} problems at {', '.join(r.site for r in bad)}; "
            f"first: {first.site} {first.layer} {first.kind} {first.what} ({first.detail})"
        )
    if unverified:
        parts.append(
            "not verified (not in place): "
            + "; ".join(
                f"{s}: {', '.join(names[:3])}" + (" ..." if len(names) > 3 else "") for s, names in unverified.items()
            )
        )
    planned = sum(r.planned for r in reports)
    reason = (
        f"all {planned} planned files in place at {len(reports)} sites (Rucio, Butler, disk){checked}"
        if passed
        else "; ".join(parts)
    )
    summary = VerifySummary(
        sites={r.site: r.counts().model_copy(update={"ok": r.ok and r.site not in unverified}) for r in reports},
        problems=len(problems),
        first_problems={r.site: _first_problem(r)[:300] for r in bad},
    )
    return finish_phase(run_dir, "verify", passed, reason, started, summary=summary, artifacts=artifacts)


@phase("verify", notebook="03_verify", summary=VerifySummary, needs=("placement",), follows=("transfer",))
def run(campaign: Campaign, run_dir: str | Path, *, checksums: bool = True) -> tuple[PhaseResult, list[SiteReport]]:
    """Phase 3: reconcile the plan with Rucio, each site's Butler and the disk."""
    started = utcnow()
    plan = load_plan(plan_path(run_dir))
    reports = verify_placement(campaign, plan, checksums=checksums, run_dir=run_dir)
    result = record_verification(run_dir, reports, started)
    return result, reports
