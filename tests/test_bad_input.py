"""Malformed parameter and manifest files touch nothing: each run through ``multisite-nb run`` against
the running world fails naming the file and the key, no run folder is made, and Rucio and every
site's Butler are exactly as they were (the files and their errors: ``tests/unit/test_bad_files.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_files import BAD, CASES, expectation
from click.testing import CliRunner

from multisite_nb.adapters.butler.repo import dataset_counts, open_site_butler
from multisite_nb.adapters.rucio.ops import RucioOps
from multisite_nb.cli import main
from multisite_nb.domain.errors import ConfigError


@pytest.mark.world
def test_bad_files_touch_nothing(world, tmp_path: Path) -> None:
    campaign = world.campaign
    ops = RucioOps.for_campaign(campaign)

    def state() -> tuple[list[str], dict[str, dict[str, int]]]:
        rules = sorted(r.id for r in ops.list_rules())
        counts = {}
        for site in campaign.all_sites:
            with open_site_butler(campaign, site) as butler:
                counts[site] = dataset_counts(butler)
        return rules, counts

    before = state()
    runner = CliRunner()
    runs = tmp_path / "runs"
    for path in CASES:
        needle, named = expectation(path)
        result = runner.invoke(
            main,
            [
                "run",
                str(path),
                "--phases",
                "placement,transfer,verify",
                "--world",
                str(world.root),
                "--runs-root",
                str(runs),
            ],
        )
        assert result.exit_code != 0, f"{path.name} was accepted"
        assert f"{named}:" in result.output and needle in result.output, f"{path.name}: {result.output}"
        assert result.exception is None or isinstance(result.exception, SystemExit), f"{path.name}: raw exception"
    assert not runs.exists(), "a run folder was made for a refused campaign"
    assert state() == before


@pytest.mark.parametrize("key", ["butler", "rse_root"])
def test_a_world_refuses_two_sites_sharing_a_path(tmp_path: Path, key: str) -> None:
    """In one machine's world each site needs its own repository and RSE root (at the facilities it is fine)."""
    from multisite_nb.world.manager import World

    manifest = (Path(__file__).parents[1] / "parameters" / "sites" / "embedded.yaml").read_text()
    old = "butler/LANCS" if key == "butler" else "rse/LANCS_DISK"
    new = "butler/RAL" if key == "butler" else "rse/RAL_DISK"
    (tmp_path / "manifest.yaml").write_text(manifest.replace(old, new))
    campaign = (BAD.parents[2] / "parameters" / "campaign_3x3.yaml").read_text()
    campaign = campaign.replace("manifest: sites/embedded.yaml", "manifest: manifest.yaml").replace(
        "pipeline: pipelines/", f"pipeline: {BAD.parents[2] / 'parameters' / 'pipelines'}/"
    )
    (tmp_path / "campaign.yaml").write_text(campaign)
    with pytest.raises(ConfigError, match=rf"manifest.yaml: key 'sites.LANCS.{key}': .* is also site RAL's"):
        World(tmp_path / "world", tmp_path / "campaign.yaml")
    assert not (tmp_path / "world").exists()


def test_run_folder_must_be_a_run_folder_and_writable(tmp_path: Path) -> None:
    from multisite_nb.adapters.files import check_writable
    from multisite_nb.adapters.results import check_run_folder
    from multisite_nb.domain.errors import StorageError

    repo = BAD.parents[2]
    runner = CliRunner()
    result = runner.invoke(
        main, ["run", str(repo / "parameters" / "campaign_3x3.yaml"), "--phases", "placement", "--resume", str(repo)]
    )
    assert result.exit_code != 0 and f"{repo}: not a run folder" in result.output
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(StorageError, match="cannot write here"):
        check_run_folder(tmp_path / "a-file" / "run")
    with pytest.raises(StorageError, match="MB needed"):
        check_writable(tmp_path, need_bytes=1 << 62)  # a full disk, as the check sees it
    result = runner.invoke(
        main,
        [
            "run",
            str(repo / "parameters" / "campaign_3x3.yaml"),
            "--phases",
            "placement",
            "--runs-root",
            str(tmp_path / "a-file" / "runs"),
        ],
    )
    assert result.exit_code != 0 and "cannot write here" in result.output
    assert check_run_folder(tmp_path / "new") == (tmp_path / "new").resolve()


