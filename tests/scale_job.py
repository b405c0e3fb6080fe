"""The 20k scale run as a background job of the test session.

Moving ~24,000 files through the world's conveyor takes most of the scale test's time, and the
conveyor is a process of its own that leaves the other core free. So when ``tests/test_scale.py``
is selected, the session starts the job as soon as collection ends (its own world folder, the
real CLI: ``world up`` then ``run --phases placement,transfer,verify``), the other tests run
meanwhile, and the scale tests (moved to the end) wait for it and read what it left. The job's
processes are one process group, stopped by PID at the end of the session whatever happened,
and its world is taken down.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from multisite_nb.adapters.processes import stop_group
from multisite_nb.domain.params import repo_root

BIN = repo_root() / ".venv" / "bin"
PARAMS = repo_root() / "parameters"
SHARD = 5000  # files per dataset in the scale run: IN2P3's 16,194 files travel as a container of four
TEST_FILE = "tests/test_scale.py"
SITES = ("IN2P3",)  # the remote sites of the scale run


@dataclass
class ScaleJob:
    """The background scale run: its folder, files and process."""

    folder: Path
    proc: subprocess.Popen[bytes] | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def world(self) -> Path:
        return self.folder / "world"

    @property
    def params(self) -> Path:
        return self.folder / "campaign.yaml"

    @property
    def runs(self) -> Path:
        return self.folder / "runs"

    @property
    def log(self) -> Path:
        return self.folder / "job.log"

    @classmethod
    def start(cls) -> ScaleJob:
        """Write the campaign (datasets capped at ``SHARD`` files) and start the job."""
        job = cls(Path(tempfile.mkdtemp(prefix="msnb-scale-test-", dir="/tmp")))
        manifest = yaml.safe_load((PARAMS / "sites" / "embedded.yaml").read_text())
        manifest["rucio"]["max_files_per_dataset"] = SHARD
        manifest["workflow"]["bps_site_config"] = str(repo_root() / manifest["workflow"]["bps_site_config"])
        (job.folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
        campaign = yaml.safe_load((PARAMS / "campaign_scale_20k.yaml").read_text())
        campaign.update(manifest=str(job.folder / "manifest.yaml"), pipeline=str(PARAMS / campaign["pipeline"]))
        # IN2P3 alone: its 1,050 tracts and ~16,800 files are the scale; RAL's and LANCS's ~7,000 more
        # files added minutes of a core to the session and nothing the tests ask of it
        campaign["sites"] = {site: campaign["sites"][site] for site in SITES}
        job.params.write_text(yaml.safe_dump(campaign))
        cli = str(BIN / "multisite-nb")
        spec = PARAMS / "worlds" / "scale_20k.yaml"
        up = [cli, "world", "up", "--dir", str(job.world), "--spec", str(spec), "--params", str(job.params)]
        run = [cli, "run", str(job.params), "--world", str(job.world), "--runs-root", str(job.runs)]
        run += ["--phases", "placement,transfer,verify"]
        script = f"{_quote(up)} && {_quote(run)}"
        env = {k: v for k, v in os.environ.items() if k != "MSNB_WORLD"}
        with open(job.log, "wb") as log:
            job.proc = subprocess.Popen(
                ["bash", "-c", script],
                cwd=repo_root(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        return job

    def wait(self, timeout_s: float) -> dict[str, Any]:
        """Wait up to ``timeout_s`` more for the job; what the scale tests read (return code, log tail,
        run folder). A job still running then has ``returncode`` None."""
        assert self.proc is not None
        try:
            rc: int | None = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            rc = None
        found = self.runs / "scale20k"
        run_dirs = sorted(found.iterdir()) if found.exists() else []
        return {
            "returncode": rc,
            "output": self.log.read_text(errors="replace")[-6000:] if self.log.exists() else "",
            "world": self.world,
            "params": self.params,
            "run_dir": run_dirs[-1] if run_dirs else None,
            "seconds": time.monotonic() - self.started,
        }

    def stop(self) -> None:
        """Stop the job's processes (by their group), take its world down, remove its folder."""
        if self.proc is not None:
            # the whole group (the CLI and its notebook kernels), not only the shell leading it
            stop_group(self.proc, timeout=60)
        if self.params.exists():
            down = [str(BIN / "multisite-nb"), "world", "down", "--dir", str(self.world), "--params", str(self.params)]
            subprocess.run(down, cwd=repo_root(), capture_output=True, text=True, timeout=120)
        shutil.rmtree(self.folder, ignore_errors=True)


def _quote(cmd: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(c) for c in cmd)
