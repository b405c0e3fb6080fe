"""Shared fixtures: the embedded world, started once per test session and stopped by PID."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from multisite_nb.config import repo_root

CAMPAIGN = repo_root() / "parameters" / "campaign_3x3.yaml"


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the test world lives: a fresh folder per session."""
    return tmp_path_factory.mktemp("world")


@pytest.fixture(scope="session")
def world(world_dir: Path) -> Iterator:
    """The embedded world (real Rucio server + site Butlers + synthetic data), up for the session."""
    from multisite_nb.world.manager import World

    old = os.environ.get("MSNB_WORLD")
    os.environ["MSNB_WORLD"] = str(world_dir)
    w = World(world_dir, CAMPAIGN)
    try:
        w.up(log=lambda msg: None)
        yield w
    finally:
        w.down(log=lambda msg: None)
        if old is None:
            os.environ.pop("MSNB_WORLD", None)
        else:
            os.environ["MSNB_WORLD"] = old
