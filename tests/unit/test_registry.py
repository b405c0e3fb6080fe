"""The registries: phases found in their modules, the chain derived from their declarations and the
stage plan, executors from entry points and the manifest's mode checked against them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from multisite_nb.adapters.workflow import executor_names, get_executor
from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.params import executor_modes, load_campaign, repo_root
from multisite_nb.domain.results import PhaseResult
from multisite_nb.phases import registry
from multisite_nb.phases.spec import phase

CAMPAIGN = repo_root() / "parameters" / "campaign_3x3.yaml"
ENV = {"MSNB_WORLD": "/nonexistent/world"}


def _census(campaign: object, run_dir: object) -> PhaseResult:
    raise AssertionError("declared only: not run here")


@pytest.fixture
def census() -> Iterator[registry.Phase]:
    """A phase registered from the test: it needs verification, and is one module plus one notebook."""
    declared = registry.register(phase("census", notebook="09_census", needs=("verify",))(_census))
    yield declared
    registry.unregister("census")


def test_the_builtin_phases_are_found_in_their_modules_and_the_dashboard_by_its_entry_point() -> None:
    names = {p.name for p in registry.phases()}
    assert {"placement", "transfer", "verify", "submit", "gather_redistribute", "qa", "repair", "cleanup"} <= names
    assert "dashboard" in names  # a view's phase: the entry point multisite_nb.phases
    assert registry.get("03_verify").name == "verify"


def test_the_chain_flows_by_default_one_phase_standing_for_transfer_verify_and_the_first_stage() -> None:
    campaign = load_campaign(CAMPAIGN, env=ENV)
    assert registry.chain_for(campaign) == [
        "placement",
        "flow",
        "gather_redistribute@calibration",
        "submit@late",
        "gather_redistribute@final",
        "qa",
        "dashboard",
    ]
    assert registry.get("flow").stands_for == ("transfer", "verify", "submit")
    assert registry.get("02_flow").notebook == "02_flow"


def test_the_chain_follows_from_the_declarations_and_the_stage_plan() -> None:
    campaign = load_campaign(CAMPAIGN, env=ENV)
    assert registry.chain_for(campaign, flowing=False) == [
        "placement",
        "transfer",
        "verify",
        "submit@early",
        "gather_redistribute@calibration",
        "submit@late",
        "gather_redistribute@final",
        "qa",
        "dashboard",
    ]


def test_another_stage_plan_gives_another_chain(tmp_path: Path) -> None:
    data = yaml.safe_load(CAMPAIGN.read_text())
    data["manifest"] = str(CAMPAIGN.parent / data["manifest"])
    data["pipeline"] = str(CAMPAIGN.parent / data["pipeline"])
    data["stages"] = [
        {"name": "all", "where": "sites", "steps": ["step1", "step2a", "step2b"]},
        {"name": "global", "where": "central", "steps": ["step2c", "step2d", "step2e", "step3", "step4", "step5"]},
    ]
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    chain = registry.chain_for(load_campaign(path, env=ENV), flowing=False)
    assert chain[3:6] == ["submit@all", "gather_redistribute@global", "gather_redistribute@final"]
    assert registry.chain_for(load_campaign(path, env=ENV))[1:4] == [
        "flow",
        "gather_redistribute@global",
        "gather_redistribute@final",
    ]


def test_a_phase_registered_from_a_test_joins_the_chain_after_what_it_needs(census: registry.Phase) -> None:
    chain = registry.chain_for(load_campaign(CAMPAIGN, env=ENV), flowing=False)
    assert "census" in chain
    assert chain.index("verify") < chain.index("census") < chain.index("dashboard")  # the dashboard closes it
    flowing = registry.chain_for(load_campaign(CAMPAIGN, env=ENV))
    assert flowing.index("flow") < flowing.index("census") < flowing.index("dashboard")  # the flow verifies
    assert registry.parse("census").phase is census


def test_repair_and_cleanup_are_phases_but_never_in_a_chain() -> None:
    chain = registry.chain_for(load_campaign(CAMPAIGN, env=ENV))
    assert registry.get("repair").notebook == "08_repair" and registry.get("cleanup").notebook == "07_cleanup"
    assert not {"repair", "cleanup"} & set(chain)


def test_a_stage_the_campaign_lacks_is_named() -> None:
    campaign = load_campaign(CAMPAIGN, env=ENV)
    assert registry.parse("submit@late", campaign).label == "submit_late"
    with pytest.raises(ConfigError, match=r"has no stage 'nosuch' that submit serves \(it serves: early, late\)"):
        registry.parse("submit@nosuch", campaign)
    with pytest.raises(ConfigError, match=r"gather_redistribute serves \(it serves: calibration, final\)"):
        registry.parse("gather_redistribute@early", campaign)


def test_needs_that_form_a_loop_are_refused(census: registry.Phase) -> None:
    looped = registry.register(phase("census", notebook="09_census", needs=("census_b",))(_census))
    other = registry.register(phase("census_b", notebook="10_census_b", needs=("census",))(_census))
    try:
        with pytest.raises(ConfigError, match="loop"):
            registry.chain_for(load_campaign(CAMPAIGN, env=ENV))
    finally:
        registry.unregister(other.name)
        registry.unregister(looped.name)


def test_executors_come_from_entry_points_and_the_manifest_mode_is_checked(tmp_path: Path) -> None:
    assert {"pipetask", "bps-parsl", "bps-panda"} <= set(executor_names())
    assert executor_modes() >= {"pipetask", "bps-parsl", "bps-panda", "bps"}
    assert get_executor("bps-panda").name == "bps-panda"
    manifest = (CAMPAIGN.parent / "sites" / "embedded.yaml").read_text()
    assert "mode: pipetask" in manifest
    (tmp_path / "manifest.yaml").write_text(manifest.replace("mode: pipetask", "mode: slurm"))
    data = yaml.safe_load(CAMPAIGN.read_text())
    data.update(manifest=str(tmp_path / "manifest.yaml"), pipeline=str(CAMPAIGN.parent / data["pipeline"]))
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_campaign(tmp_path / "campaign.yaml", env=ENV)
    message = str(info.value)
    assert message.startswith(
        f"{tmp_path / 'manifest.yaml'}: key 'workflow.mode': not a registered executor (got 'slurm')"
    )
    assert "choose one of bps, bps-panda, bps-parsl, pipetask" in message
