"""``bps submit`` with the manifest's BPS site config, waiting for the workflow to end.

Two plugins: parsl (the workflow runs inside ``bps submit`` on this machine) and PanDA
(``bps submit`` hands it to the facility; ``bps status`` says when it ends). A restart is
``bps restart`` of the last BPS attempt's submit directory (same graph, same configs).
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import yaml

from multisite_nb.adapters.workflow.base import (
    Attempt,
    BpsPlugin,
    Executor,
    Launch,
    child_env,
    tool_path,
)
from multisite_nb.adapters.workflow.submitfile import write_submit_file
from multisite_nb.domain.errors import WorkflowError
from multisite_nb.domain.params import repo_root

__all__ = ["BpsExecutor", "PandaExecutor", "ParslExecutor"]

_SECRET_NAME = re.compile(r"(?i)(pass|secret|token|credential|private|_key$|^key$)")
_STATUS_POLL = 60.0
#: What a PanDA submission passes on (names, and name prefixes) of this process's environment.
_PANDA_ENV = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "LANG",
        "TZ",
        "TMPDIR",
        "PYTHONPATH",
        "X509_USER_PROXY",
        "X509_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "SSL_CERT_FILE",
    }
)
_PANDA_ENV_PREFIXES = (
    "LC_",
    "PANDA_",
    "IDDS_",
    "BPS_",
    "CTRL_",
    "DAF_",
    "LSST_",
    "EUPS_",
    "S3_",
    "AWS_",
    "PGPASS",
    "DAF_BUTLER_",
)


class BpsExecutor(Executor, BpsPlugin):
    """A step as a BPS workflow; the plugin subclasses say what differs."""

    mode = "bps"
    log_name = "bps.log"

    def run(self, attempt: Attempt) -> Launch:
        note = ""
        if attempt.extend:
            cmd, env, cwd, submit_path = self._restart(attempt)
            note = "bps restart re-runs the saved workflow (same quantum graph and task configs)"
        else:
            cmd, env, cwd, submit_path = self._submit(attempt)
        attempt.save()
        rc, timed_out = attempt.run(cmd, env=env, cwd=cwd, timeout=attempt.timeout)
        run_id = _run_id(attempt.log)
        wms_class = _wms_class(submit_path)
        if not timed_out and run_id and run_id != "None" and wms_class:
            waited, timed_out = self._wait(attempt, run_id, wms_class, env=env, cwd=cwd)
            rc = rc if waited is None else waited
        graphs = sorted(submit_path.glob("*.qg")) if submit_path.is_dir() else []
        graph = graphs[0] if graphs else None
        attempt.record["graph"] = str(graph) if graph else attempt.record.get("graph")
        attempt.save()
        return Launch(rc, timed_out, graph=graph, note=note)

    def _submit(self, attempt: Attempt) -> tuple[list[str], dict[str, str], Path, Path]:
        submit_path, cwd = attempt.folder / "submit", attempt.folder
        sub = write_submit_file(
            attempt.campaign,
            attempt.step_run,
            attempt.folder / "submit.yaml",
            self,
            submit_path=submit_path,
            config_overrides=attempt.config_overrides,
        )
        environment = yaml.safe_load(sub.read_text()).get("environment") or {}
        cmd = [tool_path("bps"), "--long-log", "submit", str(sub)]
        attempt.record.update(
            {
                "submit_file": str(sub),
                "submit_path": str(submit_path),
                "command": cmd,
                "environment": environment,
                "cwd": str(cwd),
            }
        )
        return cmd, self.job_env(child_env(environment, db_auth=attempt.step_run.db_auth)), cwd, submit_path

    def _restart(self, attempt: Attempt) -> tuple[list[str], dict[str, str], Path, Path]:
        sr = attempt.step_run
        last = next((a for a in reversed(attempt.previous) if a.get("mode") == "bps" and a.get("submit_path")), None)
        if last is None:
            raise WorkflowError(
                f"{sr.where}: restart in bps mode needs an earlier BPS attempt of {sr.output_run} under this log dir"
            )
        submit_path = Path(last["submit_path"])
        cwd = Path(last.get("cwd") or submit_path.parent)  # parsl finds its checkpoints under ./runinfo
        cmd = [tool_path("bps"), "--long-log", "restart", "--id", str(submit_path)]
        if wms_class := _wms_class(submit_path):
            cmd[3:3] = ["--wms-service-class", wms_class]
        attempt.record.update(
            {
                "submit_path": str(submit_path),
                "command": cmd,
                "environment": last.get("environment"),
                "cwd": str(cwd),
                "graph": last.get("graph"),
            }
        )
        return cmd, self.job_env(child_env(last.get("environment"), db_auth=attempt.step_run.db_auth)), cwd, submit_path

    def _wait(
        self, attempt: Attempt, run_id: str, wms_class: str, *, env: Mapping[str, str], cwd: Path
    ) -> tuple[int | None, bool]:
        """Poll ``bps status`` (its exit code is a `WmsStates` value) until the workflow ends.

        A WMS that runs the workflow inside ``bps submit`` (parsl) has no status service: its
        first answer is not a state, and the submit's own exit code stands.
        """
        from lsst.ctrl.bps import WmsStates

        states = {s.value for s in WmsStates}
        ended = {WmsStates.SUCCEEDED.value, WmsStates.FAILED.value, WmsStates.DELETED.value, WmsStates.PRUNED.value}
        t0 = time.monotonic()
        while True:
            rc, _ = attempt.run(
                [tool_path("bps"), "status", "--wms-service-class", wms_class, "--id", run_id],
                env=env,
                cwd=cwd,
                timeout=600,
            )
            if rc not in states:
                return None, False
            if rc in ended:
                return (0 if rc == WmsStates.SUCCEEDED.value else rc), False
            if attempt.timeout is not None and time.monotonic() - t0 > attempt.timeout:
                return rc, True
            time.sleep(_STATUS_POLL)


class ParslExecutor(BpsExecutor):
    """BPS with the parsl plugin: the jobs run on this machine, in the toolkit's venv."""

    name = "bps-parsl"
    wms_match = "parsl"
    default_retries = 1
    final_job: ClassVar[Mapping[str, Any]] = {"requestCpus": 1, "requestMemory": 2048}

    def submit_additions(self) -> dict[str, Any]:
        """The ``environment`` the local jobs need: the toolkit venv and the checkout."""
        venv = Path(sys.executable).parent.parent
        return {
            "environment": {
                "PATH": f"{venv / 'bin'}:${{PATH}}",
                "CTRL_MPEXEC_DIR": str(venv),
                "DAF_BUTLER_DIR": str(venv),
                "PYTHONPATH": f"{repo_root()}:${{PYTHONPATH}}",
            }
        }

    def job_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """No credentials: BPS writes its whole environment to ``<submit>/<name>.env.info.yaml``,
        and a local parsl run needs none."""
        return {k: v for k, v in env.items() if not _SECRET_NAME.search(k)}


class PandaExecutor(BpsExecutor):
    """BPS with the PanDA plugin: the facility runs the jobs."""

    name = "bps-panda"
    wms_match = "panda"
    default_retries = 3

    def job_env(self, env: Mapping[str, str]) -> dict[str, str]:
        """Only what ``bps`` and the PanDA client need: the process basics, the LSST stack, PanDA/iDDS
        (their OIDC token variables included) and the Butler's storage credentials; nothing else —
        BPS writes its whole environment to ``<submit>/<name>.env.info.yaml``, which the facility keeps."""
        return {k: v for k, v in env.items() if k in _PANDA_ENV or k.startswith(_PANDA_ENV_PREFIXES)}


def _run_id(log: Path) -> str | None:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return None
    ids = re.findall(r"^Run Id: (\S+)", text, re.MULTILINE)
    return ids[-1] if ids else None


def _wms_class(submit_path: Path) -> str | None:
    for p in submit_path.glob("*_config.yaml"):
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError:
            continue
        if data.get("wmsServiceClass"):
            return str(data["wmsServiceClass"])
    return None
