"""Run machinery: results, run folders, the papermill chain, the secret scan, the index.

The chain tests execute the tiny notebooks in ``tests/data/notebooks`` with the
real papermill and a real ipykernel (``python3`` kernel spec of the venv).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat
import pandas as pd
import pytest

from multisite_nb.adapters.results import load_result, load_results, load_run_record, record_result, save_table
from multisite_nb.domain.errors import ConfigError
from multisite_nb.domain.redaction import REDACTED, redact_parameters
from multisite_nb.domain.results import PhaseResult, utcnow
from multisite_nb.phases import registry
from multisite_nb.run.chain import find_notebook, run_chain
from multisite_nb.run.folder import new_run
from multisite_nb.run.secrets import known_secrets_from_rucio_config, scan_for_secrets
from multisite_nb.views.report import render_index
from multisite_nb.views.tables import summarize

NOTEBOOKS = Path(__file__).parents[1] / "data" / "notebooks"
sys.path.insert(0, str(NOTEBOOKS))  # the test phases' module, beside their notebooks (their kernels' folder)
import chain_phases  # noqa: E402 - after its folder is on the path

SECRET = "Tr0ub4dor-and-3-horses"
TOKEN = "root-root-webui-0123456789abcdef"

pytestmark = pytest.mark.timeout(120)


# --------------------------------------------------------------------------- fixtures / helpers


@pytest.fixture(autouse=True)
def test_phases() -> Iterator[None]:
    """The test notebooks' phases, registered for the duration of a test."""
    added = [registry.register(p) for p in chain_phases.PHASES]
    yield
    for phase in added:
        registry.unregister(phase.name)


