"""Where each site of a campaign stands, read from the real systems on every call.

:func:`collect` answers one question per site (the central site and every remote site):
*is it fine, busy, in trouble, or has nothing happened yet?*  It reads, each time it is
called and without any cache:

* **placement** — ``<run_dir>/results/placement.json``: ``summary["sites"][SITE]`` with
  ``files``, ``bytes``, ``visits`` (what the plan sends there);
* **transfers** — Rucio, live: every replication rule of the campaign scope whose RSE
  expression names the site's RSE (``list_replication_rules``), counted by state
  (OK / REPLICATING / STUCK), with their locks, and Rucio's reason for STUCK rules; rules
  past their lifetime (deleted, or expired: Rucio's cleaner removes them soon) are left out;
* **verification** — ``<run_dir>/results/verify.json``: ``summary["sites"][SITE]`` (``ok``,
  ``planned`` and problem counts ``missing``/``corrupt``/``wrong``/``rule``); the first
  problem of the site comes from the ``artifacts/verify/problems.csv`` table when present;
* **steps** — any phase result whose summary has a ``steps`` mapping (the contract below;
  the submission phase writes it, ``results/submit*.json``);
* **Butler** — the site's repository answers, and how many datasets its RUN collections hold.

Steps-summary contract
----------------------
A phase result (``results/<phase>.json``, :class:`multisite_nb.results.PhaseResult`) that
knows about pipeline steps puts this in its ``summary``::

    "steps": {
      "<SITE>": {                               # site name as in the campaign
        "<step>": {                             # pipeline subset label, e.g. "step1"
          "state": "not_started" | "pending" | "running" | "succeeded" | "failed" | "stopped",
          "succeeded": 12,                      # quanta (jobs) finished OK
          "failed": 1,                          # quanta failed for good (after retries)
          "pending": 3,                         # submitted, waiting to run
          "running": 2,                         # running now
          "total": 18,                          # optional: quanta in the step's graph
          "failures": [                         # the first few failed quanta
            {"task": "isr", "data_id": {"exposure": 903334, "detector": 42},
             "cause": "ValueError: ..."}
          ],
          "updated": "2026-01-01T12:00:00Z"     # optional, ISO 8601 UTC
        }
      }
    }

``pending`` and ``running`` mean *in flight* (the workflow system will still run them);
``stopped`` is a step that ended with quanta neither run nor failed (killed, cancelled, or
``partial`` as :mod:`multisite_nb.submit` says) — nothing will run them without an operator.

It is read tolerantly: every key is optional (counts default to 0; ``state`` is derived
from the counts when absent: failed > 0 → ``failed``, running > 0 → ``running``,
pending > 0 → ``pending``, succeeded > 0 → ``succeeded``, else ``not_started``); common
synonyms are accepted (``done``/``ok``/``success`` → succeeded, ``queued``/``submitted``/
``waiting`` → pending, ``error`` → failed, ``partial``/``killed``/``cancelled`` → stopped,
...); ``data_id`` may be a string or a mapping; a
failure may be a plain string (taken as the cause); unknown keys are ignored.  When several
results describe the same site and step, the one that finished last wins.

State rules (per site)
----------------------
* ``trouble`` — a rule to the site is STUCK or SUSPENDED; the site's verification failed;
  a step has failed quanta or stopped with quanta not run; the site's Butler or Rucio cannot be read; a result file
  cannot be read (every site: it may hide a failure) or the site's steps entry is not a
  mapping.
* ``busy`` — nothing is wrong, and a rule is replicating (or waiting) or quanta are
  pending or running.
* ``ok`` — nothing is wrong, nothing is in flight, and something was done: a rule is OK,
  the verification passed, or a step has succeeded quanta.
* ``idle`` — none of the above yet (e.g. the central site before anything is gathered).

Reading a system never raises: a failure becomes a ``trouble`` issue with its message.
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from .config import Campaign
from .records import RuleRecord, RuleState

__all__ = [
    "STATES",
    "STEP_STATES",
    "ButlerHealth",
    "CampaignStatus",
    "Issue",
    "Placement",
    "SiteStatus",
    "StepFailure",
    "StepStatus",
    "Transfers",
    "Verification",
    "collect",
    "normalise_step",
    "read_steps",
    "site_state",
]

State = Literal["ok", "busy", "trouble", "idle"]
#: Site states, most to least urgent.
STATES: tuple[str, ...] = ("trouble", "busy", "ok", "idle")
#: Step states after normalisation.
STEP_STATES: tuple[str, ...] = ("failed", "stopped", "running", "pending", "succeeded", "not_started", "unknown")

_STEP_SYNONYMS = {
    "succeeded": "succeeded", "success": "succeeded", "successful": "succeeded", "done": "succeeded",
    "ok": "succeeded", "finished": "succeeded", "complete": "succeeded", "completed": "succeeded",
    "failed": "failed", "failure": "failed", "error": "failed", "errored": "failed", "broken": "failed",
    "running": "running", "active": "running", "started": "running", "in_progress": "running",
    "pending": "pending", "queued": "pending", "submitted": "pending", "waiting": "pending",
    "ready": "pending", "scheduled": "pending", "held": "pending",
    "stopped": "stopped", "partial": "stopped", "incomplete": "stopped", "killed": "stopped",
    "cancelled": "stopped", "canceled": "stopped", "aborted": "stopped", "timeout": "stopped",
    "not_started": "not_started", "new": "not_started", "planned": "not_started", "none": "not_started",
    "not started": "not_started", "unsubmitted": "not_started",
}
_MAX_TEXT = 400


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _short(text: Any, limit: int = _MAX_TEXT) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _err(exc: BaseException) -> str:
    return _short(f"{type(exc).__name__}: {exc}")


def _int(value: Any) -> int:
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


# -- the model ----------------------------------------------------------------------------


@dataclass
class Issue:
    """Something wrong at a site: where it was seen, what, and why."""

    source: str  # rucio | butler | verify | steps | results
    message: str
    cause: str | None = None


@dataclass
class Placement:
    """What the placement plan sends to the site."""

    files: int
    bytes: int
    visits: int | None = None


@dataclass
class Transfers:
    """Rules of the campaign scope that target the site's RSE (read live from Rucio)."""

    rse: str
    read: bool = False
    ok: int = 0
    replicating: int = 0
    stuck: int = 0
    other: int = 0
    expired: int = 0  # rules past their lifetime, waiting for Rucio's cleaner: not counted above
    locks_ok: int = 0
    locks_replicating: int = 0
    locks_stuck: int = 0
    stuck_reason: str | None = None
    error: str | None = None
    rules: list[RuleRecord] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.ok + self.replicating + self.stuck + self.other


