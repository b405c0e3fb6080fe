"""``multisite-nb``: the operator's command line (world, phases, whole campaign).

Thin click commands over plain functions (:mod:`multisite_nb.run.launch`, the phases, the world):
each parses its options, calls one function, and prints what came back. The world's folder is
passed down as an argument (``--world``/``--dir``, else ``$MSNB_WORLD``, else ``./world``); no
command changes the process environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path

import click

from multisite_nb.adapters.alerts import load_alerts, resolve_alert
from multisite_nb.adapters.butler.lock import OperatorLock
from multisite_nb.adapters.files import atomic_write_text
from multisite_nb.adapters.results import load_result, load_run_record
from multisite_nb.domain.errors import ConfigError, MsnbError, NotReadyError
from multisite_nb.domain.supervision import SYSTEM_DOWN
from multisite_nb.phases import cleanup as cleanup_phase
from multisite_nb.phases import qa as qa_phase
from multisite_nb.phases import repair as repair_phase
from multisite_nb.phases.registry import chain_for
from multisite_nb.run.context import WORLD_VARIABLE, campaign_env, load_for_world
from multisite_nb.run.launch import campaign_of_run, launch, recorded_chain, run_status
from multisite_nb.run.preflight import preflight
from multisite_nb.run.supervise import supervise
from multisite_nb.world.health import down_services
from multisite_nb.world.manager import World, default_world_dir, has_services, is_world, world_secrets

DEFAULT_PARAMS = "parameters/campaign_3x3.yaml"


#: The exit code of a command refused for its input (a parameter file, an option, the systems it names),
#: distinct from 1, a phase or gate that failed.
BAD_INPUT = 2


class BadInput(click.ClickException):
    """Refused before anything was touched: every problem, one line each."""

    exit_code = BAD_INPUT


@contextlib.contextmanager
def _operator_errors() -> Iterator[None]:
    """The toolkit's errors as lines for the operator, no traceback (bad input: exit code 2)."""
    try:
        yield
    except (ConfigError, NotReadyError) as exc:
        n = len(exc.problems)
        tail = f"\n{n} problem(s); nothing was touched" if n > 1 else ""
        raise BadInput(f"{exc}{tail}") from None
    except MsnbError as exc:
        raise click.ClickException(str(exc)) from None


def error_log_dir() -> Path:
    """Where the tracebacks of unexpected errors go (``$XDG_STATE_HOME/multisite_nb/errors``)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "multisite_nb" / "errors"


class _Main(click.Group):
    """The command group whose last line of defence turns an unexpected error into one line and a log."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt, SystemExit):
            raise
        except MsnbError as exc:
            with _operator_errors():
                raise exc from None
            raise  # pragma: no cover - _operator_errors always raises
        except Exception as exc:
            try:
                log: object = _save_traceback(exc)
            except OSError as failed:  # nowhere to write: the traceback goes to the terminal after all
                traceback.print_exception(exc)
                log = f"(none: {failed})"
            what = " ".join(str(exc).split())[:300]
            if SYSTEM_DOWN.search(f"{type(exc).__name__}: {what}"):  # an outage, not a bug
                raise click.ClickException(
                    f"a system did not answer: {type(exc).__name__}: {what}\n(bring it back: for the embedded "
                    f"world, multisite-nb world check names what is down; then run the command again; "
                    f"the traceback is in {log})"
                ) from None
            raise click.ClickException(
                f"unexpected {type(exc).__name__}: {what}\n(a bug, or a case the toolkit does not name yet: "
                f"the traceback is in {log})"
            ) from None


def _save_traceback(exc: BaseException) -> Path:
    folder = error_log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}.log"
    text = "".join(traceback.format_exception(exc))
    atomic_write_text(path, f"multisite-nb {' '.join(sys.argv[1:])}\n\n{text}")
    return path


def _world_root(dir_: str | None) -> Path:
    root = Path(dir_).resolve() if dir_ else default_world_dir()
    if root.exists() and not root.is_dir():
        raise BadInput(f"--dir {root}: a file, not a folder; give the world's folder")
    return root


def _world(dir_: str | None, params: str, spec: str | None = None, db: str | None = None) -> World:
    with _operator_errors():
        return World(_world_root(dir_), Path(params), Path(spec) if spec else None, db)


