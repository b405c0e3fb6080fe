"""Groups end to end, as one operator runs them: the groups campaign (two of its remote sites) under
``supervise``, flowing, while faults are injected from a seeded list, and one group that only a person
can mend.

Every remote site's step 1 and step 3 run in three groups each, the step-1 groups starting as their
shipments are verified. Meanwhile the Rucio server, the supervising process and the conveyor daemons
are SIGKILLed (the supervisor started again, as a service manager would) and a byte of a raw already
moved to a site is flipped: the toolkit rides those out alone. One group of one site fails for good
(the stand-in task's ``fail_condition`` on one data ID, in a copy of the pipeline): it is retried,
then held, while every other group of every site runs to its end; a person is asked, once, through
the manifest's hook, with the group, its cause and the one command. The person mends the cause and
marks the alert resolved (``multisite-nb alerts RUN --resolve KEY``); the supervisor reruns that
group alone (the other groups' RUNs untouched) and the campaign ends PASS, QA equal to the
single-site reference. An independent check of Rucio, the sites' Butlers and their disks against
the plan finds no file lost. The chaining of the groups' RUNs into the step and site collections is
read with the real ``butler`` CLI.

(One campaign for both: the groups and the chaos each took a campaign of their own, minutes of the
suite each.)
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from multisite_nb.adapters.alerts import load_alerts, open_alerts
from multisite_nb.domain.params import repo_root
from multisite_nb.domain.supervision import SupervisionRecord
from multisite_nb.run.supervise import SUPERVISION_RECORD
from multisite_nb.world.chaos import Chaos, files_lost, world_up
from multisite_nb.world.manager import World

pytestmark = [pytest.mark.slow, pytest.mark.world, pytest.mark.timeout(2700)]

BIN = Path(sys.executable).parent
SPEC = repo_root() / "parameters" / "worlds" / "groups.yaml"
CAMPAIGN = repo_root() / "parameters" / "campaign_groups.yaml"
SITES = ("IN2P3", "RAL")
FAIL_AT = "RAL", "step1", "g0002", 5001  # RAL's second exposure: its step 1 group 2
CONDITION = f"exposure IN ({FAIL_AT[3]}) AND detector IN (1)"
FAULTS = ["kill_rucio", "kill_supervisor", "flip_byte", "kill_daemons"]
HELD_KEY = f"group_held/{FAIL_AT[0]}/{FAIL_AT[1]} {FAIL_AT[2]}"
NOTE = "the fail_condition was taken out of the pipeline"


def _nb(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "multisite-nb"), *args], cwd=repo_root(), capture_output=True, text=True, timeout=timeout
    )


def _butler(*args: str) -> str:
    proc = subprocess.run([str(BIN / "butler"), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _set_condition(pipeline: Path, condition: str | None) -> None:
    data = yaml.safe_load(pipeline.read_text())
    config = data["tasks"]["isr"]["config"]
    if condition:
        config["fail_condition"] = condition
    else:
        config.pop("fail_condition", None)
    pipeline.write_text(yaml.safe_dump(data, sort_keys=False))


def _attempts(run_dir: Path) -> dict[str, list[str]]:
    logs = run_dir / "artifacts" / "logs"
    out: dict[str, list[str]] = {}
    for status in sorted(logs.glob("*/*/g*/attempt-*/status.json")):
        site, step, group = status.relative_to(logs).parts[:3]
        out.setdefault(f"{site}/{step}/{group}", []).append(json.loads(status.read_text())["state"])
    return out


def _campaign(tmp: Path, pipeline: Path, notified: Path) -> Path:
    """The groups campaign on ``SITES`` with the failing pipeline, an alert hook and quick supervision."""
    data = yaml.safe_load(CAMPAIGN.read_text())
    manifest = yaml.safe_load((CAMPAIGN.parent / data["manifest"]).read_text())
    manifest["workflow"]["bps_site_config"] = str(repo_root() / manifest["workflow"]["bps_site_config"])
    keep = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read().strip() + chr(10))"
    manifest["notify"] = {"command": [sys.executable, "-c", keep, str(notified)], "retries": 0}
    manifest["supervision"].update(watch_s=10, backoff_s=5, max_backoff_s=30, person_wait_s=30)
    (tmp / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    data.update(manifest=str(tmp / "manifest.yaml"), pipeline=str(pipeline))
    data["sites"] = {s: data["sites"][s] for s in SITES}  # two remote sites show it all, in less time
    params = tmp / "campaign_groups.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    return params


class _Operator:
    """The person on call: when the held group's alert comes, mend its cause and mark it resolved."""

    def __init__(self, runs: Path, pipeline: Path, repo: Path) -> None:
        self.runs, self.pipeline, self.repo = runs, pipeline, repo
        self.seen: dict[str, Any] = {}

    def __call__(self) -> None:
        if "resolved" in self.seen:
            return
        runs = sorted(p for p in (self.runs / "groups").glob("*") if (p / "run.json").is_file())
        held = [e for e in open_alerts(runs[-1]) if e.key == HELD_KEY] if runs else []
        if not held:
            return
        self.seen["attempts"] = _attempts(runs[-1])
        self.seen["g1"] = _butler("query-datasets", str(self.repo), "--collections", "groups/RAL/step1/g0001")
        _set_condition(self.pipeline, None)  # the cause, mended
        self.seen["resolved"] = _nb("alerts", str(runs[-1]), "--resolve", HELD_KEY, "--note", NOTE)


