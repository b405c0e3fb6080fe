"""``multisite-nb``: the operator's command line (world, phases, whole campaign)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from .config import Campaign, repo_root
from .errors import ConfigError, MsnbError

DEFAULT_PARAMS = "parameters/campaign_3x3.yaml"


def _world(dir_: str | None, params: str, spec: str | None = None, db: str | None = None):
    from .world.manager import World, default_world_dir

    root = Path(dir_).resolve() if dir_ else default_world_dir()
    os.environ["MSNB_WORLD"] = str(root)
    try:
        return World(root, Path(params), Path(spec) if spec else None, db)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


world_dir_option = click.option("--dir", "dir_", default=None, help="World folder (default: $MSNB_WORLD or ./world).")
params_option = click.option("--params", default=DEFAULT_PARAMS, show_default=True, help="Campaign parameter file.")


@click.group()
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
    try:
        _world(dir_, params, spec, db).up(log=click.echo)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@world.command("down")
@world_dir_option
@params_option
def world_down(dir_: str | None, params: str) -> None:
    """Stop every process the world started, by PID."""
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
        click.echo(f"  {site:6s} rse {s['rse']:11s} {'known' if s['rse_known'] else 'MISSING':7s} {butler}")
    if not r.get("reachable") or not all(s.get("butler_ok") and s["rse_known"] for s in st["sites"].values()):
        sys.exit(1)


def _run_chain(
    campaign, phases: list[str], runs_root: str | None, resume_dir: str | None, world_dir: Path | None = None
):
    from .fileio import check_writable
    from .lock import chain_lock
    from .registry import parse
    from .runbook import run_chain
    from .runfolder import check_run_folder, new_run
    from .world.manager import world_secrets

    for p in phases:
        try:
            parse(p)
        except ConfigError as exc:
            raise click.ClickException(f"--phases: {exc}") from None
    root = Path(runs_root) if runs_root else repo_root() / "runs"
    try:
        if resume_dir:
            run_dir = check_run_folder(resume_dir)
            if not (run_dir / "run.json").is_file():
                raise click.ClickException(f"--resume: {run_dir} holds no run.json: nothing to resume")
        else:
            check_writable(root)
            run_dir = new_run(root, campaign.name)
        click.echo(f"run folder: {run_dir}")
        secrets = world_secrets(world_dir) if world_dir else []
        with chain_lock(campaign, run_dir, resume=bool(resume_dir)):
            outcome = run_chain(
                phases,
                run_dir,
                {"campaign_file": str(campaign.path)},
                repo_root() / "notebooks",
                resume=bool(resume_dir),
                campaign=campaign.name,
                log=click.echo,
                secrets=secrets,
                rucio_config=campaign.manifest.rucio.config,
            )
    except MsnbError as exc:
        raise click.ClickException(str(exc)) from None
    return run_dir, outcome


@main.command("run")
@click.argument("params", default=DEFAULT_PARAMS)
@click.option(
    "--phases",
    default=None,
    help="Comma-separated phases, e.g. placement,transfer,verify or submit@early "
    "(default: the whole chain from the campaign's stage plan).",
)
@click.option("--world", "world_dir", default=None, help="World folder (sets $MSNB_WORLD).")
@click.option("--runs-root", default=None, help="Where run folders go (default: <checkout>/runs).")
@click.option("--resume", "resume_dir", default=None, help="Continue this run folder, skipping passed phases.")
def run(params: str, phases: str | None, world_dir: str | None, runs_root: str | None, resume_dir: str | None) -> None:
    """Execute phase notebooks with papermill into a run folder; stop at a failed gate."""
    from .config import load_campaign
    from .registry import chain_for

    if world_dir:
        os.environ["MSNB_WORLD"] = str(Path(world_dir).resolve())
    try:
        campaign = load_campaign(params)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    wanted = [p.strip() for p in phases.split(",") if p.strip()] if phases else chain_for(campaign)
    world = (
        Path(world_dir).resolve()
        if world_dir
        else (Path(os.environ["MSNB_WORLD"]) if os.environ.get("MSNB_WORLD") else None)
    )
    run_dir, outcome = _run_chain(campaign, wanted, runs_root, resume_dir, world)
    click.echo(f"index: {run_dir / 'index.html'}")
    if not outcome.passed:
        raise click.ClickException(f"stopped: {outcome.reason}")


@main.command("campaign")
@click.argument("params", default=DEFAULT_PARAMS)
@click.option("--world", "world_dir", default=None, help="World folder (default: $MSNB_WORLD or ./world).")
@click.option("--runs-root", default=None, help="Where run folders go (default: <checkout>/runs).")
@click.option("--down/--keep-up", default=False, help="Stop the world's services afterwards (default: keep them up).")
@click.option(
    "--db",
    type=click.Choice(["sqlite", "postgresql"]),
    default=None,
    help="A new world's database back end (default: what the world was built with, else sqlite).",
)
def campaign_cmd(params: str, world_dir: str | None, runs_root: str | None, down: bool, db: str | None) -> None:
    """The main job: bring the embedded world up and run the whole campaign on it."""
    import time

    from .registry import chain_for
    from .results import load_result

    t0 = time.monotonic()
    w = _world(world_dir, params, db=db)
    w.up(log=click.echo)
    try:
        phases = chain_for(w.campaign)
        run_dir, outcome = _run_chain(w.campaign, phases, runs_root, None, w.root)
    finally:
        if down:
            w.down(log=click.echo)
    qa = load_result(run_dir, "qa")
    click.echo("")
    click.echo(f"executed notebooks: {run_dir}")
    click.echo(f"run log page:       {run_dir / 'index.html'}")
    click.echo(f"wall time:          {time.monotonic() - t0:.0f} s")
    if not outcome.passed:
        raise click.ClickException(f"campaign stopped: {outcome.reason}")
    click.echo(f"verdict:            {'PASS' if qa and qa.passed else 'FAIL'}: {qa.reason if qa else 'no QA result'}")


def _run_campaign(run_dir: Path, params: str | None, world_dir: str | None):
    """The campaign a run folder was made for (its placement result, or ``run.json``), or ``--params``."""
    from .config import load_campaign
    from .results import load_result, load_run_record

    if world_dir:
        os.environ["MSNB_WORLD"] = str(Path(world_dir).resolve())
    if not params:
        placed = load_result(run_dir, "placement")
        record = load_run_record(run_dir)
        params = str(
            (placed.summary.get("campaign_file") if placed else None)
            or (record.parameters.get("campaign_file") if record else None)
            or ""
        )
        if not params:
            raise click.ClickException(
                f"{run_dir}: neither its placement result nor run.json names its campaign file: give --params"
            )
    try:
        return load_campaign(params)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


@main.command("status")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def status_cmd(run_dir: str) -> None:
    """How a run stands: running, passed, failed, interrupted, or died (its process gone), phase by phase."""
    from .procs import live_pid
    from .results import load_results, load_run_record
    from .runfolder import pid_records

    folder = Path(run_dir).resolve()
    record = load_run_record(folder)
    if record is None:
        raise click.ClickException(f"{folder}: no run.json: not a chain's run folder")
    state = record.state()
    click.echo(f"run {record.run_id} ({record.campaign}): {state}" + (f": {record.reason}" if record.reason else ""))
    click.echo(
        f"  by {record.who} on {record.host}, pid {record.pid}, started {record.started:%Y-%m-%d %H:%M:%S} UTC"
        + (f", last heartbeat {record.heartbeat:%H:%M:%S}" if record.heartbeat else "")
    )
    results = load_results(folder, strict=False)
    for entry in record.phases:
        res = results.get(entry.phase)
        note = res.reason if res else entry.reason
        if res is not None and res.summary.get("in_progress"):
            note = "in progress when last recorded: " + note
        click.echo(f"  {entry.phase:32s} {entry.status:8s} {note[:140]}")
    live = [(p, r) for p, r in pid_records(folder) if live_pid(r) is not None]
    for path, rec in live:
        click.echo(f"  still running: pid {rec.pid} ({path.relative_to(folder).as_posix()})")
    if state == "died":
        click.echo(
            f"  its chain is gone{f', {len(live)} process(es) it started still run' if live else ''}: "
            f"multisite-nb run --resume {folder} stops them and goes on"
        )
    if state in ("failed", "died", "interrupted"):
        sys.exit(1)


def _campaign_in(params: str, world_dir: str | None) -> Campaign:
    """The campaign, its manifest read against ``--world`` if given."""
    from .config import load_campaign

    if world_dir:
        os.environ["MSNB_WORLD"] = str(Path(world_dir).resolve())
    return load_campaign(params)


@contextlib.contextmanager
def _operator_errors() -> Iterator[None]:
    """The toolkit's errors as one line for the operator, no traceback."""
    try:
        yield
    except MsnbError as exc:
        raise click.ClickException(str(exc)) from None