def _given_world(world_dir: str | None) -> Path | None:
    """``--world``, else the shell's ``$MSNB_WORLD``, else none (the facilities); refused if not a world."""
    given, option = (world_dir, "--world") if world_dir else (campaign_env().get(WORLD_VARIABLE), f"${WORLD_VARIABLE}")
    if not given:
        return None
    root = Path(given).resolve()
    if not is_world(root):
        raise BadInput(f"{option} {root}: not a world (no world.json); bring one up with multisite-nb world up --dir")
    return root


def _recorded_run(run_dir: str) -> tuple[str | None, str | None]:
    """The campaign file and the world folder a run folder's ``run.json`` was made with (None: not recorded)."""
    try:
        record = load_run_record(Path(run_dir))
    except (OSError, ValueError):
        return None, None
    if record is None:
        return None, None
    params, world = record.parameters.get("campaign_file"), record.parameters.get("world_dir")
    return (str(params) if params else None), (str(world) if world else None)


world_dir_option = click.option("--dir", "dir_", default=None, help="World folder (default: $MSNB_WORLD or ./world).")
params_option = click.option("--params", default=DEFAULT_PARAMS, show_default=True, help="Campaign parameter file.")
campaign_argument = click.argument("params", default=DEFAULT_PARAMS)
world_option = click.option("--world", "world_dir", default=None, help="World folder (default: $MSNB_WORLD).")


@click.group(cls=_Main)
def main() -> None:
    """Multisite data production toolkit: run a campaign phase by phase, or all at once."""


@main.group()
def world() -> None:
    """The embedded world: real Rucio, one Butler per site, synthetic HSC-like data."""


@world.command("up")
@world_dir_option
@params_option
@click.option(
    "--spec",
    default=None,
    help="World spec (sky, instrument, observations); default: what the world was built from, "
    "else parameters/worlds/rehearsal_3x3.yaml.",
)
@click.option(
    "--db",
    type=click.Choice(["sqlite", "postgresql"]),
    default=None,
    help="Database of Rucio and the Butler registries; default: what the world was built with, else sqlite.",
)
def world_up(dir_: str | None, params: str, spec: str | None, db: str | None) -> None:
    """Start the world (idempotent: an up world is left as it is)."""
    with _operator_errors():
        _world(dir_, params, spec, db).up(log=click.echo)


@world.command("down")
@world_dir_option
@params_option
def world_down(dir_: str | None, params: str) -> None:
    """Stop every process the world started, by PID."""
    root = _world_root(dir_)
    if not has_services(root):
        raise click.ClickException(f"no world in {root}: nothing to stop")
    _world(dir_, params).down(log=click.echo)


@world.command("status")
@world_dir_option
@params_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def world_status(dir_: str | None, params: str, as_json: bool) -> None:
    """Each site's health: Rucio, RSE, Butler repository, dataset counts."""
    st = _world(dir_, params).status()
    if as_json:
        click.echo(json.dumps(st, indent=2, default=str))
        return
    r = st["rucio"]
    click.echo(f"world {st['root']}")
    d = st["db"]
    if d["kind"] == "postgresql":
        click.echo(f"  postgresql: {'up' if d.get('up') else 'NOT up'} (port {d.get('port')})")
    click.echo(f"  rucio: {'reachable' if r.get('reachable') else 'NOT reachable'} (port {r.get('port')})")
    for site, s in st["sites"].items():
        butler = (
            f"butler ok, {s.get('datasets', 0)} datasets in {s.get('collections', 0)} collections"
            if s.get("butler_ok")
            else f"butler FAILED: {s.get('butler_error')}"
        )
        known = ("known" if s["rse_known"] else "MISSING") if r.get("reachable") else "unknown (Rucio not reachable)"
        click.echo(f"  {site:6s} rse {s['rse']:11s} {known:7s} {butler}")
    if not r.get("reachable") or not all(s.get("butler_ok") and s["rse_known"] for s in st["sites"].values()):
        sys.exit(1)


@world.command("check")
@world_dir_option
def world_check(dir_: str | None) -> None:
    """Exit 0 when every service of the world runs and Rucio answers, 1 naming what is down (a health check;
    ``python -m multisite_nb.world.health DIR`` is the same in a fraction of a second)."""
    root = _world_root(dir_)
    down = down_services(root)
    click.echo(
        f"world {root}: "
        + (f"down: {', '.join(down)}; multisite-nb world up brings it back" if down else "services up")
    )
    if down:
        sys.exit(1)