@dataclass
class Verification:
    """The site's line of ``results/verify.json``."""

    ran: bool = False
    ok: bool | None = None
    planned: int | None = None
    problems: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    first_problem: str | None = None
    finished: str | None = None


@dataclass
class StepFailure:
    """One failed quantum: which task, which data ID, why."""

    task: str
    data_id: str
    cause: str


@dataclass
class StepStatus:
    """One pipeline step at one site (see the steps-summary contract)."""

    step: str
    state: str = "not_started"
    succeeded: int = 0
    failed: int = 0
    pending: int = 0
    running: int = 0
    failures: list[StepFailure] = field(default_factory=list)
    updated: str | None = None
    source: str | None = None  # the phase result it came from
    expected: int = 0  # ``total`` as the result gave it (quanta in the graph), if it did

    @property
    def total(self) -> int:
        return max(self.succeeded + self.failed + self.pending + self.running, self.expected)


@dataclass
class ButlerHealth:
    """Whether the site's Butler answers, and how much it holds."""

    ok: bool | None = None
    datasets: int | None = None
    collections: int | None = None
    error: str | None = None
    seconds: float | None = None


@dataclass
class SiteStatus:
    """Everything the dashboard shows for one site."""

    site: str
    role: str  # central | remote
    rse: str
    compute_site: str
    state: str = "idle"
    reason: str = ""
    placement: Placement | None = None
    transfers: Transfers | None = None
    verification: Verification = field(default_factory=Verification)
    steps: dict[str, StepStatus] = field(default_factory=dict)
    site_steps: list[str] = field(default_factory=list)  # the steps that run at this site
    butler: ButlerHealth = field(default_factory=ButlerHealth)
    issues: list[Issue] = field(default_factory=list)

    @property
    def last_error(self) -> str | None:
        """The most pressing error now (Rucio/Butler unreachable, STUCK, failed quanta, verification)."""
        return self.issues[0].message if self.issues else None

    @property
    def last_error_cause(self) -> str | None:
        return self.issues[0].cause if self.issues else None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["last_error"] = self.last_error
        d["last_error_cause"] = self.last_error_cause
        return d


