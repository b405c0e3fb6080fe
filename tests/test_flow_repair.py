"""A flowing site's shipment that verification finds wrong holds back its own groups, until it is repaired.

On the groups world, a one-site campaign (LANCS: three visits, three step-1 groups, a shipment
each after the common one) flows with a byte flipped in a raw of its second batch after the
batch arrived and before it was verified (the real shipment runs; the disk then goes bad). The
other groups run; the second group is never submitted, and the gates name the file and the
held-back group. ``repair`` has Rucio replace the copy; the flow run again submits that group
alone and passes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from multisite_nb import phases
from multisite_nb.adapters.results import load_result
from multisite_nb.domain.params import load_campaign, repo_root
from multisite_nb.phases.flow import site as flow_site
from multisite_nb.run.folder import new_run

pytestmark = [pytest.mark.slow, pytest.mark.world, pytest.mark.timeout(1200)]

BIN = Path(sys.executable).parent
SPEC = "parameters/worlds/groups.yaml"
CAMPAIGN = repo_root() / "parameters" / "campaign_groups.yaml"
SITE = "LANCS"


def _nb(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "multisite-nb"), *args], cwd=repo_root(), capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def one_site(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("flowfix")
    world = tmp / "world"
    data = yaml.safe_load(CAMPAIGN.read_text())
    data.update(
        campaign="flowfix",
        scope="flowfix",
        manifest=str(CAMPAIGN.parent / data["manifest"]),
        pipeline=str(CAMPAIGN.parent / data["pipeline"]),
        sites={SITE: data["sites"][SITE]},
    )
    data["collections"]["output_prefix"] = "flowfix"
    params = tmp / "campaign_flowfix.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        up = _nb("world", "up", "--spec", SPEC, "--params", str(CAMPAIGN), "--dir", str(world))
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        yield load_campaign(params, env={"MSNB_WORLD": str(world)}), tmp
    finally:
        _nb("world", "down", "--dir", str(world), timeout=120)


def _attempts(run_dir: Path, group: str) -> list[str]:
    folder = run_dir / "artifacts" / "logs" / SITE / "step1" / group
    return [json.loads(p.read_text())["state"] for p in sorted(folder.glob("attempt-*/status.json"))]


def test_a_shipment_failing_verification_holds_back_its_groups_until_repaired(
    one_site: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign, tmp = one_site
    run_dir = new_run(tmp / "runs", campaign.name)
    assert phases.placement.run(campaign, run_dir)[0].passed
    real = flow_site.run_shipments
    flipped: list[str] = []

    def then_a_byte_flips(campaign_: Any, shipments: Any, **kwargs: Any) -> Any:
        out = real(campaign_, shipments, **kwargs)
        for s in shipments:
            if s.name.endswith(".b0002") and not flipped:
                raw = next(f for f in s.files if f.dataset_type == "raw")
                path = Path(campaign_.site(s.dest).rse_root) / raw.lfn
                data = bytearray(path.read_bytes())
                data[len(data) // 2] ^= 0xFF  # same size, another checksum
                path.write_bytes(bytes(data))
                flipped.append(raw.lfn)
        return out

    monkeypatch.setattr(flow_site, "run_shipments", then_a_byte_flips)
    result, _ = phases.flow.run(campaign, run_dir)
    monkeypatch.undo()
    assert flipped and not result.passed
    verify = load_result(run_dir, "verify")
    assert verify is not None and not verify.passed
    assert flipped[0] in verify.reason and "corrupt" in verify.reason, verify.reason
    early = load_result(run_dir, "submit_early")
    assert early is not None and not early.passed
    step1 = early.summary.steps[SITE]["step1"]
    assert step1.groups is not None and (step1.groups.total, step1.groups.done) == (3, 2), step1
    assert "g0002" in early.reason and "failed verification" in early.reason, early.reason
    assert _attempts(run_dir, "g0001") == ["succeeded"] and _attempts(run_dir, "g0003") == ["succeeded"]
    assert _attempts(run_dir, "g0002") == []  # never submitted
    flow = load_result(run_dir, "flow")
    assert flow is not None and flow.summary.sites[SITE].released == 2

    repaired, _, _ = phases.repair.run(campaign, run_dir, timeout_s=300, log=lambda m: None)
    assert repaired.passed, repaired.reason

    again, _ = phases.flow.run(campaign, run_dir)
    assert again.passed, again.reason
    assert _attempts(run_dir, "g0002") == ["succeeded"]
    assert _attempts(run_dir, "g0001") == ["succeeded"]  # left as it was
    assert load_result(run_dir, "verify").passed
