"""Run folders and the papermill chain.

A *run* is one folder, ``runs/<campaign>/<run id>/``, holding everything a
chain of phases left behind::

    run.json                 who / when / parameters (redacted) / outcome
    NN_<phase>.ipynb         executed notebooks (the run log)
    results/<phase>.json     each phase's gate (multisite_nb.results)
    artifacts/<phase>/...    long tables and other files the phases saved
    logs/chain.log           the runner's compact progress lines
    html/NN_<phase>.html     rendered notebooks, linked from index.html
    index.html               the page to review (multisite_nb.views.report)

:func:`run_chain` executes ``notebooks/NN_<phase>.ipynb`` one after the other
with papermill, passing ``run_dir`` and the given parameters, and stops at the
first phase whose gate failed, that raised, or that recorded no result.  At the
end the whole run folder is scanned for secrets; a finding fails the run.

What a phase notebook must do to take part:

* be named ``NN_<phase>.ipynb`` (``phase`` lower case, ``[a-z][a-z0-9_]*``);
* have a code cell tagged ``parameters`` declaring ``run_dir = ""`` and every
  other parameter it uses (only declared parameters are injected; never a
  credential);
* end with ``record_result(run_dir, PhaseResult(phase=..., passed=...,
  reason=..., started=..., summary={...}, artifacts=[...]))`` from
  :mod:`multisite_nb.results` — no result counts as a failed gate;
* put long tables in ``save_table(run_dir, phase, name, df)`` and show
  ``summarize(df)``.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multisite_nb.results import (
    PHASE_NAME,
    PhaseResult,
    PhaseRun,
    RunRecord,
    load_result,
    load_results,
    load_run_record,
    record_result,
    results_dir,
    utcnow,
    write_run_record,
)
from multisite_nb.secrets import (
    Finding,
    contains_secret,
    known_secrets_from_rucio_config,
    redact_parameters,
    scan_for_secrets,
)

__all__ = ["ChainOutcome", "find_notebook", "new_run", "repo_root", "run_chain"]

_CAMPAIGN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_NUMBERED = re.compile(r"^(?P<num>\d+)_(?P<phase>[a-z][a-z0-9_]*)$")
_MAX_REASON = 600


def repo_root() -> Path:
    """The repository holding this package (where ``pyproject.toml`` is), else the cwd."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def new_run(runs_root: str | os.PathLike[str], campaign: str) -> Path:
    """Create and return a fresh run folder ``<runs_root>/<campaign>/<run id>/``.

    The run id is ``YYYYMMDDTHHMMSSZ-<6 hex>`` (UTC), so ids sort by time.

    Parameters
    ----------
    runs_root : path
        Usually ``runs/`` at the repository root.
    campaign : str
        Campaign name (letters, digits, ``_ . -``).
    """
    if not _CAMPAIGN.match(campaign):
        raise ValueError(f"campaign name {campaign!r} must be a plain folder name")
    parent = Path(runs_root) / campaign
    parent.mkdir(parents=True, exist_ok=True)
    for _ in range(10):
        run_id = f"{utcnow():%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
        path = parent / run_id
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path.resolve()
    raise RuntimeError(f"could not create a unique run folder under {parent}")  # pragma: no cover


def _phase_name(phase: str) -> str:
    m = _NUMBERED.match(phase)
    name = m.group("phase") if m else phase
    if not PHASE_NAME.match(name):
        raise ValueError(f"phase name {phase!r} must match {PHASE_NAME.pattern}")
    return name


def interactive_run_dir(runs_root: str | os.PathLike[str], campaign: str, *, new: bool) -> Path:
    """The run folder a notebook opened by hand (no ``run_dir`` parameter) works in.

    ``$MSNB_RUN_DIR`` when set (the dashboard under Voilà, nbval); otherwise a fresh folder
    for a phase that starts a run (``new``), or the campaign's latest run folder so that a
    later phase finds the earlier phases' results.
    """
    env = os.environ.get("MSNB_RUN_DIR")
    if env:
        path = Path(env).resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path
    parent = Path(runs_root) / campaign
    existing = sorted(p for p in parent.glob("*") if p.is_dir()) if parent.is_dir() else []
    if new or not existing:
        return new_run(runs_root, campaign)
    return existing[-1].resolve()


def split_phase(spec: str) -> tuple[str, str, str | None]:
    """``"submit@early"`` -> (notebook phase ``submit``, label ``submit_early``, stage ``early``).

    One notebook can serve several stages of a campaign: each use gets its own label, its
    own executed notebook (``NN_<label>.ipynb``) and its own result (``results/<label>.json``);
    the stage is passed as the ``stage`` parameter.
    """
    phase, _, stage = spec.partition("@")
    name = _phase_name(phase)
    if not stage:
        return name, name, None
    label = f"{name}_{stage}"
    if not PHASE_NAME.match(label):
        raise ValueError(f"phase {spec!r}: stage {stage!r} must be a simple lower-case name")
    return name, label, stage