@pytest.fixture(scope="module")
def groups_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("groups")
    pipeline = tmp / "drp_failing.yaml"
    pipeline.write_text((CAMPAIGN.parent / "pipelines" / "drp_3x3.yaml").read_text())
    _set_condition(pipeline, CONDITION)
    notified = tmp / "notified.jsonl"  # the alert hook: a command that keeps what it was sent
    params = _campaign(tmp, pipeline, notified)
    world = World(tmp / "world", params, SPEC)
    operator = _Operator(tmp / "runs", pipeline, world.root / "butler" / "RAL")
    world_up(world, SPEC)
    out: dict[str, Any] = {"world": world}
    try:
        chaos = Chaos(world, params, tmp / "runs", FAULTS, seed=7, interval_s=25, first_s=20, hold_s=60, restart_s=3)
        report = chaos.run(timeout_s=2100, operator=operator)
        out["report"], out["operator"] = report, operator.seen
        run_dir = out["run_dir"] = report.run_dir
        assert run_dir is not None, report.log.read_text()[-4000:] if report.log else "no log"
        out["lost"] = files_lost(world, run_dir)
        out["notified"] = [json.loads(ln) for ln in notified.read_text().splitlines()] if notified.exists() else []
        out["attempts"] = _attempts(run_dir)
        repo = str(world.root / "butler" / "RAL")
        out["g1_after"] = _butler("query-datasets", repo, "--collections", "groups/RAL/step1/g0001")
        out["chains"] = _butler("query-collections", repo, "groups/RAL*", "--chains", "TREE")
        out["types"] = _butler("query-collections", repo, "groups/RAL/step*")
        out["status"] = _nb("status", str(run_dir))
    finally:
        world.down(log=lambda _: None)
    return out


def _log(groups_run: dict[str, Any]) -> str:
    report = groups_run["report"]
    return report.log.read_text()[-6000:] if report.log else ""


def test_the_supervised_campaign_ends_pass_after_every_fault(groups_run) -> None:
    report, log = groups_run["report"], _log(groups_run)
    assert [i.kind for i in report.injected] == FAULTS, (report.injected, log)
    assert report.exit_code == 0, log
    assert report.restarts == 1  # the one SIGKILL of the supervisor, and it went on from its records
    qa = json.loads((groups_run["run_dir"] / "results" / "qa.json").read_text())
    assert qa["passed"] and "values equal to the reference" in qa["reason"], qa["reason"]
    assert "supervise: PASS" in log
    status = groups_run["status"]
    assert status.returncode == 0 and ": passed" in status.stdout.splitlines()[0], status.stdout


def test_no_file_is_lost(groups_run) -> None:
    assert groups_run["lost"] == []


def test_the_failing_group_was_retried_held_and_the_others_ran_to_their_end(groups_run) -> None:
    seen = groups_run["operator"]
    assert "attempts" in seen, _log(groups_run)  # the person was asked
    site, step, group, _ = FAIL_AT
    retries = yaml.safe_load(CAMPAIGN.read_text())["processing"]["retries"]
    when_asked = seen["attempts"]
    held = when_asked[f"{site}/{step}/{group}"]
    assert held[-(retries + 1) :] == ["failed"] * retries + ["held"], held
    # every other group of every site had run to its end (a supervisor killed under a step leaves
    # that attempt unfinished, and the resume runs it again)
    others = {k: v for k, v in when_asked.items() if k != f"{site}/{step}/{group}"}
    assert {f"{s}/step1/g000{i}" for s in SITES for i in (1, 2, 3)} - {f"{site}/{step}/{group}"} <= set(others)
    assert all(v[-1] == "succeeded" for v in others.values()), others


