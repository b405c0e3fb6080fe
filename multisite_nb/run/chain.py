"""Run folders and the papermill chain.

A *run* is one folder, ``runs/<campaign>/<run id>/``, holding everything a
chain of phases left behind::

    run.json                 who / when / parameters (redacted) / outcome
    NN_<phase>.ipynb         executed notebooks (the run log)
    results/<phase>.json     each phase's gate (multisite_nb.domain.results)
    artifacts/<phase>/...    long tables and other files the phases saved
    logs/chain.log           the runner's compact progress lines
    html/NN_<phase>.html     rendered notebooks, linked from index.html
    index.html               the page to review (multisite_nb.views.report)

:func:`run_chain` executes ``notebooks/NN_<phase>.ipynb`` one after the other
with papermill, passing ``run_dir`` and the given parameters, and stops at the
first phase whose gate failed, that raised, or that recorded no result.  At the
end the whole run folder is scanned for secrets; a finding fails the run.

What a phase notebook must do to take part:

* be registered in :mod:`multisite_nb.phases.registry` (its notebook ``NN_<phase>.ipynb``);
* have a code cell tagged ``parameters`` declaring ``run_dir = ""`` and every
  other parameter it uses (only declared parameters are injected; never a
  credential);
* end with ``record_result(run_dir, PhaseResult(phase=..., passed=...,
  reason=..., started=..., summary={...}, artifacts=[...]))`` from
  :mod:`multisite_nb.domain.results` — no result counts as a failed gate;
* put long tables in ``save_table(run_dir, phase, name, df)`` and show
  ``summarize(df)``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import signal
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multisite_nb.adapters.processes import proc_start_time
from multisite_nb.adapters.results import (
    check_run_folder,
    load_result,
    load_results,
    load_run_record,
    record_result,
    results_dir,
    run_state,
    write_run_record,
)
from multisite_nb.domain.errors import ConfigError, StorageError
from multisite_nb.domain.params import repo_root
from multisite_nb.domain.redaction import redact_parameters
from multisite_nb.domain.results import (
    HEARTBEAT_EVERY_S,
    PhaseResult,
    PhaseRun,
    PhaseStatus,
    RunOutcome,
    RunRecord,
    utcnow,
)
from multisite_nb.domain.summaries import PhaseSummary
from multisite_nb.phases.registry import PhaseUse, get, parse
from multisite_nb.phases.submit.runner import close_dead_attempts
from multisite_nb.run.folder import stop_orphans
from multisite_nb.run.secrets import Finding, contains_secret, known_secrets_from_rucio_config, scan_for_secrets
from multisite_nb.views.report import render_index

__all__ = ["ChainOutcome", "find_notebook", "run_chain"]

_MAX_REASON = 600


def find_notebook(notebooks_dir: str | os.PathLike[str], phase: str) -> Path:
    """The registered phase's notebook ``<notebooks_dir>/NN_<phase>.ipynb``.

    Raises
    ------
    ConfigError
        If the phase is not registered; FileNotFoundError if its notebook is missing.
    """
    path = Path(notebooks_dir) / f"{get(phase).notebook}.ipynb"
    if not path.is_file():
        raise FileNotFoundError(f"no notebook {path.name} in {notebooks_dir}")
    return path


@dataclass
class ChainOutcome:
    """What :func:`run_chain` returns.

    Attributes
    ----------
    passed : bool
        Every requested phase passed and no secret was found.
    reason : str
        One line: why the chain stopped, or that all passed.
    run_dir : Path
        The run folder.
    phases : list of PhaseRun
        Per requested phase, in order, including those not run.
    results : dict
        Phase name → PhaseResult, for the phases that have one.
    findings : list of Finding
        Secret-scan findings (empty when clean).
    index : Path or None
        The rendered ``index.html``.
    """

    passed: bool
    reason: str
    run_dir: Path
    phases: list[PhaseRun]
    results: dict[str, PhaseResult] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    index: Path | None = None

    @property
    def stopped_at(self) -> str | None:
        """The first phase that did not pass, if any."""
        return next((p.phase for p in self.phases if p.status != "pass"), None)


def _short(text: str, max_lines: int = 4, max_chars: int = _MAX_REASON) -> str:
    """First lines of ``text``, ANSI colours stripped, capped in length."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text or "").strip()
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()][:max_lines]
    out = " | ".join(lines)
    return out if len(out) <= max_chars else out[: max_chars - 1] + "…"


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return os.environ.get("USER") or f"uid {os.getuid()}"


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    def conv(v: Any) -> Any:
        if isinstance(v, os.PathLike):
            return os.fspath(v)
        if isinstance(v, Mapping):
            return {str(k): conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return {str(k): conv(v) for k, v in params.items()}


def _kernel_config() -> Any:
    """Traitlets config for the phase kernels: CurveZMQ transport encryption when available.

    Kernels see credentials (the Rucio client reads them), so their local TCP
    traffic is encrypted when jupyter_client and libzmq support it.
    """
    from traitlets.config import Config

    cfg = Config()
    try:
        import zmq
        from jupyter_client.manager import KernelManager

        if zmq.has("curve") and KernelManager.class_traits().get("transport_encryption") is not None:
            cfg.KernelManager.transport_encryption = "auto"
    except Exception:  # pragma: no cover - older jupyter_client: plain defaults
        pass
    return cfg


def _declared_parameters(notebook: Path) -> set[str] | None:
    """Names in the notebook's ``parameters`` cell; ``None`` if it has none."""
    import papermill

    declared = papermill.inspect_notebook(str(notebook))
    return set(declared) if declared else None


def _supersede(run_dir: Path, phase: str, notebook: str | None = None) -> None:
    """Move an earlier attempt of ``phase`` to ``superseded/`` so it cannot pass for a new one.

    The result (and, if ``notebook`` is given, the executed notebook) are
    moved, not deleted; the notebook's rendered HTML, derived, is removed.
    """
    stamp = f"{utcnow():%Y%m%dT%H%M%S%fZ}"
    dest = run_dir / "superseded"
    moves = [(results_dir(run_dir) / f"{phase}.json", dest / f"{phase}.{stamp}.json")]
    if notebook:
        stem = Path(notebook).stem
        moves.append((run_dir / notebook, dest / f"{stem}.{stamp}.ipynb"))
        (run_dir / "html" / f"{stem}.html").unlink(missing_ok=True)
    for src, dst in moves:
        if src.exists():
            dest.mkdir(exist_ok=True)
            os.replace(src, dst)


def _render_index(run_dir: Path) -> Path:
    return render_index(run_dir)


class _Chain:
    """One execution of a chain of phases in one run folder (the state :func:`run_chain` keeps)."""

    def __init__(
        self,
        uses: list[PhaseUse],
        run_dir: Path,
        notebooks_dir: Path,
        params: dict[str, Any],
        known: list[str],
        log: Callable[[str], object],
        scan_patterns: bool,
    ):
        self.uses, self.run_dir, self.params, self.known = uses, run_dir, params, known
        self.log, self.scan_patterns = log, scan_patterns
        self.notebooks = {u.label: find_notebook(notebooks_dir, u.phase.name) for u in uses}
        self.declared = {u.label: _declared_parameters(nb) for u in uses for nb in [self.notebooks[u.label]]}
        self.chain_log = run_dir / "logs" / "chain.log"
        self.record: RunRecord | None = None
        self._save_lock = threading.Lock()  # the heartbeat thread saves too
        self._beating = threading.Event()

    def out_name(self, use: PhaseUse) -> str:
        number = self.notebooks[use.label].stem.split("_", 1)[0]
        return f"{number}_{use.label}.ipynb"

    def say(self, line: str) -> None:
        self.chain_log.parent.mkdir(parents=True, exist_ok=True)
        with self.chain_log.open("a", encoding="utf-8") as fh:
            fh.write(f"{utcnow():%Y-%m-%dT%H:%M:%SZ} {line}\n")
        self.log(line)

    def save(self) -> None:
        assert self.record is not None
        with self._save_lock:
            self.record.heartbeat = utcnow()
            write_run_record(self.run_dir, self.record)

    def heartbeat(self) -> threading.Thread:
        """Keep ``run.json``'s heartbeat fresh until :meth:`stop_heartbeat` (a dead chain's goes stale)."""

        def beat() -> None:
            while not self._beating.wait(HEARTBEAT_EVERY_S):
                self.save()

        thread = threading.Thread(target=beat, name="msnb-chain-heartbeat", daemon=True)
        thread.start()
        return thread

    def stop_heartbeat(self) -> None:
        self._beating.set()

    def start(self, campaign: str | None, resume: bool) -> RunRecord:
        """Write ``run.json`` for this execution and warn about parameters nobody declares."""
        now = utcnow()
        previous = load_run_record(self.run_dir) if resume else None
        names = [u.label for u in self.uses]
        self.record = RunRecord(
            campaign=campaign or (previous.campaign if previous else self.run_dir.parent.name),
            run_id=self.run_dir.name,
            who=_who(),
            host=socket.gethostname(),
            started=previous.started if previous else now,
            resumed_at=[*previous.resumed_at, now] if previous else [],
            phases_requested=names,
            parameters=redact_parameters(self.params),  # type: ignore[arg-type]
            phases=[PhaseRun(phase=n) for n in names],
            pid=os.getpid(),
            pid_start=proc_start_time(os.getpid()),
        )
        self.save()
        self.say(
            f"run {self.run_dir.name} ({self.record.campaign}): {' → '.join(names)}" + (" [resume]" if resume else "")
        )
        for label, declared in self.declared.items():
            if declared is None:
                self.say(f"warning: {self.notebooks[label].name} has no cell tagged 'parameters'; it gets run_dir only")
            elif "run_dir" not in declared:
                self.say(f"warning: {self.notebooks[label].name} does not declare run_dir in its parameters cell")
        used = set().union(*(d or set() for d in self.declared.values()))
        unused = sorted(set(self.params) - used)
        if unused:
            self.say(f"warning: parameter(s) not declared by any of these phases: {', '.join(unused)}")
        return self.record

    def execute(
        self,
        use: PhaseUse,
        entry: PhaseRun,
        kernel_name: str | None,
        workdir: Path,
        start_timeout: int,
        execution_timeout: int | None,
    ) -> PhaseResult:
        """Run one phase's notebook; its recorded result, or a failure the runner records for it."""
        import papermill
        from papermill.exceptions import PapermillExecutionError

        out_nb = self.run_dir / self.out_name(use)
        failure: PhaseResult | None = None
        try:
            papermill.execute_notebook(
                str(self.notebooks[use.label]),
                str(out_nb),
                parameters={
                    **{k: v for k, v in self.params.items() if k in (self.declared[use.label] or ())},
                    **({"stage": use.stage} if use.stage else {}),
                    "run_dir": str(self.run_dir),
                },
                kernel_name=kernel_name,
                progress_bar=False,
                log_output=False,
                cwd=str(workdir),
                start_timeout=start_timeout,
                execution_timeout=execution_timeout,
                config=_kernel_config(),
            )
        except PapermillExecutionError as exc:
            failure = self._failed(
                use,
                entry,
                _short(f"{exc.ename}: {exc.evalue}") + f" (at In [{exc.exec_count}])",
                {"error": exc.ename, "cell_index": exc.cell_index},
            )
        except Exception as exc:  # kernel died, timed out, failed to start ...
            failure = self._failed(use, entry, _short(f"{type(exc).__name__}: {exc}"), {"error": type(exc).__name__})
        entry.finished = utcnow()
        entry.notebook = out_nb.name if out_nb.exists() else None
        if failure is None:
            try:
                result = load_result(self.run_dir, use.label)
                reason = f"the notebook finished without recording results/{use.label}.json"
            except ValueError as exc:  # pydantic.ValidationError is a ValueError
                result, reason = None, _short(f"results/{use.label}.json is invalid: {exc}")
            if result is not None:
                return result
            failure = self._failed(use, entry, reason, {})
            _supersede(self.run_dir, use.label)
        record_result(self.run_dir, failure)
        return failure

    @staticmethod
    def _failed(use: PhaseUse, entry: PhaseRun, reason: str, summary: dict[str, Any]) -> PhaseResult:
        return PhaseResult(
            phase=use.label,
            passed=False,
            reason=reason,
            started=entry.started or utcnow(),
            summary=PhaseSummary(**summary, recorded_by="chain"),
        )

    def scan(self) -> tuple[list[Finding], Path]:
        """Scan the run folder for credentials before rendering, then the rendered pages; fail on a finding."""
        assert self.record is not None
        record = self.record
        base_reason = record.reason

        def note(found: list[Finding]) -> None:
            rel = [f"{Path(f.path).relative_to(self.run_dir).as_posix()}:{f.line}: {f.kind}" for f in found]
            for line in rel[len(record.secret_findings) :][:20]:
                self.say(f"secret scan: {line}")
            files = sorted({Path(f.path).relative_to(self.run_dir).as_posix() for f in found})
            record.secret_findings = rel
            if record.outcome != RunOutcome.INTERRUPTED:
                record.outcome = RunOutcome.FAILED
            record.reason = f"possible credential leak in {', '.join(files)}; {base_reason}"
            self.save()

        # scan what the phases wrote before rendering, so that a leak is not copied into the HTML
        findings = scan_for_secrets([self.run_dir], self.known, patterns=self.scan_patterns)
        if findings:
            note(findings)
        index = _render_index(self.run_dir)  # withholds the HTML of flagged notebooks
        late = [
            f
            for f in scan_for_secrets([index, self.run_dir / "html"], self.known, patterns=self.scan_patterns)
            if f not in findings
        ]
        if late:
            findings = findings + late
            note(findings)
            index = _render_index(self.run_dir)
        return findings, index


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """While it holds, SIGTERM (a batch system's or a supervisor's stop) ends the chain as Ctrl-C does:
    a ``KeyboardInterrupt`` in the main thread, so the run is recorded ``interrupted``, its phases'
    processes are stopped and its lock released, instead of a silent death. Elsewhere: nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_chain(
    phases: Sequence[str],
    run_dir: str | os.PathLike[str],
    parameters: Mapping[str, Any],
    notebooks_dir: str | os.PathLike[str],
    kernel_name: str | None = None,
    log: Callable[[str], object] = print,
    *,
    resume: bool = False,
    campaign: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
    secrets: Iterable[str] = (),
    rucio_config: str | os.PathLike[str] | None = None,
    scan_patterns: bool = True,
    execution_timeout: int | None = None,
    start_timeout: int = 60,
) -> ChainOutcome:
    """Execute the phase notebooks in order with papermill; stop at the first failed gate.

    Parameters
    ----------
    phases : sequence of str
        Registered phases (``"placement"``, ``"submit@early"``), in order.
    run_dir : path
        The run folder (see :func:`new_run`); executed notebooks go in it.
    parameters : mapping
        Papermill parameters for every phase; ``run_dir`` is added.  Must not
        carry a known secret (``ConfigError``).
    notebooks_dir : path
        Where the phases' ``NN_<phase>.ipynb`` live.
    kernel_name : str, optional
        Jupyter kernel; default the one named in each notebook.
    log : callable, optional
        Receives one short line per event (also appended to ``logs/chain.log``).
    resume : bool, optional
        Skip the leading phases whose result in ``run_dir`` already passed;
        from the first phase that runs again, all later phases run too.  An
        earlier attempt's result and notebook are moved to ``superseded/``.
    campaign : str, optional
        Default: the run folder's parent folder name.
    cwd : path, optional
        Kernel working directory; default the checkout.
    secrets : iterable of str, optional
        Extra secret values to scan for.
    rucio_config : path, optional
        Rucio config whose password/tokens are scanned for; default the one
        rucio-clients would use (``$RUCIO_CONFIG`` ...).
    scan_patterns : bool, optional
        Also scan for credential patterns (``password = ...`` ...).
    execution_timeout : int, optional
        Per-cell timeout in seconds (default none).
    start_timeout : int, optional
        Kernel start-up timeout in seconds.

    Returns
    -------
    ChainOutcome
    """
    run_dir = Path(run_dir).resolve()  # papermill chdirs while executing
    workdir = Path(cwd).resolve() if cwd is not None else repo_root()
    uses = [parse(p) for p in phases]
    labels = [u.label for u in uses]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"a phase is listed twice: {labels}")
    params = _jsonable(parameters)
    if "run_dir" in params:
        raise ConfigError("'run_dir' is set by run_chain; do not pass it in parameters")
    known = list(secrets) + known_secrets_from_rucio_config(rucio_config)
    leaking = [k for k, v in params.items() if contains_secret(v, known)]
    if leaking:
        raise ConfigError(
            f"parameter(s) {', '.join(leaking)} carry a known secret; credentials must come "
            "from the Rucio client config or the environment, never from notebook parameters"
        )
    check_run_folder(run_dir)
    previous = load_run_record(run_dir) if resume else None
    if previous is not None and run_state(previous) == "running":
        raise StorageError(
            f"{run_dir}: this run is still running (pid {previous.pid} on {previous.host}); "
            "it cannot be resumed beside itself"
        )
    chain = _Chain(uses, run_dir, Path(notebooks_dir).resolve(), params, known, log, scan_patterns)
    record = chain.start(campaign, resume)
    if previous is not None and run_state(previous) in ("died", "interrupted"):
        stopped = stop_orphans(run_dir)
        closed = close_dead_attempts(run_dir)  # the step attempts it left "running", closed as died
        if run_state(previous) == "died" or stopped:
            chain.say(
                f"the earlier chain of this run {run_state(previous)} (pid {previous.pid}); stopped {len(stopped)} "
                f"of its orphaned processes"
                + (f": {', '.join(stopped)}" if stopped else "")
                + (f"; closed {len(closed)} step attempt(s) it left running as died" if closed else "")
            )
    chain.heartbeat()

    total = len(uses)
    stop_reason = ""
    executed = False  # once a phase runs again, every later phase must run again too
    signals = contextlib.ExitStack()
    signals.enter_context(terminate_as_interrupt())
    try:
        for i, (use, entry) in enumerate(zip(uses, record.phases, strict=True), start=1):
            tag = f"[{i}/{total}] {use.label}"
            out_nb = run_dir / chain.out_name(use)
            if resume and not executed:
                earlier = load_result(run_dir, use.label)
                if earlier is not None and earlier.passed:
                    entry.status, entry.reason, entry.resumed = PhaseStatus.PASS, earlier.reason, True
                    entry.started, entry.finished = earlier.started, earlier.finished
                    entry.notebook = out_nb.name if out_nb.exists() else None
                    chain.say(f"{tag}: already passed, skipped")
                    continue
            _supersede(run_dir, use.label, out_nb.name)
            executed = True
            entry.started = utcnow()
            chain.save()
            chain.say(f"{tag}: running {chain.notebooks[use.label].name}")
            result = chain.execute(use, entry, kernel_name, workdir, start_timeout, execution_timeout)
            entry.status = PhaseStatus.PASS if result.passed else PhaseStatus.FAIL
            entry.reason = result.reason
            chain.save()
            chain.say(f"{tag}: {entry.status} in {entry.duration_s or 0:.1f} s: {_short(result.reason, 1, 200)}")
            if not result.passed:
                stop_reason = f"{use.label} failed: {result.reason}"
                for later, later_use in zip(record.phases[i:], uses[i:], strict=True):
                    later.reason = f"not run: {use.label} failed"
                    _supersede(run_dir, later.phase, chain.out_name(later_use))
                break
    except BaseException as exc:  # KeyboardInterrupt included: leave a truthful record
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the record short
        chain.stop_heartbeat()
        record.outcome = RunOutcome.INTERRUPTED
        record.reason = _short(f"{type(exc).__name__}: {exc}") or type(exc).__name__
        record.finished = utcnow()
        chain.save()
        chain.say(f"run interrupted: {record.reason}")
        try:  # the step commands its kernel had running are in their own sessions: stop them too
            stopped = stop_orphans(run_dir)
            if stopped:
                chain.say(f"stopped {len(stopped)} step process(es) it had running: {', '.join(stopped)}")
        except Exception:  # the original exception matters more
            pass
        try:  # an interrupted run is shared too: scan it, then render its page
            chain.scan()
        except Exception:  # the original exception matters more than a missing page
            pass
        raise
    finally:
        signals.close()

    chain.stop_heartbeat()
    record.finished = utcnow()
    record.outcome = RunOutcome.FAILED if stop_reason else RunOutcome.PASSED
    record.reason = stop_reason or f"all {total} phase(s) passed"
    chain.save()
    findings, index = chain.scan()
    chain.say(f"run {record.outcome}: {_short(record.reason, 1, 300)}; index: {index}")
    return ChainOutcome(
        passed=record.outcome == "passed",
        reason=record.reason,
        run_dir=run_dir,
        phases=record.phases,
        results=load_results(run_dir),
        findings=findings,
        index=index,
    )
