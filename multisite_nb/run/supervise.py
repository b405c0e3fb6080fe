"""A campaign that advances by itself: resume, retry with backoff, repair, and ask a person only when needed.

:func:`supervise` keeps one campaign moving until its verdict. Each round it

1. checks the deployment's services (the manifest's ``supervision.health`` command) and brings
   them back (``supervision.heal``) when one is down — also every ``watch_s`` while a chain runs,
   so that a conveyor daemon or a Rucio server that stopped mid-transfer is restarted;
2. asks the systems whether they can serve the campaign (the preflight's online half); a site
   that does not answer is waited for with backoff, and after ``site_down_alert_s`` a person is
   alerted;
3. runs the chain (a new run, or the campaign's latest run resumed: the lock and the records say
   where it is), and when it stops, :func:`~multisite_nb.domain.supervision.diagnose` says why:
   a transient failure is retried with backoff (``retries`` of one kind in a row, then a person is
   asked), a verification that found a bad replica or a STUCK rule is repaired first, and what
   needs a person raises one alert (:mod:`multisite_nb.adapters.alerts`), sent once.

Nothing is held in memory that the run folder does not hold: ``supervise.json`` (written
atomically) carries the streaks, the time a site went down, the rounds. A supervisor killed at any
moment is started again (by a timer or a service manager) and goes on: the chain's resume stops
what the dead chain left running and takes over its stale lock. A SIGTERM or Ctrl-C stops the
chain as an interruption and ends the supervisor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from multisite_nb.adapters.alerts import open_alerts, raise_alert, resolve_alert
from multisite_nb.adapters.butler.lock import LockedError, OperatorLock
from multisite_nb.adapters.files import atomic_write_text
from multisite_nb.adapters.results import RUN_RECORD, load_result, load_results, load_run_record, run_state
from multisite_nb.adapters.tables import load_plan
from multisite_nb.adapters.workflow.base import child_env, tool_path
from multisite_nb.domain.alerts import Alert, AlertKind
from multisite_nb.domain.config import Campaign, Supervision
from multisite_nb.domain.errors import ConfigError, NotReadyError, Problem
from multisite_nb.domain.naming import plan_path
from multisite_nb.domain.params import repo_root
from multisite_nb.domain.results import PhaseResult, utcnow
from multisite_nb.domain.summaries import FlowSummary
from multisite_nb.domain.supervision import Finding, Remedy, SupervisionRecord, diagnose, diagnose_stop
from multisite_nb.phases import repair as repair_phase
from multisite_nb.phases.readiness import readiness_problems
from multisite_nb.phases.registry import chain_for
from multisite_nb.phases.verify import verify_placement
from multisite_nb.run.chain import ChainOutcome
from multisite_nb.run.launch import launch, recorded_chain

__all__ = ["SUPERVISION_RECORD", "SuperviseOutcome", "latest_run", "supervise"]

#: The supervisor's record in a run folder.
SUPERVISION_RECORD = "supervise.json"


@dataclass(frozen=True)
class SuperviseOutcome:
    """How a supervisor ended: ``verdict`` is ``PASS``, ``FAIL``, ``stopped`` (asked to) or ``waiting``
    (its rounds or hours ran out while a person was asked for something)."""

    verdict: str
    reason: str
    run_dir: Path | None
    rounds: int


def latest_run(runs_root: Path, campaign: str) -> Path | None:
    """The campaign's newest run folder that holds a chain's record (run ids sort by time)."""
    parent = runs_root / campaign
    if not parent.is_dir():
        return None
    runs = sorted(p for p in parent.iterdir() if p.is_dir() and (p / RUN_RECORD).is_file())
    return runs[-1].resolve() if runs else None


def _load_record(run_dir: Path | None, campaign: str) -> SupervisionRecord:
    now = utcnow()
    if run_dir is not None and (run_dir / SUPERVISION_RECORD).is_file():
        try:
            record = SupervisionRecord.model_validate_json((run_dir / SUPERVISION_RECORD).read_text())
            record.pid = os.getpid()
            return record
        except (OSError, ValueError):
            pass  # a record that cannot be read is started again: the run folder's own records lead
    return SupervisionRecord(campaign=campaign, started=now, updated=now, pid=os.getpid())


def _save(run_dir: Path | None, record: SupervisionRecord) -> None:
    if run_dir is not None:
        atomic_write_text(run_dir / SUPERVISION_RECORD, record.model_dump_json(indent=2))


def _command(argv: Sequence[str], timeout: float, log: Callable[[str], object]) -> bool:
    """Run one of the manifest's supervision commands; True when it exited 0."""
    cmd = [tool_path(argv[0]), *argv[1:]]
    try:
        proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log(f"supervise: {argv[0]} did not run: {type(exc).__name__}: {exc}")
        return False
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
        log(f"supervise: {' '.join(argv[:3])} exited {proc.returncode}: {tail[0][:200]}")
    return proc.returncode == 0


