"""Where each site of a campaign stands, read from the real systems on every call.

:func:`collect` answers one question per site (the central site and every remote site):
*is it fine, busy, in trouble, or has nothing happened yet?*  It reads, each time it is
called and without any cache:

* **placement** — the placement result's :class:`~multisite_nb.domain.summaries.PlacementSummary`:
  per site ``files``, ``bytes``, ``visits`` (what the plan sends there);
* **transfers** — Rucio, live: every replication rule of the campaign scope whose RSE
  expression names the site's RSE (:meth:`~multisite_nb.adapters.rucio.ops.RucioOps.list_rules`), the
  campaign's own only (its datasets are named ``<campaign>.…``; a scope may hold several),
  counted by state (OK / REPLICATING / STUCK), with their locks, and Rucio's reason for
  STUCK rules; rules past their lifetime (Rucio's cleaner removes them soon) are left out;
* **verification** — the verify result's :class:`~multisite_nb.domain.summaries.VerifySummary`: per
  site ``ok``, ``planned``, the problem counts and the first problem;
* **steps** — every result whose summary holds steps
  (:class:`~multisite_nb.domain.summaries.StepsSummary`): per site and step a
  :class:`~multisite_nb.domain.records.StepRecord`. A result that does not validate is not guessed
  at: it is an unreadable result naming the file, the key and pydantic's reason (a step entry's
  problem concerns its site only). When several results describe the same site and step, the one
  that finished last wins;
* **Butler** — the site's repository answers, and how many datasets its RUN collections hold.
* **alerts** — the run folder's open alerts (:func:`~multisite_nb.adapters.alerts.open_alerts`): what
  needs a person, shown above everything else.

State rules (per site)
----------------------
* ``trouble`` — a rule to the site is STUCK or SUSPENDED; the site's verification failed;
  a step failed or stopped with quanta not run; the site's Butler or Rucio cannot be read;
  a result file cannot be read (every site: it may hide a failure) or one of the site's
  step entries is not a step record.
* ``busy`` — nothing is wrong, and a rule is replicating (or waiting) or a step is
  pending or running.
* ``ok`` — nothing is wrong, nothing is in flight, and something was done: a rule is OK,
  the verification passed, or a step has succeeded quanta.
* ``idle`` — none of the above yet (e.g. the central site before anything is gathered).

Reading a system never raises: a failure becomes a ``trouble`` issue with its message.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from multisite_nb.adapters.alerts import open_alerts
from multisite_nb.adapters.butler.repo import count_datasets, open_butler
from multisite_nb.adapters.results import load_run_record, results_dir, run_state
from multisite_nb.adapters.rucio.ops import RucioOps
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.naming import campaign_dataset, placement_dataset
from multisite_nb.domain.records import RuleRecord, RuleState, StepRecord, StepState
from multisite_nb.domain.results import PHASE_NAME, PhaseResult
from multisite_nb.domain.summaries import PlacementSummary, StepsSummary, VerifySummary
from multisite_nb.domain.verification import PROBLEM_KINDS
from multisite_nb.phases.submit.runner import latest_attempts
from multisite_nb.views.model import (
    STATES,
    ButlerHealth,
    CampaignStatus,
    Issue,
    Placement,
    SiteState,
    SiteStatus,
    Transfers,
    Verification,
)
from multisite_nb.views.style import plural

if TYPE_CHECKING:
    from multisite_nb.adapters.rucio.ops import RucioOps

__all__ = [
    "STATES",
    "ButlerHealth",
    "CampaignStatus",
    "Issue",
    "Placement",
    "SiteState",
    "SiteStatus",
    "StepProblem",
    "Transfers",
    "Verification",
    "collect",
    "read_results",
    "read_steps",
    "site_state",
]

_MAX_TEXT = 400


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _short(text: object, limit: int = _MAX_TEXT) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _err(exc: BaseException) -> str:
    return _short(f"{type(exc).__name__}: {exc}")


# -- reading the run folder ---------------------------------------------------------------


@dataclass(frozen=True)
class StepProblem:
    """A result that cannot be read, or a step entry of it that is not a step record: which site it
    concerns (None: every site), what, why."""

    site: str | None
    message: str
    cause: str | None = None

    def __str__(self) -> str:
        return f"{self.message}: {self.cause}" if self.cause else self.message


def _validation_reason(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    parts = [f"{'.'.join(str(x) for x in e['loc']) or 'entry'}: {e['msg']}" for e in errors[:3]]
    if len(errors) > 3:
        parts.append(f"{len(errors) - 3} more")
    return _short("; ".join(parts))


def read_results(run_dir: Path | None) -> tuple[dict[str, PhaseResult], list[StepProblem]]:
    """Phase name → result for every readable result; and one problem per result that cannot be read.

    A result whose step entry is not a step record (``summary.steps.<SITE>.<step>``) is named with
    that key and concerns that site only; any other unreadable result concerns every site.
    """
    out: dict[str, PhaseResult] = {}
    problems: list[StepProblem] = []
    folder = results_dir(run_dir) if run_dir is not None else None
    if folder is None or not folder.is_dir():
        return out, problems
    for path in sorted(folder.glob("*.json")):
        if not PHASE_NAME.match(path.stem):
            continue
        where = f"results/{path.name}"
        try:
            out[path.stem] = PhaseResult.model_validate_json(path.read_text(encoding="utf-8"))
        except ValidationError as exc:
            locs = [e["loc"] for e in exc.errors(include_url=False)]
            step_locs = {loc[:4] for loc in locs if len(loc) >= 4 and loc[:2] == ("summary", "steps")}
            if step_locs and len(step_locs) == len({loc[:4] for loc in locs}):
                for loc in sorted(step_locs, key=str):
                    key = ".".join(str(x) for x in loc)
                    problems.append(
                        StepProblem(str(loc[2]), f"{where}: {key} is not a step record", _validation_reason(exc))
                    )
            else:
                problems.append(StepProblem(None, f"cannot read {where}: {_validation_reason(exc)}"))
        except (OSError, ValueError) as exc:
            problems.append(StepProblem(None, f"cannot read {where}: {_short(exc, 200)}"))
    return out, problems


def read_steps(results: Mapping[str, PhaseResult]) -> tuple[dict[str, dict[str, StepRecord]], list[StepProblem]]:
    """Site → step → :class:`StepRecord` from every result holding steps (:class:`StepsSummary`).

    Results are applied in the order they finished, so the latest wins per site and step.

    Returns
    -------
    steps, problems
        The records, and one :class:`StepProblem` per entry that is another step's record.
    """
    out: dict[str, dict[str, StepRecord]] = {}
    problems: list[StepProblem] = []
    for phase, res in sorted(results.items(), key=lambda kv: (kv[1].finished, kv[0])):
        if not isinstance(res.summary, StepsSummary):
            continue
        where = f"results/{phase}.json"
        for site, per_step in res.summary.steps.items():
            for step, rec in per_step.items():
                key = f"summary.steps.{site}.{step}"
                if (rec.site, rec.step) != (site, step):
                    problems.append(
                        StepProblem(
                            site, f"{where}: {key} is not a step record", f"it is the record of {rec.site} {rec.step}"
                        )
                    )
                    continue
                out.setdefault(site, {})[step] = rec
    return out, problems


def _placement(result: PhaseResult | None, site: str) -> Placement | None:
    """What the placement's summary sends to ``site``."""
    if result is None or not isinstance(result.summary, PlacementSummary):
        return None
    entry = result.summary.sites.get(site)
    return Placement(files=entry.files, bytes=entry.bytes, visits=entry.visits) if entry else None


