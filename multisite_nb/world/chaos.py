"""Faults injected into a campaign running on the embedded world, and an independent count of what was lost.

:class:`Chaos` starts ``multisite-nb supervise`` on a world, plays the service manager (a
supervisor that was killed is started again after ``restart_s``, as systemd's ``Restart=always``
does), and injects one fault every ``interval_s`` from a seeded list:

``kill_supervisor``  SIGKILL of the supervising process (its chain dies with it)
``kill_rucio``       SIGKILL of the Rucio server (gunicorn)
``kill_daemons``     SIGKILL of the conveyor and the other Rucio daemons
``kill_step``        SIGKILL of a running step's process group (a pipetask of a group)
``flip_byte``        a byte flipped in a raw already moved to a remote site (its first byte, so that
                     a reader of the file notices, as a FITS reader would)
``delete_file``      a raw already moved to a remote site deleted from its disk
``repo_away``        a remote site's Butler repository unreadable (moved away) for ``hold_s``
``fail_group``       the stand-in task failing once, in whichever quantum runs next
``disk_full``        a remote site's RSE full (a size-limited tmpfs under its files, filled) for
                     ``hold_s``: real ENOSPC; the person's fix (space freed) is the bench's

A fault that finds nothing to act on yet (no step running, no file moved) is tried again at the next
tick. :func:`files_lost` checks, after the verdict and apart from the toolkit's own verification,
every planned file at every remote site against Rucio, the site's Butler and its disk.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.adapters.files import adler32_of
from multisite_nb.adapters.processes import live_pid, read_pid_record, signal_group
from multisite_nb.adapters.rucio.ops import RucioOps
from multisite_nb.adapters.tables import iter_site_files, load_plan
from multisite_nb.domain.naming import plan_path
from multisite_nb.world.manager import World
from multisite_nb.world.standin import FAIL_ONCE_VARIABLE

__all__ = ["FAULTS", "NEEDS_A_PERSON", "Chaos", "ChaosReport", "Injected", "files_lost", "world_up"]

#: Every fault :class:`Chaos` knows, in the order of the module's docstring.
FAULTS = (
    "kill_supervisor",
    "kill_rucio",
    "kill_daemons",
    "kill_step",
    "flip_byte",
    "delete_file",
    "repo_away",
    "fail_group",
    "disk_full",
)

#: Faults that need a person by their nature (an alert is the right answer, not a retry).
NEEDS_A_PERSON = frozenset({"disk_full"})


@dataclass
class Injected:
    """One fault as it was injected: when (seconds after the start), what, on what."""

    kind: str
    at_s: float
    detail: str


@dataclass
class ChaosReport:
    """What a chaos campaign did and how it ended."""

    injected: list[Injected] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    restarts: int = 0
    exit_code: int | None = None
    wall_s: float = 0.0
    run_dir: Path | None = None
    log: Path | None = None


def _exe() -> str:
    return str(Path(sys.executable).parent / "multisite-nb")


class Chaos:
    """A supervised campaign on ``world`` with faults injected (see the module's docstring).

    Parameters
    ----------
    world : World
        The embedded world, up, of the campaign in ``params``.
    params : Path
        The campaign file ``supervise`` runs.
    faults : sequence of str
        The kinds to draw from (each of :data:`FAULTS`), in the seeded order ``plan`` makes.
    """

    def __init__(
        self,
        world: World,
        params: Path,
        runs_root: Path,
        faults: Sequence[str],
        *,
        seed: int = 2026,
        interval_s: float = 60.0,
        first_s: float | None = None,
        hold_s: float = 120.0,
        restart_s: float = 5.0,
        small_disk: str | None = None,
        log: Callable[[str], object] = print,
    ) -> None:
        unknown = sorted(set(faults) - set(FAULTS))
        if unknown:
            raise ValueError(f"unknown fault(s) {unknown}; known: {', '.join(FAULTS)}")
        self.world, self.params, self.runs_root = world, params, runs_root
        self.rng = random.Random(seed)
        self.queue = list(faults)
        self.interval_s, self.hold_s, self.restart_s = interval_s, hold_s, restart_s
        self.first_s = interval_s if first_s is None else first_s
        self.log, self.small_disk = log, small_disk
        self.report = ChaosReport()
        self.work = runs_root.parent / "chaos"
        self.work.mkdir(parents=True, exist_ok=True)
        self.fail_once = self.work / "fail_once"
        self.report.log = self.work / "supervise.log"
        self._undo: list[tuple[float, Callable[[], object]]] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._t0 = 0.0

    # -- the supervisor, as a service manager keeps it -----------------------------------------
    def _start(self) -> None:
        env = {**self.world.env(), FAIL_ONCE_VARIABLE: str(self.fail_once)}
        cmd = [
            _exe(),
            "supervise",
            str(self.params),
            "--world",
            str(self.world.root),
            "--runs-root",
            str(self.runs_root),
        ]
        assert self.report.log is not None
        with self.report.log.open("ab") as out:
            self._proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def run(self, timeout_s: float = 3600.0, operator: Callable[[], object] | None = None) -> ChaosReport:
        """Run until the supervisor exits by itself (its verdict) or ``timeout_s``; undo what is held.

        ``operator``, if given, is called every second meanwhile: the person who answers the alerts
        (a test's, or a bench's, stand-in for one).
        """
        self._t0 = time.monotonic()
        self._start()
        next_fault = self._t0 + self.first_s
        restart_at: float | None = None
        try:
            while time.monotonic() - self._t0 < timeout_s:
                now = time.monotonic()
                self._undo_due(now)
                assert self._proc is not None
                code = self._proc.poll()
                if code is not None and restart_at is None:
                    if code == -signal.SIGKILL:
                        restart_at = now + self.restart_s
                    else:
                        self.report.exit_code = code
                        break
                if restart_at is not None and now >= restart_at:
                    self.report.restarts += 1
                    self.log(f"chaos: starting the supervisor again (restart {self.report.restarts})")
                    self._start()
                    restart_at = None
                if self.queue and now >= next_fault and restart_at is None:
                    if self._inject(self.queue[0]):
                        self.queue.pop(0)
                        next_fault = now + self.interval_s
                    else:
                        next_fault = now + 5.0
                if operator is not None:
                    operator()
                time.sleep(1.0)
            else:
                self.log(f"chaos: {timeout_s:.0f} s passed without a verdict: stopping the supervisor")
        finally:
            if self._proc is not None and self._proc.poll() is None:
                signal_group(self._proc.pid, signal.SIGTERM)
                try:
                    self._proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    signal_group(self._proc.pid, signal.SIGKILL)
            for _, undo in self._undo:
                undo()
            self._undo.clear()
        self.report.wall_s = time.monotonic() - self._t0
        self.report.skipped = list(self.queue)
        runs = sorted(p for p in (self.runs_root).glob("*/*") if (p / "run.json").is_file())
        self.report.run_dir = runs[-1] if runs else None
        return self.report

    def _undo_due(self, now: float) -> None:
        due = [u for u in self._undo if u[0] <= now]
        self._undo = [u for u in self._undo if u[0] > now]
        for _, undo in due:
            undo()

    # -- the faults ------------------------------------------------------------------------------
    def _inject(self, kind: str) -> bool:
        detail = getattr(self, f"_{kind}")()
        if detail is None:
            return False
        at = time.monotonic() - self._t0
        self.report.injected.append(Injected(kind, round(at, 1), detail))
        self.log(f"chaos: {at:6.0f} s  {kind}: {detail}")
        return True

    def _kill_supervisor(self) -> str | None:
        if self._proc is None or self._proc.poll() is not None:
            return None
        os.kill(self._proc.pid, signal.SIGKILL)
        return f"pid {self._proc.pid}"

    def _kill_named(self, name: str) -> str | None:
        pid = self.world.rucio.pids().get(name)
        if pid is None:
            return None
        signal_group(pid, signal.SIGKILL)
        return f"{name} pid {pid}"

    def _kill_rucio(self) -> str | None:
        return self._kill_named("gunicorn")

    def _kill_daemons(self) -> str | None:
        return self._kill_named("site_services")

    def _kill_step(self) -> str | None:
        live = []
        for path in sorted(self.runs_root.glob("*/*/artifacts/logs/**/pid.json")):
            record = read_pid_record(path)
            if record is not None and live_pid(record) is not None:
                live.append((path, record))
        if not live:
            return None
        path, record = self.rng.choice(live)
        signal_group(record.pid, signal.SIGKILL)
        return f"pid {record.pid} ({path.parent.relative_to(self.runs_root).as_posix()})"

    def _moved_raw(self) -> tuple[str, Path] | None:
        """A raw already at a remote site's disk (drawn by the seed)."""
        found = []
        for site in self.world.campaign.remote_sites:
            root = Path(self.world.rse_root(site))
            found += [(site, p) for p in sorted(root.rglob("*")) if p.is_file() and "raw" in p.parts]
        return self.rng.choice(found) if found else None

    def _flip_byte(self) -> str | None:
        moved = self._moved_raw()
        if moved is None:
            return None
        site, path = moved
        data = bytearray(path.read_bytes())
        data[0] ^= 0xFF
        path.write_bytes(bytes(data))
        return f"{site} {path.name}"

    def _delete_file(self) -> str | None:
        moved = self._moved_raw()
        if moved is None:
            return None
        site, path = moved
        path.unlink()
        return f"{site} {path.name}"

    def _repo_away(self) -> str | None:
        site = self.rng.choice(self.world.campaign.remote_sites)
        repo = Path(self.world.campaign.butler_repo(site))
        away = repo.with_name(repo.name + ".away")
        if not repo.is_dir() or away.exists():
            return None
        repo.rename(away)
        self._undo.append((time.monotonic() + self.hold_s, lambda: away.rename(repo)))
        return f"{site} for {self.hold_s:.0f} s"

    def _fail_group(self) -> str | None:
        self.fail_once.write_text("fail the next quantum once\n")
        return f"the next quantum ({self.fail_once.name})"

    def _disk_full(self) -> str | None:
        site = self.small_disk
        if site is None:
            self.log("chaos: disk_full needs a site whose RSE is on a small file system (small_disk)")
            return None
        root = Path(self.world.rse_root(site))
        filler = root / "chaos-filler"
        usage = shutil.disk_usage(root)
        if usage.free > 512 * 2**20:
            self.log(f"chaos: disk_full needs {root} on a small file system (free {usage.free / 2**20:.0f} MiB)")
            return None
        with filler.open("wb") as out:
            try:
                while True:
                    out.write(b"\0" * 2**20)
            except OSError:
                pass
        self._undo.append((time.monotonic() + self.hold_s, lambda: filler.unlink(missing_ok=True)))
        return f"{site}: {root} filled for {self.hold_s:.0f} s"


def world_up(world: World, spec: Path) -> None:
    """Bring ``world`` up through the command line, as an operator does: its daemons are then nobody's
    children here (a daemon a fault kills is reaped by the system, not left a zombie of this process)."""
    proc = subprocess.run(
        [_exe(), "world", "up", "--spec", str(spec), "--params", str(world.campaign_file), "--dir", str(world.root)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"world up failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")


def files_lost(world: World, run_dir: Path) -> list[str]:
    """Every planned file of a run that is not whole at its remote site, checked apart from the toolkit's
    verification: Rucio's replica AVAILABLE there, the file on the site's disk with the plan's (or
    Rucio's) checksum, its dataset in the site's Butler. One line per file and layer."""
    campaign = world.campaign
    plan = load_plan(plan_path(run_dir))
    ops = RucioOps.for_campaign(campaign)
    lost: list[str] = []
    for site in plan.sites:
        rse, root = campaign.site(site).rse, Path(world.rse_root(site))
        with open_site_butler(campaign, site) as butler:
            for batch in iter_site_files(plan, site):
                names = [f.lfn for f in batch]
                states = ops.file_replica_states(names, rse)
                sums = ops.replica_checksums([f.lfn for f in batch if not f.adler32], rse)
                for f in batch:
                    if states.get(f.lfn) != "AVAILABLE":
                        lost.append(f"{site} rucio {f.lfn}: {states.get(f.lfn, 'no replica')}")
                    path = root / f.lfn
                    want = f.adler32 or sums.get(f.lfn)
                    if not path.is_file():
                        lost.append(f"{site} disk {f.lfn}: missing")
                    elif path.stat().st_size != f.size or (want and adler32_of(path) != want):
                        lost.append(f"{site} disk {f.lfn}: not the planned file")
                    if butler.get_dataset(uuid.UUID(f.id)) is None:
                        lost.append(f"{site} butler {f.lfn}: dataset {f.id} not in the registry")
    return lost
