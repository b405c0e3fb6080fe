"""The operator dashboard on the real world: site states read live, cards, snapshot, notebook.

No mocks: the run folder is made by the real phases 1-3, a STUCK rule is made for real
(a file registered with a wrong adler32 and a rule to RAL_DISK: the world's conveyor fails
the transfer), an unreachable Rucio is a client config pointing at a closed port, and the
notebook is executed by nbval in a real kernel.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from multisite_nb import phases
from multisite_nb.adapters.results import record_result
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.params import load_campaign, repo_root
from multisite_nb.domain.records import StepRecord
from multisite_nb.domain.results import PhaseResult
from multisite_nb.run.folder import new_run
from multisite_nb.views.dashboard import (
    Dashboard,
    history_file,
    read_history,
)
from multisite_nb.views.html import card_html, snapshot_html
from multisite_nb.views.status import CampaignStatus, collect

pytestmark = [pytest.mark.world, pytest.mark.timeout(240)]

NOTEBOOK = repo_root() / "notebooks" / "00_dashboard.ipynb"


# --------------------------------------------------------------------------- helpers


def prepare_run(campaign: Campaign, runs_root: Path) -> Path:
    """A run folder where placement, transfer and verification ran (the real phases)."""
    run_dir = new_run(runs_root, campaign.name)
    assert phases.placement.run(campaign, run_dir)[0].passed
    res, _ = phases.transfer.run(campaign, run_dir, progress=False)
    assert res.passed, res.reason
    res, _ = phases.verify.run(campaign, run_dir)
    assert res.passed, res.reason
    return run_dir


@contextlib.contextmanager
def stuck_rule(campaign: Campaign, site: str, timeout: float = 60, dataset: str | None = None) -> Iterator[str]:
    """A rule to ``site`` that the world's conveyor marks STUCK: its source file's adler32 is wrong.

    Yields the rule id once Rucio says STUCK; afterwards the rule is expired (Rucio's cleaner
    removes it). The test dataset ``<campaign>.dashboard_test.<tag>`` and its one file stay
    registered at the central RSE (the world's account may not delete replicas: nothing is
    lost, by policy), and the file stays on disk so the catalogue never points at nothing.
    """
    from multisite_nb.adapters.rucio.ops import FileDid, RucioOps

    ops = RucioOps.for_campaign(campaign)
    ops.ensure_scope()
    tag = uuid.uuid4().hex[:8]
    src = campaign.central
    lfn = f"{campaign.output_prefix}/dashboard_test/{tag}/bad.fits"
    path = Path(campaign.site(src).rse_root or "") / lfn
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not what the catalogue says\n" * 40)
    dataset = dataset or f"{campaign.name}.dashboard_test.{tag}"
    rule_id = None
    try:
        ops.add_replicas(campaign.site(src).rse, [FileDid(lfn, path.stat().st_size, "00000001")])
        ops.ensure_dataset(dataset)
        ops.attach(dataset, [lfn])
        rule_id, _ = ops.ensure_rule(
            dataset,
            campaign.site(site).rse,
            lifetime_s=86400,  # a day: a rule ending within the hour counts as deleted
            activity=campaign.config.activity,
            comment="dashboard test: bad checksum",
        )
        deadline = time.monotonic() + timeout
        while (state := ops.rule(rule_id).state) != "STUCK":
            assert state in ("REPLICATING", "INJECT"), state
            assert time.monotonic() < deadline, f"rule {rule_id} not STUCK after {timeout} s ({state})"
            time.sleep(0.3)
        yield rule_id
    finally:
        if rule_id:  # expire it now (a deletion would leave it listed for an hour); the cleaner removes it
            with contextlib.suppress(Exception):
                ops.client.update_replication_rule(rule_id, {"lifetime": 0})


def write_raw_result(run_dir: Path, phase: str, summary: dict[str, object]) -> None:
    """A result file as something other than the toolkit might have written it (its summary as given)."""
    doc = {"phase": phase, "passed": False, "reason": "by hand", "summary": summary}
    (run_dir / "results").mkdir(parents=True, exist_ok=True)
    (run_dir / "results" / f"{phase}.json").write_text(json.dumps(doc))


def step(site: str, label: str, **fields: object) -> dict[str, object]:
    """A ``summary.steps`` entry as the submission code writes it: a StepRecord dump."""
    return StepRecord(site=site, step=label, **fields).model_dump(mode="json")  # type: ignore[arg-type]


def wait_state(campaign: Campaign, run_dir: Path | None, site: str, want: str, timeout: float = 30) -> CampaignStatus:
    """Collect until ``site`` is in state ``want`` (or the timeout passes); return the last status."""
    deadline = time.monotonic() + timeout
    while True:
        status = collect(campaign, run_dir, butler=False)
        if status.sites[site].state == want or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


class Cards(HTMLParser):
    """``data-site`` → ``data-state`` of every card in a piece of HTML (and each card's text)."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.states: dict[str, str] = {}
        self.texts: dict[str, str] = {}
        self._site: str | None = None
        self._depth = 0
        self.feed(text)

    @classmethod
    def text_of(cls, text: str, site: str) -> str:
        return cls(text).texts.get(site, "")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "data-site" in a and "data-state" in a:
            assert a["data-site"] not in self.states, f"two cards for {a['data-site']}"
            self.states[str(a["data-site"])] = str(a["data-state"])
            self._site, self._depth = str(a["data-site"]), 0
        if self._site is not None and tag not in ("br", "img"):
            self._depth += 1

    def handle_endtag(self, tag: str) -> None:
        if self._site is not None and tag not in ("br", "img"):
            self._depth -= 1
            if self._depth == 0:
                self._site = None

    def handle_data(self, data: str) -> None:
        if self._site is not None:
            self.texts[self._site] = self.texts.get(self._site, "") + data


def clean_env(env: dict[str, str]) -> dict[str, str]:
    """The environment without the variables that would make the dashboard think a frontend is there."""
    return {
        k: v
        for k, v in env.items()
        if not k.startswith(("VOILA_", "JPY_SESSION")) and k not in ("SERVER_SOFTWARE", "MSNB_DASHBOARD_MODE")
    }


@pytest.fixture(scope="module")
def campaign(world) -> Campaign:
    return world.campaign


@pytest.fixture(scope="module")
def run_dir(world, tmp_path_factory: pytest.TempPathFactory) -> Path:
    t0 = time.monotonic()
    run = prepare_run(world.campaign, tmp_path_factory.mktemp("runs"))
    print(f"\nphases 1-3 for the dashboard: {time.monotonic() - t0:.1f} s")
    return run


# --------------------------------------------------------------------------- pure rules


# --------------------------------------------------------------------------- on the world


def test_sites_are_ok_after_placement_transfer_verify(campaign: Campaign, run_dir: Path) -> None:
    t0 = time.monotonic()
    status = collect(campaign, run_dir)
    seconds = time.monotonic() - t0
    assert set(status.sites) == {"USDF", "IN2P3", "RAL", "LANCS"}
    assert status.rucio_ok and not status.problems
    for site in campaign.remote_sites:
        s = status.sites[site]
        assert s.state == "ok", (site, s.reason, s.issues)
        assert s.placement is not None and s.placement.files > 0 and s.placement.bytes > 0
        t = s.transfers
        assert t is not None and t.read and t.ok >= 2 and t.stuck == 0 and t.replicating == 0  # records + data
        assert t.locks_ok >= s.placement.files
        assert s.verification.ran and s.verification.ok and s.verification.planned == s.placement.files
        assert s.butler.ok and s.butler.datasets is not None and s.butler.datasets >= s.placement.files
        assert s.last_error is None
    usdf = status.sites["USDF"]
    assert usdf.role == "central" and usdf.butler.ok and usdf.placement is None
    # the central site's only rules pin the placed raws at their source, which its Butler holds in place
    assert usdf.state == "ok" and usdf.transfers is not None
    assert {r.name for r in usdf.transfers.rules} == {f"3x3.placement.{s}" for s in campaign.remote_sites}
    assert usdf.site_steps == ["step2c"] and "step1" in status.sites["RAL"].site_steps
    assert set(status.phases) >= {"placement", "transfer", "verify"}
    data = json.loads(status.to_json())  # JSON-able, with the derived fields
    assert data["sites"]["IN2P3"]["state"] == "ok" and "last_error" in data["sites"]["IN2P3"]
    print(f"\ncollect: {seconds:.1f} s")  # its speed is a benchmark's business, not an assertion's


def test_stuck_rule_puts_the_site_in_trouble_with_the_reason(campaign: Campaign, run_dir: Path) -> None:
    t0 = time.monotonic()
    with stuck_rule(campaign, "RAL") as rule_id:
        made = time.monotonic() - t0
        status = collect(campaign, run_dir)  # read live: the rule is STUCK right now
        ral = status.sites["RAL"]
        assert ral.state == "trouble", ral.reason
        assert ral.transfers is not None and ral.transfers.stuck == 1
        assert any(r.id == rule_id and r.state == "STUCK" for r in ral.transfers.rules)
        assert "STUCK" in (ral.last_error or "") and "RAL_DISK" in (ral.last_error or "")
        cause = (ral.last_error_cause or "").lower()
        assert "checksum" in cause or "adler32" in cause, ral.last_error_cause
        assert {s: st.state for s, st in status.sites.items()} == {
            "USDF": "ok",
            "IN2P3": "ok",
            "RAL": "trouble",
            "LANCS": "ok",
        }

        cards = Cards(snapshot_html(status))
        assert cards.states == status.states()
        page = snapshot_html(status)
        assert "TROUBLE" in page and "Last error" in page and "ADLER32" in page.upper()

        dash = Dashboard(campaign, run_dir)
        before = len(read_history(history_file(run_dir)))
        dash.refresh()
        rows = read_history(history_file(run_dir))
        assert len(rows) == before + 4
        ral_row = next(r for r in rows[-4:] if r["site"] == "RAL")
        assert ral_row["stuck"] == 1 and ral_row["state"] == "trouble" and ral_row["ok"] > 0
        figs = dash.images()
        assert set(figs) == {"sky", "steps", "transfers"} and all(p[:4] == b"\x89PNG" for p in figs.values())
    # the rule is gone: RAL is fine again (nothing cached)
    assert wait_state(campaign, run_dir, "RAL", "ok").sites["RAL"].state == "ok"
    print(f"\nSTUCK rule made in {made:.1f} s; whole test {time.monotonic() - t0:.1f} s")


def test_steps_results_drive_busy_and_trouble(campaign: Campaign, run_dir: Path, tmp_path: Path) -> None:
    """Step records as the submission code writes them (StepRecord dumps), plus junk it must survive."""
    run = tmp_path / "run"
    shutil.copytree(run_dir / "results", run / "results")
    shutil.copytree(run_dir / "artifacts" / "placement", run / "artifacts" / "placement")
    record_result(
        run,
        PhaseResult(
            phase="submit_early",
            passed=False,
            reason="RAL step2a failed",
            summary={
                "steps": {
                    "IN2P3": {
                        "step1": step("IN2P3", "step1", state="succeeded", total=24, succeeded=24),
                        "step2a": step("IN2P3", "step2a", state="running", total=5, running=2, pending=3),
                    },
                    "RAL": {
                        "step1": step("RAL", "step1", state="succeeded", total=24, succeeded=24),
                        "step2a": step(
                            "RAL",
                            "step2a",
                            state="failed",
                            total=6,
                            succeeded=5,
                            failed=1,
                            failures=[
                                {
                                    "task": "consolidateVisitSummary",
                                    "data_id": {"visit": 903334},
                                    "cause": "FileNotFoundError: calexp missing",
                                }
                            ],
                        ),
                    },
                    "LANCS": {
                        "step1": step("LANCS", "step1", state="succeeded", total=24, succeeded=24),
                        "step2a": step("LANCS", "step2a", state="succeeded", total=6, succeeded=6),
                    },
                }
            },
        ),
    )
    status = collect(campaign, run, butler=False)
    assert status.sites["IN2P3"].state == "busy" and "step2a" in status.sites["IN2P3"].reason
    ral = status.sites["RAL"]
    assert ral.state == "trouble" and ral.last_error == "step2a: 1 failed quantum"
    assert "consolidateVisitSummary" in (ral.last_error_cause or "") and "visit=903334" in ral.last_error_cause
    assert status.sites["LANCS"].state == "ok" and status.sites["LANCS"].steps["step1"].state == "succeeded"
    # a valid record is shown as it is: its state on the chip, its quanta as written
    page = snapshot_html(status)
    assert 'data-step="step2a" data-step-state="running"' in card_html(status.sites["IN2P3"])
    assert 'data-step="step2a" data-step-state="failed"' in card_html(status.sites["RAL"]) and "5/6" in page

    # an entry that is not a step record puts its site in trouble, naming the file and the key
    odd = {"steps": {"LANCS": {"step2b": {"site": "LANCS", "step": "step2b", "state": "done", "succeeded": 6}}}}
    write_raw_result(run, "submit_odd", odd)  # written by hand: no model would write it
    status = collect(campaign, run, butler=False)
    lancs = status.sites["LANCS"]
    assert lancs.state == "trouble"
    assert lancs.last_error == "results/submit_odd.json: summary.steps.LANCS.step2b is not a step record"
    assert "state: Input should be" in (lancs.last_error_cause or "")
    assert "summary.steps.LANCS.step2b" in Cards.text_of(snapshot_html(status), "LANCS")
    assert status.sites["IN2P3"].state == "busy"  # the other sites read as before
    (run / "results" / "submit_odd.json").unlink()

    # a step that ended with quanta not run is trouble, not busy
    record_result(
        run,
        PhaseResult(
            phase="submit_late",
            passed=False,
            reason="LANCS step2d stopped",
            summary={
                "steps": {
                    "LANCS": {"step2d": step("LANCS", "step2d", state="stopped", total=6, succeeded=4, pending=2)}
                }
            },
        ),
    )
    lancs = collect(campaign, run, butler=False).sites["LANCS"]
    assert lancs.state == "trouble" and lancs.last_error == "step2d stopped with 2 quanta not run"
    (run / "results" / "submit_late.json").unlink()

    # a later result wins for the same site and step
    record_result(
        run,
        PhaseResult(
            phase="submit_retry",
            passed=True,
            reason="retried",
            summary={"steps": {"RAL": {"step2a": step("RAL", "step2a", state="succeeded", total=6, succeeded=6)}}},
        ),
    )
    status = collect(campaign, run, butler=False)
    assert status.sites["RAL"].steps["step2a"].state == "succeeded"
    assert status.sites["RAL"].steps["step1"].succeeded == 24

    # an unreadable result may hide a failure: every site is in trouble, with the file named
    (run / "results" / "submit_late.json").write_text("{not json")
    status = collect(campaign, run, butler=False)
    assert all(s.state == "trouble" for s in status.sites.values())
    assert "submit_late.json" in (status.sites["LANCS"].last_error or "")
    assert Cards(snapshot_html(status)).states == {s: "trouble" for s in status.sites}


def test_unreachable_rucio_and_butler_are_trouble_not_exceptions(
    campaign: Campaign, run_dir: Path, tmp_path: Path
) -> None:
    """A client config pointing at a closed port, and a Butler repo that is not there."""
    cfg = Path(campaign.manifest.rucio.config or "")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    text = cfg.read_text()
    port = text.split("rucio_host", 1)[1].split("\n", 1)[0].rsplit(":", 1)[1].strip()
    (tmp_path / "client.cfg").write_text(text.replace(f":{port}", f":{closed}"))
    (tmp_path / "client.cfg").chmod(0o600)
    manifest = yaml.safe_load(campaign.manifest_path.read_text())
    manifest["rucio"]["config"] = str(tmp_path / "client.cfg")
    manifest["sites"]["LANCS"]["butler"] = str(tmp_path / "no-such-repo")
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    camp = yaml.safe_load(campaign.path.read_text())
    camp["manifest"] = str(tmp_path / "manifest.yaml")
    camp["pipeline"] = str(campaign.pipeline_path)
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(camp))
    broken = load_campaign(tmp_path / "campaign.yaml")

    t0 = time.monotonic()
    status = collect(broken, run_dir)
    assert time.monotonic() - t0 < 30
    assert status.rucio_ok is False and status.rucio_error
    for site, s in status.sites.items():
        assert s.state == "trouble", site
        assert s.issues[0].source == "rucio" and s.last_error == "Rucio cannot be read"
    lancs = status.sites["LANCS"]
    assert lancs.butler.ok is False and any(i.source == "butler" for i in lancs.issues)
    assert Cards(snapshot_html(status)).states == {s: "trouble" for s in status.sites}
    # and the real campaign reads fine again right after (no cached client or state)
    assert collect(campaign, run_dir, butler=False).rucio_ok