@dataclass
class CampaignStatus:
    """One reading of every site of a campaign (JSON-able via :meth:`to_dict`)."""

    campaign: str
    central: str
    run_dir: str | None
    collected_at: str
    seconds: float = 0.0
    sites: dict[str, SiteStatus] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)  # every step label, in stage order
    phases: dict[str, dict[str, Any]] = field(default_factory=dict)  # phase -> passed/reason/finished
    rucio_ok: bool | None = None
    rucio_error: str | None = None
    problems: list[str] = field(default_factory=list)  # campaign-level read problems

    def states(self) -> dict[str, str]:
        """Site → state."""
        return {s: st.state for s, st in self.sites.items()}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sites"] = {s: st.to_dict() for s, st in self.sites.items()}
        return d

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), default=str, **kwargs)


# -- reading the run folder ---------------------------------------------------------------


def _read_results(run_dir: Path | None) -> tuple[dict[str, Any], list[str]]:
    """Phase name → PhaseResult for every readable result; and the read problems."""
    from .results import PHASE_NAME, PhaseResult, results_dir

    out: dict[str, Any] = {}
    problems: list[str] = []
    if run_dir is None:
        return out, problems
    folder = results_dir(run_dir)
    if not folder.is_dir():
        return out, problems
    for path in sorted(folder.glob("*.json")):
        if not PHASE_NAME.match(path.stem):
            continue
        try:
            out[path.stem] = PhaseResult.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"cannot read results/{path.name}: {_short(exc, 200)}")
    return out, problems


def normalise_step(step: str, entry: Any, source: str | None = None) -> StepStatus:
    """Read one ``steps[SITE][step]`` entry of the contract, tolerantly."""
    if isinstance(entry, str):  # just a state
        entry = {"state": entry}
    if not isinstance(entry, Mapping):
        return StepStatus(step=step, state="unknown", source=source)
    counts = {k: _int(entry.get(k)) for k in ("succeeded", "failed", "pending", "running")}
    # a few common synonyms for the counts
    counts["succeeded"] = counts["succeeded"] or _int(entry.get("done")) or _int(entry.get("ok"))
    counts["pending"] = counts["pending"] or _int(entry.get("queued")) or _int(entry.get("waiting"))
    failures: list[StepFailure] = []
    raw_failures = entry.get("failures") or []
    if isinstance(raw_failures, (str, Mapping)):
        raw_failures = [raw_failures]
    for f in list(raw_failures)[:20] if isinstance(raw_failures, Iterable) else []:
        if isinstance(f, Mapping):
            did = f.get("data_id", f.get("dataId", ""))
            if isinstance(did, Mapping):
                did = ", ".join(f"{k}={v}" for k, v in did.items())
            failures.append(StepFailure(task=_short(f.get("task") or f.get("label") or "?", 80),
                                        data_id=_short(did, 160), cause=_short(f.get("cause", f.get("error", "")))))
        else:
            failures.append(StepFailure(task="?", data_id="", cause=_short(f)))
    raw_state = str(entry.get("state") or "").strip().lower().replace("-", "_")
    state = _STEP_SYNONYMS.get(raw_state) if raw_state else None
    if state is None:
        if counts["failed"]:
            state = "failed"
        elif counts["running"]:
            state = "running"
        elif counts["pending"]:
            state = "pending"
        elif counts["succeeded"]:
            state = "succeeded"
        else:
            state = "unknown" if raw_state else "not_started"
    if counts["failed"] and state != "failed":
        state = "failed"  # failed quanta are failed, whatever the summary says
    updated = entry.get("updated")
    return StepStatus(step=step, state=state, failures=failures, updated=str(updated) if updated else None,
                      source=source, expected=_int(entry.get("total")), **counts)


def read_steps(
    results: Mapping[str, Any],
) -> tuple[dict[str, dict[str, StepStatus]], list[tuple[str | None, str]]]:
    """Site → step → :class:`StepStatus` from every result carrying ``summary["steps"]``.

    Results are applied in the order they finished, so the latest wins per site and step.
    Returns the steps and the entries that could not be read, as (site or None for all
    sites, message).
    """
    out: dict[str, dict[str, StepStatus]] = {}
    problems: list[tuple[str | None, str]] = []
    ordered = sorted(results.items(), key=lambda kv: (kv[1].finished, kv[0]))
    for phase, res in ordered:
        steps = res.summary.get("steps") if isinstance(res.summary, Mapping) else None
        if steps is None:
            continue
        if not isinstance(steps, Mapping):
            problems.append((None, f"results/{phase}.json: summary.steps is not a mapping"))
            continue
        for site, per_step in steps.items():
            if not isinstance(per_step, Mapping):
                problems.append((str(site), f"results/{phase}.json: summary.steps.{site} is not a mapping"))
                continue
            for step, entry in per_step.items():
                out.setdefault(str(site), {})[str(step)] = normalise_step(str(step), entry, phase)
    return out, problems


