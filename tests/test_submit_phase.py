"""The submit phase checks every site before it runs anything there; a blocked site does not hold the others."""

from __future__ import annotations

import pytest
import yaml

from multisite_nb import phases
from multisite_nb.adapters.butler.repo import open_site_butler
from multisite_nb.domain.params import load_campaign

pytestmark = pytest.mark.world


def test_a_failed_preflight_submits_nothing(world, tmp_path) -> None:
    data = yaml.safe_load(world.campaign.path.read_text())
    for key in ("manifest", "pipeline"):
        data[key] = str(world.campaign.path.parent / data[key])
    data["collections"] = {"inputs": ["HSC/defaults", "HSC/no-such-collection"], "output_prefix": "pftest"}
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    campaign = load_campaign(path)
    run_dir = tmp_path / "run"
    # phases 1-3 with the good campaign (idempotent on the shared world) ...
    assert phases.placement.run(world.campaign, run_dir)[0].passed
    assert phases.transfer.run(world.campaign, run_dir, progress=False)[0].passed
    assert phases.verify.run(world.campaign, run_dir)[0].passed
    # ... then a submission whose inputs name a collection no site has

    result, steps = phases.submit.run(campaign, run_dir, "early")
    assert not result.passed
    assert "HSC/no-such-collection" in result.reason and "(pre-flight)" in result.reason
    assert set(steps) == set(campaign.remote_sites)  # every site checked, and said why
    for site in campaign.all_sites:  # nothing was run anywhere
        with open_site_butler(campaign, site) as butler:
            assert not butler.collections.query("pftest/*")


def test_a_running_step_shows_on_the_dashboard(world, tmp_path) -> None:
    """While a phase runs, its result file says which step is running: the site reads 'busy'."""
    from multisite_nb.adapters.results import load_result
    from multisite_nb.domain.records import StepRecord, StepState
    from multisite_nb.domain.results import utcnow
    from multisite_nb.domain.summaries import SubmitSummary
    from multisite_nb.phases.submit.summary import InFlight
    from multisite_nb.views.status import collect

    run_dir = tmp_path / "run"
    live = InFlight(run_dir, "submit_early", utcnow(), SubmitSummary(stage="early"))
    live.site("RAL")(
        {
            "step1": StepRecord(site="RAL", step="step1", state=StepState.SUCCEEDED, succeeded=24, total=24),
            "step2a": StepRecord.in_progress("RAL", "step2a"),
        }
    )
    res = load_result(run_dir, "submit_early")
    assert not res.passed and res.summary.in_progress and "RAL step2a" in res.reason
    status = collect(world.campaign, run_dir, butler=False)
    assert status.states()["RAL"] == "busy"


def test_an_interrupted_phase_stops_every_site_and_a_new_run_finishes(world, tmp_path) -> None:
    """Ctrl-C (the kernel's stop button) while the sites run side by side: every site's
    pipetask is stopped, none is left running, the result says so (not 'in progress'), and
    running the phase again restarts the steps and passes."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from multisite_nb.adapters.results import load_result

    data = yaml.safe_load(world.campaign.path.read_text())
    for key in ("manifest", "pipeline"):
        data[key] = str(world.campaign.path.parent / data[key])
    data["collections"]["output_prefix"] = "inttest"
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    run_dir = tmp_path / "run"
    assert phases.placement.run(world.campaign, run_dir)[0].passed
    assert phases.transfer.run(world.campaign, run_dir, progress=False)[0].passed
    assert phases.verify.run(world.campaign, run_dir)[0].passed

    script = (
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from multisite_nb import phases\n"
        f"phases.submit.run({str(path)!r}, {str(run_dir)!r}, 'early')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env=world.env(), stderr=subprocess.PIPE, text=True)

    def running() -> int:
        out = subprocess.run(["pgrep", "-f", f"pipetask.*{run_dir}"], capture_output=True, text=True, check=False)
        return len(out.stdout.split())

    deadline = time.monotonic() + 120
    while running() < len(world.campaign.remote_sites) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert running() == len(world.campaign.remote_sites), "the sites did not run side by side"
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err, err[-2000:]
    assert running() == 0
    res = load_result(run_dir, "submit_early")
    assert not res.passed and res.reason.startswith("interrupted") and not res.summary.in_progress

    campaign = load_campaign(path)
    result, steps = phases.submit.run(campaign, run_dir, "early")
    assert result.passed, result.reason
    assert all(by["step1"].attempt == 2 and by["step1"].state == "succeeded" for by in steps.values())
