"""The world as an operator sees it: `multisite-nb world status | up` and plain papermill."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from multisite_nb.domain.params import repo_root

pytestmark = pytest.mark.world
BIN = Path(sys.executable).parent


def run(world, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / args[0]), *args[1:]], env=world.env(), cwd=repo_root(), capture_output=True, text=True, timeout=300
    )


def test_status_shows_every_site_healthy(world) -> None:
    out = run(world, "multisite-nb", "world", "status", "--dir", str(world.root))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "rucio: reachable" in out.stdout
    for site, rse in (("USDF", "USDF_DISK"), ("IN2P3", "IN2P3_DISK"), ("RAL", "RAL_DISK"), ("LANCS", "LANCS_DISK")):
        line = next(ln for ln in out.stdout.splitlines() if ln.strip().startswith(site))
        assert rse in line and "known" in line and "butler ok" in line, line
    data = json.loads(run(world, "multisite-nb", "world", "status", "--dir", str(world.root), "--json").stdout)
    assert data["sites"]["USDF"]["by_type"]["raw"] == 72


def test_up_on_an_up_world_changes_nothing(world) -> None:
    before = (world.root / "world.json").read_text()
    out = run(world, "multisite-nb", "world", "up", "--dir", str(world.root))
    assert out.returncode == 0, out.stderr
    assert "already up" in out.stdout and "nothing changed" in out.stdout
    assert (world.root / "world.json").read_text() == before


def test_world_records_its_spec_and_refuses_another(world, tmp_path: Path) -> None:
    state = json.loads((world.root / "world.json").read_text())
    assert state["spec_file"] == str(repo_root() / "parameters" / "worlds" / "rehearsal_3x3.yaml")
    other = tmp_path / "other.yaml"
    text = (repo_root() / "parameters" / "worlds" / "rehearsal_3x3.yaml").read_text()
    other.write_text(text.replace("visits_per_band: 2", "visits_per_band: 3"))
    before = (world.root / "world.json").read_text()
    out = run(world, "multisite-nb", "world", "up", "--dir", str(world.root), "--spec", str(other))
    assert out.returncode != 0
    assert f"{other}: the world {world.root} was built from another spec" in out.stderr
    assert (world.root / "world.json").read_text() == before
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("visits_per_band: 2", "visits_per_band: many"))
    out = run(world, "multisite-nb", "world", "up", "--dir", str(world.root), "--spec", str(bad))
    assert out.returncode != 0 and f"{bad}: key 'visits_per_band'" in out.stderr


def test_plain_papermill_with_a_parameters_file(world, tmp_path: Path) -> None:
    out_nb = tmp_path / "01_placement.ipynb"
    proc = run(
        world,
        "papermill",
        "notebooks/01_placement.ipynb",
        str(out_nb),
        "-f",
        "parameters/papermill_3x3.yaml",
        "-p",
        "run_dir",
        str(tmp_path / "run"),
        "--no-progress-bar",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "results" / "placement.json").read_text())
    assert result["passed"] and set(result["summary"]["sites"]) == {"IN2P3", "RAL", "LANCS"}


def _world_processes(root: Path) -> list[str]:
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(root) in cmdline:
            found.append(cmdline[:200])
    return found


def test_a_world_up_that_fails_part_way_leaves_nothing_running(tmp_path: Path) -> None:
    """The repositories' folder cannot be made (a file is in its place): Rucio has started when the
    Butlers cannot be created; the command says so in one line, with a log, and stops Rucio."""
    root = tmp_path / "world"
    root.mkdir()
    (root / "butler").write_text("not a folder\n")
    out = subprocess.run(
        [str(BIN / "multisite-nb"), "world", "up", "--dir", str(root)],
        cwd=repo_root(),
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "XDG_STATE_HOME": str(tmp_path / "state")},
    )
    assert out.returncode != 0, out.stdout
    assert "rucio: started" in out.stdout and "stopping the services it started" in out.stdout, out.stdout
    assert "Traceback" not in out.stdout + out.stderr and "the traceback is in" in out.stderr, out.stderr
    assert _world_processes(root) == []
    down = subprocess.run(
        [str(BIN / "multisite-nb"), "world", "status", "--dir", str(root)], capture_output=True, text=True, timeout=120
    )
    assert "NOT reachable" in down.stdout, down.stdout