def find_notebook(notebooks_dir: str | os.PathLike[str], phase: str) -> Path:
    """Return ``<notebooks_dir>/NN_<phase>.ipynb`` (exactly one must exist).

    ``phase`` may be given as ``"transfer"`` or ``"02_transfer"``.
    """
    name = _phase_name(phase)
    folder = Path(notebooks_dir)
    hits = sorted(
        p
        for p in folder.glob(f"*_{name}.ipynb")
        if (m := _NUMBERED.match(p.stem)) and m.group("phase") == name
    )
    if not hits:
        raise FileNotFoundError(f"no notebook NN_{name}.ipynb in {folder}")
    if len(hits) > 1:
        raise ValueError(f"several notebooks for phase {name!r}: {', '.join(p.name for p in hits)}")
    return hits[0]


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
        Phase names (``"placement"`` or ``"01_placement"``), in order.
    run_dir : path
        The run folder (see :func:`new_run`); executed notebooks go in it.
    parameters : mapping
        Papermill parameters for every phase; ``run_dir`` is added.  Must not
        carry a known secret (``ValueError``).
    notebooks_dir : path
        Where ``NN_<phase>.ipynb`` live.
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
        Kernel working directory; default :func:`repo_root`.
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
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from multisite_nb.views.report import render_index

    run_dir = Path(run_dir).resolve()  # papermill chdirs while executing
    notebooks_dir = Path(notebooks_dir).resolve()
    workdir = Path(cwd).resolve() if cwd is not None else repo_root()
    run_dir.mkdir(parents=True, exist_ok=True)
    specs = [split_phase(p) for p in phases]
    names = [label for _, label, _ in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"a phase is listed twice: {names}")
    notebooks = {label: find_notebook(notebooks_dir, nb) for nb, label, _ in specs}  # fail before running anything
    stages = {label: stage for _, label, stage in specs}

    def out_name(label: str) -> str:
        number = notebooks[label].stem.split("_", 1)[0]
        return f"{number}_{label}.ipynb"
    params = _jsonable(parameters)
    if "run_dir" in params:
        raise ValueError("'run_dir' is set by run_chain; do not pass it in parameters")
    declared = {n: _declared_parameters(nb) for n, nb in notebooks.items()}
    known = list(secrets) + known_secrets_from_rucio_config(rucio_config)
    leaking = [k for k, v in params.items() if contains_secret(v, known)]
    if leaking:
        raise ValueError(
            f"parameter(s) {', '.join(leaking)} carry a known secret; credentials must come "
            "from the Rucio client config or the environment, never from notebook parameters"
        )

    chain_log = run_dir / "logs" / "chain.log"
    chain_log.parent.mkdir(parents=True, exist_ok=True)

    def say(line: str) -> None:
        with chain_log.open("a", encoding="utf-8") as fh:
            fh.write(f"{utcnow():%Y-%m-%dT%H:%M:%SZ} {line}\n")
        log(line)

    now = utcnow()
    previous = load_run_record(run_dir) if resume else None
    record = RunRecord(
        campaign=campaign or (previous.campaign if previous else run_dir.parent.name),
        run_id=run_dir.name,
        who=_who(),
        host=socket.gethostname(),
        started=previous.started if previous else now,
        resumed_at=[*previous.resumed_at, now] if previous else [],
        phases_requested=names,
        parameters=redact_parameters(params),  # type: ignore[arg-type]
        phases=[PhaseRun(phase=n) for n in names],
    )
    write_run_record(run_dir, record)
    say(f"run {run_dir.name} ({record.campaign}): {' → '.join(names)}" + (" [resume]" if resume else ""))
    for n, names_declared in declared.items():
        if names_declared is None:
            say(f"warning: {notebooks[n].name} has no cell tagged 'parameters'; it gets run_dir only")
        elif "run_dir" not in names_declared:
            say(f"warning: {notebooks[n].name} does not declare run_dir in its parameters cell")
    used = set().union(*(d or set() for d in declared.values())) if declared else set()
    unused = sorted(set(params) - used)
    if unused:
        say(f"warning: parameter(s) not declared by any of these phases: {', '.join(unused)}")
    kernel_config = _kernel_config()

    total = len(names)
    stop_reason = ""
    executed = False  # once a phase runs again, every later phase must run again too
    try:
        for i, (name, entry) in enumerate(zip(names, record.phases, strict=True), start=1):
            tag = f"[{i}/{total}] {name}"
            out_nb = run_dir / out_name(name)
            if resume and not executed:
                earlier = load_result(run_dir, name)
                if earlier is not None and earlier.passed:
                    entry.status, entry.reason, entry.resumed = "pass", earlier.reason, True
                    entry.started, entry.finished = earlier.started, earlier.finished
                    entry.notebook = out_nb.name if out_nb.exists() else None
                    say(f"{tag}: already passed, skipped")
                    continue
            _supersede(run_dir, name, out_nb.name)
            executed = True
            entry.started = utcnow()
            write_run_record(run_dir, record)
            say(f"{tag}: running {notebooks[name].name}")
            failure: PhaseResult | None = None
            try:
                papermill.execute_notebook(
                    str(notebooks[name]),
                    str(out_nb),
                    parameters={
                        **{k: v for k, v in params.items() if k in (declared[name] or ())},
                        **({"stage": stages[name]} if stages[name] else {}),
                        "run_dir": str(run_dir),
                    },
                    kernel_name=kernel_name,
                    progress_bar=False,
                    log_output=False,
                    cwd=str(workdir),
                    start_timeout=start_timeout,
                    execution_timeout=execution_timeout,
                    config=kernel_config,
                )
            except PapermillExecutionError as exc:
                failure = PhaseResult(
                    phase=name,
                    passed=False,
                    reason=_short(f"{exc.ename}: {exc.evalue}") + f" (at In [{exc.exec_count}])",
                    started=entry.started,
                    summary={"error": exc.ename, "cell_index": exc.cell_index, "recorded_by": "runbook"},
                )
            except Exception as exc:  # kernel died, timed out, failed to start ...
                failure = PhaseResult(
                    phase=name,
                    passed=False,
                    reason=_short(f"{type(exc).__name__}: {exc}"),
                    started=entry.started,
                    summary={"error": type(exc).__name__, "recorded_by": "runbook"},
                )
            entry.finished = utcnow()
            entry.notebook = out_nb.name if out_nb.exists() else None
            if failure is None:
                try:
                    result = load_result(run_dir, name)
                except ValueError as exc:  # pydantic.ValidationError is a ValueError
                    result = None
                    failure_reason = _short(f"results/{name}.json is invalid: {exc}")
                else:
                    failure_reason = f"the notebook finished without recording results/{name}.json"
                if result is None:
                    failure = PhaseResult(
                        phase=name,
                        passed=False,
                        reason=failure_reason,
                        started=entry.started,
                        summary={"recorded_by": "runbook"},
                    )
                    _supersede(run_dir, name)
            if failure is not None:
                record_result(run_dir, failure)
                result = failure
            entry.status = "pass" if result.passed else "fail"
            entry.reason = result.reason
            write_run_record(run_dir, record)
            say(f"{tag}: {entry.status} in {entry.duration_s:.1f} s: {_short(result.reason, 1, 200)}")
            if not result.passed:
                stop_reason = f"{name} failed: {result.reason}"
                for later in record.phases[i:]:
                    later.reason = f"not run: {name} failed"
                    _supersede(run_dir, later.phase, out_name(later.phase))
                break
    except BaseException as exc:  # KeyboardInterrupt included: leave a truthful record
        record.outcome = "interrupted"
        record.reason = _short(f"{type(exc).__name__}: {exc}") or type(exc).__name__
        record.finished = utcnow()
        write_run_record(run_dir, record)
        say(f"run interrupted: {record.reason}")
        try:
            render_index(run_dir)
        except Exception:  # the original exception matters more than a missing page
            pass
        raise

    record.finished = utcnow()
    record.outcome = "failed" if stop_reason else "passed"
    record.reason = stop_reason or f"all {total} phase(s) passed"
    write_run_record(run_dir, record)
    base_reason = record.reason

    def note(findings: list[Finding]) -> None:
        rel = [f"{Path(f.path).relative_to(run_dir).as_posix()}:{f.line}: {f.kind}" for f in findings]
        for line in rel[len(record.secret_findings) :][:20]:
            say(f"secret scan: {line}")
        files = sorted({Path(f.path).relative_to(run_dir).as_posix() for f in findings})
        record.secret_findings = rel
        record.outcome = "failed"
        record.reason = f"possible credential leak in {', '.join(files)}; {base_reason}"
        write_run_record(run_dir, record)

    # scan what the phases wrote before rendering, so that a leak is not copied into the HTML
    findings = scan_for_secrets([run_dir], known, patterns=scan_patterns)
    if findings:
        note(findings)
    index = render_index(run_dir)  # withholds the HTML of flagged notebooks
    late = [
        f
        for f in scan_for_secrets([index, run_dir / "html"], known, patterns=scan_patterns)
        if f not in findings
    ]
    if late:
        findings = findings + late
        note(findings)
        index = render_index(run_dir)
    say(f"run {record.outcome}: {_short(record.reason, 1, 300)}; index: {index}")
    return ChainOutcome(
        passed=record.outcome == "passed",
        reason=record.reason,
        run_dir=run_dir,
        phases=record.phases,
        results=load_results(run_dir),
        findings=findings,
        index=index,
    )
