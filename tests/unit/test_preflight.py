"""The preflight, offline: every problem at once, bounded inputs, the command line's refusals.

What the operator typed is refused before anything is made (no run folder, no world), with the
file and the key, exit code 2, and no traceback. (Online refusals, against a world: the world
tier's ``tests/test_preflight_online.py``.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from multisite_nb.adapters.butler.queries import BIND_CHUNK, chunked, records_of
from multisite_nb.cli import BAD_INPUT, _Main, main
from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.params import campaign_problems, load_campaign, repo_root
from multisite_nb.domain.yamlfile import MAX_PARAMETER_BYTES, read_yaml
from multisite_nb.world.spec import SkySpec

PARAMS = repo_root() / "parameters"
CAMPAIGN = PARAMS / "campaign_3x3.yaml"
ENV = {"MSNB_WORLD": "/nonexistent/world"}


def _campaign(tmp_path: Path, edit, manifest_edit=None) -> Path:
    """A copy of the 3x3 campaign (absolute pipeline and manifest), changed by ``edit``."""
    data = yaml.safe_load(CAMPAIGN.read_text())
    data["pipeline"] = str(PARAMS / "pipelines" / "drp_3x3.yaml")
    data["manifest"] = str(PARAMS / "sites" / "embedded.yaml")
    if manifest_edit is not None:
        manifest = yaml.safe_load((PARAMS / "sites" / "embedded.yaml").read_text())
        manifest_edit(manifest)
        (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest))
        data["manifest"] = str(tmp_path / "manifest.yaml")
    edit(data)
    path = tmp_path / "campaign.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_problem_of_both_files_is_listed_at_once(tmp_path: Path) -> None:
    def edit(d: dict) -> None:
        d["sites"]["RAL"]["share"] = "lots"
        d["sites"]["LANCS"]["sky_units"][0]["tract"] = True
        d["qa"] = {"sample_units_per_site": "some"}

    def manifest_edit(m: dict) -> None:
        m["workflow"]["jobs"] = "4"
        m["sites"]["RAL"]["colour"] = "blue"

    path = _campaign(tmp_path, edit, manifest_edit)
    campaign, problems = campaign_problems(path, env=ENV)
    assert campaign is None
    where = {(Path(p.file).name, p.key) for p in problems}
    assert {
        ("campaign.yaml", "sites.RAL.share"),
        ("campaign.yaml", "sites.LANCS.sky_units.0.tract"),
        ("campaign.yaml", "qa.sample_units_per_site"),
        ("manifest.yaml", "workflow.jobs"),
        ("manifest.yaml", "sites.RAL.colour"),
    } <= where, problems
    with pytest.raises(ConfigError) as info:
        load_campaign(path, env=ENV)
    assert len(str(info.value).splitlines()) == len(problems) == len(info.value.problems)


def test_a_quoted_number_is_not_coerced_and_the_fix_is_named(tmp_path: Path) -> None:
    path = _campaign(tmp_path, lambda d: d["sites"]["RAL"]["sky_units"][0].update(tract="1"))
    (problem,) = campaign_problems(path, env=ENV)[1]
    assert problem.key == "sites.RAL.sky_units.0.tract" and problem.value == "1"
    assert "without quotes" in problem.fix


def test_a_file_past_the_size_limit_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("w") as out:  # valid YAML all through: only its size is wrong
        out.write("units:\n")
        while out.tell() <= MAX_PARAMETER_BYTES:
            out.write("  - {tract: 1, patch: 2}\n" * 1000)
    with pytest.raises(ConfigError, match=r"huge.yaml: larger than a parameter file may be \(1,048,576 bytes\)"):
        read_yaml(path)


@pytest.mark.parametrize("depth", [33, 200, 5000])
def test_deep_nesting_is_refused_without_a_recursion_error(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(path)
    assert str(info.value).startswith(f"{path}: ") and (
        "nested more than 32" in str(info.value) or "YAML" in str(info.value)
    )


def test_a_world_spec_runs_no_arbitrary_callable_and_no_nan() -> None:
    for bad, key in [
        ({"instrument_class": "os.system"}, "instrument_class"),
        ({"instrument_class": "lsst.obs.subaru.HyperSuprimeCam; rm"}, "instrument_class"),
        ({"tracts": [{"id": 0, "ra": float("nan"), "dec": 0.0}]}, "tracts.0.ra"),
        ({"tracts": [{"id": 0, "ra": float("inf"), "dec": 0.0}]}, "tracts.0.ra"),
        ({"seed": True}, "seed"),
        ({"detector_grid": [True, 2]}, "detector_grid.0"),
    ]:
        with pytest.raises(Exception) as info:
            SkySpec.model_validate(bad)
        assert key in str(info.value), (bad, info.value)
    assert SkySpec.model_validate({"detector_grid": [3, 2]}).detector_grid == (3, 2)


def test_ids_are_bound_in_chunks_a_database_accepts(tmp_path: Path) -> None:
    """40,000 ids in one ``IN (ids)``: past SQLite's 32,766 variables unless chunked."""
    from lsst.daf.butler import Butler

    assert [len(c) for c in chunked(range(25_000))] == [BIND_CHUNK, BIND_CHUNK, 5_000]
    Butler.makeRepo(str(tmp_path / "repo"))
    with Butler.from_config(str(tmp_path / "repo"), writeable=True) as butler:
        butler.registry.insertDimensionData("instrument", {"name": "Cam", "detector_max": 4, "visit_max": 10**6})
        butler.registry.insertDimensionData(
            "detector", *({"instrument": "Cam", "id": i, "full_name": f"d{i}"} for i in range(3))
        )
        found = records_of(butler, "detector", "detector", range(40_000), "Cam")
    assert sorted(r.id for r in found) == [0, 1, 2]


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_check_lists_problems_and_exits_2_and_a_good_campaign_is_ready(tmp_path: Path) -> None:
    code, out = _cli("check", str(CAMPAIGN), "--offline")
    assert code == 0 and out.startswith("ready: campaign 3x3"), out
    bad = _campaign(tmp_path, lambda d: (d["sites"]["RAL"].update(share=".nan"), d.update(skymap=7)))
    code, out = _cli("check", str(bad), "--offline")
    assert code == BAD_INPUT, out
    lines = [ln for ln in out.splitlines() if ln.startswith(str(bad))]
    assert len(lines) == 2 and "key 'sites.RAL.share'" in out and "key 'skymap'" in out
    assert "not ready: 2 problem(s)" in out and "Traceback" not in out


