"""Submission: submit files checked by BPS's own config loader, preflight, and steps run for
real with ``pipetask`` and with ``bps submit`` (parsl plugin) against site repos in tmp."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
import yaml
from lsst.daf.butler import Butler, CollectionType
from lsst.pipe.base import QuantumGraph

from multisite_nb.adapters.workflow.status import graph_status, summary_status
from multisite_nb.adapters.workflow.submitfile import submit_file, write_submit_file
from multisite_nb.domain.config import Campaign
from multisite_nb.domain.errors import ConfigError, PreflightError
from multisite_nb.domain.params import load_campaign, load_manifest, repo_root
from multisite_nb.domain.records import StepRecord, StepState
from multisite_nb.phases.submit.preflight import preflight
from multisite_nb.phases.submit.runner import run_step
from multisite_nb.phases.submit.selection import site_visits, step_run
from multisite_nb.phases.submit.stage import run_groups
from multisite_nb.world.butler_world import (
    collections_for,
    copy_site_inputs,
    create_site_repo,
    dimension_records,
    populate_central,
)
from multisite_nb.world.synthetic import SkySpec, build_sky

CAMPAIGN = repo_root() / "parameters" / "campaign_3x3.yaml"
FACILITIES = repo_root() / "parameters" / "sites" / "facilities.yaml"
IN2P3_QUERY = "instrument = 'HSC' AND skymap = 'hsc_rings_3x3' AND ((tract = 0 AND patch IN (3, 4)))"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Central repo populated; IN2P3 holds target 0's inputs and RAL target 1's (as the campaign plans)."""
    root = tmp_path_factory.mktemp("submit")
    spec = SkySpec()
    create_site_repo(root / "butler" / "USDF", root / "rse" / "USDF_DISK")
    populate_central(root / "butler" / "USDF", spec)
    for site, target in (("IN2P3", 0), ("RAL", 1)):
        create_site_repo(root / "butler" / site, root / "rse" / f"{site}_DISK")
        copy_site_inputs(root / "butler" / "USDF", root / "butler" / site, spec, targets=[target])
    return root


@pytest.fixture(scope="module")
def campaign(root: Path) -> Campaign:
    return load_campaign(CAMPAIGN, env={"MSNB_WORLD": str(root)})


@pytest.fixture(scope="module")
def facilities() -> Campaign:
    """The same campaign with the real facilities' manifest (PanDA)."""
    embedded = load_campaign(CAMPAIGN, env={})
    return Campaign(embedded.config, load_manifest(FACILITIES, env={}), embedded.path, FACILITIES)


@pytest.fixture(scope="module")
def step1(root: Path, campaign: Campaign) -> StepRecord:
    """step1 at IN2P3 with the real ``pipetask run``."""
    return run_step(campaign, step_run(campaign, "IN2P3", "step1"), "pipetask", log_dir=root / "logs")


def _bps_config(path: Path):
    from lsst.ctrl.bps import BpsConfig
    from lsst.ctrl.bps.bps_config import BPS_DEFAULTS, BPS_SEARCH_ORDER

    return BpsConfig(str(path), search_order=BPS_SEARCH_ORDER, defaults=BPS_DEFAULTS)


def _value(config, key: str, **opt):
    found, value = config.search(key, opt=opt or None)
    assert found, key
    return value