def _first_problems(run_dir: Path) -> dict[str, str]:
    """Site → its first verification problem, from ``artifacts/verify/problems.csv``."""
    path = run_dir / "artifacts" / "verify" / "problems.csv"
    out: dict[str, str] = {}
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                site = row.get("site") or ""
                if site and site not in out:
                    out[site] = _short(" ".join(
                        x for x in (row.get("layer"), row.get("problem"), row.get("file"),
                                    f"({row['detail']})" if row.get("detail") else "") if x), 300)
    except (OSError, csv.Error):
        pass
    return out


# -- reading the live systems ------------------------------------------------------------


def _targets(expression: str, rse: str) -> bool:
    """Whether a rule's RSE expression names ``rse`` (exactly, or as one term of it)."""
    return expression == rse or rse in re.split(r"[|&\\()\s]+", expression)


def _rucio_rules(campaign: Campaign) -> tuple[Any, list[RuleRecord]]:
    """The campaign's Rucio (its client's error logging silenced) and every rule of its scope."""
    from .rucio_ops import RucioOps

    ops = RucioOps.for_campaign(campaign, quiet=True)
    return ops, ops.list_rules()


def _transfers(campaign: Campaign, site: str, ops: Any, rules: list[RuleRecord]) -> Transfers:
    rse = campaign.site(site).rse
    t = Transfers(rse=rse, read=True)
    explained = 0
    now = datetime.now(UTC)
    for r in rules:
        if not _targets(r.rse_expression, rse):
            continue
        if r.expired(now):
            t.expired += 1
            continue
        if r.state.bad and not r.error and explained < 3:
            explained += 1
            r = r.model_copy(update={"error": _short(ops.stuck_reason(r.id))})
        t.rules.append(r)
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


def _butler_health(repo: str) -> ButlerHealth:
    """Open the repository read-only; count the datasets in its RUN collections."""
    from lsst.daf.butler import CollectionType

    from .butler_ops import open_butler

    t0 = time.monotonic()
    try:
        with open_butler(repo) as butler:
            infos = list(butler.collections.query_info("*"))
            runs = [i.name for i in infos if i.type == CollectionType.RUN]
            total = 0
            if runs:
                with butler.query() as q:
                    for dt in butler.registry.queryDatasetTypes():
                        total += q.datasets(dt, collections=runs, find_first=False).count(exact=True)
        return ButlerHealth(ok=True, datasets=total, collections=len(infos), seconds=time.monotonic() - t0)
    except Exception as exc:  # a status report never raises
        return ButlerHealth(ok=False, error=_err(exc), seconds=time.monotonic() - t0)


# -- judging ----------------------------------------------------------------------------