def test_run_of_a_bad_campaign_makes_no_run_folder(tmp_path: Path) -> None:
    bad = _campaign(tmp_path, lambda d: d["stages"][0].update(steps=["step1", "step2b", "step2a"]))
    runs = tmp_path / "runs"
    code, out = _cli("run", str(bad), "--runs-root", str(runs))
    assert code == BAD_INPUT and "key 'stages.0.steps.1'" in out and "list 'step2a' before 'step2b'" in out, out
    assert not runs.exists()


def test_options_naming_what_is_not_there_are_refused_and_make_nothing(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    code, out = _cli("run", str(CAMPAIGN), "--world", str(tmp_path), "--runs-root", str(runs))
    assert code == BAD_INPUT and "not a world" in out, out
    code, out = _cli("run", str(CAMPAIGN), "--resume", str(tmp_path / "nope"), "--runs-root", str(runs))
    assert code == BAD_INPUT and "nothing to resume" in out and not (tmp_path / "nope").exists(), out
    (tmp_path / "file").write_text("x")
    code, out = _cli("world", "up", "--dir", str(tmp_path / "file"))
    assert code == BAD_INPUT and "a file, not a folder" in out, out
    code, out = _cli("world", "down", "--dir", str(tmp_path / "empty"))
    assert code == 1 and "no world in" in out and "nothing to stop" in out, out
    assert not runs.exists() and not (tmp_path / "empty").exists()


def test_an_unexpected_error_is_one_line_and_a_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    group = _Main()

    @group.command("boom")
    def boom() -> None:
        {}["missing"]

    result = CliRunner().invoke(group, ["boom"], catch_exceptions=False)
    assert result.exit_code == 1
    assert "unexpected KeyError: 'missing'" in result.output and "Traceback" not in result.output
    (log,) = (tmp_path / "state" / "multisite_nb" / "errors").glob("*.log")
    assert str(log) in result.output and "Traceback" in log.read_text()


def test_a_system_that_did_not_answer_is_named_as_an_outage_not_a_bug(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rucio.common.exception import ServerConnectionException

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    group = _Main()

    @group.command("down")
    def down() -> None:
        raise ServerConnectionException("Cannot connect to the Rucio server.")

    result = CliRunner().invoke(group, ["down"], catch_exceptions=False)
    assert result.exit_code == 1
    assert "a system did not answer: ServerConnectionException" in result.output, result.output
    assert "world check" in result.output and "a bug" not in result.output and "Traceback" not in result.output