@pytest.fixture(autouse=True)
def rucio_cfg(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A throw-away Rucio client config with a password and a cached token; never the real one."""
    folder = tmp_path_factory.mktemp("rucio")
    token = folder / "auth_token_for_account_root"
    token.write_text(TOKEN + "\n")
    cfg = folder / "rucio.cfg"
    cfg.write_text(
        "[client]\nrucio_host = http://127.0.0.1:8080\nauth_host = http://127.0.0.1:8080\n"
        f"auth_type = userpass\nusername = ddmlab\npassword = {SECRET}\naccount = root\n"
        f"auth_token_file_path = {token}\noidc_refresh_lifetime = 3600\n"
        "[database]\ndefault = postgresql://rucio:dbpass-42@localhost/rucio\n"
    )
    monkeypatch.setenv("RUCIO_CONFIG", str(cfg))
    return cfg


@pytest.fixture(scope="session")
def kernel() -> str:
    """The kernel the test notebooks name must exist (``python -m ipykernel install --sys-prefix``)."""
    from jupyter_client.kernelspec import KernelSpecManager

    specs = KernelSpecManager().find_kernel_specs()
    if "python3" not in specs:
        pytest.fail("no 'python3' Jupyter kernel spec: run `.venv/bin/python -m ipykernel install --sys-prefix`")
    return "python3"


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [v for k, v in attrs if k in ("href", "src") and v is not None]


def links_in(page: Path) -> list[str]:
    parser = _Links()
    parser.feed(page.read_text(encoding="utf-8"))
    return parser.links


def assert_links_resolve(run_dir: Path) -> list[str]:
    """Every href/src in index.html is a relative link to an existing file in the run folder."""
    index = run_dir / "index.html"
    assert index.is_file()
    links = links_in(index)
    assert links, "index.html has no links"
    for link in links:
        parts = urlsplit(link)
        assert not parts.scheme and not parts.netloc, f"absolute link {link!r}"
        target = (run_dir / unquote(parts.path)).resolve()
        assert run_dir.resolve() in target.parents, f"link {link!r} leaves the run folder"
        assert target.is_file(), f"link {link!r} does not resolve"
    for page in (run_dir / "html").glob("*.html"):  # rendered notebooks link back, nowhere else
        for link in links_in(page):
            parts = urlsplit(link)
            if link.startswith(("#", "data:")):
                continue
            assert not parts.scheme, f"{page.name} links outside: {link!r}"
            assert (page.parent / unquote(parts.path)).resolve().is_file(), f"{page.name}: {link!r}"
    return links


def chain(run_dir: Path, phases: list[str], lines: list[str], **params: object) -> object:
    return run_chain(phases, run_dir, params, NOTEBOOKS, log=lines.append, execution_timeout=60, cwd=NOTEBOOKS)


# --------------------------------------------------------------------------- results


def test_record_and_load_result(tmp_path: Path) -> None:
    table = save_table(tmp_path, "alpha", "rows", pd.DataFrame({"a": range(5)}))
    assert table == tmp_path / "artifacts" / "alpha" / "rows.csv"
    started = utcnow()
    path = record_result(
        tmp_path,
        PhaseResult(phase="alpha", passed=True, reason="ok", started=started, summary={"rows": 5}, artifacts=[table]),
    )
    assert path == tmp_path / "results" / "alpha.json"
    assert [p.name for p in path.parent.iterdir()] == ["alpha.json"]  # no temp file left behind
    back = load_result(tmp_path, "alpha")
    assert back is not None and back.passed and back.started == started
    assert back.artifacts == ["artifacts/alpha/rows.csv"]
    assert json.loads(path.read_text())["summary"]["rows"] == 5
    assert isinstance(back.summary, chain_phases.AlphaSummary) and back.summary.rows == 5
    assert load_result(tmp_path, "beta") is None
    record_result(tmp_path, PhaseResult(phase="beta", passed=False, reason="no"))
    assert list(load_results(tmp_path)) == ["alpha", "beta"]
    assert load_results(tmp_path / "nowhere") == {}


def test_result_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        PhaseResult(phase="alpha", passed=True, reason="", started=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="phase name"):
        PhaseResult(phase="01_Alpha", passed=True, reason="")
    with pytest.raises(ValueError):
        PhaseResult(phase="alpha", passed=True, reason="", summary={"df": object()})
    with pytest.raises(ValueError, match="outside the run folder"):
        record_result(tmp_path, PhaseResult(phase="alpha", passed=True, reason="", artifacts=["/etc/passwd"]))
    with pytest.raises(ValueError, match="inside the run folder"):
        record_result(tmp_path, PhaseResult(phase="alpha", passed=True, reason="", artifacts=["../x.csv"]))


def test_summarize() -> None:
    df = pd.DataFrame({"a": range(100)})
    assert summarize(df.head(5)).equals(df.head(5))
    short = summarize(df, max_rows=20)
    assert len(short) == 20
    assert "81 more rows" in str(short.index[10]) and short["a"].iloc[-1] == 99


def test_new_run_folders(tmp_path: Path) -> None:
    first, second = new_run(tmp_path, "camp-1"), new_run(tmp_path, "camp-1")
    assert first.parent == second.parent == (tmp_path / "camp-1").resolve()
    assert first != second and first.is_dir()
    assert first.name[:16] <= second.name[:16] and first.name[15] == "Z"
    with pytest.raises(ValueError):
        new_run(tmp_path, "../escape")


def test_find_notebook(tmp_path: Path) -> None:
    assert find_notebook(NOTEBOOKS, "beta").name == "02_beta.ipynb"
    assert find_notebook(NOTEBOOKS, "02_beta").name == "02_beta.ipynb"
    with pytest.raises(ConfigError, match="unknown phase 'delta'"):
        find_notebook(NOTEBOOKS, "delta")
    with pytest.raises(FileNotFoundError, match="01_alpha.ipynb"):
        find_notebook(tmp_path, "alpha")  # registered, but its notebook is not in that folder


def test_registry_parses_staged_uses() -> None:
    use = registry.parse("submit@early")
    assert (use.phase.name, use.label, use.stage) == ("submit", "submit_early", "early")
    assert registry.parse("transfer").label == "transfer"
    with pytest.raises(ConfigError, match="one stage at a time"):
        registry.parse("submit")
    with pytest.raises(ConfigError, match="takes no stage"):
        registry.parse("transfer@early")
    with pytest.raises(ConfigError, match="unknown phase"):
        registry.parse("transfre")


def test_test_notebooks_are_stored_without_outputs() -> None:
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, path.name


# --------------------------------------------------------------------------- secrets


def test_known_secrets_from_rucio_config(rucio_cfg: Path) -> None:
    found = known_secrets_from_rucio_config(rucio_cfg)
    assert SECRET in found and TOKEN in found and "dbpass-42" in found
    assert "3600" not in found and "ddmlab" not in found
    assert known_secrets_from_rucio_config() == found  # $RUCIO_CONFIG
    assert known_secrets_from_rucio_config(rucio_cfg.parent / "absent.cfg") == []


def test_scan_patterns_and_values(tmp_path: Path) -> None:
    (tmp_path / "a.log").write_text(
        "\n".join(
            [
                "nothing here",
                'password = "hunter22"',
                "Authorization: Bearer abcdefghijklmnop",
                "X-Rucio-Auth-Token: root-root-0123456789",
                "postgresql://rucio:s3cret@db/rucio",
                f"connecting with ddmlab {SECRET}",
                'password = cfg.get("client", "password")',
                "password: ***",
                "self.password = password",
            ]
        )
    )
    nb = {"cells": [{"outputs": [{"text": [f'pw: "{SECRET}"\n']}]}]}
    (tmp_path / "n.ipynb").write_text(json.dumps(nb, indent=1))
    (tmp_path / "p.html").write_text(f"<pre>{SECRET.replace('-', '&#45;')}</pre><pre>&quot;{SECRET}&quot;</pre>")
    findings = scan_for_secrets([tmp_path], [SECRET])
    got = {(Path(f.path).name, f.line, f.kind) for f in findings}
    assert got == {
        ("a.log", 2, "password assignment"),
        ("a.log", 3, "Authorization: Bearer"),
        ("a.log", 4, "X-Rucio-Auth-Token"),
        ("a.log", 5, "password in URL"),
        ("a.log", 6, "known secret #1"),
        ("n.ipynb", 7, "known secret #1"),
        ("p.html", 1, "known secret #1"),
    }
    assert all(SECRET not in str(f) and "hunter22" not in f.model_dump_json() for f in findings)
    assert scan_for_secrets([tmp_path / "a.log"], [], patterns=False) == []


def test_scan_finds_environment_dumps_tokens_and_proxies(tmp_path: Path) -> None:
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
    (tmp_path / "env.info.yaml").write_text(
        "RUCIO_PASSWORD=hunter2xyz\nexport PGPASSWORD='abc123'\nAWS_SECRET_ACCESS_KEY: wJalrXUtnFEMIK7MDENG\n"
        f"PATH=/usr/bin\nTOKEN_FILE=/tmp/x\nid_token={jwt}\nRUCIO_PASSWORD=${{RUCIO_PASSWORD}}\n"
    )
    (tmp_path / "x509up_u1000").write_text(  # a proxy has no suffix: every file is scanned
        "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n-----BEGIN RSA PRIVATE KEY-----\nMIIE\n"
    )
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    got = {(Path(f.path).name, f.line, f.kind) for f in scan_for_secrets([tmp_path])}
    assert got == {
        ("env.info.yaml", 1, "secret environment variable"),
        ("env.info.yaml", 2, "secret environment variable"),
        ("env.info.yaml", 3, "secret environment variable"),
        ("env.info.yaml", 6, "JSON web token"),
        ("x509up_u1000", 1, "X.509 proxy"),
        ("x509up_u1000", 4, "private key"),
    }


def test_short_secret_matches_whole_words_only(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("no secrets here\nSecret scan\nlogin with secret now\n")
    found = scan_for_secrets([tmp_path], ["secret"], patterns=False)
    assert [(f.line, f.kind) for f in found] == [(3, "known secret #1")]


def test_redact_parameters() -> None:
    params = {
        "rucio_password": "x",
        "site": "IN2P3",
        "nested": {"api_token": "y", "n": 1},
        "key_file": "",
        "show_secret": False,
    }
    assert redact_parameters(params) == {
        "rucio_password": REDACTED,
        "site": "IN2P3",
        "nested": {"api_token": REDACTED, "n": 1},
        "key_file": "",
        "show_secret": False,
    }


def test_secret_parameter_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="known secret") as err:
        run_chain(["alpha"], tmp_path, {"factor": SECRET}, NOTEBOOKS, log=lambda _: None)
    assert SECRET not in str(err.value)
    assert not list(tmp_path.iterdir())  # refused before anything ran or was written


# --------------------------------------------------------------------------- the chain


def test_failed_gate_stops_chain_then_resume(tmp_path: Path, kernel: str) -> None:
    run_dir = new_run(tmp_path / "runs", "demo")
    lines: list[str] = []
    out = chain(run_dir, ["alpha", "beta", "gamma"], lines, factor=3, beta_mode="fail", leak_secret=False)

    assert not out.passed and out.stopped_at == "beta"
    assert "beta gate failed on purpose (30 rows)" in out.reason
    assert [p.status for p in out.phases] == ["pass", "fail", "not run"]
    assert set(out.results) == {"alpha", "beta"}
    assert out.results["alpha"].summary == chain_phases.AlphaSummary(rows=30, factor=3)
    assert not (run_dir / "03_gamma.ipynb").exists() and load_result(run_dir, "gamma") is None
    assert (run_dir / "artifacts" / "alpha" / "values.csv").is_file()
    record = load_run_record(run_dir)
    assert record is not None and record.outcome == "failed" and record.campaign == "demo"
    assert record.phases_requested == ["alpha", "beta", "gamma"] and record.who and record.host
    assert record.parameters == {"factor": 3, "beta_mode": "fail", "leak_secret": False}
    assert len(lines) < 12 and all(len(line) < 400 for line in lines)  # compact progress
    links = assert_links_resolve(run_dir)
    assert {"html/01_alpha.html", "html/02_beta.html", "artifacts/alpha/values.csv"} <= set(links)
    alpha_mtime = (run_dir / "01_alpha.ipynb").stat().st_mtime_ns

    lines.clear()
    again = run_chain(
        ["alpha", "beta", "gamma"],
        run_dir,
        {"factor": 3, "beta_mode": "pass"},
        NOTEBOOKS,
        log=lines.append,
        resume=True,
        cwd=NOTEBOOKS,
    )
    assert again.passed, again.reason
    assert [p.status for p in again.phases] == ["pass", "pass", "pass"]
    assert [p.resumed for p in again.phases] == [True, False, False]
    assert (run_dir / "01_alpha.ipynb").stat().st_mtime_ns == alpha_mtime  # not executed again
    assert any("alpha: already passed, skipped" in line for line in lines)
    assert again.results["beta"].reason == "saw 30 rows from alpha"
    superseded = run_dir / "superseded"  # the failed attempt is kept, not lost
    assert len(list(superseded.glob("beta.*.json"))) == len(list(superseded.glob("02_beta.*.ipynb"))) == 1
    record = load_run_record(run_dir)
    assert record is not None and record.outcome == "passed" and len(record.resumed_at) == 1
    assert_links_resolve(run_dir)
    assert "(earlier run)" in (run_dir / "index.html").read_text()

    # a full re-run that fails at beta leaves no stale pass for gamma behind
    again = chain(run_dir, ["alpha", "beta", "gamma"], [], beta_mode="fail")
    assert [p.status for p in again.phases] == ["pass", "fail", "not run"]
    assert load_result(run_dir, "gamma") is None and not (run_dir / "03_gamma.ipynb").exists()
    assert len(list(superseded.glob("gamma.*.json"))) == 1
    assert_links_resolve(run_dir)


def test_exception_is_recorded(tmp_path: Path, kernel: str) -> None:
    run_dir = new_run(tmp_path, "demo")
    out = chain(run_dir, ["beta", "gamma"], [], beta_mode="raise")
    assert not out.passed and out.stopped_at == "beta"
    result = load_result(run_dir, "beta")
    assert result is not None and not result.passed
    assert result.reason.startswith("RuntimeError: beta exploded on purpose after 0 rows")
    assert result.summary.error == "RuntimeError"
    executed = nbformat.read(run_dir / "02_beta.ipynb", as_version=4)  # kept, with the traceback
    assert any(o.get("ename") == "RuntimeError" for c in executed.cells for o in c.get("outputs", []))
    assert [p.status for p in out.phases] == ["fail", "not run"]
    assert_links_resolve(run_dir)


def test_missing_result_stops_chain(tmp_path: Path, kernel: str) -> None:
    run_dir = new_run(tmp_path, "demo")
    out = chain(run_dir, ["beta", "gamma"], [], beta_mode="silent")
    assert not out.passed and out.stopped_at == "beta"
    assert "without recording results/beta.json" in out.reason
    assert load_result(run_dir, "beta").summary.recorded_by == "chain"  # type: ignore[union-attr]
    assert_links_resolve(run_dir)


def test_planted_secret_fails_the_run(tmp_path: Path, kernel: str) -> None:
    run_dir = new_run(tmp_path, "demo")
    lines: list[str] = []
    out = chain(run_dir, ["alpha"], lines, leak_secret=True)
    assert out.phases[0].status == "pass"  # the gate passed ...
    assert not out.passed  # ... but the run fails on the leak
    assert "01_alpha.ipynb" in out.reason
    assert any(Path(f.path).name == "01_alpha.ipynb" and f.kind == "known secret #1" for f in out.findings)
    record = load_run_record(run_dir)
    assert record is not None and record.outcome == "failed" and record.secret_findings
    for clean in (run_dir / "run.json", run_dir / "index.html", run_dir / "logs" / "chain.log"):
        assert SECRET not in clean.read_text(), clean.name
    assert all(SECRET not in line for line in lines)
    assert "possible credential leak" in (run_dir / "index.html").read_text()
    assert not (run_dir / "html" / "01_alpha.html").exists()  # the leak is not copied into HTML
    assert "HTML withheld" in (run_dir / "index.html").read_text()
    assert_links_resolve(run_dir)


def test_an_interrupted_run_is_scanned_too(tmp_path: Path) -> None:
    run_dir = new_run(tmp_path, "demo")

    def interrupt(line: str) -> None:  # something leaks, then the operator presses Ctrl-C
        if "running" in line:
            (run_dir / "logs" / "debug.txt").write_text(f"client password was {SECRET}\n")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_chain(["alpha"], run_dir, {}, NOTEBOOKS, log=interrupt, cwd=NOTEBOOKS)
    record = load_run_record(run_dir)
    assert record is not None and record.outcome == "interrupted"
    assert record.secret_findings == ["logs/debug.txt:1: known secret #1"]
    assert "possible credential leak" in (run_dir / "index.html").read_text()


def test_render_index_without_run_record(tmp_path: Path) -> None:
    record_result(tmp_path, PhaseResult(phase="alpha", passed=False, reason="by hand <b>"))
    page = render_index(tmp_path)
    text = page.read_text()
    assert "by hand &lt;b&gt;" in text and "fail" in text
    assert_links_resolve(tmp_path)
    assert os.path.basename(page) == "index.html"


def test_sigterm_ends_the_chain_as_ctrl_c_does(tmp_path: Path) -> None:
    """What a batch system or a supervisor sends is recorded ``interrupted``, the phase that ran
    ``interrupted while running``, and the process's own SIGTERM handler is back afterwards."""
    import signal

    from multisite_nb.run.launch import run_status

    run_dir = new_run(tmp_path, "demo")
    before = signal.getsignal(signal.SIGTERM)

    def terminate(line: str) -> None:  # the supervisor stops the chain while alpha runs
        if "running" in line:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt, match="stopped by SIGTERM"):
        run_chain(["alpha", "beta"], run_dir, {}, NOTEBOOKS, log=terminate, cwd=NOTEBOOKS)
    assert signal.getsignal(signal.SIGTERM) is before
    record = load_run_record(run_dir)
    assert record is not None and record.outcome == "interrupted" and "stopped by SIGTERM" in record.reason
    status = run_status(run_dir)
    assert status.state == "interrupted"
    assert [(p.phase, p.status) for p in status.phases] == [("alpha", "interrupted while running"), ("beta", "not run")]