def _verification(result: PhaseResult, site: str) -> Verification:
    """The verification's summary of ``site``."""
    summary = result.summary
    entry = summary.sites.get(site) if isinstance(summary, VerifySummary) else None
    if entry is None:
        return Verification()
    counts = {k: getattr(entry, k) for k in PROBLEM_KINDS}
    first = summary.first_problems.get(site) if isinstance(summary, VerifySummary) else None
    return Verification(
        ran=True,
        ok=entry.ok,
        planned=entry.planned,
        problems=entry.problems,
        counts=counts,
        first_problem=_short(first, 300) if first else None,
        finished=_iso(result.finished),
    )


# -- reading the live systems ------------------------------------------------------------


def _targets(expression: str, rse: str) -> bool:
    """Whether a rule's RSE expression names ``rse`` (exactly, or as one term of it)."""
    return expression == rse or rse in re.split(r"[|&\\()\s]+", expression)


def _rucio_rules(campaign: Campaign) -> tuple[RucioOps, list[RuleRecord]]:
    """The campaign's Rucio (its client's error logging silenced) and the campaign's rules in its scope."""
    ops = RucioOps.for_campaign(campaign, quiet=True)
    return ops, [r for r in ops.list_rules() if campaign_dataset(campaign, r.name)]


def _transfers(rse: str, ops: RucioOps, rules: list[RuleRecord], placed: str = "") -> Transfers:
    """The rules to ``rse``, counted; ``placed``: the site's placement shipment (its files there counted)."""
    t = Transfers(rse=rse, read=True)
    explained = 0
    now = datetime.now(UTC)
    for r in rules:
        if not _targets(r.rse_expression, rse):
            continue
        if r.ending(now):
            t.ending += 1
            continue
        if r.state.bad and not r.error and explained < 3:
            explained += 1
            r = r.model_copy(update={"error": _short(ops.stuck_reason(r.id))})
        t.rules.append(r)
        if r.name == placed:
            t.placed_ok += r.locks_ok
        t.locks_ok += r.locks_ok
        t.locks_replicating += r.locks_replicating
        t.locks_stuck += r.locks_stuck
        if r.state is RuleState.OK:
            t.ok += 1
        elif r.state.in_flight:
            t.replicating += 1
        elif r.state.bad:
            t.stuck += 1
            if t.stuck_reason is None:
                t.stuck_reason = r.error or str(r.state)
        else:
            t.other += 1
    t.rules.sort(key=lambda x: (x.state is not RuleState.STUCK, x.state is not RuleState.REPLICATING, x.name))
    return t