# ------------------------------------------------------------------------------ step runs
def test_step_run_follows_the_collection_convention(campaign: Campaign) -> None:
    sr = step_run(campaign, "IN2P3", "step1")
    assert (sr.output_chain, sr.output_run) == ("3x3/IN2P3", "3x3/IN2P3/step1")
    assert sr.inputs == ["HSC/defaults"]  # no chain yet in a fresh repo
    visits = site_visits(campaign, "IN2P3")  # per-detector quanta: every detector of the site's visits
    assert visits and sr.data_query == "instrument = 'HSC'"  # the visits as a data ID table, however many
    assert sr.data_id_table is not None and sr.data_id_table.columns == ("instrument", "visit")
    assert sr.data_id_table.rows == tuple(("HSC", v) for v in visits)
    assert not [p for p in preflight(campaign, sr) if "data query" in p or "no quantum data ID" in p]
    # patch-level quanta: the site's patches, as a data ID table (no expression grows with the tracts)
    step3 = step_run(campaign, "IN2P3", "step3")
    assert step3.data_query == "instrument = 'HSC' AND skymap = 'hsc_rings_3x3'"
    assert step3.data_id_table is not None and step3.data_id_table.columns == ("skymap", "tract", "patch")
    assert step3.data_id_table.rows == (("hsc_rings_3x3", 0, 3), ("hsc_rings_3x3", 0, 4))
    # pre-flight evaluates the query with the table joined: each task finds its data IDs
    assert not [p for p in preflight(campaign, step3) if "data query" in p or "no quantum data ID" in p]
    assert sr.pipeline == f"{campaign.pipeline_path}#step1"
    assert sr.repo == campaign.butler_repo("IN2P3")

    extra = step_run(campaign, "IN2P3", "step2d", ["3x3/USDF/step2c"], chain_exists=True)
    assert extra.inputs == ["3x3/IN2P3", "HSC/defaults", "3x3/USDF/step2c"]

    central = step_run(campaign, "USDF", "step2c", ["3x3/IN2P3/step2b", "3x3/RAL/step2b"])
    assert central.output_run == "3x3/USDF/step2c"
    held = {v for s in ("IN2P3", "RAL") for v in site_visits(campaign, s) or []}
    assert central.data_id_table is not None
    central_visits = {int(v) for _, v in central.data_id_table.rows}
    assert held < central_visits  # a global step sees every remote site's visits, LANCS's too (from USDF's registry)
    with pytest.raises(KeyError):
        step_run(campaign, "NOWHERE", "step1")


def test_unreachable_repo_predicts_the_chain_from_the_stage_plan(facilities: Campaign) -> None:
    assert step_run(facilities, "IN2P3", "step1").inputs == ["HSC/defaults"]
    # no registry readable from here: patch-level units are their own patch table
    step3 = step_run(facilities, "IN2P3", "step3")
    assert step3.data_query == "instrument = 'HSC' AND skymap = 'hsc_rings_3x3'"
    assert step3.data_id_table is not None
    assert step3.data_id_table.rows == (("hsc_rings_3x3", 0, 3), ("hsc_rings_3x3", 0, 4))
    # a visit-level step cannot list the visits without a registry: the units as an expression
    step1 = step_run(facilities, "IN2P3", "step1")
    assert step1.data_query == IN2P3_QUERY and step1.data_id_table is None
    assert step_run(facilities, "IN2P3", "step2a").inputs == ["3x3/IN2P3", "HSC/defaults"]
    assert step_run(facilities, "USDF", "step2c").inputs == ["HSC/defaults"]


def test_a_site_registry_not_readable_here_takes_its_tables_from_the_central_one(campaign: Campaign) -> None:
    """A facility's registry the operator cannot open: the patches and visits come from the
    central registry (as data ID tables), not as an expression of the sky units."""
    sites = dict(campaign.manifest.sites)
    sites["IN2P3"] = sites["IN2P3"].model_copy(update={"butler": "/nonexistent/IN2P3/butler"})
    away = Campaign(
        campaign.config, campaign.manifest.model_copy(update={"sites": sites}), campaign.path, campaign.manifest_path
    )
    assert site_visits(away, "IN2P3") is None  # not readable from here
    units = away.sky_units("IN2P3")
    step3 = step_run(away, "IN2P3", "step3", chain_exists=True)
    assert step3.data_id_table is not None and step3.data_id_table.rows == (
        ("hsc_rings_3x3", 0, 3),
        ("hsc_rings_3x3", 0, 4),
    )
    assert "tract" not in step3.data_query and "patch" not in step3.data_query
    step1 = step_run(away, "IN2P3", "step1", chain_exists=False)
    assert step1.data_query == "instrument = 'HSC'" and step1.data_id_table is not None
    from_central = site_visits(campaign, "USDF", units)
    assert from_central and [v for _, v in step1.data_id_table.rows] == from_central
    held = site_visits(campaign, "IN2P3")
    assert held and set(held) <= set(from_central)  # what the site holds, at most