campaign_argument = click.argument("params", default=DEFAULT_PARAMS)
world_option = click.option("--world", "world_dir", default=None, help="World folder (sets $MSNB_WORLD).")


@main.command("unlock")
@click.option("--force", is_flag=True, help="Break it even if its holder may still work (another host, alive).")
@campaign_argument
@world_option
def unlock_cmd(force: bool, params: str, world_dir: str | None) -> None:
    """Break a campaign's operator lock left by a dead run (only a stale one, unless --force)."""
    with _operator_errors():
        from .lock import OperatorLock

        holder = OperatorLock(_campaign_in(params, world_dir)).break_lock(force=force)
        click.echo(f"lock broken: it was held by {holder}" if holder else "the campaign is not locked")


@main.command("cleanup")
@campaign_argument
@world_option
@click.option("--yes", is_flag=True, help="Remove for real (default: only list what would go).")
def cleanup_cmd(params: str, world_dir: str | None, yes: bool) -> None:
    """Remove a campaign's products: its collections at every site and its non-placement rules."""
    from .cleanup import cleanup

    with _operator_errors():
        items = cleanup(_campaign_in(params, world_dir), dry_run=not yes)
    for i in items:
        click.echo(f"  {i.site:6s} {i.kind:10s} {i.what}  {i.detail}")
    click.echo(f"{'removed' if yes else 'would remove (dry run; --yes removes)'}: {len(items)} item(s)")


@main.command("repair")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--world", "world_dir", default=None, help="World folder (sets $MSNB_WORLD).")
@click.option("--params", default=None, help="Campaign file (default: the one the run was made with).")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait for Rucio's re-replication.")
def repair_cmd(run_dir: str, world_dir: str | None, params: str | None, timeout: float) -> None:
    """Repair what verification found in a run's placement (declare bad, retry, re-ingest), then verify."""
    from .repair import repair

    folder = Path(run_dir).resolve()
    campaign = _run_campaign(folder, params, world_dir)
    try:
        result, actions, _ = repair(campaign, folder, timeout_s=timeout, log=click.echo)
    except MsnbError as exc:
        raise click.ClickException(str(exc)) from None
    for a in actions[:50]:
        click.echo(f"  {a.site:6s} {a.action:15s} {a.what}  {a.detail}")
    if len(actions) > 50:
        click.echo(f"  ... {len(actions) - 50} more (results/repair.json)")
    click.echo(f"repair: {'PASS' if result.passed else 'FAIL'}: {result.reason}")
    if not result.passed:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