def _butler_health(repo: str, db_auth: str | None = None) -> ButlerHealth:
    """Open the repository read-only; count the datasets in its RUN collections."""
    t0 = time.monotonic()
    try:
        with open_butler(repo, db_auth=db_auth) as butler:
            collections = len(butler.collections.query("*"))
            datasets = count_datasets(butler)
        return ButlerHealth(ok=True, datasets=datasets, collections=collections, seconds=time.monotonic() - t0)
    except Exception as exc:  # a status report never raises
        return ButlerHealth(ok=False, error=_err(exc), seconds=time.monotonic() - t0)


# -- judging ----------------------------------------------------------------------------


def _step_issues(steps: Mapping[str, StepRecord]) -> list[Issue]:
    issues = []
    for st in steps.values():
        cause = str(st.first_failure) if st.first_failure else None
        if st.state is StepState.FAILED or (st.failed and st.state is not StepState.HELD):
            what = (
                f"{st.step}: {plural(st.failed, 'failed quantum', 'failed quanta')}"
                if st.failed
                else f"{st.step} failed"
            )
            issues.append(Issue("steps", what, cause))
    for st in steps.values():
        if st.groups is not None and st.groups.held:
            held = st.groups.held_groups
            issues.append(
                Issue(
                    "steps",
                    f"{st.step}: {plural(st.groups.held, 'group', 'groups')} held after their retries "
                    f"({st.groups.done}/{st.groups.total} done); --resume retries them",
                    "; ".join(str(h) for h in held[:3]) or None,
                )
            )
    for st in steps.values():
        if st.state is StepState.DIED:
            issues.append(Issue("steps", f"{st.step} died: its chain was killed while it ran", st.note or None))
    for st in steps.values():
        if st.state is StepState.STOPPED and not st.failed:
            left = plural(st.pending + st.running, "quantum", "quanta")
            issues.append(
                Issue(
                    "steps",
                    f"{st.step} stopped with {left} not run",
                    str(st.first_failure) if st.first_failure else None,
                )
            )
    return issues


def site_state(s: SiteStatus) -> tuple[SiteState, str]:
    """The site's state and a one-line reason, by the rules in the module docstring.

    Fills ``s.issues`` (most pressing first) as a side effect.
    """
    issues: list[Issue] = []
    t = s.transfers
    if t is not None and not t.read:
        issues.append(Issue("rucio", "Rucio cannot be read", t.error))
    if s.butler.ok is False:
        issues.append(Issue("butler", f"Butler repository of {s.site} does not answer", s.butler.error))
    if t is not None and t.stuck:
        first = next((r for r in t.rules if r.state.bad), None)
        what = f"{t.stuck} rule{'s' if t.stuck > 1 else ''} {first.state if first else 'STUCK'} to {t.rse}"
        if first:
            what += f" ({first.name}, {plural(first.locks_stuck, 'file')} stuck)"
        issues.append(Issue("rucio", what, t.stuck_reason))
    issues += _step_issues(s.steps)
    v = s.verification
    if v.ran and v.ok is False:
        issues.append(Issue("verify", f"verification failed: {v.kinds}", v.first_problem))
    s.issues = issues + [i for i in s.issues if i not in issues]  # keep read problems added earlier
    if s.issues:
        return "trouble", s.issues[0].message
    busy = []
    if t is not None and t.replicating:
        busy.append(
            f"{t.replicating} rule{'s' if t.replicating > 1 else ''} replicating "
            f"({t.locks_ok}/{t.locks_ok + t.locks_replicating} files)"
        )
    flying = [st for st in s.steps.values() if st.state.in_flight]
    if flying:
        busy.append(
            f"{', '.join(st.step for st in flying)}: {sum(st.running for st in flying)} running, "
            f"{sum(st.pending for st in flying)} pending"
        )
    if busy:
        return "busy", "; ".join(busy)
    planned = s.placement.files if s.placement is not None and s.role == "remote" else 0
    if planned and t is not None and t.read and t.placed_ok < planned and not v.ok:
        # green only when the planned data is there (other rules, e.g. dimension records, may be OK)
        return "idle", f"{t.placed_ok}/{planned} planned files here: the transfer has not finished"
    done = []
    if t is not None and t.ok:
        done.append(f"{t.ok} rule{'s' if t.ok > 1 else ''} OK")
    if v.ran and v.ok:
        done.append("verified")
    succeeded = [st.step for st in s.steps.values() if st.state is StepState.SUCCEEDED or st.succeeded]
    if succeeded:
        done.append(f"{len(succeeded)} step{'s' if len(succeeded) > 1 else ''} done")
    if done:
        return "ok", ", ".join(done)
    return "idle", "nothing yet"


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="seconds").replace("+00:00", "Z")


