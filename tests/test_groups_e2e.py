"""Groups end to end: the groups campaign (two of its remote sites), flowing, every site's step 1 and step 3
in three groups each, its step-1 groups starting as their shipments are verified.

One group of one site is made to fail (the stand-in task's ``fail_condition`` on one data ID, in a
copy of the pipeline): every other group of every site runs to its end, the failed one is retried
and then held, and the gate names it with its cause and the one command that retries it. Once
the condition is gone, that command reruns that group alone (the other groups' RUNs and attempts
untouched) and the campaign ends PASS, QA equal to the single-site reference. The chaining of
the groups' RUNs into the step and site collections is read with the real ``butler`` CLI.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from multisite_nb.adapters.alerts import load_alerts
from multisite_nb.domain.params import repo_root

pytestmark = [pytest.mark.slow, pytest.mark.world]

BIN = Path(sys.executable).parent
SPEC = "parameters/worlds/groups.yaml"
CAMPAIGN = repo_root() / "parameters" / "campaign_groups.yaml"
SITES = ("IN2P3", "RAL")
FAIL_AT = "RAL", "step1", "g0002", 5001  # RAL's second exposure: its step 1 group 2
CONDITION = f"exposure IN ({FAIL_AT[3]}) AND detector IN (1)"


def _nb(*args: str, timeout: float = 2400) -> subprocess.CompletedProcess[str]:
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


@pytest.fixture(scope="module")
def groups_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("groups")
    world, runs = tmp / "world", tmp / "runs"
    pipeline = tmp / "drp_failing.yaml"
    pipeline.write_text((CAMPAIGN.parent / "pipelines" / "drp_3x3.yaml").read_text())
    _set_condition(pipeline, CONDITION)
    data = yaml.safe_load(CAMPAIGN.read_text())
    manifest = yaml.safe_load((CAMPAIGN.parent / data["manifest"]).read_text())
    manifest["workflow"]["bps_site_config"] = str(repo_root() / manifest["workflow"]["bps_site_config"])
    notified = tmp / "notified.jsonl"  # the alert hook: a command that keeps what it was sent
    keep = "import sys; open(sys.argv[1], 'a').write(sys.stdin.read().strip() + chr(10))"
    manifest["notify"] = {"command": [sys.executable, "-c", keep, str(notified)], "retries": 0}
    (tmp / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    data.update(manifest=str(tmp / "manifest.yaml"), pipeline=str(pipeline))
    data["sites"] = {s: data["sites"][s] for s in SITES}  # two remote sites show it all, in less time
    params = tmp / "campaign_groups.yaml"
    params.write_text(yaml.safe_dump(data, sort_keys=False))
    out: dict = {"world": world}
    try:
        up = _nb("world", "up", "--spec", SPEC, "--params", str(params), "--dir", str(world), timeout=600)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        out["first"] = _nb("campaign", str(params), "--world", str(world), "--runs-root", str(runs))
        (run_dir,) = sorted(p for p in (runs / "groups").iterdir() if p.is_dir())
        out["run_dir"] = run_dir
        out["early"] = json.loads((run_dir / "results" / "submit_early.json").read_text())
        out["attempts_held"] = _attempts(run_dir)
        # supervise, one round: the held group is run again, held again, and a person is asked, once
        where = ["--world", str(world), "--runs-root", str(runs)]
        out["supervised"] = _nb("supervise", str(params), *where, "--max-rounds", "1")
        out["notified"] = [json.loads(ln) for ln in notified.read_text().splitlines()] if notified.exists() else []
        out["alerts"] = load_alerts(run_dir)
        out["attempts_supervised"] = _attempts(run_dir)
        repo = str(world / "butler" / "RAL")
        out["g1_before"] = _butler("query-datasets", repo, "--collections", "groups/RAL/step1/g0001")
        _set_condition(pipeline, None)  # the operator fixed the cause
        retry = re.search(r"Retry them: (.+)$", out["early"]["reason"])
        out["retry"] = retry.group(1) if retry else ""
        command = shlex.split(out["retry"])
        assert command[:1] == ["multisite-nb"], out["early"]["reason"]
        out["second"] = _nb(*command[1:])
        out["attempts_after"] = _attempts(run_dir)
        out["g1_after"] = _butler("query-datasets", repo, "--collections", "groups/RAL/step1/g0001")
        out["chains"] = _butler("query-collections", repo, "groups/RAL*", "--chains", "TREE")
        out["types"] = _butler("query-collections", repo, "groups/RAL/step*")
    finally:
        _nb("world", "down", "--dir", str(world), timeout=120)
    return out


def test_a_failing_group_is_retried_then_held_while_every_other_group_finishes(groups_run) -> None:
    first, early = groups_run["first"], groups_run["early"]
    assert first.returncode != 0, first.stdout[-3000:]
    site, step, group, _ = FAIL_AT
    assert not early["passed"]
    reason = early["reason"]
    assert f"{site} {step} {group}" in reason and "held after their retries" in reason, reason
    assert "injected" in reason.lower() or "fail" in reason.lower(), reason  # the cause, from the log
    assert f"multisite-nb run --resume {groups_run['run_dir']}" in reason
    attempts = groups_run["attempts_held"]
    retries = yaml.safe_load(CAMPAIGN.read_text())["processing"]["retries"]
    assert attempts[f"{site}/{step}/{group}"] == ["failed"] * retries + ["held"]
    # every other group of every site ran to its end: the other sites' whole stage, RAL's other step-1 groups
    steps = early["summary"]["steps"]
    for other in ("IN2P3",):
        assert [r["state"] for r in steps[other].values()] == ["succeeded"] * 3, steps[other]
        assert steps[other]["step1"]["groups"]["total"] == 3
        assert steps[other]["step2b"]["groups"]["done"] == 3
    ral = steps[site][step]["groups"]
    assert (ral["total"], ral["done"], ral["held"]) == (3, 2, 1)
    assert [h["group"] for h in ral["held_groups"]] == [group]
    assert attempts[f"{site}/{step}/g0001"] == ["succeeded"] and attempts[f"{site}/{step}/g0003"] == ["succeeded"]


def test_the_gates_command_reruns_only_the_held_group_and_the_campaign_passes(groups_run) -> None:
    second = groups_run["second"]
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-3000:]
    assert "run passed: all 7 phase(s) passed" in second.stdout, second.stdout[-2000:]  # the flowing chain
    qa = json.loads((groups_run["run_dir"] / "results" / "qa.json").read_text())
    assert qa["passed"] and "values equal to the reference" in qa["reason"], qa["reason"]
    before, after = groups_run["attempts_supervised"], groups_run["attempts_after"]
    site, step, group, _ = FAIL_AT
    assert after[f"{site}/{step}/{group}"] == [*before[f"{site}/{step}/{group}"], "succeeded"]
    for key, states in before.items():  # every group that had succeeded was left as it was
        if key != f"{site}/{step}/{group}":
            assert after[key] == states, key
    assert groups_run["g1_before"] == groups_run["g1_after"]  # its RUN untouched


def test_supervise_runs_the_held_group_again_then_asks_a_person_once(groups_run) -> None:
    sup = groups_run["supervised"]
    assert sup.returncode == 3, sup.stdout[-3000:] + sup.stderr[-2000:]  # stopped while a person is asked
    site, step, group, _ = FAIL_AT
    (sent,) = groups_run["notified"]  # one alert, through the manifest's hook, with the alert's JSON
    alert = sent["alert"]
    assert (alert["kind"], alert["site"], alert["subject"]) == ("group_held", site, f"{step} {group}"), sent
    assert "multisite-nb run --resume" in alert["action"] and sent["text"].startswith("[group_held] RAL")
    (entry,) = groups_run["alerts"]
    assert entry.alert.key == f"group_held/{site}/{step} {group}" and entry.delivery.delivered and entry.open
    retries = yaml.safe_load(CAMPAIGN.read_text())["processing"]["retries"]
    held, supervised = groups_run["attempts_held"], groups_run["attempts_supervised"]
    assert supervised[f"{site}/{step}/{group}"][len(held[f"{site}/{step}/{group}"]) :] == ["failed"] * retries + [
        "held"
    ]
    assert all(supervised[k] == v for k, v in held.items() if k != f"{site}/{step}/{group}")


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
    after = groups_run["attempts_after"]
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