@main.command("supervise")
@campaign_argument
@world_option
@click.option("--runs-root", default=None, help="Where run folders go (default: <checkout>/runs).")
@click.option("--new", is_flag=True, help="Start a new run even if the campaign has one to go on with.")
@click.option("--phase-by-phase", is_flag=True, default=False, help="A new run's chain phase by phase.")
@click.option("--max-rounds", type=int, default=None, help="Stop after this many chain attempts (default: none).")
@click.option("--max-hours", type=float, default=None, help="Stop after this long (default: until the verdict).")
def supervise_cmd(
    params: str,
    world_dir: str | None,
    runs_root: str | None,
    new: bool,
    phase_by_phase: bool,
    max_rounds: int | None,
    max_hours: float | None,
) -> None:
    """Keep the campaign going until its verdict: resume, retry, repair; alert a person only when needed.

    Safe to kill and start again at any moment (from a timer or a service manager). Exit 0 on a PASS
    verdict, 1 on FAIL, 3 when it stopped while a person is asked for something (or was stopped).
    """
    world_root = _given_world(world_dir)
    with _operator_errors():
        campaign = load_for_world(params, world_root)
        out = supervise(
            campaign,
            runs_root=runs_root,
            world=world_root,
            secrets=world_secrets(world_root) if world_root else [],
            log=click.echo,
            flowing=not phase_by_phase,
            new=new,
            max_rounds=max_rounds,
            max_s=max_hours * 3600 if max_hours else None,
        )
    click.echo(f"supervise: {out.verdict}: {out.reason} ({out.rounds} chain attempt(s); run {out.run_dir})")
    if out.verdict != "PASS":
        sys.exit(1 if out.verdict == "FAIL" else 3)


@main.command("alerts")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--all", "show_all", is_flag=True, help="Resolved ones too.")
@click.option("--resolve", "key", default=None, help="Mark the alert of this key dealt with.")
@click.option("--note", default="", help="With --resolve: what was done (one line, kept with it).")
@click.option("--json", "as_json", is_flag=True, help="The entries as JSON.")
def alerts_cmd(run_dir: str, show_all: bool, key: str | None, note: str, as_json: bool) -> None:
    """What a person is asked for: a run folder's open alerts (or a campaign's runs folder, for those
    raised before its first run), each with its cause, what it blocks and the one command.

    ``--resolve KEY`` marks one dealt with: the supervisor stops waiting on it, and raises it anew
    (and sends it again) if the trouble comes back. Exit 1 when open alerts remain.
    """
    folder = Path(run_dir).resolve()
    if key is not None:
        entry = resolve_alert(folder, key, note=note)
        if entry is None:
            listing = f"multisite-nb alerts {run_dir} --all lists them"
            raise BadInput(f"{folder / 'alerts'}: no alert of key {key!r} ({listing})")
        click.echo(f"resolved: {entry.key} at {entry.resolved:%Y-%m-%d %H:%M:%S} UTC" if entry.resolved else entry.key)
    every = load_alerts(folder)
    entries = [e for e in every if show_all or e.open]
    still = sum(e.open for e in every)
    if as_json:
        click.echo(json.dumps([e.model_dump(mode="json") for e in entries], indent=2))
    else:
        for e in entries:
            a = e.alert
            state = f"resolved {e.resolved:%Y-%m-%d %H:%M} UTC: {e.note}" if e.resolved else "open"
            again = f", raised {e.raised_before + 1} times" if e.raised_before else ""
            click.echo(f"{a.raised:%Y-%m-%d %H:%M} UTC  {a.kind}  {a.site or '-'}  {a.subject}  ({state}{again})")
            click.echo(f"    cause:   {a.cause}\n    blocks:  {a.blocked}\n    do:      {a.action}")
            click.echo(f"    key:     {e.key}")
        click.echo(f"{still} open alert(s)" + ("" if show_all else f" in {folder}"))
    if still:
        sys.exit(1)