def collect(campaign: Campaign, run_dir: str | Path | None = None, *, butler: bool = True) -> CampaignStatus:
    """Read every site's status now, from the run folder and the live systems.

    Parameters
    ----------
    campaign
        The campaign.
    run_dir
        Its run folder (phase results); ``None``: live systems only.
    butler
        Also check each site's Butler (a few tenths of a second per site here).

    Returns
    -------
    CampaignStatus
        Never raises for a system that cannot be read: that site is in ``trouble``.
    """
    t0 = time.monotonic()
    run = Path(run_dir).resolve() if run_dir else None
    status = CampaignStatus(
        campaign=campaign.name, central=campaign.central, run_dir=str(run) if run else None, collected_at=_now()
    )
    status.steps = [st for stage in campaign.config.stages for st in stage.steps]
    if run is not None:
        try:
            record = load_run_record(run)
            status.run_state = run_state(record) if record else None
        except (OSError, ValueError) as exc:
            status.problems.append(f"cannot read run.json: {_short(exc, 200)}")
        status.alerts = open_alerts(run)

    with ThreadPoolExecutor(max_workers=1 + len(campaign.all_sites)) as pool:
        rucio_f = pool.submit(_rucio_rules, campaign)
        butler_f = (
            {s: pool.submit(_butler_health, campaign.butler_repo(s), campaign.db_auth) for s in campaign.all_sites}
            if butler
            else {}
        )

        results, read_problems = read_results(run)
        status.phases = results
        steps, step_problems = read_steps(results)
        if run is not None:  # what the attempts say now wins over a result recorded while they ran
            in_flight = [(site, step) for site, by in steps.items() for step, r in by.items() if r.state.in_flight]
            for site, per_step in latest_attempts(run, also=in_flight).items():
                for step, rec in per_step.items():
                    have = steps.get(site, {}).get(step)
                    if have is None or rec.attempt > have.attempt or (have.state.in_flight and not rec.state.in_flight):
                        steps.setdefault(site, {})[step] = rec
        step_problems = read_problems + step_problems
        status.problems.extend(str(p) for p in step_problems)
        ver = results.get("verify")

        try:
            ops, rules = rucio_f.result()
            status.rucio_ok = True
        except Exception as exc:
            ops, rules = None, []
            status.rucio_ok, status.rucio_error = False, _err(exc)

        for site in campaign.all_sites:
            spec = campaign.site(site)
            central = site == campaign.central
            s = SiteStatus(
                site=site,
                role="central" if central else "remote",
                rse=spec.rse,
                compute_site=spec.compute_site,
                groups_in_flight=campaign.manifest.workflow.groups_in_flight,
                site_steps=[
                    st
                    for stage in campaign.config.stages
                    if (stage.where == "central") == central
                    for st in stage.steps
                ],
            )
            s.placement = _placement(results.get("placement"), site)
            if ops is not None:
                try:
                    placed = "" if central else placement_dataset(campaign, site)
                    s.transfers = _transfers(spec.rse, ops, rules, placed)
                except Exception as exc:
                    s.transfers = Transfers(rse=spec.rse, read=False, error=_err(exc))
            else:
                s.transfers = Transfers(rse=spec.rse, read=False, error=status.rucio_error)
            if ver is not None:
                s.verification = _verification(ver, site)
            s.steps = steps.get(site, {})
            if site in butler_f:
                s.butler = butler_f[site].result()
            # a result that cannot be read may hide a failure: the sites it may concern are in trouble
            s.issues = [Issue("results", p.message, p.cause) for p in step_problems if p.site in (None, site)]
            s.state, s.reason = site_state(s)
            status.sites[site] = s
    status.seconds = round(time.monotonic() - t0, 3)
    return status