# ------------------------------------------------------------------------------ submit files
def test_panda_submit_files_load_with_bps(
    facilities: Campaign, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The PanDA client resolves its server at import unless told it is behind a load balancer.
    monkeypatch.setenv("PANDA_BEHIND_REAL_LB", "1")
    import lsst.ctrl.bps.panda  # noqa: F401  (the plugin imports offline with the variable set)

    expected = {"USDF": ("SLAC", "US"), "IN2P3": ("CC-IN2P3", "EU"), "RAL": ("RAL", "EU"), "LANCS": ("LANCS", "EU")}
    for site, (compute_site, cloud) in expected.items():
        sr = step_run(facilities, site, "step1")
        doc = submit_file(facilities, sr)
        assert doc["includeConfigs"] == [str(repo_root() / "bps" / "panda.yaml")]
        path = write_submit_file(facilities, sr, tmp_path / f"{site}.yaml", operator="ops")
        config = _bps_config(path)
        assert _value(config, "wmsServiceClass") == "lsst.ctrl.bps.panda.PanDAService"
        assert _value(config, "computeSite") == compute_site
        assert _value(config, "computeCloud") == cloud
        assert _value(config, "queue") == f"{compute_site}_Rubin"
        assert _value(config, "queue", searchobj=config["finalJob"]) == f"{compute_site}_Rubin_Merge"
        assert _value(config, "pipelineYaml") == f"{facilities.pipeline_path}#step1"
        assert _value(config, "butlerConfig") == facilities.butler_repo(site)
        assert _value(config, "inCollection") == "HSC/defaults"
        assert _value(config, "dataQuery") == sr.data_query
        assert _value(config, "output") == f"3x3/{site}"
        assert _value(config, "outputRun") == f"3x3/{site}/step1"
        assert _value(config, "requestMemory") == 2048
        assert _value(config, "numberOfRetries") == 3
        assert (_value(config, "project"), _value(config, "campaign"), _value(config, "operator")) == (
            "multisite_nb",
            "3x3",
            "ops",
        )
        # Site-specific values of the PanDA site config resolve through computeSite.
        cache = _value(config, "fileDistributionEndPointDefault", curvals={"curr_site": compute_site})
        assert cache.startswith("file:///") and "{" not in cache
        assert "environment" not in doc  # the facilities set up their own software


def test_a_run_log_shows_the_same_step_as_submitted_at_the_facility_and_here(
    campaign: Campaign, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from multisite_nb.phases.submit.samples import sample_submit_files

    monkeypatch.setenv("PANDA_BEHIND_REAL_LB", "1")
    stage = campaign.config.stages[0]
    facility, here = sample_submit_files(campaign, stage.name, tmp_path, FACILITIES)
    assert facility.path.parent == here.path.parent == tmp_path
    assert facility.step_run.step == here.step_run.step == stage.steps[0]
    assert _value(_bps_config(facility.path), "wmsServiceClass") == "lsst.ctrl.bps.panda.PanDAService"
    assert _value(_bps_config(here.path), "wmsServiceClass") == "lsst.ctrl.bps.parsl.ParslService"
    assert _value(_bps_config(facility.path), "dataQuery") == facility.step_run.data_query
    with pytest.raises(ConfigError, match=r"campaign.*no stage 'step9' in 'stages' \(have: "):
        sample_submit_files(campaign, "step9", tmp_path, FACILITIES)


def test_parsl_submit_file_loads_with_bps(campaign: Campaign, tmp_path: Path) -> None:
    from lsst.ctrl.bps.parsl.site import SiteConfig
    from lsst.ctrl.bps.parsl.sites import Local

    sr = step_run(campaign, "RAL", "step1", ["3x3/USDF/step2c"])
    path = write_submit_file(campaign, sr, tmp_path / "ral.yaml", submit_path=tmp_path / "submit")
    config = _bps_config(path)
    assert _value(config, "wmsServiceClass") == "lsst.ctrl.bps.parsl.ParslService"
    assert _value(config, "computeSite") == "RAL"
    assert _value(config, "inCollection") == "HSC/defaults,3x3/USDF/step2c"
    assert _value(config, "outputRun") == "3x3/RAL/step1"
    assert _value(config, "submitPath") == str(tmp_path / "submit")
    assert _value(config, "requestCpus", searchobj=config["finalJob"]) == 1
    assert _value(config, "requestMemory", searchobj=config["finalJob"]) == 2048
    env = config["environment"]
    assert {"CTRL_MPEXEC_DIR", "DAF_BUTLER_DIR", "PYTHONPATH", "PATH"} <= set(env)
    # The parsl plugin's own lookup: site.<computeSite> -> a Local site with the configured cores.
    site = SiteConfig.from_config(config)
    assert isinstance(site, Local)
    assert [e.label for e in site.get_executors()] == ["local"]


def test_executors_are_registered_by_name_and_chosen_from_the_manifest(
    campaign: Campaign, facilities: Campaign
) -> None:
    from multisite_nb.adapters.workflow import Executor, executor_for, executor_names, get_executor, register_executor

    assert {"pipetask", "bps-parsl", "bps-panda"} <= set(executor_names())
    assert executor_for(campaign).name == "pipetask"  # workflow.mode: pipetask
    assert executor_for(campaign, "bps").name == "bps-parsl"  # from bps/parsl_local.yaml's wmsServiceClass
    assert executor_for(facilities).name == "bps-panda"  # workflow.mode: bps, bps/panda.yaml
    with pytest.raises(ConfigError, match="no executor 'nowhere'"):
        executor_for(campaign, "nowhere")

    class Dry(Executor):
        name, mode, log_name = "test-dry", "dry", "dry.log"

        def run(self, attempt):  # pragma: no cover - never run
            raise NotImplementedError

    register_executor(Dry.name, Dry)
    assert isinstance(get_executor("test-dry"), Dry) and executor_for(campaign, "test-dry").mode == "dry"

    # a BPS submit file needs the manifest's BPS site config, and says which key is missing
    workflow = campaign.manifest.workflow.model_copy(update={"bps_site_config": None})
    unset = Campaign(
        campaign.config,
        campaign.manifest.model_copy(update={"workflow": workflow}),
        campaign.path,
        campaign.manifest_path,
    )
    with pytest.raises(ConfigError, match="workflow.bps_site_config"):
        submit_file(unset, step_run(unset, "RAL", "step1", chain_exists=False))


# ------------------------------------------------------------------------------ preflight
def test_preflight_passes_for_a_ready_step(campaign: Campaign) -> None:
    assert preflight(campaign, step_run(campaign, "RAL", "step1")) == []


def test_preflight_catches_missing_inputs_and_subsets(campaign: Campaign) -> None:
    problems = preflight(campaign, step_run(campaign, "RAL", "step2d", ["3x3/USDF/step2c"]))
    assert any("input collection 3x3/USDF/step2c does not exist" in p for p in problems), problems
    problems = preflight(campaign, step_run(campaign, "RAL", "step9"))
    assert any("no subset 'step9'" in p for p in problems), problems


def test_preflight_catches_missing_dimension_records(root: Path, campaign: Campaign) -> None:
    # A repo with the sky map and instrument but no visits or exposures at all.
    repo = root / "butler" / "bare"
    create_site_repo(repo, root / "rse" / "BARE_DISK")
    records = dimension_records(build_sky(SkySpec()))
    butler = Butler.from_config(str(repo), writeable=True)
    with butler.transaction():
        for element in ("instrument", "physical_filter", "detector", "skymap", "tract", "patch"):
            butler.registry.insertDimensionData(element, *records[element])
    butler.collections.register(collections_for(SkySpec()).defaults, CollectionType.CHAINED)
    butler.close()
    sr = dataclasses.replace(step_run(campaign, "IN2P3", "step1"), repo=str(repo))
    problems = preflight(campaign, sr)
    assert problems and all("dimension records are missing" in p for p in problems), problems
    assert any("task isr" in p and "exposure" in p for p in problems)

    # A repo holding another site's share: the sky units' records are not there.
    elsewhere = dataclasses.replace(step_run(campaign, "IN2P3", "step1"), repo=campaign.butler_repo("RAL"))
    problems = preflight(campaign, elsewhere)
    assert any("no dimension records for tract 0 patch 3, tract 0 patch 4" in p for p in problems), problems

    # An empty repo: not even the instrument.
    empty = root / "butler" / "empty"
    create_site_repo(empty, root / "rse" / "EMPTY_DISK")
    problems = preflight(campaign, dataclasses.replace(sr, repo=str(empty)))
    assert any("no dimension record for instrument HSC" in p for p in problems), problems


def test_preflight_catches_an_existing_output_run(campaign: Campaign, step1: StepRecord) -> None:
    sr = step_run(campaign, "IN2P3", "step1")
    problems = preflight(campaign, sr)
    assert any("output run 3x3/IN2P3/step1 already exists" in p and "datasets" in p for p in problems), problems
    assert preflight(campaign, sr, restart=True) == []
    with pytest.raises(PreflightError, match="already exists"):
        run_step(campaign, sr, "pipetask", log_dir=Path(step1.log).parents[3])


# ------------------------------------------------------------------------------ running
def test_step1_with_pipetask_succeeds_and_counts_match_the_graph(campaign: Campaign, step1: StepRecord) -> None:
    assert step1.state == StepState.SUCCEEDED, str(step1)
    attempt = Path(step1.log).parent
    graph = QuantumGraph.loadUri(attempt / "quantum_graph.qg")
    assert step1.total == len(graph) == 72
    assert (step1.succeeded, step1.failed, step1.pending, step1.failures) == (72, 0, 0, [])
    assert step1.by_task == {
        label: {"total": 24, "succeeded": 24, "failed": 0, "pending": 0}
        for label in ("calibrateImage", "isr", "transformPreSourceTable")
    }
    assert (step1.run, step1.chain, step1.restart, step1.returncode) == ("3x3/IN2P3/step1", "3x3/IN2P3", False, 0)
    assert (attempt / "status.json").is_file() and Path(step1.log).stat().st_size < 1_000_000
    # a clean first attempt is counted from pipetask's own summary; the provenance graph agrees
    clean = summary_status(attempt / "summary.json")
    full = graph_status(step_run(campaign, "IN2P3", "step1"), attempt / "quantum_graph.qg")
    assert clean is not None and clean == full and clean.by_task == step1.by_task
    butler = Butler.from_config(campaign.butler_repo("IN2P3"))
    assert butler.collections.get_info("3x3/IN2P3").children[0] == "3x3/IN2P3/step1"
    assert len(butler.query_datasets("isr_metadata", collections="3x3/IN2P3/step1", explain=False)) == 24
    # Once the chain exists, the next step reads it first.
    assert step_run(campaign, "IN2P3", "step2a").inputs == ["3x3/IN2P3", "HSC/defaults"]


def test_restart_of_a_finished_step_is_ok_and_runs_nothing(
    tmp_path: Path, campaign: Campaign, step1: StepRecord
) -> None:
    """A phase run twice: the second restart finds every quantum done and says so."""
    butler = Butler.from_config(campaign.butler_repo("IN2P3"))
    before = {r.id for r in butler.query_datasets("calexp", collections="3x3/IN2P3/step1", explain=False)}
    again = run_step(
        campaign, step_run(campaign, "IN2P3", "step1"), "pipetask", restart=True, log_dir=tmp_path / "other-run-folder"
    )
    assert again.state == StepState.SUCCEEDED, str(again)
    assert (again.total, again.succeeded, again.failed) == (72, 72, 0)
    assert "already succeeded" in again.note
    butler = Butler.from_config(campaign.butler_repo("IN2P3"))
    assert {r.id for r in butler.query_datasets("calexp", collections="3x3/IN2P3/step1", explain=False)} == before


def test_failure_is_reported_and_restart_finishes_without_rerunning(root: Path, campaign: Campaign) -> None:
    repo = campaign.butler_repo("RAL")
    butler = Butler.from_config(repo)
    exposure = min(r.id for r in butler.query_dimension_records("exposure", explain=False))
    butler.close()
    sr = step_run(campaign, "RAL", "step1")
    inject = f"isr:fail_condition=exposure IN ({exposure}) AND detector IN (1)"
    failed = run_step(campaign, sr, "pipetask", log_dir=root / "logs", config_overrides=[inject])
    assert failed.state == StepState.FAILED, str(failed)
    assert (failed.total, failed.succeeded, failed.failed, failed.pending) == (72, 69, 1, 2)
    assert failed.by_task["isr"]["failed"] == 1 and failed.by_task["calibrateImage"]["pending"] == 1
    [failure] = failed.failures
    assert failure.task == "isr"
    assert failure.data_id == {"detector": 1, "exposure": exposure, "instrument": "HSC"}
    assert failure.cause.startswith("StandInFailure: injected failure: task=isr")
    assert failure.cause in Path(failed.log).read_text()
    assert summary_status(Path(failed.log).parent / "summary.json") is None  # not clean: the graph is read
    # the record round-trips through JSON, and status.json holds exactly it
    assert StepRecord.model_validate(failed.model_dump(mode="json")) == failed
    assert StepRecord.model_validate_json((Path(failed.log).parent / "status.json").read_text()) == failed

    butler = Butler.from_config(repo)
    before = {
        ref.dataId.required_values: ref.id
        for ref in butler.query_datasets("calexp", collections=sr.output_run, explain=False)
    }
    butler.close()
    assert len(before) == 23

    # The cause removed (no override), the step restarts in the same run.
    assert any("already exists" in p for p in preflight(campaign, sr))
    done = run_step(campaign, sr, "pipetask", restart=True, log_dir=root / "logs")
    assert done.state == StepState.SUCCEEDED, str(done)
    assert (done.total, done.succeeded, done.failed, done.pending, done.restart) == (72, 72, 0, 0, True)
    assert done.attempt == failed.attempt + 1
    # Only the failed quantum and the two it blocked ran again ...
    assert len(QuantumGraph.loadUri(Path(done.log).parent / "quantum_graph.qg")) == 3
    butler = Butler.from_config(repo)
    after = {
        ref.dataId.required_values: ref.id
        for ref in butler.query_datasets("calexp", collections=sr.output_run, explain=False)
    }
    assert butler.collections.get_info("3x3/RAL").children[0] == "3x3/RAL/step1"
    butler.close()
    # ... and the 23 earlier outputs are the same datasets.
    assert len(after) == 24 and all(after[k] == v for k, v in before.items())


@pytest.mark.slow
def test_bps_parsl_runs_a_step_as_one_submission_per_group(root: Path, campaign: Campaign, step1: StepRecord) -> None:
    # An extra input collection (as a redistributed run would be) joins the site's chain.
    butler = Butler.from_config(campaign.butler_repo("IN2P3"), writeable=True)
    butler.collections.register("3x3/USDF/extra", CollectionType.RUN)
    butler.close()
    status = run_groups(campaign, "IN2P3", "step2a", root / "logs", extra_inputs=["3x3/USDF/extra"], mode="bps")
    assert status.state == StepState.SUCCEEDED, str(status)
    assert (status.mode, status.total, status.succeeded, status.failed) == ("bps", 12, 12, 0)
    assert status.groups is not None and (status.groups.total, status.groups.done) == (1, 1)
    attempt = root / "logs" / "IN2P3" / "step2a" / "g0001" / "attempt-01"
    submit = yaml.safe_load((attempt / "submit.yaml").read_text())
    assert submit["payload"]["outputRun"] == "3x3/IN2P3/step2a/g0001"
    assert submit["payload"]["output"] == "3x3/IN2P3/step2a/g0001/chain"
    assert list((attempt / "submit").glob("*.qg"))
    butler = Butler.from_config(campaign.butler_repo("IN2P3"))
    chain = butler.collections.get_info("3x3/IN2P3").children
    assert chain[:2] == ("3x3/IN2P3/step2a", "3x3/IN2P3/step1") and chain[-1] == "3x3/USDF/extra"
    assert butler.collections.get_info("3x3/IN2P3/step2a").children == ("3x3/IN2P3/step2a/g0001",)
    assert len(butler.query_datasets("visitSummary", collections="3x3/IN2P3/step2a", explain=False)) == 6
    butler.close()


def test_a_stopped_step_leaves_no_process_and_restarts(root: Path, campaign: Campaign) -> None:
    """What an interrupted phase does to its running steps: each pipetask process group is
    stopped (none left orphaned), the step reports not ok, and a restart finishes it."""
    import threading
    import time

    from multisite_nb.phases.submit.runner import running_steps, stop_running_steps

    # its own output collections, so no other test's runs are touched
    sr = dataclasses.replace(
        step_run(campaign, "RAL", "step1"), output_chain="stoptest/RAL", output_run="stoptest/RAL/step1"
    )
    out: dict[str, StepRecord] = {}
    worker = threading.Thread(
        target=lambda: out.setdefault(
            "s", run_step(campaign, sr, "pipetask", log_dir=root / "logs", config_overrides=["isr:sleep=20"])
        )
    )
    worker.start()
    deadline = time.monotonic() + 60
    while running_steps() == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running_steps() == 1
    time.sleep(8)  # let it build its graph and start on the (slow) quanta
    t0 = time.monotonic()
    assert stop_running_steps() == 1
    worker.join(timeout=60)
    assert not worker.is_alive() and time.monotonic() - t0 < 40
    stopped = out["s"]
    assert stopped.state != StepState.SUCCEEDED and stopped.returncode != 0, str(stopped)
    assert running_steps() == 0
    assert "stopped by signal" in Path(stopped.log).read_text()
    assert (
        subprocess.run(["pgrep", "-f", str(Path(stopped.log).parent)], capture_output=True, check=False).returncode == 1
    )

    done = run_step(campaign, sr, "pipetask", restart=True, log_dir=root / "logs")
    assert done.state == StepState.SUCCEEDED and done.restart and done.succeeded == done.total > 0, str(done)