def _keep_services(settings: Supervision, log: Callable[[str], object]) -> bool | None:
    """Check the services; heal them when one is down. None: the manifest names no check; else healthy now."""
    if not settings.health:
        return None
    if _command(settings.health, 60, lambda _: None):
        return True
    if not settings.heal:
        return False
    log("supervise: a service is down: bringing it back")
    return _command(settings.heal, 600, log) and _command(settings.health, 60, log)


class _Watchdog(threading.Thread):
    """While a chain runs: check the services every ``watch_s`` and heal what stopped."""

    def __init__(self, settings: Supervision, log: Callable[[str], object]) -> None:
        super().__init__(name="msnb-supervise-watchdog", daemon=True)
        self.settings, self.log = settings, log
        self.stopped = threading.Event()
        self.healed = 0

    def run(self) -> None:
        while not self.stopped.wait(self.settings.watch_s):
            if self.settings.health and not _command(self.settings.health, 60, lambda _: None):
                if _keep_services(self.settings, self.log):
                    self.healed += 1

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)


@contextmanager
def _watching(settings: Supervision, log: Callable[[str], object]) -> Iterator[_Watchdog]:
    dog = _Watchdog(settings, log)
    if settings.health:
        dog.start()
    try:
        yield dog
    finally:
        if dog.is_alive():
            dog.stop()


class _Stop(Exception):
    """SIGTERM (a service manager's stop) while the supervisor waited."""


@contextmanager
def _stoppable() -> Iterator[None]:
    """SIGTERM ends a wait as Ctrl-C does (the chain installs its own handler while it runs)."""

    def stop(signum: int, _frame: object) -> None:
        raise _Stop(signal.Signals(signum).name)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stopped_at(run_dir: Path) -> list[PhaseResult]:
    """The first failed phase's result, then the failed gates it recorded for the phases it stands for."""
    results = load_results(run_dir, strict=False)
    record = load_run_record(run_dir)
    for label in [p.phase for p in record.phases] if record else []:
        res = results.get(label)
        if res is not None and not res.passed:
            gates = res.summary.gates if isinstance(res.summary, FlowSummary) else {}
            return [res, *(results[g] for g, ok in gates.items() if not ok and g in results and g != label)]
    return []


def _alert(
    campaign: Campaign, where: Path, finding: Finding, log: Callable[[str], object], *, kind: AlertKind | None = None
) -> str:
    alert = Alert(
        kind=kind or AlertKind(finding.kind),
        site=finding.site,
        subject=finding.subject or finding.phase,
        cause=finding.cause or finding.kind,
        blocked=finding.blocked or "the campaign",
        action=finding.action or "read the run page; then multisite-nb run --resume RUN_DIR",
        raised=utcnow(),
    )
    entry = raise_alert(where, alert, campaign.manifest.notify, log=log)
    return entry.alert.key


def _down_sites(problems: Sequence[Problem], campaign: Campaign) -> list[str]:
    named = {site for p in problems for site in campaign.all_sites if p.key and f".{site}." in f".{p.key}."}
    return sorted(named) or ["Rucio"]


