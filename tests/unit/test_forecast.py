"""The forecast before a byte moves: from a plan's counts, the pipeline and the manifest's capacities."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.params import load_campaign, repo_root
from multisite_nb.domain.plan import PlacementPlan, PlanSummary, SiteCounts
from multisite_nb.phases.placement.forecast import campaign_forecast, manifest_rates

PARAMS = repo_root() / "parameters"
ENV = {"MSNB_WORLD": "/nonexistent/world"}


def _plan(campaign, visits_per_site: int, detectors: int, mb_per_raw: float) -> PlacementPlan:
    sites = campaign.remote_sites
    files = visits_per_site * detectors
    return PlacementPlan(
        campaign=campaign.name,
        central=campaign.central,
        sites=list(sites),
        summary=PlanSummary(
            sites={
                s: SiteCounts(files=files * (i + 1), bytes=int(files * (i + 1) * mb_per_raw * 1e6))
                for i, s in enumerate(sites)
            },
            boundary_extra_bytes=int(5 * mb_per_raw * 1e6),
        ),
        visits={s: list(range(visits_per_site * (i + 1))) for i, s in enumerate(sites)},
        detectors={s: list(range(detectors)) for s in sites},
    )


@pytest.mark.parametrize(
    ("campaign_file", "visits", "detectors"),
    [("campaign_3x3.yaml", 6, 4), ("campaign_groups.yaml", 3, 4), ("campaign_scale_20k.yaml", 60, 189)],
)
def test_the_forecast_gives_every_stage_and_site_the_critical_path_and_the_links(
    campaign_file: str, visits: int, detectors: int
) -> None:
    campaign = load_campaign(PARAMS / campaign_file, env=ENV)
    fc = campaign_forecast(campaign, _plan(campaign, visits, detectors, 2.0))
    names = [st.stage for st in fc.stages]
    assert names == ["transfer", *(st.name for st in campaign.config.stages), "final"]
    for st in fc.stages:
        assert st.seconds >= 0
    transfer = fc.stage("transfer")
    assert transfer is not None and set(transfer.sites) == set(campaign.remote_sites)
    slowest = max(transfer.sites, key=lambda s: transfer.sites[s])  # the site with most files moves longest
    assert transfer.critical == f"{campaign.central}->{slowest}" == f"{campaign.central}->{campaign.remote_sites[-1]}"
    assert set(fc.bytes_per_link) == {f"{campaign.central}->{s}" for s in campaign.remote_sites}
    assert fc.phase_by_phase_s == pytest.approx(sum(st.seconds for st in fc.stages), abs=0.5)
    assert fc.flowing_s > 0 and fc.critical_path and fc.boundary_extra_s > 0
    assert fc.capacities_from == str(campaign.manifest_path)


def test_more_data_forecasts_more_time() -> None:
    campaign = load_campaign(PARAMS / "campaign_3x3.yaml", env=ENV)
    small = campaign_forecast(campaign, _plan(campaign, 6, 4, 2.0))
    large = campaign_forecast(campaign, _plan(campaign, 600, 4, 2.0))
    assert large.stage("transfer").seconds > small.stage("transfer").seconds
    assert large.phase_by_phase_s > small.phase_by_phase_s


def _manifest(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load((PARAMS / "sites" / "embedded.yaml").read_text())
    edit(data)
    path = tmp_path / "manifest.yaml"
    path.write_text(yaml.safe_dump(data))
    campaign = yaml.safe_load((PARAMS / "campaign_3x3.yaml").read_text())
    campaign.update(manifest=str(path), pipeline=str(PARAMS / campaign["pipeline"]))
    out = tmp_path / "campaign.yaml"
    out.write_text(yaml.safe_dump(campaign))
    return out


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d.pop("capacities"), "key 'capacities' is missing"),
        (lambda d: d["capacities"]["links"].pop("USDF->RAL"), "key 'capacities.links.USDF->RAL' is missing"),
        (
            lambda d: d["capacities"].update(per_quantum_s={"step1": 1.0}),
            "key 'capacities.per_quantum_s.step2a' is missing",
        ),
    ],
)
def test_a_missing_capacity_is_refused_naming_the_file_and_the_key(tmp_path: Path, edit, key: str) -> None:
    campaign = load_campaign(_manifest(tmp_path, edit), env=ENV)
    with pytest.raises(ConfigError, match="manifest.yaml") as err:
        manifest_rates(campaign)
    assert key in str(err.value)


@pytest.mark.parametrize("value", [0, -3.5])
def test_a_non_positive_capacity_is_refused_when_the_manifest_is_read(tmp_path: Path, value: float) -> None:
    path = _manifest(tmp_path, lambda d: d["capacities"]["links"]["USDF->LANCS"].update(per_file_s=value))
    with pytest.raises(ConfigError, match=r"manifest.yaml.*capacities\.links\.USDF->LANCS\.per_file_s"):
        load_campaign(path, env=ENV)