def test_live_widgets_and_background_refresh(campaign: Campaign, run_dir: Path) -> None:
    """The widget tree builds without a frontend; auto-refresh runs in a thread and stops cleanly."""
    dash = Dashboard(campaign, run_dir, butler=False)
    root = dash.widget
    status = dash.refresh()
    cards = dash._w["cards"]  # type: ignore[index]
    assert set(cards) == set(campaign.all_sites)
    for site, card in cards.items():
        assert f'data-site="{site}"' in card.value and f'data-state="{status.sites[site].state}"' in card.value
    assert all(img.value[:4] == b"\x89PNG" for img in dash._w["images"].values())  # type: ignore[index]
    assert root.children and "updated" in dash._w["status"].value  # type: ignore[index]

    n0 = len(dash.history())
    dash.refresh()
    assert len(dash.history()) == n0  # nothing changed: nothing written (at most once a minute)
    t0 = time.monotonic()
    dash.start(2)
    assert dash.running and dash._w["auto"].value is True  # type: ignore[index]
    assert time.monotonic() - t0 < 1  # start returns at once: the kernel is not blocked
    readings = {dash.status.collected_at}  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while len(readings) < 3 and time.monotonic() < deadline:  # two background refreshes
        time.sleep(0.2)
        readings.add(dash.status.collected_at)  # type: ignore[union-attr]
    assert len(readings) >= 3
    with dash._lock:  # the widgets show the reading the dashboard holds
        assert dash.status.collected_at.replace("T", " ")[:19] in dash._w["header"].value  # type: ignore
    thread = dash._thread
    dash.stop()
    assert not dash.running and thread is not None and not thread.is_alive()
    assert dash._w["auto"].value is False  # type: ignore[index]
    last = dash.status.collected_at  # type: ignore[union-attr]
    time.sleep(2.5)
    assert dash.status.collected_at == last  # type: ignore[union-attr]  # really stopped

    dash._w["auto"].value = True  # type: ignore[index]  # the toggle, as a person clicks it
    assert dash.running
    Dashboard.stop_all()
    assert not dash.running


def test_nbval_runs_the_dashboard_notebook(world, run_dir: Path) -> None:
    """nbval (lax) executes the stored notebook in a real kernel: batch mode, one static snapshot."""
    env = clean_env({**world.env(), "MSNB_RUN_DIR": str(run_dir)})
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider", str(NOTEBOOK)],
        env=env,
        cwd=repo_root(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout
    # opened by hand (no run_dir parameter), so no result is recorded; the history grew
    assert not (run_dir / "results" / "dashboard.json").exists()
    assert read_history(history_file(run_dir))
    print(f"\nnbval on 00_dashboard: {time.monotonic() - t0:.1f} s")