@main.command("check")
@campaign_argument
@world_option
@click.option("--offline", is_flag=True, help="Only the files: no Rucio, no Butler.")
def check_cmd(params: str, world_dir: str | None, offline: bool) -> None:
    """Is this campaign ready to run here? Every problem at once, file and key; exit 2 if any."""
    found = preflight(params, _given_world(world_dir), online=not offline)
    for problem in found.problems:
        click.echo(str(problem))
    online = "skipped" if found.online_s is None else f"{found.online_s:.1f} s"
    timing = f"(files {found.offline_s:.1f} s, systems {online})"
    if found.problems:
        click.echo(f"not ready: {len(found.problems)} problem(s) {timing}; nothing was touched", err=True)
        sys.exit(BAD_INPUT)
    assert found.campaign is not None
    where = "its files" if offline else f"its files and the systems of {found.campaign.manifest_path.name}"
    click.echo(f"ready: campaign {found.campaign.name}, {where} {timing}")


@main.command("run")
@click.argument("params", required=False, default=None)
@click.option(
    "--phases",
    default=None,
    help="Comma-separated phases, e.g. placement,transfer,verify or submit@early "
    "(default: the whole chain from the campaign's stage plan).",
)
@world_option
@click.option("--runs-root", default=None, help="Where run folders go (default: <checkout>/runs).")
@click.option("--resume", "resume_dir", default=None, help="Continue this run folder, skipping passed phases.")
@click.option(
    "--phase-by-phase",
    is_flag=True,
    default=False,
    help="Transfer, verification and the first site stage one after the other for every site (default: flowing).",
)
def run(
    params: str | None,
    phases: str | None,
    world_dir: str | None,
    runs_root: str | None,
    resume_dir: str | None,
    phase_by_phase: bool,
) -> None:
    """Execute phase notebooks with papermill into a run folder; stop at a failed gate.

    PARAMS defaults to the 3x3 campaign; with ``--resume RUN_DIR`` and no PARAMS, the campaign file
    and the world the run was made with (its ``run.json``), unless ``--world`` names another.
    """
    if params is None and resume_dir:
        params, recorded_world = _recorded_run(resume_dir)
        world_dir = world_dir or recorded_world
    world_root = _given_world(world_dir)
    with _operator_errors():
        campaign = load_for_world(params or DEFAULT_PARAMS, world_root)
        if phases:
            wanted = [p.strip() for p in phases.split(",") if p.strip()]
        elif resume_dir and not phase_by_phase:  # a resumed run keeps the chain it was started with
            wanted = recorded_chain(resume_dir) or chain_for(campaign)
        else:
            wanted = chain_for(campaign, flowing=not phase_by_phase)
        secrets = world_secrets(world_root) if world_root else []
        run_dir, outcome = launch(
            campaign,
            wanted,
            runs_root=runs_root,
            resume_dir=resume_dir,
            world=world_root,
            secrets=secrets,
            log=click.echo,
        )
    click.echo(f"index: {run_dir / 'index.html'}")
    if not outcome.passed:
        raise click.ClickException(f"stopped: {outcome.reason}")


@main.command("campaign")
@campaign_argument
@click.option("--world", "world_dir", default=None, help="World folder (default: $MSNB_WORLD or ./world).")
@click.option("--runs-root", default=None, help="Where run folders go (default: <checkout>/runs).")
@click.option("--down/--keep-up", default=False, help="Stop the world's services afterwards (default: keep them up).")
@click.option(
    "--db",
    type=click.Choice(["sqlite", "postgresql"]),
    default=None,
    help="A new world's database back end (default: what the world was built with, else sqlite).",
)
@click.option(
    "--phase-by-phase",
    is_flag=True,
    default=False,
    help="Every site waits for the others between transfer, verification and the first stage (default: "
    "flowing: a site's groups start as their inputs are verified there).",
)
def campaign_cmd(
    params: str, world_dir: str | None, runs_root: str | None, down: bool, db: str | None, phase_by_phase: bool
) -> None:
    """The main job: bring the embedded world up and run the whole campaign on it (flowing, by default)."""
    t0 = time.monotonic()
    w = _world(world_dir, params, db=db)
    with _operator_errors():
        w.up(log=click.echo)
        try:
            run_dir, outcome = launch(
                w.campaign,
                chain_for(w.campaign, flowing=not phase_by_phase),
                runs_root=runs_root,
                world=w.root,
                secrets=world_secrets(w.root),
                log=click.echo,
            )
        finally:
            if down:
                w.down(log=click.echo)
    qa = load_result(run_dir, qa_phase.run.name)
    click.echo("")
    click.echo(f"executed notebooks: {run_dir}")
    click.echo(f"run log page:       {run_dir / 'index.html'}")
    click.echo(f"wall time:          {time.monotonic() - t0:.0f} s")
    if not outcome.passed:
        raise click.ClickException(f"campaign stopped: {outcome.reason}")
    click.echo(f"verdict:            {'PASS' if qa and qa.passed else 'FAIL'}: {qa.reason if qa else 'no QA result'}")