def test_a_person_was_asked_once_and_the_supervisor_reran_only_that_group(groups_run) -> None:
    site, step, group, _ = FAIL_AT
    (sent,) = groups_run["notified"]  # one alert, through the manifest's hook, with the alert's JSON
    alert = sent["alert"]
    assert (alert["kind"], alert["site"], alert["subject"]) == ("group_held", site, f"{step} {group}"), sent
    assert "multisite-nb run --resume" in alert["action"] and sent["text"].startswith("[group_held] RAL")
    assert "injected" in alert["cause"].lower() or "fail" in alert["cause"].lower(), alert["cause"]
    (entry,) = load_alerts(groups_run["run_dir"])  # every alert a true one: this one only
    assert entry.key == HELD_KEY and entry.delivery.delivered and entry.delivery.via == "command"
    assert not entry.open and entry.note == NOTE
    resolved = groups_run["operator"]["resolved"]
    assert resolved.returncode == 0 and f"resolved: {HELD_KEY}" in resolved.stdout, resolved.stdout
    assert not (groups_run["run_dir"].parent / "alerts").exists()  # none before the run either
    before, after = groups_run["operator"]["attempts"], groups_run["attempts"]
    key = f"{site}/{step}/{group}"
    assert after[key][: len(before[key])] == before[key] and after[key][-1] == "succeeded", after[key]
    for other, states in before.items():  # every group that had succeeded was left as it was
        if other != key and states[-1] == "succeeded":
            assert after[other] == states, other
    assert groups_run["operator"]["g1"] == groups_run["g1_after"]  # its RUN untouched


def test_the_supervisors_record_says_what_it_did(groups_run) -> None:
    record = SupervisionRecord.model_validate_json((groups_run["run_dir"] / SUPERVISION_RECORD).read_text())
    assert record.verdict == "PASS" and record.waiting_for == []
    assert record.attempts >= 3  # the killed supervisor's chain and the held group's were resumed
    assert record.faults_ridden_out >= 2
    actions = {r.action for r in record.rounds}
    assert {"resumed", "resolved", "verdict"} <= actions, actions


def test_the_campaign_flowed_a_sites_groups_starting_before_its_last_shipment_was_in_place(groups_run) -> None:
    run_dir = groups_run["run_dir"]
    chain = json.loads((run_dir / "run.json").read_text())["phases_requested"]
    assert "flow" in chain and "transfer" not in chain and "submit_early" not in chain, chain
    transfer = json.loads((run_dir / "results" / "transfer.json").read_text())
    ahead = []
    for site in SITES:
        row = transfer["summary"]["shipments"][site]
        assert row["parts"] == 4 and row["rule"] == "OK", row  # the common inputs, then a shipment per group
        last_ok = datetime.fromisoformat(row["ok_at"])
        logs = run_dir / "artifacts" / "logs" / site / "step1"
        starts = [json.loads(p.read_text())["started"] for p in logs.glob("g*/attempt-*/status.json")]
        first = min(datetime.fromisoformat(t) for t in starts)
        ahead.append(first < last_ok)
    assert any(ahead), ahead  # from the records: a group was submitted while a later shipment still moved


def test_every_remote_sites_step1_and_step3_ran_as_three_groups(groups_run) -> None:
    after = groups_run["attempts"]
    for site in SITES:
        for step in ("step1", "step3"):
            assert sorted(k for k in after if k.startswith(f"{site}/{step}/")) == [
                f"{site}/{step}/g000{i}" for i in (1, 2, 3)
            ]


def test_the_groups_runs_are_chained_into_the_step_and_the_site_collections(groups_run) -> None:
    tree, types = groups_run["chains"], groups_run["types"]
    lines = [ln.strip() for ln in types.splitlines()]
    assert any(ln.startswith("groups/RAL/step1 ") and "CHAINED" in ln for ln in lines), types
    assert any(ln.startswith("groups/RAL/step1/g0002 ") and "RUN" in ln for ln in lines), types
    # P/S holds P/S/step1, which holds its three groups' RUNs in order
    block = tree[tree.index("groups/RAL ") :]
    assert re.search(r"groups/RAL/step1\s+CHAINED\s*\n\s+groups/RAL/step1/g0001\s+RUN", block), tree
    g = [ln.split()[0] for ln in block.splitlines() if re.match(r"\s+groups/RAL/step1/g\d{4}\s+RUN", ln)]
    assert g[:3] == [f"groups/RAL/step1/g000{i}" for i in (1, 2, 3)], tree
