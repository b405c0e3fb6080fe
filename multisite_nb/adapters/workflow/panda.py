"""A PanDA workflow built offline: what a facility would run, checked before anything is submitted.

ctrl_bps_panda builds its whole iDDS workflow without a PanDA server: BPS makes the quantum
graph (``pipetask qgraph`` against the site's repository), clusters it, and the PanDA plugin
turns each cluster into an iDDS task. :func:`prepare_panda` does that for one step at one
site, in a child process (the plugin needs ``PANDA_BEHIND_REAL_LB`` set when it is imported,
and ``pipetask`` on its path), and returns each task as a :class:`PandaTask`: queue, cloud,
memory, cores, attempts, and the per-job command decoded (which repository it reads).

Run as a module it is that child: ``python -m multisite_nb.adapters.workflow.panda SUBMIT OUT``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from multisite_nb.adapters.workflow import child_env
from multisite_nb.adapters.workflow.submitfile import write_submit_file
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import WorkflowError
from multisite_nb.domain.steps import StepRun

__all__ = ["PandaTask", "prepare_panda"]

_DECODER = "cmd_line_decoder.py "


class PandaTask(BaseModel):
    """One iDDS task of a prepared PanDA workflow."""

    name: str
    queue: str
    cloud: str
    site: str | None
    memory_mb: int
    cores: int
    max_attempts: int | None
    command: str  # the per-job command line, decoded

    @property
    def label(self) -> str:
        """The pipeline task (or ``pipetaskInit`` / ``finalJob``) it runs (its name is ``<workflow>_NN_<label>_NN``)."""
        m = re.search(r"_\d+_(.+)_\d+$", self.name)
        return m.group(1) if m else self.name


def _decode(executable: str) -> str:
    """The job's command line: ctrl_bps_panda hex-encodes it after its decoder script."""
    i = executable.find(_DECODER)
    if i < 0:
        return executable
    token = executable[i + len(_DECODER) :].split(" ", 1)[0]
    try:
        return bytes.fromhex(token).decode()
    except ValueError:
        return executable


def _tasks(workflow: Any) -> list[dict[str, Any]]:
    works = workflow.idds_client_workflow.get_all_works()
    return [
        PandaTask(
            name=w.task_name,
            queue=w.task_queue,
            cloud=w.task_cloud,
            site=getattr(w, "task_site", None),
            memory_mb=int(w.task_rss),
            cores=int(getattr(w, "core_count", 1) or 1),
            max_attempts=getattr(w, "maxAttempt", None),
            command=_decode(str(w.executable)),
        ).model_dump()
        for w in works
    ]


def prepare_panda(
    campaign: Campaign, step_run: StepRun, out_dir: str | os.PathLike[str], *, timeout: float = 1800
) -> list[PandaTask]:
    """Build ``step_run``'s PanDA workflow offline in ``out_dir`` (submit file, graph, pickle); its tasks.

    ``campaign`` must name the PanDA plugin in its site manifest (the facilities'). Nothing
    is sent to PanDA or iDDS.

    Raises
    ------
    WorkflowError
        With the end of the log when BPS could not prepare it.
    """
    out = Path(out_dir).resolve()
    submit = write_submit_file(campaign, step_run, out / "submit.yaml", "bps-panda", submit_path=out / "submit")
    result, log = out / "tasks.json", out / "prepare.log"
    env = child_env({"PANDA_BEHIND_REAL_LB": "1"})
    with log.open("w") as fh:
        proc = subprocess.run(
            [sys.executable, "-m", __name__, str(submit), str(result)],
            cwd=out,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    if proc.returncode != 0 or not result.is_file():
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise WorkflowError(f"{step_run.where}: the PanDA workflow could not be prepared offline; {log}:\n{tail}")
    return [PandaTask.model_validate(t) for t in json.loads(result.read_text())]


def main(argv: list[str]) -> int:
    """The child: ``prepare_driver`` without the submission checks, tasks written as JSON."""
    from lsst.ctrl.bps.drivers import prepare_driver

    submit, out = argv
    _, workflow = prepare_driver(submit, runWmsSubmissionChecks=False)
    Path(out).write_text(json.dumps(_tasks(workflow), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