def _online_case(tmp_path: Path, name: str, campaign_edit=None, manifest_edit=None) -> Path:
    """The 3x3 campaign beside a copy of the embedded manifest, one of them changed."""
    import yaml

    params = BAD.parents[2] / "parameters"
    folder = tmp_path / name
    folder.mkdir()
    manifest = yaml.safe_load((params / "sites" / "embedded.yaml").read_text())
    if manifest_edit:
        manifest_edit(manifest, folder)
    (folder / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    data = yaml.safe_load((params / "campaign_3x3.yaml").read_text())
    data.update(manifest="manifest.yaml", pipeline=str(params / "pipelines" / "drp_3x3.yaml"))
    if campaign_edit:
        campaign_edit(data)
    (folder / "campaign.yaml").write_text(yaml.safe_dump(data))
    return folder / "campaign.yaml"


def _closed_port_config(manifest: dict, folder: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = folder / "client.cfg"
    cfg.write_text(
        f"[client]\nrucio_host = http://127.0.0.1:{port}\nauth_host = http://127.0.0.1:{port}\n"
        "auth_type = userpass\naccount = root\nusername = u\npassword = p\n"
    )
    manifest["rucio"]["config"] = str(cfg)


ONLINE = {
    "unknown_rse": (
        None,
        lambda m, f: m["sites"]["RAL"].update(rse="RAL_TAPE"),
        "manifest.yaml: key 'sites.RAL.rse': RSE is not known to Rucio",
    ),
    "rucio_unreachable": (None, _closed_port_config, "manifest.yaml: key 'rucio.config': Rucio at http://127.0.0.1:"),
    "butler_missing": (
        None,
        lambda m, f: m["sites"]["LANCS"].update(butler=str(f / "no-repo")),
        "manifest.yaml: key 'sites.LANCS.butler': the Butler repository",
    ),
    "input_missing": (
        lambda d: d["collections"].update(inputs=["HSC/defaults", "HSC/nothere"]),
        None,
        "campaign.yaml: key 'collections.inputs.1': input collection is not in the central repository",
    ),
    "unit_not_in_skymap": (
        lambda d: d["sites"]["RAL"]["sky_units"].append({"tract": 77, "patch": 1}),
        None,
        "campaign.yaml: key 'sites.RAL.sky_units.2': not in sky map 'hsc_rings_3x3'",
    ),
}


@pytest.mark.world
def test_what_the_systems_cannot_serve_is_named_before_anything_is_touched(world, tmp_path: Path) -> None:
    """An unknown RSE, an unreachable Rucio, a Butler that does not open, a missing input: each its own
    cause, refused by ``check`` and by ``run`` (exit 2) before a run folder exists; nothing changes."""
    campaign = world.campaign
    ops = RucioOps.for_campaign(campaign)

    def state() -> tuple[list[str], dict[str, dict[str, int]]]:
        counts = {}
        for site in campaign.all_sites:
            with open_site_butler(campaign, site) as butler:
                counts[site] = dataset_counts(butler)
        return sorted(r.id for r in ops.list_rules()), counts

    before = state()
    runner = CliRunner()
    runs = tmp_path / "runs"
    for name, (campaign_edit, manifest_edit, needle) in ONLINE.items():
        path = _online_case(tmp_path, name, campaign_edit, manifest_edit)
        for args in (["check", str(path)], ["run", str(path), "--runs-root", str(runs)]):
            result = runner.invoke(main, [*args, "--world", str(world.root)])
            assert result.exit_code == 2, f"{name} {args[0]}: {result.output}"
            assert needle in result.output, f"{name} {args[0]}: {result.output}"
            assert "collision" not in result.output and "Traceback" not in result.output
    assert not runs.exists(), "a run folder was made for a campaign its systems cannot serve"
    assert state() == before
    ok = runner.invoke(
        main, ["check", str(BAD.parents[2] / "parameters" / "campaign_3x3.yaml"), "--world", str(world.root)]
    )
    assert ok.exit_code == 0 and ok.output.startswith("ready: campaign 3x3"), ok.output
