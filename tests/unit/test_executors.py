"""What each BPS plugin's submission passes on of the environment (BPS writes it all to the submit folder)."""

from __future__ import annotations

from multisite_nb.adapters.workflow import get_executor

ENV = {
    "PATH": "/usr/bin",
    "HOME": "/home/op",
    "PANDA_AUTH_ID_TOKEN": "eyJ...",
    "PANDA_URL": "https://panda",
    "IDDS_CONFIG": "/etc/idds.cfg",
    "AWS_SHARED_CREDENTIALS_FILE": "/home/op/.lsst/aws",
    "PGPASSFILE": "/home/op/.pgpass",
    "RUCIO_PASSWORD": "hunter2",
    "GITHUB_TOKEN": "ghp_x",
    "MSNB_WORLD": "/w",
    "SOME_TOOL_SETTING": "1",
}


def test_panda_gets_only_what_bps_and_panda_need() -> None:
    env = get_executor("bps-panda").job_env(ENV)
    assert set(env) == {
        "PATH",
        "HOME",
        "PANDA_AUTH_ID_TOKEN",
        "PANDA_URL",
        "IDDS_CONFIG",
        "AWS_SHARED_CREDENTIALS_FILE",
        "PGPASSFILE",
    }


def test_parsl_gets_no_credentials() -> None:
    env = get_executor("bps-parsl").job_env(ENV)
    assert "RUCIO_PASSWORD" not in env and "GITHUB_TOKEN" not in env and "PANDA_AUTH_ID_TOKEN" not in env
    assert env["PATH"] == "/usr/bin" and env["SOME_TOOL_SETTING"] == "1"
