"""What every phase notebook does first and last, so the notebooks hold only their views.

:func:`open_phase` loads the campaign and finds the run folder (the ``run_dir`` parameter in a
chain; by hand: ``$MSNB_RUN_DIR``, a new run for placement, else the campaign's latest run —
scanned for credentials left there by earlier hand-run work). :func:`show_gate` displays the
recorded verdict.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from multisite_nb.adapters.files import atomic_write_text
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.params import repo_root
from multisite_nb.run.context import load_for_world
from multisite_nb.run.folder import interactive_run_dir
from multisite_nb.run.secrets import known_secrets_from_rucio_config, scan_for_secrets

if TYPE_CHECKING:
    from multisite_nb.domain.results import PhaseResult

__all__ = ["open_phase", "show_gate"]


def open_phase(phase: str, campaign_file: str, run_dir: str = "", world_dir: str = "") -> tuple[Campaign, str]:
    """The campaign and the run folder a phase notebook works in; shows both.

    Parameters
    ----------
    phase
        The registered phase (decides whether a hand-run notebook starts a new run).
    campaign_file
        The campaign parameter file (relative paths from the checkout).
    run_dir
        The ``run_dir`` parameter; empty when the notebook is opened by hand.
    world_dir
        The world the campaign runs on (the chain passes it); empty: ``$MSNB_WORLD``, or none.
        The manifest's relative paths are the checkout's, wherever the kernel runs.
    """
    from IPython.display import Markdown, display

    campaign = load_for_world(campaign_file, world_dir or None, base=repo_root())
    if not run_dir:
        folder = interactive_run_dir(campaign.name, phase)
        _scan_hand_run(folder, campaign)
        run_dir = str(folder)
    display(
        Markdown(
            f"**Campaign** `{campaign.name}` — central {campaign.central}, sites "
            f"{', '.join(campaign.remote_sites)}; run folder `{run_dir}`"
        )
    )
    return campaign, run_dir


def _scan_hand_run(folder: Path, campaign: Campaign) -> None:
    """Scan a folder opened by hand (no chain scanned it): warn, and list what was found in ``logs/``."""
    from IPython.display import Markdown, display

    known = known_secrets_from_rucio_config(campaign.manifest.rucio.config)
    findings = scan_for_secrets([folder], known)
    if not findings:
        return
    lines = [f"{Path(f.path).relative_to(folder).as_posix()}:{f.line}: {f.kind}" for f in findings]
    atomic_write_text(folder / "logs" / "secret_scan.txt", "\n".join(lines) + "\n")
    display(
        Markdown(
            "**Possible credential leak in this run folder** — do not share it until it is cleaned "
            "and the credentials are rotated:\n\n" + "\n".join(f"* `{ln}`" for ln in lines[:20])
        )
    )


def show_gate(result: PhaseResult) -> None:
    """The phase's recorded verdict (the chain reads the result file; a failed gate stops it)."""
    from IPython.display import Markdown, display

    display(Markdown(f"### Gate: {'PASSED' if result.passed else 'FAILED'}\n\n{result.reason}"))
