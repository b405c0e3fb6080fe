"""Shared fixtures: the embedded world, started once per test session and stopped by PID."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import pytest

from multisite_nb.domain.params import repo_root

if TYPE_CHECKING:
    pass

CAMPAIGN = repo_root() / "parameters" / "campaign_3x3.yaml"
SCALE_JOB = pytest.StashKey["ScaleJob"]()


def campaign_variant(
    folder: Path, name: str, sites: tuple[str, ...] = (), *, changes: dict[str, Any] | None = None
) -> Path:
    """The shipped campaign under another name and output prefix (own collections, same world).

    ``sites``: only these remote sites (default: all of them); ``changes``: top-level keys set
    after that. Returns the new campaign file.
    """
    import yaml

    data = yaml.safe_load(CAMPAIGN.read_text())
    data.update(
        campaign=name,
        scope="3x3",
        manifest=str(CAMPAIGN.parent / data["manifest"]),
        pipeline=str(CAMPAIGN.parent / data["pipeline"]),
        collections={"inputs": ["HSC/defaults"], "output_prefix": name},
    )
    if sites:
        data["sites"] = {s: data["sites"][s] for s in sites}
    data.update(changes or {})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run_through_calibration(campaign: Any, run_dir: Path) -> None:
    """Phases 1-3, the sites' early stage and the central calibration, each asserted to pass."""
    from multisite_nb import phases

    for phase in (phases.placement.run, phases.transfer.run, phases.verify.run):
        result = phase(campaign, run_dir)[0]
        assert result.passed, (result.phase, result.reason)
    for result in (
        phases.submit.run(campaign, run_dir, "early")[0],
        phases.gather_redistribute.run(campaign, run_dir, "calibration")[0],
    ):
        assert result.passed, (result.phase, result.reason)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--db",
        choices=("sqlite", "postgresql"),
        default=os.environ.get("MSNB_TEST_DB", "sqlite"),
        help="database back end of the session's embedded world (default: $MSNB_TEST_DB or sqlite)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI timeout, ``kill``) ends the session like Ctrl-C: fixtures tear down and
    every service the tests started is stopped by PID, instead of outliving the run."""
    signal.signal(signal.SIGTERM, _interrupt)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """The scale tests run last: their run goes on in the background meanwhile (``scale_job``)."""
    from scale_job import TEST_FILE

    scale = [i for i in items if i.nodeid.startswith(TEST_FILE)]
    if scale:
        items[:] = [i for i in items if not i.nodeid.startswith(TEST_FILE)] + scale


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the 20k scale run in the background when a scale test is selected."""
    from scale_job import TEST_FILE, ScaleJob

    if session.config.option.collectonly or not any(i.nodeid.startswith(TEST_FILE) for i in session.items):
        return
    session.config.stash[SCALE_JOB] = ScaleJob.start()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the scale run's processes (by PID) and take its world down, however the session ended."""
    job = session.config.stash.get(SCALE_JOB, None)
    if job is not None:
        job.stop()


@pytest.fixture(scope="session")
def db(pytestconfig: pytest.Config) -> str:
    """The session world's database back end (``--db``)."""
    return str(pytestconfig.getoption("db"))


def reachable_tmpdir(prefix: str) -> Iterator[Path]:
    """A fresh folder under /tmp that another local user can reach (the PostgreSQL server runs as
    ``postgres`` when the tests run as root, and pytest's own temporary folders are private)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    folder.chmod(0o711)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory, db: str) -> Iterator[Path]:
    """Where the test world lives: a fresh folder per session."""
    if db == "postgresql":
        yield from reachable_tmpdir("msnb-test-world-")
    else:
        yield tmp_path_factory.mktemp("world")


@pytest.fixture(scope="session")
def world(world_dir: Path, db: str) -> Iterator:
    """The embedded world (real Rucio server + site Butlers + synthetic data), up for the session."""
    from multisite_nb.world.manager import World

    old = os.environ.get("MSNB_WORLD")
    os.environ["MSNB_WORLD"] = str(world_dir)
    w = World(world_dir, CAMPAIGN, db=db)
    try:
        w.up(log=lambda msg: None)
        yield w
    finally:
        w.down(log=lambda msg: None)
        if old is None:
            os.environ.pop("MSNB_WORLD", None)
        else:
            os.environ["MSNB_WORLD"] = old
