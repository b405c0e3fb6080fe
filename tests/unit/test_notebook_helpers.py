"""What every phase notebook does first and last (``open_phase``, ``show_gate``), and the run folder a
notebook opened by hand works in."""

from __future__ import annotations

from pathlib import Path

import pytest

from multisite_nb.domain.params import repo_root
from multisite_nb.domain.results import PhaseResult
from multisite_nb.run.folder import interactive_run_dir
from multisite_nb.run.notebook import open_phase, show_gate

CAMPAIGN = "parameters/campaign_3x3.yaml"


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What the helpers display (the Markdown a notebook shows), as text."""
    import IPython.display

    seen: list[str] = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs: seen.extend(str(o.data) for o in objs))
    return seen


def test_a_chained_notebook_gets_its_campaign_read_against_the_world_it_was_given(
    tmp_path: Path, shown: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a kernel may run anywhere: the manifest's paths are the checkout's
    monkeypatch.delenv("MSNB_WORLD", raising=False)
    campaign, run_dir = open_phase("transfer", CAMPAIGN, str(tmp_path / "run"), str(tmp_path / "w"))
    assert run_dir == str(tmp_path / "run")
    assert campaign.butler_repo("RAL") == str((tmp_path / "w" / "butler" / "RAL").resolve())
    assert "Campaign** `3x3`" in shown[0] and str(tmp_path / "run") in shown[0]
    without, _ = open_phase("transfer", CAMPAIGN, str(tmp_path / "run"))  # no world: the checkout's ./world
    assert without.butler_repo("RAL") == str(repo_root() / "world" / "butler" / "RAL")


def test_a_hand_run_placement_starts_a_run_and_a_later_phase_continues_the_latest(tmp_path: Path) -> None:
    first = interactive_run_dir("camp", "placement", tmp_path)
    assert first.parent == (tmp_path / "camp").resolve()
    assert interactive_run_dir("camp", "verify", tmp_path) == first
    second = tmp_path / "camp" / "29990101T000000Z-ffffff"  # a later run (run ids sort by time)
    second.mkdir()
    assert interactive_run_dir("camp", "qa", tmp_path) == second.resolve()
    assert interactive_run_dir("camp", "placement", tmp_path) not in (first, second)


def test_msnb_run_dir_names_the_folder_of_a_notebook_opened_by_hand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MSNB_RUN_DIR", str(tmp_path / "here"))
    assert interactive_run_dir("camp", "placement", tmp_path / "runs") == (tmp_path / "here").resolve()


def test_a_hand_run_folder_holding_a_credential_is_flagged(
    tmp_path: Path, shown: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "run"
    (folder / "logs").mkdir(parents=True)
    (folder / "logs" / "debug.txt").write_text("password = hunter2-and-more\n")
    monkeypatch.setenv("MSNB_RUN_DIR", str(folder))
    open_phase("verify", CAMPAIGN, "")
    out = "\n".join(shown)
    assert "Possible credential leak" in out and "logs/debug.txt:1" in out
    assert "hunter2" not in out
    assert "logs/debug.txt:1" in (folder / "logs" / "secret_scan.txt").read_text()


def test_the_gate_is_shown_as_recorded(shown: list[str]) -> None:
    show_gate(PhaseResult(phase="verify", passed=False, reason="2 problems at RAL"))
    assert "Gate: FAILED" in shown[0] and "2 problems at RAL" in shown[0]
