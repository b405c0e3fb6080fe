"""Parameter files: the shipped campaign loads; bad ones fail with the file and the key named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.params import load_campaign, repo_root, with_manifest

CAMPAIGN = repo_root() / "parameters" / "campaign_3x3.yaml"


def write_variant(tmp_path: Path, change) -> Path:
    """Copy the shipped campaign (and its manifest + pipeline) into tmp, apply `change`."""
    data = yaml.safe_load(CAMPAIGN.read_text())
    data["manifest"] = str(CAMPAIGN.parent / data["manifest"])
    data["pipeline"] = str(CAMPAIGN.parent / data["pipeline"])
    change(data)
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_campaign_loads(tmp_path: Path) -> None:
    c = load_campaign(CAMPAIGN, env={"MSNB_WORLD": str(tmp_path)})
    assert c.central == "USDF"
    assert c.remote_sites == ["IN2P3", "RAL", "LANCS"]
    assert [str(u) for u in c.sky_units("RAL")] == ["tract 1 patch 3", "tract 1 patch 4"]
    assert c.site("IN2P3").compute_site == "CC-IN2P3"
    assert c.site("LANCS").butler == f"{tmp_path}/butler/LANCS"
    assert c.manifest.rucio.config == f"{tmp_path}/rucio/client.cfg"
    assert [s.where for s in c.config.stages] == ["sites", "central", "sites"]


def test_facilities_manifest_is_interchangeable(tmp_path: Path) -> None:
    path = write_variant(tmp_path, lambda d: d.update(manifest=str(CAMPAIGN.parent / "sites" / "facilities.yaml")))
    c = load_campaign(path, env={"RUCIO_CONFIG": "/etc/rucio.cfg"})
    assert {c.site(s).compute_site for s in c.all_sites} == {"SLAC", "CC-IN2P3", "RAL", "LANCS"}
    assert c.manifest.workflow.mode == "bps"


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d.update(colour="blue"), "key 'colour': unknown key"),
        (lambda d: d["sites"]["RAL"].update(shares=0.2), "key 'sites.RAL.shares': unknown key"),
        (lambda d: d["sites"]["RAL"]["sky_units"][0].update(tract="one"), "key 'sites.RAL.sky_units.0.tract'"),
        (lambda d: d["sites"]["RAL"]["sky_units"][0].update(patch=-1), "key 'sites.RAL.sky_units.0.patch'"),
        (lambda d: d["sites"]["LANCS"]["sky_units"].append({"tract": 0, "patch": 3}), "already given to site IN2P3"),
        (
            lambda d: d["sites"].update(CERN={"sky_units": [{"tract": 5}]}),
            "key 'sites.CERN': site is not in the site manifest",
        ),
        (lambda d: d.update(central="FNAL"), "key 'central': site is not in the site manifest"),
        (lambda d: d.pop("skymap"), "key 'skymap': required key is missing"),
        (lambda d: d["stages"][0].update(where="everywhere"), "key 'stages.0.where'"),
        (lambda d: d["stages"][2]["steps"].append("step1"), "step 'step1' appears in more than one stage"),
        (lambda d: d.update(pipeline="nope.yaml"), "key 'pipeline': no such pipeline file"),
        (lambda d: d["sites"]["IN2P3"].update(share=0.9), "shares add up to"),
        (
            lambda d: d["stages"][1]["steps"].__setitem__(0, "step2z"),
            "key 'stages.1.steps.0': not a subset of the pipeline (got 'step2z')",
        ),
        (
            lambda d: d.update(rule_lifetime_days=30),
            "key 'rule_lifetime_days': replication rules of this toolkit carry no lifetime",
        ),
        (lambda d: d["sites"]["RAL"].update(tracts=["7-x"]), "tracts[0]: '7-x' is neither a tract id nor a range"),
        (lambda d: d["sites"]["RAL"].update(tracts=["9-3"]), "tracts[0]: range '9-3' ends before it starts"),
        (
            lambda d: d["sites"]["RAL"].update(tracts=["0-2"]),
            "tract 0 patch 3 lies in tract 0, which is given whole to site RAL",
        ),
    ],
)
def test_bad_campaign_names_file_and_key(tmp_path: Path, change, needle: str) -> None:
    path = write_variant(tmp_path, change)
    with pytest.raises(ConfigError) as info:
        load_campaign(path, env={"MSNB_WORLD": str(tmp_path)})
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_bad_manifest_names_its_file(tmp_path: Path) -> None:
    manifest = yaml.safe_load((CAMPAIGN.parent / "sites" / "embedded.yaml").read_text())
    manifest["sites"]["RAL"]["rse"] = "IN2P3_DISK"
    mpath = tmp_path / "manifest.yaml"
    mpath.write_text(yaml.safe_dump(manifest))
    path = write_variant(tmp_path, lambda d: d.update(manifest=str(mpath)))
    with pytest.raises(ConfigError, match=r"manifest\.yaml.*RSE 'IN2P3_DISK' is given to more than one site"):
        load_campaign(path, env={"MSNB_WORLD": str(tmp_path)})


def test_unset_variable_is_named(tmp_path: Path) -> None:
    manifest = yaml.safe_load((CAMPAIGN.parent / "sites" / "embedded.yaml").read_text())
    manifest["sites"]["RAL"]["butler"] = "${NO_SUCH_VAR}/repo"
    mpath = tmp_path / "manifest.yaml"
    mpath.write_text(yaml.safe_dump(manifest))
    path = write_variant(tmp_path, lambda d: d.update(manifest=str(mpath)))
    with pytest.raises(ConfigError, match=r"key 'sites.RAL.butler': uses \$\{NO_SUCH_VAR\}"):
        load_campaign(path, env={})


def test_not_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("campaign: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_campaign(path)


def test_same_campaign_other_manifest(tmp_path: Path) -> None:
    c = load_campaign(CAMPAIGN, env={"MSNB_WORLD": str(tmp_path)})
    f = with_manifest(c, "parameters/sites/facilities.yaml", env={})
    assert f.config is c.config and f.sky_units("RAL") == c.sky_units("RAL")
    assert f.site("IN2P3").compute_site == "CC-IN2P3" and f.manifest.workflow.mode == "bps"
    assert c.site("IN2P3").butler.startswith(str(tmp_path))


def test_relative_manifest_paths_are_fixed_at_load(tmp_path: Path, monkeypatch) -> None:
    """Relative paths mean the directory the toolkit started from, even for processes that run
    elsewhere (pipetask runs in its attempt folder); a bare repository alias stays an alias."""
    manifest = yaml.safe_load((CAMPAIGN.parent / "sites" / "embedded.yaml").read_text())
    manifest["rucio"]["config"] = "w/rucio/client.cfg"
    manifest["sites"]["USDF"]["butler"] = "main"  # an alias from DAF_BUTLER_REPOSITORY_INDEX
    manifest["sites"]["RAL"]["butler"] = "w/butler/RAL"
    manifest["sites"]["RAL"]["rse_root"] = "w/rse/RAL_DISK"
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(manifest))
    path = write_variant(tmp_path, lambda d: d.update(manifest=str(tmp_path / "m.yaml")))
    monkeypatch.chdir(tmp_path)
    c = load_campaign(path, env={})
    monkeypatch.chdir("/")
    assert c.butler_repo("RAL") == str(tmp_path / "w" / "butler" / "RAL")
    assert c.site("RAL").rse_root == str(tmp_path / "w" / "rse" / "RAL_DISK")
    assert c.manifest.rucio.config == str(tmp_path / "w" / "rucio" / "client.cfg")
    assert c.butler_repo("USDF") == "main"


def test_tract_ranges_are_whole_tract_units(tmp_path: Path) -> None:
    """A data release gives a site thousands of tracts: ``tracts: ["a-b", n]`` spells them."""
    data = yaml.safe_load(CAMPAIGN.read_text())
    data["manifest"] = str(CAMPAIGN.parent / data["manifest"])
    data["pipeline"] = str(CAMPAIGN.parent / data["pipeline"])
    data["sites"]["RAL"] = {"share": 0.15, "tracts": ["10-1209", 5000], "sky_units": [{"tract": 1, "patch": 3}]}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    units = load_campaign(path).sky_units("RAL")
    assert len(units) == 1 + 1200 + 1
    assert units[0].key == (1, 3) and units[1].key == (10, None) and units[-1].key == (5000, None)
    assert {u.tract for u in units[1:-1]} == set(range(10, 1210))
