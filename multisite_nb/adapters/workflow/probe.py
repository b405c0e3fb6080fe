"""What a site's step environment reports about its software, asked in that environment.

A step's commands run with the environment its executor gives them (:func:`~.base.child_env`, and
for a BPS plugin the submit file's ``environment`` through the plugin's ``job_env``). One small
``python -c`` runs there, through :func:`~multisite_nb.adapters.processes.run_logged`, and reports
the versions of the packages it is asked about (``importlib.metadata``; a task's module is reported
as the distribution that holds it). For a PanDA site this is the submitting side's environment:
the facility's job environment is not reachable from here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from multisite_nb.adapters.processes import run_logged
from multisite_nb.adapters.workflow.base import BpsPlugin, child_env, executor_for, tool_path
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import WorkflowError

__all__ = ["software_versions", "step_environment"]

#: The probe: argv = [out file, packages..., "--modules", modules...]; writes {name: version} as JSON.
_PROBE = """
import importlib.metadata as md, json, platform, sys
args = sys.argv[1:]
out, names = args[0], args[1:]
cut = names.index("--modules") if "--modules" in names else len(names)
found = {"python": platform.python_version()}
for name in names[:cut]:
    try:
        found[name] = md.version(name)
    except md.PackageNotFoundError:
        pass
index = None
for module in names[cut + 1:]:
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        dist = "-".join(parts[:i]).replace("_", "-")
        try:
            found[dist] = md.version(dist)
            break
        except md.PackageNotFoundError:
            continue
    else:
        index = md.packages_distributions() if index is None else index
        for dist in index.get(parts[0], [])[:1]:
            found[dist] = md.version(dist)
with open(out, "w") as fh:
    json.dump(found, fh)
"""


def step_environment(campaign: Campaign, site: str) -> dict[str, str]:
    """The environment ``site``'s step commands get from the manifest's executor (no credentials added)."""
    executor = executor_for(campaign)
    if isinstance(executor, BpsPlugin):
        return executor.job_env(child_env(executor.submit_additions().get("environment")))
    return child_env()


def software_versions(
    campaign: Campaign,
    site: str,
    packages: Sequence[str],
    folder: str | os.PathLike[str],
    *,
    modules: Sequence[str] = (),
    timeout: float = 120,
) -> dict[str, str]:
    """Package -> version as ``site``'s step environment reports them (``python`` too).

    Parameters
    ----------
    campaign, site
        Whose environment.
    packages
        Distribution names (``lsst-daf-butler``); one not installed there is left out.
    folder
        Where the probe's log and answer go.
    modules
        Python modules (a task's) reported as the distribution that holds each.
    timeout
        Seconds before the probe is stopped.

    Raises
    ------
    WorkflowError
        If the probe did not answer.
    """
    where = Path(folder)
    where.mkdir(parents=True, exist_ok=True)
    out, log = where / "software.json", where / "software.log"
    out.unlink(missing_ok=True)
    cmd = [tool_path("python"), "-c", _PROBE, str(out), *packages, "--modules", *modules]
    rc, timed_out = run_logged(cmd, log, cwd=where, env=step_environment(campaign, site), timeout=timeout)
    if rc != 0 or timed_out or not out.is_file():
        why = "timed out" if timed_out else f"exit code {rc}"
        raise WorkflowError(f"{site}: the step environment's software could not be read ({why}; {log})")
    versions = json.loads(out.read_text())
    return {str(k): str(v) for k, v in versions.items()}