class _Supervisor:
    """One supervisor's loop (the state it acts on is in ``self.record``, saved after every round)."""

    def __init__(
        self,
        campaign: Campaign,
        runs_root: Path,
        world: Path | None,
        secrets: Sequence[str],
        log: Callable[[str], object],
        flowing: bool,
        sleep: Callable[[float], object],
    ) -> None:
        self.campaign, self.runs_root, self.world = campaign, runs_root, world
        self.secrets, self.log, self.flowing, self.sleep = list(secrets), log, flowing, sleep
        self.settings = campaign.manifest.supervision
        self.run_dir: Path | None = None
        self.record = _load_record(None, campaign.name)
        self.pending_s = 0.0

    @property
    def alert_dir(self) -> Path:
        """Where alerts go: the run folder, or before there is one the campaign's runs folder."""
        return self.run_dir or (self.runs_root / self.campaign.name)

    def note(self, action: str, text: str = "") -> None:
        self.record.note(utcnow(), action, text)
        self.log(f"supervise: {action}" + (f": {text}" if text else ""))
        _save(self.run_dir, self.record)

    def backoff(self, cause: str) -> float:
        n = self.record.streak.get(cause, 0)
        return float(min(self.settings.max_backoff_s, self.settings.backoff_s * 2 ** max(0, n - 1)))

    def wait(self, seconds: float, why: str) -> None:
        """Wait ``seconds`` before the next round (not after the last: a limit reached ends at once)."""
        self.note("waits", f"{seconds:.0f} s: {why}")
        self.pending_s = seconds

    @property
    def alert_dirs(self) -> list[Path]:
        """Every folder this supervisor's alerts may be in: the campaign's runs folder (those raised
        before a run existed) and the run folder."""
        return list(dict.fromkeys([self.runs_root / self.campaign.name, self.alert_dir]))

    def forget_resolved(self) -> None:
        """Stop waiting on what a person marked resolved (``multisite-nb alerts RUN_DIR --resolve KEY``)."""
        waiting = self.record.waiting_for
        still = {e.key for d in self.alert_dirs for e in open_alerts(d)} if waiting else set()
        done = [k for k in self.record.waiting_for if k not in still]
        if done:
            self.record.waiting_for = [k for k in self.record.waiting_for if k in still]
            self.note("resolved", f"a person dealt with {', '.join(done)}"[:400])

    def serve_wait(self) -> None:
        if self.pending_s:
            self.sleep(self.pending_s)
            self.pending_s = 0.0

    def adopt(self, run_dir: Path | None) -> None:
        if run_dir is not None and run_dir != self.run_dir:
            self.run_dir = run_dir
            previous = _load_record(run_dir, self.campaign.name)
            if previous.attempts or previous.rounds:
                self.record = previous
            _save(run_dir, self.record)

    # -- one round -----------------------------------------------------------------------
    def services_ready(self) -> bool:
        """Services up (healing them) and the systems able to serve the campaign; else wait or alert."""
        if _keep_services(self.settings, self.log) is False:
            self.record.streak["services"] = self.record.streak.get("services", 0) + 1
        problems = readiness_problems(self.campaign)
        if not problems:
            if self.record.down_since is not None:
                self.record.faults_ridden_out += 1
                for key in [k for k in self.record.waiting_for if k.startswith(f"{AlertKind.SITE_DOWN}/")]:
                    for folder in self.alert_dirs:
                        resolve_alert(folder, key, note="the site answers again (seen by the supervisor)")
                    self.record.waiting_for.remove(key)
                self.note("recovered", "every system answers again")
            self.record.down_since = None
            self.record.streak.pop("down", None)
            return True
        now = utcnow()
        self.record.down_since = self.record.down_since or now
        self.record.streak["down"] = self.record.streak.get("down", 0) + 1
        down_s = (now - self.record.down_since).total_seconds()
        first = problems[0]
        if down_s >= self.settings.site_down_alert_s:
            for site in _down_sites(problems, self.campaign):
                key = _alert(
                    self.campaign,
                    self.alert_dir,
                    Finding(
                        remedy=Remedy.PERSON,
                        kind="site_down",
                        site=site,
                        subject=site,
                        cause=f"down for {down_s / 60:.0f} min: {first.why}"[:300],
                        blocked=f"every phase that acts at {site}",
                        action=f"bring {site}'s services back (its Butler, its RSE, Rucio); the supervisor goes on",
                    ),
                    self.log,
                )
                if key not in self.record.waiting_for:
                    self.record.waiting_for.append(key)
        self.wait(self.backoff("down"), f"{len(problems)} system problem(s); first: {first.why}"[:300])
        return False

    def run_chain(self) -> tuple[Path, ChainOutcome]:
        resume = self.run_dir
        phases = (recorded_chain(resume) if resume else None) or chain_for(self.campaign, flowing=self.flowing)
        self.record.attempts += 1
        self.note("resumed" if resume else "ran", str(resume or "a new run"))
        with _watching(self.settings, self.log) as dog:
            run_dir, outcome = launch(
                self.campaign,
                phases,
                runs_root=self.runs_root,
                resume_dir=resume,
                world=self.world,
                secrets=self.secrets,
                log=self.log,
            )
        self.adopt(run_dir)
        if dog.healed:
            self.record.faults_ridden_out += dog.healed
            self.note("healed", f"{dog.healed} time(s) while the chain ran")
        return run_dir, outcome

    def act(self, finding: Finding) -> SuperviseOutcome | None:
        """Do what ``finding`` asks; an outcome when the supervisor is done."""
        assert self.run_dir is not None
        if finding.remedy is Remedy.VERDICT:
            _alert(self.campaign, self.alert_dir, finding, self.log)
            self.record.verdict = "FAIL"
            self.note("verdict", f"FAIL: {finding.cause}")
            return SuperviseOutcome("FAIL", finding.cause, self.run_dir, self.record.attempts)
        if finding.remedy is Remedy.PERSON and finding.kind == "group_held":  # was an input lost under it?
            repaired, lost = self.audit([finding.site] if finding.site in self.campaign.remote_sites else None)
            if repaired:
                return None  # the resumed run reruns the held groups on good inputs
            finding = lost or finding
        if finding.remedy is Remedy.PERSON:
            key = _alert(self.campaign, self.alert_dir, finding, self.log)
            if key not in self.record.waiting_for:
                self.record.waiting_for.append(key)
            self.wait(self.settings.person_wait_s, f"a person is asked: {finding.kind} {finding.subject}")
            return None
        streak = self.count(finding.kind)
        if streak > self.settings.retries:
            key = _alert(
                self.campaign,
                self.alert_dir,
                finding.model_copy(
                    update={
                        "kind": "phase_failed",
                        "subject": finding.phase,
                        "cause": f"failed {streak} times in a row: {finding.cause}"[:300],
                        "action": "read the phase's notebook in the run folder; then multisite-nb run --resume RUN_DIR",
                    }
                ),
                self.log,
            )
            if key not in self.record.waiting_for:
                self.record.waiting_for.append(key)
            self.wait(self.settings.person_wait_s, f"{finding.kind}: past {self.settings.retries} retries")
            return None
        if finding.remedy is Remedy.REPAIR:
            self.note("repairing", finding.cause)
            result = self.repair()
            lost = diagnose(result, result.reason, sites=self.campaign.all_sites)
            if lost.remedy is Remedy.PERSON:
                return self.act(lost)
            self.record.faults_ridden_out += 1
            self.note("repaired", result.reason)
            return None
        self.record.faults_ridden_out += 1
        self.wait(self.backoff(finding.kind), f"transient: {finding.kind}: {finding.cause}")
        return None

    def repair(self) -> PhaseResult:
        """Run the repair phase with the services watched: a repair waits on Rucio's daemons, which
        may stop while it waits (a killed conveyor left alone for the repair's whole timeout)."""
        assert self.run_dir is not None
        with _watching(self.settings, self.log) as dog:
            result, _, _ = repair_phase.run(self.campaign, self.run_dir, log=self.log)
        if dog.healed:
            self.record.faults_ridden_out += dog.healed
            self.note("healed", f"{dog.healed} time(s) while the repair ran")
        return result

    def count(self, kind: str) -> int:
        """One more failure of ``kind`` in a row (a failure of another kind ends the other streaks)."""
        streak = self.record.streak.get(kind, 0) + 1
        self.record.streak = {k: n for k, n in self.record.streak.items() if k in ("down", "services")}
        self.record.streak[kind] = streak
        return streak

    def transient(self, kind: str, why: str) -> None:
        """A failure that a wait may mend: count it, back off."""
        self.count(kind)
        self.record.faults_ridden_out += 1
        self.wait(self.backoff(kind), f"transient: {why}")

    def audit(self, sites: Sequence[str] | None = None) -> tuple[bool, Finding | None]:
        """Verify the placement now (Rucio, every Butler, every disk) and repair what it finds.

        Returns whether it repaired something, and what a person must do when the repair could not
        (a file with no good copy; None: everything planned is in place). A run with no plan yet has
        nothing to audit.
        """
        assert self.run_dir is not None
        plan_file = plan_path(self.run_dir)
        if not plan_file.exists():
            return False, None
        reports = verify_placement(self.campaign, load_plan(plan_file), sites=sites, run_dir=self.run_dir)
        bad = [r for r in reports if not r.ok]
        if not bad:
            return False, None
        problems = sum(len(r.problems) for r in bad)
        self.note("audit", f"{problems} problem(s) at {', '.join(r.site for r in bad)}: repairing")
        result = self.repair()
        if not result.passed:
            return False, diagnose(result, result.reason, sites=self.campaign.all_sites)
        self.record.faults_ridden_out += 1
        self.note("repaired", result.reason)
        return True, None

    def after(self, run_dir: Path, outcome: ChainOutcome) -> SuperviseOutcome | None:
        """What follows a chain's end: the final audit and the verdict, or what its stop asks for."""
        if outcome.passed:
            _, lost = self.audit()  # what a disk lost after its verification
            return self.passed(run_dir) if lost is None else self.act(lost)
        finding = diagnose_stop(_stopped_at(run_dir), outcome.reason, sites=self.campaign.all_sites)
        self.note("stopped at", f"{finding.phase or '?'}: {finding.remedy}: {finding.cause}"[:400])
        return self.act(finding)

    def passed(self, run_dir: Path) -> SuperviseOutcome:
        qa = load_result(run_dir, "qa")
        self.record.verdict = "PASS"
        self.record.streak.clear()
        self.record.waiting_for.clear()
        self.note("verdict", f"PASS: {qa.reason if qa else 'every phase passed'}")
        return SuperviseOutcome("PASS", qa.reason if qa else "every phase passed", run_dir, self.record.attempts)