@main.command("status")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@world_option
@click.option("--params", default=None, help="Campaign file (default: the one the run was made with).")
def status_cmd(run_dir: str, world_dir: str | None, params: str | None) -> None:
    """How a run stands: running, passed, failed, interrupted, or died (its process gone), phase by phase.

    A phase that was running when its chain died says what it had done, read from the systems
    (when its campaign and world can be read; else from its last record).
    """
    folder = Path(run_dir).resolve()
    world = _given_world(world_dir)  # a wrong --world is refused, not ignored
    try:
        campaign = campaign_of_run(folder, params, world, pipeline=False)
    except MsnbError:
        campaign = None  # the status still answers, from the run folder alone
    with _operator_errors():
        st = run_status(folder, campaign)
    record = st.record
    click.echo(f"run {record.run_id} ({record.campaign}): {st.state}" + (f": {record.reason}" if record.reason else ""))
    click.echo(
        f"  by {record.who} on {record.host}, pid {record.pid}, started {record.started:%Y-%m-%d %H:%M:%S} UTC"
        + (f", last heartbeat {record.heartbeat:%H:%M:%S}" if record.heartbeat else "")
    )
    for line in st.phases:
        limit = 600 if line.status.endswith("while running") else 140  # what it had done, in full
        click.echo(f"  {line.phase:32s} {line.status:8s} {line.note[:limit]}")
    for pid, where in st.still_running:
        click.echo(f"  still running: pid {pid} ({where})")
    if st.state == "died":
        running = f", {len(st.still_running)} process(es) it started still run" if st.still_running else ""
        click.echo(
            f"  its chain is gone{running}: multisite-nb run --resume {Path(run_dir).resolve()} stops them and goes on"
        )
    if st.bad:
        sys.exit(1)


@main.command("unlock")
@click.option("--force", is_flag=True, help="Break it even if its holder may still work (another host, alive).")
@campaign_argument
@world_option
def unlock_cmd(force: bool, params: str, world_dir: str | None) -> None:
    """Break a campaign's operator lock left by a dead run (only a stale one, unless --force)."""
    with _operator_errors():
        holder = OperatorLock(load_for_world(params, _given_world(world_dir), pipeline=False)).break_lock(force=force)
    click.echo(f"lock broken: it was held by {holder}" if holder else "the campaign is not locked")


@main.command("cleanup")
@campaign_argument
@world_option
@click.option("--yes", is_flag=True, help="Remove for real (default: only list what would go).")
def cleanup_cmd(params: str, world_dir: str | None, yes: bool) -> None:
    """Remove a campaign's products: its collections at every site and its non-placement rules."""
    with _operator_errors():
        campaign = load_for_world(params, _given_world(world_dir), pipeline=False)
        items = cleanup_phase.cleanup(campaign, dry_run=not yes)
    for i in items:
        click.echo(f"  {i.site:6s} {i.kind:10s} {i.what}  {i.detail}")
    click.echo(f"{'removed' if yes else 'would remove (dry run; --yes removes)'}: {len(items)} item(s)")


@main.command("repair")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@world_option
@click.option("--params", default=None, help="Campaign file (default: the one the run was made with).")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for Rucio's re-replication.")
def repair_cmd(run_dir: str, world_dir: str | None, params: str | None, timeout: float) -> None:
    """Repair what verification found in a run's placement (declare bad, retry, re-ingest), then verify."""
    folder = Path(run_dir).resolve()
    with _operator_errors():
        campaign = campaign_of_run(folder, params, _given_world(world_dir), pipeline=False)
        result, actions, _ = repair_phase.run(campaign, folder, timeout_s=timeout, log=click.echo)
    for a in actions[:50]:
        click.echo(f"  {a.site:6s} {a.action:15s} {a.what}  {a.detail}")
    if len(actions) > 50:
        click.echo(f"  ... {len(actions) - 50} more (results/repair.json)")
    click.echo(f"repair: {'PASS' if result.passed else 'FAIL'}: {result.reason}")
    if not result.passed:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
