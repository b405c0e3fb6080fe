"""The phase notebooks: sources are jupytext percent files paired with the stored notebooks.

Edit ``notebooks/NN_<phase>.py`` and run ``make notebooks`` (``jupytext --sync``); the stored
``.ipynb`` (what papermill, JupyterLab and Voilà open) must then say the same, without outputs.
Every registered phase has its pair, and each notebook calls its phase's library function.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest

from multisite_nb.domain.params import repo_root
from multisite_nb.phases import registry

NOTEBOOKS = repo_root() / "notebooks"
PHASES = list(registry.phases())


def _cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, tuple[str, ...]]]:
    return [(c.cell_type, c.source.strip(), tuple(c.metadata.get("tags", ()))) for c in nb.cells]


@pytest.mark.parametrize("phase", PHASES, ids=[p.name for p in PHASES])
def test_every_phase_has_a_paired_notebook_in_sync(phase: registry.Phase) -> None:
    py, ipynb = NOTEBOOKS / f"{phase.notebook}.py", NOTEBOOKS / f"{phase.notebook}.ipynb"
    assert py.is_file() and ipynb.is_file(), f"{phase.name}: {py.name} and {ipynb.name} must both exist"
    source, stored = jupytext.read(py), nbformat.read(ipynb, as_version=4)
    assert _cells(source) == _cells(stored), f"{ipynb.name} is out of sync with {py.name}: run `make notebooks`"
    assert stored.metadata.get("jupytext", {}).get("formats") == "ipynb,py:percent"
    for cell in stored.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{ipynb.name} is stored with outputs"
    tagged = [c for c in stored.cells if "parameters" in c.metadata.get("tags", ())]
    assert len(tagged) == 1 and "run_dir" in tagged[0].source, f"{ipynb.name}: one parameters cell with run_dir"
    code = "\n".join(c.source for c in stored.cells if c.cell_type == "code")
    called = (f"phases.{phase.name}.run(", f"{phase.name}_phase.run(")
    assert any(c in code for c in called), f"{ipynb.name} does not call its phase ({phase.name}.run)"


def test_no_stray_notebooks() -> None:
    known = {p.notebook for p in PHASES}
    stray = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb") if p.stem not in known)
    assert not stray, f"notebooks with no registered phase: {stray}"


def test_sources_are_linted_as_python() -> None:
    """The percent sources are plain Python: a syntax error shows here, not in a kernel."""
    for py in sorted(NOTEBOOKS.glob("*.py")):
        compile(Path(py).read_text(), str(py), "exec")