def supervise(
    campaign: Campaign,
    *,
    runs_root: str | os.PathLike[str] | None = None,
    world: Path | None = None,
    secrets: Sequence[str] = (),
    log: Callable[[str], object] = print,
    flowing: bool = True,
    new: bool = False,
    max_rounds: int | None = None,
    max_s: float | None = None,
    sleep: Callable[[float], object] = time.sleep,
) -> SuperviseOutcome:
    """Keep ``campaign`` moving until its verdict (or ``max_rounds`` chain attempts, or ``max_s``).

    Parameters
    ----------
    campaign : Campaign
        The campaign, read against its world; its manifest's ``supervision`` and ``notify`` apply.
    runs_root : path, optional
        Where its run folders are (default ``<checkout>/runs``). The newest run of the campaign is
        resumed unless ``new``; a run that passed is the verdict.
    flowing : bool
        The chain of a new run (a resumed run keeps its own).

    Raises
    ------
    ConfigError
        For a campaign that cannot run as given (bad input is a person's, at once).
    LockedError
        When another live process (another supervisor, an operator) holds the campaign.
    """
    root = Path(runs_root) if runs_root else repo_root() / "runs"
    sup = _Supervisor(campaign, root, world, secrets, log, flowing, sleep)
    start = time.monotonic()
    if not new:
        sup.adopt(latest_run(root, campaign.name))
    if sup.run_dir is not None:
        record = load_run_record(sup.run_dir)
        if record is not None and run_state(record) == "passed":
            return sup.passed(sup.run_dir)
        if sup.record.verdict == "FAIL":  # the verdict is in: a restart does not run it again
            return SuperviseOutcome("FAIL", "the campaign's verdict is FAIL (supervise.json)", sup.run_dir, 0)
        if record is not None and run_state(record) == "running":
            holder = OperatorLock(campaign).holder()
            raise LockedError(f"{sup.run_dir} is running (lock held by {holder}): one supervisor at a time")
    rounds = 0
    with _stoppable():
        try:
            while max_rounds is None or rounds < max_rounds:
                if max_s is not None and time.monotonic() - start > max_s:
                    break
                sup.serve_wait()
                sup.forget_resolved()
                if not sup.services_ready():
                    continue
                rounds += 1
                try:
                    run_dir, outcome = sup.run_chain()
                except NotReadyError as exc:
                    sup.transient("down", f"not ready: {exc}"[:300])
                    continue
                except (LockedError, ConfigError):
                    raise  # another live holder, or bad input: a person's, at once
                except Exception as exc:  # a system that failed under the chain's start: transient
                    sup.transient("raised", f"{type(exc).__name__}: {exc}"[:300])
                    continue
                record = load_run_record(run_dir)
                if not outcome.passed and record is not None and run_state(record) == "interrupted":
                    sup.note("stopped", "the chain was interrupted (SIGTERM or Ctrl-C): the supervisor ends")
                    return SuperviseOutcome("stopped", outcome.reason, run_dir, sup.record.attempts)
                try:
                    done = sup.after(run_dir, outcome)
                except (LockedError, ConfigError):
                    raise
                except Exception as exc:  # a repair or an audit that a system failed under: transient
                    sup.transient("raised", f"{type(exc).__name__}: {exc}"[:300])
                    continue
                if done is not None:
                    return done
        except (_Stop, KeyboardInterrupt) as exc:
            sup.note("stopped", f"asked to stop ({exc})")
            return SuperviseOutcome("stopped", f"asked to stop ({exc})", sup.run_dir, sup.record.attempts)
    why = "; ".join(sup.record.waiting_for) or "rounds or time ran out"
    return SuperviseOutcome("waiting", why, sup.run_dir, sup.record.attempts)