def site_state(s: SiteStatus) -> tuple[str, str]:
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
        bad = [r for r in t.rules if r.state.bad]
        first = bad[0] if bad else None
        what = f"{t.stuck} rule{'s' if t.stuck > 1 else ''} {first.state if first else 'STUCK'} to {t.rse}"
        if first:
            what += f" ({first.name}, {first.locks_stuck} file{'s' if first.locks_stuck != 1 else ''} stuck)"
        issues.append(Issue("rucio", what, t.stuck_reason))
    failed_steps = [st for st in s.steps.values() if st.state == "failed" or st.failed]
    for st in failed_steps:
        f = st.failures[0] if st.failures else None
        cause = f"{f.task} {f.data_id}: {f.cause}".strip() if f else None
        issues.append(Issue("steps", f"{st.step}: {st.failed} failed quant{'a' if st.failed != 1 else 'um'}"
                            if st.failed else f"{st.step} failed", cause))
    for st in s.steps.values():
        if st.state == "stopped" and not st.failed:
            left = st.pending + st.running
            f = st.failures[0] if st.failures else None
            issues.append(Issue("steps", f"{st.step} stopped with {left} quant{'a' if left != 1 else 'um'} not run",
                                f"{f.task} {f.data_id}: {f.cause}".strip() if f else None))
    v = s.verification
    if v.ran and v.ok is False:
        kinds = ", ".join(f"{n} {k}" for k, n in v.counts.items() if n) or "problems"
        issues.append(Issue("verify", f"verification failed: {kinds}", v.first_problem))
    s.issues = issues + [i for i in s.issues if i not in issues]  # keep read problems added earlier
    if s.issues:
        return "trouble", s.issues[0].message
    busy = []
    if t is not None and t.replicating:
        busy.append(f"{t.replicating} rule{'s' if t.replicating > 1 else ''} replicating "
                    f"({t.locks_ok}/{t.locks_ok + t.locks_replicating} files)")
    flying = [st for st in s.steps.values() if st.state in ("running", "pending")]
    running = sum(st.running for st in flying)
    pending = sum(st.pending for st in flying)
    in_flight = [st.step for st in flying]
    if running or pending or in_flight:
        busy.append(f"{', '.join(in_flight) or 'steps'}: {running} running, {pending} pending")
    if busy:
        return "busy", "; ".join(busy)
    done = []
    if t is not None and t.ok:
        done.append(f"{t.ok} rule{'s' if t.ok > 1 else ''} OK")
    if v.ran and v.ok:
        done.append("verified")
    succeeded = [st.step for st in s.steps.values() if st.state == "succeeded" or st.succeeded]
    if succeeded:
        done.append(f"{len(succeeded)} step{'s' if len(succeeded) > 1 else ''} done")
    if done:
        return "ok", ", ".join(done)
    return "idle", "nothing yet"


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
    status = CampaignStatus(campaign=campaign.name, central=campaign.central,
                            run_dir=str(run) if run else None, collected_at=_now())
    status.steps = [st for stage in campaign.config.stages for st in stage.steps]

    with ThreadPoolExecutor(max_workers=1 + len(campaign.all_sites)) as pool:
        rucio_f = pool.submit(_rucio_rules, campaign)
        butler_f = {s: pool.submit(_butler_health, campaign.butler_repo(s)) for s in campaign.all_sites} if butler \
            else {}

        results, problems = _read_results(run)
        status.problems.extend(problems)
        status.phases = {
            name: {"passed": r.passed, "reason": r.reason,
                   "finished": r.finished.isoformat(timespec="seconds").replace("+00:00", "Z")}
            for name, r in results.items()
        }
        steps, step_problems = read_steps(results)
        status.problems.extend(msg for _, msg in step_problems)
        place = results.get("placement")
        place_sites = place.summary.get("sites") if place and isinstance(place.summary.get("sites"), Mapping) else {}
        ver = results.get("verify")
        ver_sites = ver.summary.get("sites") if ver and isinstance(ver.summary.get("sites"), Mapping) else {}
        first_problem = _first_problems(run) if run and ver and not ver.passed else {}

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
                site=site, role="central" if central else "remote", rse=spec.rse, compute_site=spec.compute_site,
                site_steps=[st for stage in campaign.config.stages
                            if (stage.where == "central") == central for st in stage.steps],
            )
            p = place_sites.get(site) if isinstance(place_sites, Mapping) else None
            if isinstance(p, Mapping):
                s.placement = Placement(files=_int(p.get("files")), bytes=_int(p.get("bytes")),
                                        visits=_int(p["visits"]) if p.get("visits") is not None else None)
            if status.rucio_ok:
                try:
                    s.transfers = _transfers(campaign, site, ops, rules)
                except Exception as exc:
                    s.transfers = Transfers(rse=spec.rse, read=False, error=_err(exc))
            else:
                s.transfers = Transfers(rse=spec.rse, read=False, error=status.rucio_error)
            v = ver_sites.get(site) if isinstance(ver_sites, Mapping) else None
            if isinstance(v, Mapping):
                counts = {k: _int(v.get(k)) for k in ("missing", "corrupt", "wrong", "rule")}
                ok = v.get("ok")
                ok = bool(ok) if ok is not None else not any(counts.values())
                s.verification = Verification(
                    ran=True, ok=ok, planned=_int(v["planned"]) if v.get("planned") is not None else None,
                    problems=sum(counts.values()), counts=counts, first_problem=first_problem.get(site),
                    finished=status.phases["verify"]["finished"],
                )
            s.steps = steps.get(site, {})
            if site in butler_f:
                s.butler = butler_f[site].result()
            # a result that cannot be read may hide a failure: the sites it may concern are in trouble
            s.issues = [Issue("results", msg) for msg in problems] + [
                Issue("results", msg) for where, msg in step_problems if where in (None, site)]
            s.state, s.reason = site_state(s)
            status.sites[site] = s
    status.seconds = round(time.monotonic() - t0, 3)
    return status
